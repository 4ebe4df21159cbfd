"""The fused kernel of the checked nearest-code search (see codebook_search.py): fp16 distances
to every code, accumulated in fp32 on tensor cores, reduced on the fly to the best code, its
distance and the runner-up's distance per vector, so the (N, K) distance matrix is never written.

Imported only where Triton is installed (PyTorch's CUDA wheels on Linux ship it). Under
TRITON_INTERPRET=1 the same kernel runs on the CPU, which is how the tests check it.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .codebook_search import BestTwo


@triton.jit
def best_two_kernel(z_ptr, codes_ptr, norms_ptr, best_ptr, second_ptr, index_ptr, alpha, M, K, C,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """One program: BLOCK_M vectors against all K codes, BLOCK_N codes at a time.
    z: (M, C) fp16 row-major; codes: (C, K) fp16 row-major; norms: (K,) fp32."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    best = tl.full([BLOCK_M], float("inf"), tl.float32)
    second = tl.full([BLOCK_M], float("inf"), tl.float32)
    index = tl.zeros([BLOCK_M], tl.int32)
    for n0 in range(0, K, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        col_ok = cols < K
        dots = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        for c0 in range(0, C, BLOCK_C):
            dims = c0 + tl.arange(0, BLOCK_C)
            dim_ok = dims < C
            z = tl.load(z_ptr + rows[:, None] * C + dims[None, :], mask=row_ok[:, None] & dim_ok[None, :], other=0.0)
            e = tl.load(codes_ptr + dims[:, None] * K + cols[None, :], mask=dim_ok[:, None] & col_ok[None, :],
                        other=0.0)
            dots = tl.dot(z, e, dots)  # fp16 x fp16 -> fp32
        norms = tl.load(norms_ptr + cols, mask=col_ok, other=float("inf"))
        distances = norms[None, :] + alpha * dots  # codes past K: +inf
        tile_best = tl.min(distances, axis=1)
        tile_index = tl.argmin(distances, axis=1) + n0
        tile_second = tl.min(tl.where(cols[None, :] == tile_index[:, None], float("inf"), distances), axis=1)
        # The runner-up overall: the better of both runners-up and the worse of both winners.
        second = tl.minimum(tl.minimum(second, tile_second), tl.maximum(best, tile_best))
        index = tl.where(tile_best < best, tile_index, index)  # ties keep the lower code, as argmin does
        best = tl.minimum(best, tile_best)
    tl.store(best_ptr + rows, best, mask=row_ok)
    tl.store(second_ptr + rows, second, mask=row_ok)
    tl.store(index_ptr + rows, index, mask=row_ok)


# Tile shapes tried once per (K, C) on the card in use; the fastest is kept.
CONFIGS = [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_C": c}, num_warps=w, num_stages=s)
           for m, n, c, w, s in [(128, 128, 64, 8, 3), (128, 256, 64, 8, 3), (256, 128, 64, 8, 3),
                                 (128, 128, 32, 4, 4), (64, 256, 64, 4, 3)]]
tuned_kernel = triton.autotune(CONFIGS, key=["K", "C"])(best_two_kernel)


def best_two_triton(z: torch.Tensor, codes_t: torch.Tensor, code_norms: torch.Tensor, alpha: float,
                    config: dict | None = None) -> BestTwo:
    """z: (N, C) fp16, codes_t: (C, K) fp16 contiguous, code_norms: (K,) fp32. `config` (BLOCK_M,
    BLOCK_N, BLOCK_C) skips the autotuning (the tests, under the interpreter)."""
    z = z.contiguous()
    (M, C), K = z.shape, codes_t.shape[1]
    best = torch.empty(M, dtype=torch.float32, device=z.device)
    second = torch.empty_like(best)
    index = torch.empty(M, dtype=torch.int32, device=z.device)
    args = (z, codes_t, code_norms.float().contiguous(), best, second, index, alpha, M, K, C)
    if config is None:
        tuned_kernel[lambda meta: (triton.cdiv(M, meta["BLOCK_M"]),)](*args)
    else:
        best_two_kernel[(triton.cdiv(M, config["BLOCK_M"]),)](*args, **config)
    return BestTwo(best, index.long(), second)
