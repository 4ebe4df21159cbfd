"""Nearest-code search for large codebooks on a GPU: fp16 tensor-core distances with a proven
error bound, and fp32 for the vectors that bound cannot decide.

The fp32 search (`quantizer.nearest_codes`) is one `addmm` of (N, C) x (C, K) and an argmin. At
K = 8,192 codes of 256 dims that fp32 matmul is most of the time on a GPU; tensor cores run it in
fp16 many times faster. Rounding the inputs to fp16 moves each distance by a bounded amount, so:

1. z and the codes are scaled by powers of two (exact) into fp16's range and rounded to fp16; the
   norms of the rows and of their rounding residuals r = x - fp16(x) are kept (in fp32).
2. The low-precision distances d~_k = |e_k|^2 - 2 fp16(z).fp16(e_k) are summed in fp32, and per
   vector only the three smallest are kept (with the codes of the first two). With Triton (on
   CUDA) one fused kernel does this without writing the (N, K) distance matrix; otherwise a cuBLAS
   matmul writes it and three reductions read it.
3. The error of every d~_k is at most
       margin(z) = 2 (|r_z| |e~|max + |z~| |r_e|max + |r_z| |r_e|max + g |z~| |e~|max) + norm and sum rounding
   (Cauchy-Schwarz on z.e - z~.e~ = r_z.e~ + z~.r_e + r_z.r_e; g = 2 C 2^-23 bounds the fp32
   accumulation, twice the worst case of a truncating adder). With threshold = 2 margin + slack,
   where `slack` is twice the fp32 search's own rounding bound:
   - runner-up more than `threshold` above the winner: the winner is the true nearest code, and
     also the fp32 search's choice;
   - else, third more than `threshold` above the winner: the nearest code is one of the first two,
     and their fp32 distances decide;
   - else (rare): the vector is searched again with the fp32 search.

So the answer equals the fp32 search's except where the fp32 search itself cannot tell two codes
apart (two codes within fp32 rounding of each other, which differently ordered fp32 sums may
order differently). tests/test_codebook_search.py checks the bound and the agreement;
benchmarks/bench_codebook_search.py times it against the bare matmul on a card.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch

# Below this many codes the fp32 matmul is short and the checked search's extra passes eat its gain
# (H100, 131,072 vectors of 256 dims: about even at 1,024 codes (the search alone 1.16x faster, the
# quantizer's step equal), 2.2x faster at 4,096; benchmarks/results/2026-11-27-h100-codebook-search-checked.json),
# so smaller codebooks stay with the fp32 search.
FAST_MIN_CODES = 2048
FP16_TOP = 2.0 ** 14  # scaled inputs stay below this: fp16 reaches 65,504, and sums of products are fp32
FP32_UNIT = 2.0 ** -23  # one fp32 ulp at 1 (twice the unit roundoff: covers truncating hardware too)
_HAS_OUT_DTYPE = hasattr(torch.ops.aten.addmm, "dtype")  # fp16 x fp16 -> fp32 addmm (CUDA, torch >= 2.8)

# How each vector's code was decided (`checked_search`'s second output).
BY_MARGIN, BY_TWO_CANDIDATES, BY_FP32_SEARCH = 0, 1, 2


@dataclass
class Half:
    """x scaled by a power of two and rounded to fp16, with what the rounding lost."""

    values: torch.Tensor  # (N, C) fp16: fp16(x * scale)
    scale: float  # a power of two
    norms: torch.Tensor  # (N,) fp32 |fp16(x * scale)|
    residual_norms: torch.Tensor  # (N,) fp32 |x * scale - fp16(x * scale)|


def power_of_two_scale(x: torch.Tensor) -> float:
    """A power of two that brings x's largest entry below FP16_TOP (1 if x is zero or not finite)."""
    largest = float(torch.linalg.vector_norm(x, ord=math.inf)) if x.numel() else 0.0
    # frexp: largest = m 2^e with 0.5 <= m < 1, so largest * FP16_TOP / 2^e < FP16_TOP.
    return FP16_TOP / 2.0 ** math.frexp(largest)[1] if 0 < largest < math.inf else 1.0


