"""Nearest-code search for large codebooks on a GPU: fp16 tensor-core distances with a proven
error bound, and fp32 for the vectors that bound cannot decide.

The fp32 search (`quantizer.nearest_codes`) is one `addmm` of (N, C) x (C, K) and an argmin. At
K = 8,192 codes of 256 dims that fp32 matmul is most of the time on a GPU; tensor cores run it in
fp16 many times faster. Rounding the inputs to fp16 moves each distance by a bounded amount, so:

1. z and the codes are scaled by powers of two (exact) into fp16's range and rounded to fp16; the
   norms of the rows and of their rounding residuals r = x - fp16(x) are kept (in fp32).
2. The low-precision distances d~_k = |e_k|^2 - 2 fp16(z).fp16(e_k) are summed in fp32, and per
   vector only the three smallest are kept (with the codes of the first two). With Triton (on
   CUDA) one fused kernel does this without writing the (N, K) distance matrix. The other path
   (`kernel="torch"`: a matmul writes the matrix, three reductions read it) is no faster than fp32
   on a GPU; the tests (on the CPU) and the benchmark use it.
3. The error of every d~_k is at most
       margin(z) = 2 (|r_z| |e~|max + |z~| |r_e|max + |r_z| |r_e|max + g |z~| |e~|max) + norm and sum rounding
   (Cauchy-Schwarz on z.e - z~.e~ = r_z.e~ + z~.r_e + r_z.r_e; g = 2 C 2^-23 bounds the fp32
   accumulation, twice the worst case of a truncating adder: tensor cores truncate their fp32 sums,
   Fasi et al., "Numerical behavior of NVIDIA tensor cores", PeerJ CS 2021). With
   threshold = 2 margin + slack, where `slack` is twice the fp32 search's own rounding bound:
   - runner-up more than `threshold` above the winner: the winner is the true nearest code, and
     also the fp32 search's choice;
   - else, third more than `threshold` above the winner: the nearest code is one of the first two,
     and their fp32 distances decide;
   - else (rare): the vector is searched again with the fp32 search.

So the answer equals the (IEEE) fp32 search's except where the fp32 search itself cannot tell two
codes apart (two codes within fp32 rounding of each other, which differently ordered fp32 sums may
order differently). The bound is proven for inputs whose largest entry lies in [2^-40, 2^40], with
floors for what fp32 squares and products lose below its range; a batch outside that range (or
with an inf or nan anywhere) gets the fp32 search. tests/test_codebook_search.py checks the bound and the agreement;
benchmarks/bench_codebook_search.py times it against the bare matmul on a card.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass

import torch

from ..errors import ConfigError

# The fp32 search's matmul is N x K x C multiply-adds. Below FAST_MIN_WORK it is short and the checked
# search's fixed cost (kernel launches, small tensor ops, two waits for the GPU) eats its gain: 2^35 is
# where it starts to pay on an H100 (`bench_codebook_search.py --crossover`; docs/benchmarks.md).
FAST_MIN_WORK = 2 ** 35
FP16_TOP = 2.0 ** 14  # scaled inputs stay below this: fp16 reaches 65,504, and sums of products are fp32
FP32_UNIT = 2.0 ** -23  # one fp32 ulp at 1 (twice the unit roundoff: covers truncating hardware too)
SAFE_LARGEST = (2.0 ** -40, 2.0 ** 40)  # the largest |entry| of z and of the codes the bound is proven for
SQUARE_FLOOR = 2.0 ** -62  # per entry: what an fp32 square may lose below fp32's range (squares < 2^-126)
ABSOLUTE_FLOOR = 2.0 ** -125  # per term: what an fp32 product or sum may lose in the subnormal range
# torch >= 2.8 has the `addmm.dtype` overload: fp16 x fp16 -> fp32 output (CUDA only).
_HAS_OUT_DTYPE = hasattr(torch.ops.aten.addmm, "dtype")

# How each vector's code was decided (`checked_search`'s second output).
BY_MARGIN, BY_TWO_CANDIDATES, BY_FP32_SEARCH = 0, 1, 2


@dataclass
class Half:
    """x scaled by a power of two and rounded to fp16, with what the rounding lost."""

    values: torch.Tensor  # (N, C) fp16: fp16(x * scale)
    scale: float  # a power of two
    norms: torch.Tensor  # (N,) fp32 |fp16(x * scale)|
    residual_norms: torch.Tensor  # (N,) fp32 |x * scale - fp16(x * scale)|


def largest_entry(x: torch.Tensor) -> float:
    """max |x| (inf or nan if x has one; 0 if x is empty)."""
    return largest_entries(x)[0]


def largest_entries(*tensors: torch.Tensor) -> list[float]:
    """max |x| of each tensor, read back from the GPU at once (one wait, not one per tensor)."""
    values = [torch.linalg.vector_norm(x.float(), ord=math.inf) if x.numel() else x.new_zeros((), dtype=torch.float32)
              for x in tensors]
    return torch.stack(values).tolist()


def power_of_two_scale(largest: float) -> float:
    """A power of two that brings entries up to `largest` (finite, > 0) below FP16_TOP."""
    # frexp: largest = m 2^e with 0.5 <= m < 1, so largest * FP16_TOP / 2^e < FP16_TOP.
    return FP16_TOP / 2.0 ** math.frexp(largest)[1]


def to_half(x: torch.Tensor, scale: float) -> Half:
    """x (N, C) times `scale` (a power of two), rounded to fp16, with the norms of the rounded rows
    and of their rounding residuals (both in scaled units; the residuals' with SQUARE_FLOOR per
    entry, for squares that vanish in fp32)."""
    scaled = x.float() * scale  # exact: a power of two
    values = scaled.half()
    rounded = values.float()
    floor = math.sqrt(x.shape[1]) * SQUARE_FLOOR
    return Half(values, scale, rounded.norm(dim=1), (scaled - rounded).norm(dim=1) + floor)


@dataclass
class BestThree:
    """Per vector: the three smallest low-precision distances, and the codes of the first two."""

    best: torch.Tensor  # (N,) fp32
    index: torch.Tensor  # (N,) int64
    second: torch.Tensor  # (N,) fp32
    second_index: torch.Tensor  # (N,) int64
    third: torch.Tensor  # (N,) fp32


def fp16_distances(z: Half, codes: Half, code_sq_norms: torch.Tensor, alpha: float) -> torch.Tensor:
    """d~ = code_sq_norms + alpha * z.codes (fp16 products, fp32 sums) as a full (N, K) matrix. On
    CUDA the matmul runs on tensor cores with an fp32 output; elsewhere the same arithmetic is
    emulated in fp32 (exact products of fp16 values, fp32 sums)."""
    if z.values.is_cuda and _HAS_OUT_DTYPE:
        return torch.addmm(code_sq_norms, z.values, codes.values.t(), beta=1.0, alpha=alpha, out_dtype=torch.float32)
    # torch before 2.8 (no fp32 output of fp16 matmuls), or no GPU: the same arithmetic in fp32
    return torch.addmm(code_sq_norms, z.values.float(), codes.values.float().t(), beta=1.0, alpha=alpha)


def best_three_torch(z: Half, codes: Half, code_sq_norms: torch.Tensor, alpha: float) -> BestThree:
    """The three smallest entries per row of `fp16_distances`."""
    distances = fp16_distances(z, codes, code_sq_norms, alpha)
    found = []
    for _ in range(3):
        value, index = distances.min(1)
        distances.scatter_(1, index[:, None], math.inf)
        found += [value, index]
    return BestThree(found[0], found[1], found[2], found[3], found[4])


def margins(z: Half, codes: Half, code_sq_norms: torch.Tensor, alpha: float) -> torch.Tensor:
    """(N,) an upper bound on |d~_k - d_k| for every code k, d_k = |e_k|^2 - 2 z.e_k in exact arithmetic.
    The dot product's terms are in scaled units, times |alpha| (= 2 / (scale_z scale_e)) to unscale."""
    dims = z.values.shape[1]
    # 0-dim tensors, not Python floats: reading them would stall the GPU's queue once per call.
    max_code_norm, max_code_residual = codes.norms.max(), codes.residual_norms.max()
    rounding = (z.residual_norms * max_code_norm + z.norms * max_code_residual
                + z.residual_norms * max_code_residual)
    accumulation = dims * 2 * FP32_UNIT * z.norms * max_code_norm
    dot_error = abs(alpha) * (rounding + accumulation) * (1 + 2.0 ** -10)  # the bound's own fp32 rounding
    # |e_k|^2 in fp32 (dims terms) and the final add, relative to |d~|, plus what subnormals lose.
    largest_sq_norm = code_sq_norms.max()
    sums = (dims + 2) * (FP32_UNIT * (largest_sq_norm + abs(alpha) * z.norms * max_code_norm) + ABSOLUTE_FLOOR)
    return dot_error + sums


