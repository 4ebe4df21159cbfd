"""Reconstruction quality on held-out images, measured as a user sees the output."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .codebook import codebook_stats


@torch.no_grad()
def evaluate_reconstruction(model, batches, max_batches: int = 0) -> dict:
    """MSE (raw and on outputs clipped to [0, 1]), PSNR, and codebook usage over `batches`
    (an iterable of (images, labels)). The model is put in eval mode and restored."""
    was_training = model.training
    model.eval()
    se = se_clipped = 0.0
    n_values = n_images = 0
    counts = torch.zeros(model.quantizer.usage_size, dtype=torch.long)
    try:
        for b, (x, _) in enumerate(batches):
            if max_batches and b >= max_batches:
                break
            out = model(x)
            x_hat = out.reconstruction.float()
            se += F.mse_loss(x_hat, x, reduction="sum").item()
            se_clipped += F.mse_loss(x_hat.clamp(0, 1), x, reduction="sum").item()
            n_values += x.numel()
            n_images += x.shape[0]
            counts += model.quantizer.usage_counts(out.indices).cpu()
    finally:
        model.train(was_training)
    if n_images == 0:
        raise ValueError("no images to evaluate")
    mse, mse_clipped = se / n_values, se_clipped / n_values
    return {"mse": mse, "mse_clipped": mse_clipped,
            "psnr_db": 10 * math.log10(1.0 / max(mse_clipped, 1e-12)),
            "num_images": n_images, **codebook_stats(counts)}