def to_half(x: torch.Tensor) -> Half:
    """Scale x (N, C) by a power of two so its largest entry is below FP16_TOP, round to fp16, and
    keep the norms of the rounded rows and of their rounding residuals (both in scaled units)."""
    x = x.float()
    scale = power_of_two_scale(x)
    scaled = x * scale  # exact: a power of two
    values = scaled.half()
    rounded = values.float()
    return Half(values, scale, rounded.norm(dim=1), (scaled - rounded).norm(dim=1))


@dataclass
class BestThree:
    """Per vector: the three smallest low-precision distances, and the codes of the first two."""

    best: torch.Tensor  # (N,) fp32
    index: torch.Tensor  # (N,) int64
    second: torch.Tensor  # (N,) fp32
    second_index: torch.Tensor  # (N,) int64
    third: torch.Tensor  # (N,) fp32


def best_three_torch(z: Half, codes: Half, code_norms: torch.Tensor, alpha: float) -> BestThree:
    """d~ = code_norms + alpha * z.codes (fp16 products, fp32 sums) as a full (N, K) matrix, then
    its three smallest entries per row. On CUDA the matmul runs on tensor cores with an fp32 output;
    elsewhere the same arithmetic is emulated in fp32 (exact products of fp16 values, fp32 sums)."""
    if z.values.is_cuda and _HAS_OUT_DTYPE:
        distances = torch.addmm(code_norms, z.values, codes.values.t(), beta=1.0, alpha=alpha,
                                out_dtype=torch.float32)
    else:  # torch before 2.8 (no fp32 output of fp16 matmuls), or no GPU: the same arithmetic in fp32
        distances = torch.addmm(code_norms, z.values.float(), codes.values.float().t(), beta=1.0, alpha=alpha)
    found = []
    for _ in range(3):
        value, index = distances.min(1)
        distances.scatter_(1, index[:, None], math.inf)
        found += [value, index]
    return BestThree(found[0], found[1], found[2], found[3], found[4])


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


def fp32_slack(z_norms: torch.Tensor, code_norms: torch.Tensor, dims: int) -> torch.Tensor:
    """(N,) twice the fp32 search's own worst rounding of a distance |e|^2 - 2 z.e: a winner ahead
    by more than this is also the one the fp32 search picks. z_norms: (N,) |z| (or more), code_norms: (K,) |e_k|^2."""
    largest = float(code_norms.max())
    return 2 * (dims + 2) * FP32_UNIT * (largest + 2 * z_norms * math.sqrt(largest))