def fp32_slack(z_norms: torch.Tensor, code_sq_norms: torch.Tensor, dims: int) -> torch.Tensor:
    """(N,) twice the fp32 search's own worst rounding of a distance |e|^2 - 2 z.e: a winner ahead
    by more than this is also the one the fp32 search picks. z_norms: (N,) |z| (or more)."""
    largest = code_sq_norms.max()
    return 2 * (dims + 2) * (FP32_UNIT * (largest + 2 * z_norms * largest.sqrt()) + ABSOLUTE_FLOOR)


def checked_search(flat: torch.Tensor, codebook: torch.Tensor, kernel: str = "auto",
                   chunk_size: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest code per row of `flat` (N, C) in `codebook` (K, C), equal to the fp32 search's
    except at fp32 near-ties: (indices (N,) int64, route (N,) int8: BY_MARGIN, BY_TWO_CANDIDATES or
    BY_FP32_SEARCH). kernel: "triton" (fused, CUDA), "torch" (matmul, then reductions; `chunk_size`
    rows at a time), or "auto" (triton where it runs; if it fails to compile there, a warning and the
    fp32 search)."""
    from .quantizer import nearest_codes

    requested, kernel = kernel, _choose_kernel(kernel, flat)
    with torch.autocast(flat.device.type, enabled=False):
        flat, codebook = flat.float(), codebook.float()
        largest_z, largest_e = largest_entries(flat, codebook)
        low, high = SAFE_LARGEST
        # Outside the proven range (also: empty, all zero, inf or nan), or offsets past int32: fp32.
        if not (low <= largest_z <= high and low <= largest_e <= high) or codebook.numel() >= 2 ** 31:
            return nearest_codes(flat, codebook), _all_by_fp32(flat)
        codes = to_half(codebook, power_of_two_scale(largest_e))
        code_sq_norms = (codebook * codebook).sum(1)  # fp32, unscaled
        z_scale = power_of_two_scale(largest_z)
        if kernel == "triton":  # no (N, K) matrix: as many rows as keep the kernel's int32 offsets in range
            chunk_size = (2 ** 31 - 1) // flat.shape[1]
        try:
            parts = [_fp16_pass(flat[start:start + chunk_size], z_scale, codes, code_sq_norms, kernel)
                     for start in range(0, flat.shape[0], chunk_size)]
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as error:  # noqa: BLE001 - a Triton that cannot compile on this machine
            if requested != "auto" or kernel != "triton":
                raise
            _give_up_on_triton(error)
            return nearest_codes(flat, codebook), _all_by_fp32(flat)
        found = BestThree(*(torch.cat([getattr(part[0], field.name) for part in parts])
                            for field in dataclasses.fields(BestThree)))
        threshold = torch.cat([part[1] for part in parts])
        return decide(flat, codebook, code_sq_norms, found, threshold)


def _all_by_fp32(flat: torch.Tensor) -> torch.Tensor:
    return torch.full((flat.shape[0],), BY_FP32_SEARCH, dtype=torch.int8, device=flat.device)


def _fp16_pass(z: torch.Tensor, scale: float, codes: Half, code_sq_norms: torch.Tensor,
               kernel: str) -> tuple[BestThree, torch.Tensor]:
    """Steps 1-3 of the module's docstring for a chunk of vectors: (their three smallest fp16
    distances, the threshold their gaps must exceed)."""
    alpha = -2.0 / (scale * codes.scale)  # a power of two: undoes both scales exactly
    if kernel == "triton":
        from .codebook_search_triton import best_three_triton, to_half_triton

        half = to_half_triton(z, scale)
        found = best_three_triton(half.values, codes.values.t().contiguous(), code_sq_norms, alpha)
    else:
        half = to_half(z, scale)
        found = best_three_torch(half, codes, code_sq_norms, alpha)
    z_norms = (half.norms + half.residual_norms) / scale  # >= |z| (triangle inequality)
    return found, 2 * margins(half, codes, code_sq_norms, alpha) + fp32_slack(z_norms, code_sq_norms, z.shape[1])


def decide(flat: torch.Tensor, codebook: torch.Tensor, code_sq_norms: torch.Tensor, found: BestThree,
           threshold: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The margin's verdict per vector (the module's docstring, step 3). Gaps are tested as
    `not (gap > threshold)`, so vectors with inf/nan distances also go to the fp32 search."""
    from .quantizer import nearest_codes

    indices = found.index.clone()
    runner_up_close = ~((found.second - found.best) > threshold)
    third_close = ~((found.third - found.best) > threshold)
    route = torch.full_like(indices, BY_MARGIN, dtype=torch.int8)
    route[runner_up_close] = BY_TWO_CANDIDATES
    route[runner_up_close & third_close] = BY_FP32_SEARCH
    open_rows = runner_up_close.nonzero().flatten()  # the one wait for the GPU when every vector is decided
    if not len(open_rows):
        return indices, route
    by_fp32 = route[open_rows] == BY_FP32_SEARCH
    rows = open_rows[~by_fp32]
    if len(rows):
        # The nearer of the two on fp32 distances |e|^2 - 2 z.e, summed elementwise (no TF32 matmul);
        # the pair in index order, so an exact tie keeps the lower code, as the fp32 search's argmin does.
        pair = torch.stack([found.index[rows], found.second_index[rows]], 1).sort(1).values  # (n, 2)
        dots = (codebook[pair] * flat[rows, None]).sum(-1)  # (n, 2)
        nearer = (code_sq_norms[pair] - 2 * dots).argmin(1, keepdim=True)
        indices[rows] = pair.gather(1, nearer).squeeze(1)
    rows = open_rows[by_fp32]
    if len(rows):
        indices[rows] = nearest_codes(flat[rows], codebook)
    return indices, route


