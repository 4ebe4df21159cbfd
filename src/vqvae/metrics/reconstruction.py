"""Reconstruction quality on held-out images, measured as a user sees the output.

PSNR comes in the two forms papers use: `psnr_8bit_per_image_db`, the mean over images of each
image's PSNR, and `psnr_8bit_db`, the PSNR of the whole set's mean squared error; both on images
quantised to 8 bits (outputs clipped to [0, 1], rounded to 0..255), peak 255. `psnr_db` is the
set's PSNR on the float outputs (clipped, not rounded). The mean of per-image PSNRs is the larger
of the two (Jensen: log of a mean >= mean of logs), so a figure is comparable only within its
convention.

SSIM (Wang et al. 2004): Gaussian 11x11 window, sigma 1.5, K1 = 0.01, K2 = 0.03, data range 1
on the 8-bit images scaled to [0, 1]; each channel separately, borders reflect-padded by 5 pixels,
averaged over channels and all H x W positions per image, then over images. This is torchmetrics'
`structural_similarity_index_measure` with its defaults (a test checks the two agree). The SSIM
paper's MATLAB code and scikit-image average over the positions where the window fits without
padding instead, which differs slightly at small image sizes.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .codebook import codebook_stats

SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03
MAX_IMAGE_PSNR_DB = 100.0  # an exact 8-bit reconstruction has MSE 0: its PSNR counts as this, not infinity


def to_8bit(x: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] (floats, any range) -> the 8-bit values a saved PNG holds, as floats 0..255."""
    return (x.float().clamp(0, 1) * 255).round()


def psnr_8bit_per_image(x8: torch.Tensor, y8: torch.Tensor) -> torch.Tensor:
    """(B,) PSNR in dB of 8-bit images (floats 0..255, (B, C, H, W)), peak 255, at most MAX_IMAGE_PSNR_DB."""
    mse = ((x8.double() - y8.double()) ** 2).flatten(1).mean(1)
    return (10 * torch.log10(255 ** 2 / mse)).clamp_max(MAX_IMAGE_PSNR_DB)


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """(size,) normalised 1-D Gaussian taps centred on the middle one."""
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    taps = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return taps / taps.sum()


def ssim_per_image(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B,) SSIM of images x and y, (B, C, H, W) in [0, 1], with the conventions of this module's
    docstring; computed in float64."""
    B, C, H, W = x.shape
    if min(H, W) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got {H}x{W}")
    g = gaussian_window().to(x.device)
    pad = (SSIM_WINDOW - 1) // 2
    x = F.pad(x.double().reshape(B * C, 1, H, W), (pad,) * 4, mode="reflect")  # (B*C, 1, H + 10, W + 10)
    y = F.pad(y.double().reshape(B * C, 1, H, W), (pad,) * 4, mode="reflect")

    def blur(t):  # separable Gaussian over the padded images: (B*C, 1, H, W)
        return F.conv2d(F.conv2d(t, g.view(1, 1, -1, 1)), g.view(1, 1, 1, -1))

    mu_x, mu_y = blur(x), blur(y)
    var_x = (blur(x * x) - mu_x ** 2).clamp_min(0)  # rounding can make a flat patch's variance negative
    var_y = (blur(y * y) - mu_y ** 2).clamp_min(0)
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = SSIM_K1 ** 2, SSIM_K2 ** 2  # data range 1
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return s.reshape(B, -1).mean(1)


@torch.no_grad()
def evaluate_reconstruction(model, batches, max_batches: int = 0) -> dict:
    """MSE (raw and on outputs clipped to [0, 1]), PSNR in its conventions, SSIM (None for images
    under 11 pixels a side), and codebook usage over `batches` (an iterable of (images, labels)).
    The model is put in eval mode and restored."""
    was_training = model.training
    model.eval()
    se = se_clipped = se_8bit = psnr_sum = ssim_sum = 0.0
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
            # 8-bit: the originals come from 8-bit files, so to_8bit(x) recovers their exact values.
            x8, x_hat8 = to_8bit(x), to_8bit(x_hat)
            se_8bit += ((x_hat8 - x8) ** 2).sum().item()
            psnr_sum += psnr_8bit_per_image(x8, x_hat8).sum().item()
            if min(x.shape[-2:]) >= SSIM_WINDOW:
                ssim_sum += ssim_per_image(x8 / 255, x_hat8 / 255).sum().item()
            n_values += x.numel()
            n_images += x.shape[0]
            counts += model.quantizer.usage_counts(out.indices).cpu()
    finally:
        model.train(was_training)
    if n_images == 0:
        raise ValueError("no images to evaluate")
    mse, mse_clipped = se / n_values, se_clipped / n_values
    mse_8bit = se_8bit / n_values
    return {"mse": mse, "mse_clipped": mse_clipped,
            "psnr_db": 10 * math.log10(1.0 / max(mse_clipped, 1e-12)),
            "psnr_8bit_db": round(min(10 * math.log10(255 ** 2 / max(mse_8bit, 1e-12)), MAX_IMAGE_PSNR_DB), 4),
            "psnr_8bit_per_image_db": round(psnr_sum / n_images, 4),
            "ssim": round(ssim_sum / n_images, 5) if min(x.shape[-2:]) >= SSIM_WINDOW else None,
            "num_images": n_images, **codebook_stats(counts)}
