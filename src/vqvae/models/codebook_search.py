"""Nearest-code search for large codebooks on a GPU: fp16 tensor-core distances with a proven
error bound, and an exact fp32 search for the vectors that bound cannot decide.

The fp32 search (`quantizer.nearest_codes`) is one `addmm` of (N, C) x (C, K) and an argmin. At
K = 8,192 codes of 256 dims that fp32 matmul is most of the time on a GPU; tensor cores run it in
fp16 many times faster. Rounding the inputs to fp16 moves each distance by a bounded amount, so:

1. z and the codes are scaled by powers of two (exact) into fp16's range and rounded to fp16. The
   rounding residuals r = x - fp16(x) are kept (exactly, in fp32).
2. The low-precision distances d~_k = ||e_k||^2 - 2 fp16(z).fp16(e_k) are accumulated in fp32, and
   per vector only three numbers are kept: the smallest d~, its code, and the second smallest. With
   Triton (on CUDA) one fused kernel does this without writing the (N, K) distance matrix;
   otherwise a cuBLAS matmul writes it and two reductions read it.
3. The error of every d~_k is at most
       margin(z) = 2 (|r_z| |e~|max + |z~| |r_e|max + |r_z| |r_e|max + g |z~| |e~|max) + norm and sum rounding
   (Cauchy-Schwarz on z.e - z~.e~ = r_z.e~ + z~.r_e + r_z.r_e; g = C 2^-22 bounds the fp32
   accumulation, twice the worst case of a truncating adder). If the runner-up is more than
   2 margin + slack above the winner, the winner is the true nearest code, and also the fp32
   search's choice: `slack` is twice the fp32 search's own rounding bound.
4. Every other vector (an ambiguous one) is searched again with the fp32 search.

So the answer equals the fp32 search's except where the fp32 search itself cannot tell two codes
apart (two codes within fp32 rounding of each other, which different fp32 matmul kernels may
order differently). tests/test_codebook_search.py checks the bound and the agreement;
benchmarks/bench_codebook_search.py times it against the bare matmul on a card.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# Below this many codes the fp32 matmul is short and the extra passes of the checked search do not pay
# for themselves (H100, 256 dims: 1.2x slower at 1,024 codes, 2.0x faster at 4,096; see
# benchmarks/bench_codebook_search.py); such searches stay in fp32.
FAST_MIN_CODES = 2048
FP16_TOP = 2.0 ** 14  # scaled inputs stay below this: fp16 reaches 65,504, and sums of products are fp32
FP32_UNIT = 2.0 ** -23  # one fp32 ulp at 1 (twice the unit roundoff: covers truncating hardware too)
_HAS_OUT_DTYPE = hasattr(torch.ops.aten.addmm, "dtype")  # fp16 x fp16 -> fp32 addmm (CUDA, torch >= 2.8)


@dataclass
class Half:
    """x scaled by a power of two and rounded to fp16, with what the rounding lost."""

    values: torch.Tensor  # (N, C) fp16: fp16(x * scale)
    scale: float  # a power of two
    norms: torch.Tensor  # (N,) fp32 |fp16(x * scale)|
    residual_norms: torch.Tensor  # (N,) fp32 |x * scale - fp16(x * scale)|


def to_half(x: torch.Tensor) -> Half:
    """Scale x (N, C) by a power of two so its largest entry is below 2^14, round to fp16, and keep
    the norms of the rounded rows and of their rounding residuals (both in scaled units)."""
    x = x.float()
    largest = float(x.abs().max()) if x.numel() else 0.0
    # frexp: largest = m 2^e with 0.5 <= m < 1, so largest * FP16_TOP / 2^e < FP16_TOP.
    scale = FP16_TOP / 2.0 ** math.frexp(largest)[1] if 0 < largest < math.inf else 1.0
    scaled = x * scale  # exact: a power of two
    values = scaled.half()
    rounded = values.float()
    return Half(values, scale, rounded.norm(dim=1), (scaled - rounded).norm(dim=1))


@dataclass
class BestTwo:
    """Per vector: the smallest low-precision distance, its code, and the second smallest."""

    best: torch.Tensor  # (N,) fp32
    index: torch.Tensor  # (N,) int64
    second: torch.Tensor  # (N,) fp32


def best_two_torch(z: Half, codes: Half, code_norms: torch.Tensor, alpha: float) -> BestTwo:
    """d~ = code_norms + alpha * z.codes (fp16 products, fp32 sums) as a full (N, K) matrix, then
    its two smallest entries per row. On CUDA the matmul runs on tensor cores with an fp32 output;
    elsewhere the same arithmetic is emulated in fp32 (exact products of fp16 values, fp32 sums)."""
    if z.values.is_cuda and _HAS_OUT_DTYPE:
        distances = torch.addmm(code_norms, z.values, codes.values.t(), beta=1.0, alpha=alpha,
                                out_dtype=torch.float32)
    else:  # torch before 2.8 (no fp32 output of fp16 matmuls), or no GPU: the same arithmetic in fp32
        distances = torch.addmm(code_norms, z.values.float(), codes.values.float().t(), beta=1.0, alpha=alpha)
    best, index = distances.min(1)
    distances.scatter_(1, index[:, None], math.inf)
    return BestTwo(best, index, distances.min(1).values)


def margins(z: Half, codes: Half, code_norms: torch.Tensor, alpha: float) -> torch.Tensor:
    """(N,) an upper bound on |d~_k - d_k| for every code k, d_k = |e_k|^2 - 2 z.e_k in exact arithmetic.
    All terms are in scaled units times |alpha| (= 2 / (scale_z scale_e)), the unscaled distances'."""
    dims = z.values.shape[1]
    codes_norm, codes_residual = float(codes.norms.max()), float(codes.residual_norms.max())
    rounding = (z.residual_norms * codes_norm + z.norms * codes_residual + z.residual_norms * codes_residual)
    accumulation = dims * 2 * FP32_UNIT * z.norms * codes_norm
    dot_error = abs(alpha) * (rounding + accumulation) * (1 + 2.0 ** -10)  # the bound's own fp32 rounding
    # |e_k|^2 in fp32 (dims terms) and the final addmm rounding, both relative to |d~| at most.
    largest_norm = float(code_norms.max())
    sums = (dims + 2) * FP32_UNIT * (largest_norm + abs(alpha) * z.norms * codes_norm)
    return dot_error + sums