def checked_search(flat: torch.Tensor, codebook: torch.Tensor, kernel: str = "auto",
                   chunk_size: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest code per row of `flat` (N, C) in `codebook` (K, C), equal to the fp32 search's
    except at fp32 near-ties: (indices (N,) int64, how (N,) int8: BY_MARGIN, BY_TWO_CANDIDATES or
    BY_FP32_SEARCH). kernel: "triton" (fused, CUDA), "torch" (matmul, then reductions; `chunk_size`
    rows at a time) or "auto" (triton where it runs)."""
    requested, kernel = kernel, _choose_kernel(kernel, flat)
    flat, codebook = flat.float(), codebook.float()
    codes = to_half(codebook)
    code_norms = (codebook * codebook).sum(1)  # fp32, unscaled
    if kernel == "triton":
        try:
            found, threshold = _triton_pass(flat, codes, code_norms)
        except Exception as error:  # noqa: BLE001 - a Triton that cannot compile here: use cuBLAS
            if requested == "triton":
                raise
            _give_up_on_triton(error)
            kernel = "torch"
    if kernel == "torch":
        parts = [_torch_pass(flat[start:start + chunk_size], codes, code_norms)
                 for start in range(0, flat.shape[0], chunk_size)]
        found = BestThree(*(torch.cat([getattr(p[0], f) for p in parts]) for f in BestThree.__dataclass_fields__))
        threshold = torch.cat([p[1] for p in parts])
    return decide(flat, codebook, code_norms, found, threshold)


def _torch_pass(z: torch.Tensor, codes: Half, code_norms: torch.Tensor) -> tuple[BestThree, torch.Tensor]:
    half = to_half(z)
    alpha = -2.0 / (half.scale * codes.scale)  # a power of two: undoes both scales exactly
    found = best_three_torch(half, codes, code_norms, alpha)
    z_norms = (half.norms + half.residual_norms) / half.scale  # >= |z| (triangle inequality)
    return found, 2 * margins(half, codes, code_norms, alpha) + fp32_slack(z_norms, code_norms, z.shape[1])


def _triton_pass(flat: torch.Tensor, codes: Half, code_norms: torch.Tensor) -> tuple[BestThree, torch.Tensor]:
    from .codebook_search_triton import best_three_triton, to_half_triton

    half = to_half_triton(flat, power_of_two_scale(flat))
    alpha = -2.0 / (half.scale * codes.scale)
    found = best_three_triton(half.values, codes.values.t().contiguous(), code_norms, alpha)
    z_norms = (half.norms + half.residual_norms) / half.scale
    return found, 2 * margins(half, codes, code_norms, alpha) + fp32_slack(z_norms, code_norms, flat.shape[1])


def decide(flat: torch.Tensor, codebook: torch.Tensor, code_norms: torch.Tensor, found: BestThree,
           threshold: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The margin's verdict per vector (see the module's docstring, step 3). Comparisons written
    as `not (gap > threshold)` also send vectors with inf/nan distances to fp32."""
    from .quantizer import nearest_codes

    indices = found.index.clone()
    how = torch.full_like(indices, BY_MARGIN, dtype=torch.int8)
    two = ~((found.second - found.best) > threshold)
    full = two & ~((found.third - found.best) > threshold)
    two &= ~full
    how[two], how[full] = BY_TWO_CANDIDATES, BY_FP32_SEARCH
    rows = two.nonzero().flatten()
    if len(rows):  # the nearer of two codes, on fp32 distances |e|^2 - 2 z.e
        pair = torch.stack([found.index[rows], found.second_index[rows]], 1)  # (n, 2)
        dots = torch.bmm(codebook[pair], flat[rows].unsqueeze(-1)).squeeze(-1)  # (n, 2)
        nearer = (code_norms[pair] - 2 * dots).argmin(1, keepdim=True)
        indices[rows] = pair.gather(1, nearer).squeeze(1)
    rows = full.nonzero().flatten()
    if len(rows):
        indices[rows] = nearest_codes(flat[rows], codebook)
    return indices, how


def nearest_codes_fast(flat: torch.Tensor, codebook: torch.Tensor, chunk_size: int = 65536) -> torch.Tensor:
    """`checked_search` on CUDA for codebooks of at least FAST_MIN_CODES codes; the fp32 search
    elsewhere (a CPU has no fp16 matmul to gain from). flat: (N, C), codebook: (K, C) -> (N,) int64."""
    from .quantizer import nearest_codes

    if not flat.is_cuda or codebook.shape[0] < FAST_MIN_CODES:
        return nearest_codes(flat, codebook, chunk_size)
    return checked_search(flat, codebook, chunk_size=chunk_size)[0]


_TRITON: bool | None = None


def triton_available() -> bool:
    """Whether Triton imports (PyTorch's CUDA wheels on Linux ship it) and has not failed here."""
    global _TRITON
    if _TRITON is None:
        try:
            import triton  # noqa: F401
            _TRITON = True
        except ImportError:
            _TRITON = False
    return _TRITON


def _choose_kernel(kernel: str, flat: torch.Tensor) -> str:
    if kernel == "auto":
        return "triton" if flat.is_cuda and triton_available() else "torch"
    if kernel not in ("triton", "torch"):
        raise ValueError(f"kernel={kernel!r}; valid: auto, triton, torch")
    return kernel


def _give_up_on_triton(error: Exception) -> None:
    """Say once that the fused kernel failed here, and use the cuBLAS path from now on (same codes)."""
    global _TRITON
    _TRITON = False
    warnings.warn(f"the fused Triton nearest-code kernel failed ({type(error).__name__}: {error}); using the "
                  f"cuBLAS fp16 path instead (the same codes, slower)", RuntimeWarning, stacklevel=3)
