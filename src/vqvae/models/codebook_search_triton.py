"""The fused kernels of the checked nearest-code search (see codebook_search.py):

- `to_half_kernel`: scale, round to fp16 and take the norms of the rounded rows and of their
  rounding residuals, in one read of the vectors;
- `best_three_kernel`: fp16 distances to every code, summed in fp32 on tensor cores, reduced on the
  fly to the three smallest per vector (and the codes of the first two), so the (N, K) distance
  matrix is never written.

Imported only where Triton is installed (PyTorch's CUDA wheels on Linux ship it). Under
TRITON_INTERPRET=1 the same kernels run on the CPU, which is how the tests check them.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .codebook_search import SQUARE_FLOOR, BestThree, Half


@triton.jit
def to_half_kernel(x_ptr, out_ptr, norms_ptr, residual_ptr, scale, N, C,
                   BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """x: (N, C) fp32 row-major -> out: (N, C) fp16(x * scale); norms, residual: (N,) fp32."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)  # callers keep N * C below 2^31
    row_ok = rows < N
    squares = tl.zeros([BLOCK_R], tl.float32)
    residual_squares = tl.zeros([BLOCK_R], tl.float32)
    for c0 in range(0, C, BLOCK_C):
        dims = c0 + tl.arange(0, BLOCK_C)
        ok = row_ok[:, None] & (dims[None, :] < C)
        scaled = tl.load(x_ptr + rows[:, None] * C + dims[None, :], mask=ok, other=0.0) * scale
        rounded = scaled.to(tl.float16)
        tl.store(out_ptr + rows[:, None] * C + dims[None, :], rounded, mask=ok)
        back = rounded.to(tl.float32)
        squares += tl.sum(back * back, axis=1)
        residual_squares += tl.sum((scaled - back) * (scaled - back), axis=1)
    tl.store(norms_ptr + rows, tl.sqrt(squares), mask=row_ok)
    tl.store(residual_ptr + rows, tl.sqrt(residual_squares), mask=row_ok)


def to_half_triton(x: torch.Tensor, scale: float) -> Half:
    """`codebook_search.to_half` in one kernel (the same values, norms and residual floor)."""
    x = x.float().contiguous()
    N, C = x.shape
    values = torch.empty(N, C, dtype=torch.float16, device=x.device)
    norms = torch.empty(N, dtype=torch.float32, device=x.device)
    residual = torch.empty_like(norms)
    block_c = min(128, triton.next_power_of_2(C))
    to_half_kernel[(triton.cdiv(N, 32),)](x, values, norms, residual, scale, N, C, BLOCK_R=32, BLOCK_C=block_c)
    return Half(values, scale, norms, residual + math.sqrt(C) * SQUARE_FLOOR)


@triton.jit
def best_three_kernel(z_ptr, codes_ptr, sq_norms_ptr, best_ptr, index_ptr, second_ptr, second_index_ptr, third_ptr,
                      alpha, M, K, C, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """One program: BLOCK_M vectors against all K codes, BLOCK_N codes at a time.
    z: (M, C) fp16 row-major; codes: (C, K) fp16 row-major; sq_norms: (K,) fp32 |e_k|^2."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # callers keep M * C and C * K below 2^31
    row_ok = rows < M
    inf = float("inf")
    b1 = tl.full([BLOCK_M], inf, tl.float32)  # the three smallest so far, b1 <= b2 <= b3
    b2 = tl.full([BLOCK_M], inf, tl.float32)
    b3 = tl.full([BLOCK_M], inf, tl.float32)
    i1 = tl.zeros([BLOCK_M], tl.int32)
    i2 = tl.zeros([BLOCK_M], tl.int32)
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
        sq_norms = tl.load(sq_norms_ptr + cols, mask=col_ok, other=inf)
        d = sq_norms[None, :] + alpha * dots  # codes past K: +inf
        # The tile's three smallest, t1 <= t2 <= t3 (j1, j2 their codes).
        t1 = tl.min(d, axis=1)
        j1 = tl.argmin(d, axis=1) + n0
        d = tl.where(cols[None, :] == j1[:, None], inf, d)
        t2 = tl.min(d, axis=1)
        j2 = tl.argmin(d, axis=1) + n0
        d = tl.where(cols[None, :] == j2[:, None], inf, d)
        t3 = tl.min(d, axis=1)
        # Merge two sorted triples; on ties the earlier codes (b) come first, as argmin's do.
        b_first = b1 <= t1
        # b1 <= t1: b1, then min(b2, t1), then the next of (b2 or b3) and (t1 or t2).
        b_second = b2 <= t1
        n2_b = tl.where(b_second, b2, t1)
        m2_b = tl.where(b_second, i2, j1)
        n3_b = tl.where(b_second, tl.minimum(b3, t1), tl.minimum(b2, t2))
        # t1 < b1: t1, then min(t2, b1), then likewise.
        t_second = t2 < b1
        n2_t = tl.where(t_second, t2, b1)
        m2_t = tl.where(t_second, j2, i1)
        n3_t = tl.where(t_second, tl.minimum(t3, b1), tl.minimum(t2, b2))
        i1 = tl.where(b_first, i1, j1)
        b1 = tl.where(b_first, b1, t1)
        i2 = tl.where(b_first, m2_b, m2_t)
        b2 = tl.where(b_first, n2_b, n2_t)
        b3 = tl.where(b_first, n3_b, n3_t)
    tl.store(best_ptr + rows, b1, mask=row_ok)
    tl.store(index_ptr + rows, i1, mask=row_ok)
    tl.store(second_ptr + rows, b2, mask=row_ok)
    tl.store(second_index_ptr + rows, i2, mask=row_ok)
    tl.store(third_ptr + rows, b3, mask=row_ok)


# Tile shapes tried once per (K, C) on the card in use; the fastest is kept. These four were the fastest
# of those timed on an H100 (docs/benchmarks.md, nearest-code search); larger tiles were slower.
CONFIGS = [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_C": c}, num_warps=w, num_stages=s)
           for m, n, c, w, s in [(128, 128, 64, 8, 3), (128, 128, 32, 4, 4), (64, 128, 64, 4, 3),
                                 (64, 256, 64, 4, 3)]]
tuned_kernel = triton.autotune(CONFIGS, key=["K", "C"])(best_three_kernel)


def best_three_triton(z: torch.Tensor, codes_t: torch.Tensor, code_sq_norms: torch.Tensor, alpha: float,
                      config: dict | None = None) -> BestThree:
    """z: (N, C) fp16, codes_t: (C, K) fp16 contiguous, code_sq_norms: (K,) fp32. `config` (BLOCK_M,
    BLOCK_N, BLOCK_C) skips the autotuning (the tests, under the interpreter)."""
    z = z.contiguous()
    (M, C), K = z.shape, codes_t.shape[1]
    best, second, third = (torch.empty(M, dtype=torch.float32, device=z.device) for _ in range(3))
    index, second_index = (torch.empty(M, dtype=torch.int32, device=z.device) for _ in range(2))
    args = (z, codes_t, code_sq_norms.float().contiguous(), best, index, second, second_index, third, alpha, M, K, C)
    if config is None:
        tuned_kernel[lambda meta: (triton.cdiv(M, meta["BLOCK_M"]),)](*args)
    else:
        best_three_kernel[(triton.cdiv(M, config["BLOCK_M"]),)](*args, **config)
    return BestThree(best, index.long(), second, second_index.long(), third)
