"""Nearest-code search for large codebooks: a fast low-precision matmul picks a few candidates,
an exact fp32 re-check picks among them.

The fp32 search (`quantizer.nearest_codes`) is one `addmm` of (N, C) x (C, K) and an argmin. At
K = 8,192 codes of 256 dims that matmul is most of the time on a GPU, and tensor cores run it
many times faster in TF32 or bf16. Their rounding (TF32 keeps 10 mantissa bits of each input,
bf16 7 bits of the output) can swap codes whose distances are close, so here the low-precision
distances only shortlist the best `candidates` codes per vector, and the winner among those is
chosen on distances recomputed in fp32. The answer differs from the fp32 search only where the
true best code is missing from the shortlist (its low-precision distance must then be off by more
than the gap to `candidates` other codes) or where two codes are within fp32 rounding of each other
(a near-tie, which the fp32 search itself resolves arbitrarily). tests/test_quantizers.py checks
that every disagreement is such a near-tie; benchmarks/bench_codebook_search.py times it.
"""
from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("tf32", "bf16")


@contextlib.contextmanager
def _tf32_matmul(enabled: bool):
    """Allow TF32 for CUDA fp32 matmuls inside the block only (a process-wide switch)."""
    if not enabled:
        yield
        return
    matmul = torch.backends.cuda.matmul
    # torch >= 2.9 has `fp32_precision` and warns when the older `allow_tf32` flag is mixed in.
    name, value = ("fp32_precision", "tf32") if hasattr(matmul, "fp32_precision") else ("allow_tf32", True)
    before = getattr(matmul, name)
    setattr(matmul, name, value)
    try:
        yield
    finally:
        setattr(matmul, name, before)


def shortlist(flat: torch.Tensor, codebook: torch.Tensor, precision: str, candidates: int) -> torch.Tensor:
    """(N, C), (K, C) -> (N, candidates) indices of the codes nearest in low precision."""
    if precision == "bf16":
        z, codes = flat.to(torch.bfloat16), codebook.to(torch.bfloat16)
    else:
        z, codes = flat.float(), codebook.float()
    norms = (codebook.float() ** 2).sum(1).to(z.dtype)  # (K,)
    with _tf32_matmul(precision == "tf32" and flat.is_cuda):
        distances = torch.addmm(norms, z, codes.t(), beta=1.0, alpha=-2.0)  # (N, K)
    return distances.topk(candidates, dim=1, largest=False, sorted=False).indices


def recheck(flat: torch.Tensor, codebook: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """The candidate with the smallest fp32 distance ||e||^2 - 2 z.e: (N, C), (K, C), (N, k) -> (N,)."""
    flat, codebook = flat.float(), codebook.float()
    picked = codebook[candidates]  # (N, k, C)
    norms = (picked * picked).sum(-1)  # (N, k)
    dots = torch.bmm(picked, flat.unsqueeze(-1)).squeeze(-1)  # (N, k)
    best = (norms - 2 * dots).argmin(1, keepdim=True)  # (N, 1)
    return candidates.gather(1, best).squeeze(1)


def nearest_codes_fast(flat: torch.Tensor, codebook: torch.Tensor, precision: str = "tf32", candidates: int = 4,
                       chunk_size: int = 65536) -> torch.Tensor:
    """Nearest codebook row per row of `flat`, agreeing with the fp32 search except at near-ties.
    flat: (N, C), codebook: (K, C) -> (N,) int64."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}; valid: {', '.join(PRECISIONS)}")
    candidates = min(candidates, codebook.shape[0])
    out = torch.empty(flat.shape[0], dtype=torch.long, device=flat.device)
    for start in range(0, flat.shape[0], chunk_size):
        z = flat[start:start + chunk_size]
        out[start:start + chunk_size] = recheck(z, codebook, shortlist(z, codebook, precision, candidates))
    return out