def nearest_codes_fast(flat: torch.Tensor, codebook: torch.Tensor, chunk_size: int = 65536) -> torch.Tensor:
    """`checked_search` with the fused kernel on CUDA where the search is large enough to gain from it
    (FAST_MIN_WORK); the fp32 search elsewhere: a CPU has no fp16 matmul to gain from, and without
    Triton the (N, K) distance matrix costs what fp16 saves. flat: (N, C), codebook: (K, C) -> (N,) int64."""
    from .quantizer import nearest_codes

    work = flat.shape[0] * codebook.shape[0] * codebook.shape[1]
    if not flat.is_cuda or work < FAST_MIN_WORK:
        return nearest_codes(flat, codebook, chunk_size)
    if not triton_available():
        _say_triton_is_missing()
        return nearest_codes(flat, codebook, chunk_size)
    return checked_search(flat, codebook, chunk_size=chunk_size)[0]


_TRITON: bool | None = None
_TRITON_MISSING = "Triton is not installed (pip install 'vqvae[gpu]')"
_SAID_TRITON_IS_MISSING = False


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


def _say_triton_is_missing() -> None:
    """Once per process, where the fused search would have run: what is missing and what runs instead."""
    global _SAID_TRITON_IS_MISSING
    if _SAID_TRITON_IS_MISSING:
        return
    _SAID_TRITON_IS_MISSING = True
    try:
        import triton  # noqa: F401
    except ImportError:  # not a kernel that failed here: _give_up_on_triton said that
        warnings.warn(f"quantizer.search_precision=fast: {_TRITON_MISSING}; using the fp32 search (the same "
                      f"codes, slower)", RuntimeWarning, stacklevel=3)


def _choose_kernel(kernel: str, flat: torch.Tensor) -> str:
    if kernel == "auto":
        return "triton" if flat.is_cuda and triton_available() else "torch"
    if kernel not in ("triton", "torch"):
        raise ValueError(f"kernel={kernel!r}; valid: auto, triton, torch")
    if kernel == "triton" and not triton_available():
        raise ConfigError(f"kernel='triton': {_TRITON_MISSING}, or it failed on this machine; use kernel='torch'")
    return kernel


def _give_up_on_triton(error: Exception) -> None:
    """Say once that the fused kernel failed here, and use the fp32 search from now on (same codes)."""
    global _TRITON
    _TRITON = False
    warnings.warn(f"the fused Triton nearest-code kernel failed ({type(error).__name__}: {error}); using the "
                  f"fp32 search from now on (the same codes, slower)", RuntimeWarning, stacklevel=3)
