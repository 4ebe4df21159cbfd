"""Texture and sharpness of reconstructions without pretrained weights.

MSE rewards a blurred reconstruction: where the model is unsure of fine detail, the mean of the
possible details (a smooth patch) minimises it. These measures compare the *distributions* of
local detail instead, so averaging detail away costs as much as getting it wrong:

- the sliced Wasserstein distance (SWD) between 7x7 patches of the Laplacian pyramids of two
  image sets, per level (Karras et al. 2018, "Progressive Growing of GANs", appendix D; their
  `sliced_wasserstein.py`): a random set of patches per level, each patch a C*49 vector; the
  distance between two sets of patches is the mean, over random unit directions, of the 1-D
  Wasserstein-1 distance between their projections (sorted projections, paired in order).
  Reported x 1e3 as in that paper. One change from it: the paper normalises each set's patches
  by that set's own per-channel mean and standard deviation, which would scale a blurred set's
  faint detail back up; here every set is normalised by the *reference* set's statistics, so
  lost amplitude counts.
- the high-frequency power ratio: the mean square of the finest band (image minus its blurred,
  downsampled and re-upsampled copy) of a set, over the same of the reference. 1 is the
  reference's amount of detail; a blurred set is below 1, noise far above.

Both need a yardstick: `calibrated_texture` scores, against the same reference of n real
held-out images, n other real images (the floor: the sampling noise of the measure at this n),
a blurred copy of them, the model's reconstructions of them, and uniform noise.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

PATCH_SIZE = 7
DESCRIPTORS_PER_LEVEL = 8192  # patches drawn per set and level (ProGAN draws 128 per image)
PROJECTIONS = 256  # random directions (ProGAN: 4 repeats of 128); sorting them is most of the cost
SMALLEST_LEVEL = 16  # the pyramid halves the image while its side exceeds this (ProGAN stops at 16)
TEXTURE_ROWS = ("real", "blurred", "reconstructions", "noise")
BLUR_TAPS = (1.0, 4.0, 6.0, 4.0, 1.0)  # binomial, sigma ~ 1 pixel: the pyramid's filter and the blurred row's


def binomial_blur(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> the same size, each channel blurred by the separable 5-tap binomial filter
    (borders reflected)."""
    B, C, H, W = x.shape
    taps = torch.tensor(BLUR_TAPS, dtype=x.dtype, device=x.device)
    taps = taps / taps.sum()
    y = F.pad(x.reshape(B * C, 1, H, W), (2, 2, 2, 2), mode="reflect")
    y = F.conv2d(F.conv2d(y, taps.view(1, 1, -1, 1)), taps.view(1, 1, 1, -1))
    return y.reshape(B, C, H, W)


def _downsample(x: torch.Tensor) -> torch.Tensor:
    return binomial_blur(x)[..., ::2, ::2]


