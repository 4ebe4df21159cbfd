"""Codebook health from code counts accumulated over many batches (an epoch, a test set)."""
from __future__ import annotations

import math

import torch


def codebook_stats(counts: torch.Tensor) -> dict:
    """counts: (K,) how often each code was chosen (FSQ/LFQ: codes of the implicit codebook;
    residual VQ: the D * K codes of all levels, level by level).

    codes_used: codes chosen at least once; dead_codes: the rest; perplexity: exp of the
    entropy of the usage distribution (K when all codes are used equally, 1 when one is).
    """
    counts = counts.detach().double().cpu()
    total = counts.sum().item()
    used = int((counts > 0).sum())
    if total == 0:
        return {"codes_used": 0, "dead_codes": counts.numel(), "perplexity": 0.0, "usage_fraction": 0.0}
    p = counts[counts > 0] / total
    perplexity = math.exp(-(p * p.log()).sum().item())
    return {"codes_used": used, "dead_codes": counts.numel() - used, "perplexity": round(perplexity, 3),
            "usage_fraction": round(used / counts.numel(), 4)}