def fp32_slack(z: torch.Tensor, code_norms: torch.Tensor) -> torch.Tensor:
    """(N,) twice the fp32 search's own worst rounding of a distance |e|^2 - 2 z.e: a winner ahead
    by more than this is also the one the fp32 search picks. code_norms: (K,) |e_k|^2."""
    largest = float(code_norms.max())
    return 2 * (z.shape[1] + 2) * FP32_UNIT * (largest + 2 * z.norm(dim=1) * math.sqrt(largest))


def checked_search(flat: torch.Tensor, codebook: torch.Tensor, kernel: str = "auto",
                   chunk_size: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest code per row of `flat` (N, C) in `codebook` (K, C), equal to the fp32 search's
    except at fp32 near-ties: (indices (N,) int64, ambiguous (N,) bool: the rows searched again in fp32).
    kernel: "triton" (fused, CUDA), "torch" (matmul then reductions) or "auto" (triton where it runs)."""
    from .quantizer import nearest_codes

    if kernel == "auto":
        kernel = "triton" if flat.is_cuda and triton_available() else "torch"
    if kernel not in ("triton", "torch"):
        raise ValueError(f"kernel={kernel!r}; valid: auto, triton, torch")
    codebook = codebook.float()
    codes = to_half(codebook)
    code_norms = (codebook * codebook).sum(1)  # fp32, unscaled
    indices = torch.empty(flat.shape[0], dtype=torch.long, device=flat.device)
    ambiguous = torch.empty(flat.shape[0], dtype=torch.bool, device=flat.device)
    codes_t = codes.values.t().contiguous() if kernel == "triton" else None  # (C, K): the kernel's layout
    for start in range(0, flat.shape[0], chunk_size):
        z = flat[start:start + chunk_size].float()
        half = to_half(z)
        alpha = -2.0 / (half.scale * codes.scale)  # a power of two: undoes both scales exactly
        if kernel == "triton":
            from .codebook_search_triton import best_two_triton

            found = best_two_triton(half.values, codes_t, code_norms, alpha)
        else:
            found = best_two_torch(half, codes, code_norms, alpha)
        threshold = 2 * margins(half, codes, code_norms, alpha) + fp32_slack(z, code_norms)
        # Not ahead by the threshold, or not finite (inf/nan inputs): decide in fp32.
        unsure = ~((found.second - found.best) > threshold)
        chunk = slice(start, start + z.shape[0])
        indices[chunk], ambiguous[chunk] = found.index, unsure
    rows = ambiguous.nonzero().flatten()
    if len(rows):
        indices[rows] = nearest_codes(flat[rows], codebook)
    return indices, ambiguous


def nearest_codes_fast(flat: torch.Tensor, codebook: torch.Tensor, chunk_size: int = 65536) -> torch.Tensor:
    """`checked_search` on CUDA for codebooks of at least FAST_MIN_CODES codes; the fp32 search
    elsewhere (a CPU has no fp16 matmul to gain from). flat: (N, C), codebook: (K, C) -> (N,) int64."""
    from .quantizer import nearest_codes

    if not flat.is_cuda or codebook.shape[0] < FAST_MIN_CODES:
        return nearest_codes(flat, codebook, chunk_size)
    return checked_search(flat, codebook, chunk_size=chunk_size)[0]


_TRITON: bool | None = None


def triton_available() -> bool:
    """Whether Triton imports (it ships with PyTorch's CUDA wheels on Linux)."""
    global _TRITON
    if _TRITON is None:
        try:
            import triton  # noqa: F401
            _TRITON = True
        except ImportError:
            _TRITON = False
    return _TRITON
