"""The calibrated sample score's protocol: which images make each row (see sample_quality.py).

A held-out set, in a fixed random order, is split into two disjoint halves of n images: the
reference every row is scored against, and the real images that are scored themselves and
reconstructed by the VQ-VAE. The samples are the prior's; noise is drawn by `calibrated_scores`.
The classifier trains on the training split and reports its accuracy on validation images.
This module chooses the images and calls the measures; drawing the samples is the caller's
(`vqvae.evaluation.sample_quality` re-uses a run's cached samples).
"""
from __future__ import annotations

import torch
from torch import nn

from ..data import ImageSet
from .pretrained import PretrainedWeights
from .sample_quality import calibrated_scores, inception_fid, load_or_train_classifier

SCORE_IMAGES = 1000  # images per row of the calibrated sample score, where the held-out data allows


def scored_images(heldout: ImageSet, num_images: int = SCORE_IMAGES) -> int:
    """n, the images per row: at most `num_images`, and half of the held-out set (the other half
    is the reference)."""
    return min(num_images, len(heldout) // 2)


def why_unscorable(heldout: ImageSet, train_set: ImageSet, num_images: int = SCORE_IMAGES) -> str | None:
    """Why these sets cannot give a calibrated score, or None when they can."""
    if train_set.labels is None or heldout.labels is None:
        return "sample-quality scores need a labelled dataset to train their classifier"
    if scored_images(heldout, num_images) < 10:
        return f"{heldout.name} has {len(heldout)} images; the calibrated score needs at least 20"
    return None


def in_fixed_random_order(data: ImageSet, count: int, seed: int = 0) -> torch.Tensor:
    """`count` images of `data` as uint8, in a fixed random order: a dataset may be sorted by class
    (the bundled MNIST images are), and its first half would then hold other classes than its second."""
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:count]
    return data.take(order)


def score_samples(vqvae: nn.Module, samples: torch.Tensor, heldout: ImageSet, train_set: ImageSet,
                  val_set: ImageSet | None, device: torch.device, weights: PretrainedWeights | None = None) -> dict:
    """The four calibrated rows for n = len(samples) sample images (float, [0, 1], on the CPU).

    `heldout` must hold 2n images (see `scored_images`); the classifier trains on `train_set`
    and reports its accuracy on `val_set` (else on `heldout`); `weights` says where the standard
    FID's Inception weights may come from."""
    n = len(samples)
    accuracy_set = val_set if val_set is not None and val_set.labels is not None and len(val_set) else heldout
    classifier, info = load_or_train_classifier(train_set.tensor(), train_set.labels, accuracy_set.tensor(),
                                                accuracy_set.labels)
    info["heldout_set"] = accuracy_set.name
    pool = in_fixed_random_order(heldout, 2 * n).float() / 255
    reference, real = pool[:n], pool[n:2 * n]  # (n, C, H, W) each, disjoint
    with torch.no_grad():
        reconstructions = torch.cat([vqvae(real[i:i + 500].to(device)).reconstruction.float().clamp(0, 1).cpu()
                                     for i in range(0, n, 500)])
    scores = calibrated_scores(classifier, reference, real, reconstructions, samples)
    scores["heldout"] = f"{heldout.name}: {n} images the reference, {n} others the real row"
    scores["classifier"] = info
    scores["inception_fid"] = inception_fid(reference, samples, weights)
    return scores