def _upsample(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def laplacian_pyramid(x: torch.Tensor, smallest: int = SMALLEST_LEVEL) -> list[torch.Tensor]:
    """Band-pass levels, finest first, then the low-pass remainder: the image is halved while its
    smaller side exceeds `smallest` (32 px -> 32, 16; 64 px -> 64, 32, 16; 28 px -> 28, 14; 16 px ->
    the image alone). Summing the levels, each upsampled as here, gives x back."""
    levels = [x]
    while min(levels[-1].shape[-2:]) > smallest:
        low = _downsample(levels[-1])
        levels[-1] = levels[-1] - _upsample(low, levels[-1].shape[-2:])
        levels.append(low)
    return levels


def high_frequency_power(x: torch.Tensor) -> float:
    """Mean square of the finest band: x minus its blurred, halved and re-upsampled copy."""
    return float(((x - _upsample(_downsample(x), x.shape[-2:])) ** 2).mean())


def random_patches(level: torch.Tensor, count: int, gen: torch.Generator) -> torch.Tensor:
    """(count, C, 7, 7) patches of `level` (B, C, h, w) at random images and positions."""
    B, C, h, w = level.shape
    if min(h, w) < PATCH_SIZE:
        raise ValueError(f"a pyramid level of {h}x{w} is smaller than the {PATCH_SIZE}x{PATCH_SIZE} patches")
    image = torch.randint(0, B, (count,), generator=gen)
    top = torch.randint(0, h - PATCH_SIZE + 1, (count,), generator=gen)
    left = torch.randint(0, w - PATCH_SIZE + 1, (count,), generator=gen)
    offsets = torch.arange(PATCH_SIZE)
    rows = (top[:, None] + offsets)[:, :, None]  # (count, 7, 1)
    cols = (left[:, None] + offsets)[:, None, :]  # (count, 1, 7)
    return level.permute(0, 2, 3, 1)[image[:, None, None], rows, cols].permute(0, 3, 1, 2)  # (count, C, 7, 7)


def sorted_projections(points: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """(P, N): the projections of `points` (N, D) on each of the unit `directions` (D, P), sorted."""
    return torch.sort((points @ directions).T.contiguous(), dim=1).values  # sorting rows is the fast layout


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, directions: torch.Tensor) -> float:
    """Mean over unit `directions` (D, P) of the 1-D Wasserstein-1 distance between the projections
    of the point sets a and b (N, D), equal N: sorted projections paired in order."""
    if a.shape != b.shape:
        raise ValueError(f"sliced_wasserstein needs equal point sets, got {tuple(a.shape)} and {tuple(b.shape)}")
    return float((sorted_projections(a, directions) - sorted_projections(b, directions)).abs().mean())


class PatchDistance:
    """The SWD of image sets to one reference set, level by level, with the reference's patch
    statistics for normalisation and one fixed set of random directions (seeded) for every set."""

    def __init__(self, reference: torch.Tensor, seed: int = 0, descriptors: int = DESCRIPTORS_PER_LEVEL,
                 projections: int = PROJECTIONS):
        self.seed, self.descriptors = seed, descriptors
        self.reference_power = high_frequency_power(reference)
        pyramid = laplacian_pyramid(reference.float())
        self.sizes = [level.shape[-1] for level in pyramid]
        gen = torch.Generator().manual_seed(seed)
        directions = torch.randn(reference.shape[1] * PATCH_SIZE ** 2, projections, generator=gen)
        self.directions = directions / directions.norm(dim=0, keepdim=True)  # (C * 49, P)
        self.reference, self.stats = [], []  # per level: sorted projections (P, N); patch mean and std
        for level in pyramid:
            patches = random_patches(level, descriptors, gen)  # (N, C, 7, 7)
            mean = patches.mean((0, 2, 3), keepdim=True)
            std = patches.std((0, 2, 3), keepdim=True).clamp_min(1e-8)
            self.stats.append((mean, std))
            self.reference.append(sorted_projections(((patches - mean) / std).flatten(1), self.directions))

    def __call__(self, images: torch.Tensor) -> dict:
        """{"swd_x1e3": [per level, finest first], "swd_x1e3_mean", "high_frequency_power_ratio"}."""
        gen = torch.Generator().manual_seed(self.seed + 1)
        swd = []
        for level, ref, (mean, std) in zip(laplacian_pyramid(images.float()), self.reference, self.stats):
            patches = ((random_patches(level, self.descriptors, gen) - mean) / std).flatten(1)  # (N, C * 49)
            swd.append(round(1e3 * float((sorted_projections(patches, self.directions) - ref).abs().mean()), 3))
        ratio = high_frequency_power(images) / max(self.reference_power, 1e-12)
        return {"swd_x1e3": swd, "swd_x1e3_mean": round(sum(swd) / len(swd), 3),
                "high_frequency_power_ratio": round(ratio, 4)}


def quantise(x: torch.Tensor) -> torch.Tensor:
    """Float images as an 8-bit file would hold them, back in [0, 1]."""
    return (x.float().clamp(0, 1) * 255).round() / 255


def calibrated_texture(reference: torch.Tensor, real: torch.Tensor, reconstructions: torch.Tensor,
                       seed: int = 0) -> dict:
    """Rows real, blurred (the binomial filter once), reconstructions and noise (uniform), each
    scored against `reference`. All images float (n, C, H, W) in [0, 1]; `reference` and `real` are
    disjoint real images and `reconstructions` are of `real`; every set is quantised to 8 bits."""
    n = min(len(reference), len(real), len(reconstructions))
    if n < 1:
        raise ValueError("the texture measure needs at least one image per set")
    real = quantise(real[:n])
    noise = quantise(torch.rand(real.shape, generator=torch.Generator().manual_seed(seed)))
    distance = PatchDistance(quantise(reference[:n]), seed)
    sets = (real, quantise(binomial_blur(real)), quantise(reconstructions[:n]), noise)
    rows = {name: distance(images) for name, images in zip(TEXTURE_ROWS, sets)}
    floor = max(rows["real"]["swd_x1e3_mean"], 1e-9)
    return {"n": n, "levels": distance.sizes, "patches_per_level": distance.descriptors,
            "projections": distance.directions.shape[1], "rows": rows,
            "reconstructions_vs_real": round(rows["reconstructions"]["swd_x1e3_mean"] / floor, 3)}
