"""Pseudo-classes for a prior on images without labels.

A class-conditional prior with classifier-free guidance draws far better samples than an
unconditional one of the same size, but needs classes. Without labels, the training images are
clustered instead: each code map is embedded by the VQ-VAE's own code vectors (quantizer.lookup),
kept at every position of maps up to 8x8 (average-pooled to 8x8 above that, so the embedding stays
bounded), and k-means (k-means++ seeding, Lloyd iterations) finds the clusters. Pooling MNIST's 7x7
maps to 4x4 lost much of the layout that tells digits apart (docs/benchmarks-unlabelled.md). The
prior then trains on cluster indices as its labels, with label dropout for its unconditional mode;
sampling draws clusters in their training frequencies. No label is read.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models import VQVAE, kmeans
from ..models.quantizer import nearest_codes

POOLED_SIZE = 8  # positions per side the code vectors are averaged down to, on larger maps
FIT_IMAGES = 10_000  # k-means fits its centres on at most this many maps (a fixed random subset)
KMEANS_ITERS = 25


@torch.no_grad()
def code_map_features(vqvae: VQVAE, codes: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    """Code maps (N, h, w) -> (N, D * s * s) float: code vectors, average-pooled to s x s positions
    (s = min(h, POOLED_SIZE))."""
    device = next(vqvae.parameters()).device
    parts = []
    for i in range(0, len(codes), batch):
        vectors = vqvae.quantizer.lookup(codes[i:i + batch].long().to(device)).float()  # (B, D, h, w)
        size = min(vectors.shape[-1], POOLED_SIZE)
        parts.append(F.adaptive_avg_pool2d(vectors, size).flatten(1).cpu())  # (B, D * s * s)
    return torch.cat(parts)


def find_pseudo_classes(vqvae: VQVAE, codes: torch.Tensor, num_classes: int,
                        seed: int = 0) -> torch.Tensor:
    """(N,) int64 labels: each code map's cluster of k-means on the code maps' features."""
    if len(codes) < num_classes:
        raise ValueError(f"{num_classes} pseudo-classes need at least as many training images, got {len(codes)}")
    features = code_map_features(vqvae, codes)
    generator = torch.Generator().manual_seed(seed)
    fit = features[torch.randperm(len(features), generator=generator)[:FIT_IMAGES]]
    centres = kmeans(fit, num_classes, KMEANS_ITERS, generator)
    return assign_pseudo_classes(features, centres)


def assign_pseudo_classes(features: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """The nearest centre of each feature row: (N,) int64."""
    return nearest_codes(features, centres).long()


def class_frequencies(labels: torch.Tensor, num_classes: int) -> list[float]:
    counts = torch.bincount(labels, minlength=num_classes).double()
    return [round(float(c), 6) for c in counts / counts.sum()]
