"""Sample quality that works offline, calibrated on every report.

A small CNN classifier is trained (once, then cached) on the labelled training split with
augmentation: random affine warps (rotation, scale, shift) and random erasing, so that its
features describe stroke shapes rather than exact pixels. Its held-out (validation) accuracy
is reported with every score. Its penultimate layer (128 features from a 4x4 spatial map)
gives:

- the Fréchet distance to a reference set of real held-out images (the FID recipe with a
  domain classifier in place of Inception);
- precision and recall with k-nearest-neighbour manifolds (Kynkäänniemi et al. 2019, "Improved
  Precision and Recall Metric for Assessing Generative Models"): precision is the share of
  generated images inside the real images' manifold (malformed images lower it), recall the
  share of real images inside the generated images' manifold (missing modes lower it);
- from the predictions: mean confidence and how evenly the classes are covered.

Calibration: the same figures, at the same number of images n, for four sets: real held-out
images disjoint from the reference (the floor: what real data scores), the VQ-VAE's
reconstructions of those same images (the ceiling any prior can reach through this decoder),
the samples, and uniform noise. A reader sees where the samples sit between the
reconstructions and noise; the Fréchet distance is biased upwards at small n, so figures
compare only within one report.

The classifier keeps a 4x4 feature map before its head, so its features see where strokes are
and set decoder-level defects apart from real images (benchmarks/bench_score_calibration.py
compares it with a 2x2-pooled one; docs/benchmarks.md has the figures). The reconstructions' row
is the yardstick: samples are compared with what the decoder can reach, not only with real images.

Where Inception weights for the standard FID are on disk (see metrics/pretrained.py), colour
data also gets the standard FID; nothing is downloaded unless the user asks.
"""
from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..files import atomic_torch_save
from .pretrained import PretrainedWeights, inception_fid_metric

FEATURE_DIM = 128


class FeatureClassifier(nn.Module):
    """Three conv layers (batch norm, two max-pools) -> 4x4 spatial map -> 128 features -> classes.

    About 5.6M multiply-adds per 28x28 image, so it trains in seconds on a CPU."""

    def __init__(self, channels: int, image_size: int, num_classes: int, feature_dim: int = FEATURE_DIM):
        super().__init__()

        def conv(cin, cout):
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        self.body = nn.Sequential(
            *conv(channels, 32), nn.MaxPool2d(2), *conv(32, 64), nn.MaxPool2d(2), *conv(64, 64),
            # A 4x4 map keeps where the strokes are; a 2x2 average loses it.
            nn.AdaptiveAvgPool2d(4), nn.Flatten(),  # (B, 64 * 16)
            nn.Linear(64 * 16, feature_dim), nn.ReLU())
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(feature_dim, num_classes)
        self.shape = (channels, image_size, num_classes, feature_dim)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))


def cache_dir() -> Path:
    return Path(os.environ.get("VQVAE_CACHE", "~/.cache/vqvae")).expanduser()


CLASSIFIER_VERSION = 3  # part of the cache key: bump when the classifier or its recipe changes


def _data_key(images: torch.Tensor, labels: torch.Tensor, epochs: int) -> str:
    h = hashlib.sha256(f"v{CLASSIFIER_VERSION}-e{epochs}".encode())
    h.update(str(tuple(images.shape)).encode())
    h.update(images[:: max(1, len(images) // 256)].contiguous().numpy().tobytes())
    h.update(labels.numpy().tobytes())
    return h.hexdigest()[:16]


def augment(x: torch.Tensor, gen: torch.Generator, max_degrees: float = 12.0, max_shift: float = 0.1,
            scale: tuple[float, float] = (0.9, 1.1), erase_prob: float = 0.3) -> torch.Tensor:
    """Random affine warp per image (rotation, scale, shift as a fraction of the side), then random
    erasing of one rectangle (up to a quarter of each side) in some images. x: (B, C, H, W) in [0, 1]."""
    B = len(x)
    angle = (torch.rand(B, generator=gen) * 2 - 1) * math.radians(max_degrees)
    s = scale[0] + torch.rand(B, generator=gen) * (scale[1] - scale[0])
    shift = (torch.rand(B, 2, generator=gen) * 2 - 1) * max_shift * 2  # affine_grid spans [-1, 1]
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, padding_mode="zeros", align_corners=False)
    H, W = x.shape[-2:]
    erase = torch.rand(B, generator=gen) < erase_prob
    h = torch.randint(1, H // 4 + 1, (B,), generator=gen)
    w = torch.randint(1, W // 4 + 1, (B,), generator=gen)
    top = (torch.rand(B, generator=gen) * (H - h + 1)).long()
    left = (torch.rand(B, generator=gen) * (W - w + 1)).long()
    rows, cols = torch.arange(H)[None, :, None], torch.arange(W)[None, None, :]
    box = ((rows >= top[:, None, None]) & (rows < (top + h)[:, None, None]) & (cols >= left[:, None, None])
           & (cols < (left + w)[:, None, None]) & erase[:, None, None])
    return x.masked_fill(box[:, None], 0.0)


def train_classifier(images: torch.Tensor, labels: torch.Tensor, test_images: torch.Tensor | None = None,
                     test_labels: torch.Tensor | None = None, epochs: int = 8, seed: int = 0,
                     batch_size: int = 64, lr: float = 3e-3) -> tuple[FeatureClassifier, dict]:
    """images: uint8 (N, C, H, W), labels (N,). Returns the classifier and its held-out accuracy
    (on `test_images`: pass the validation split). One-cycle Adam with augmentation."""
    num_classes = int(labels.max()) + 1
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = FeatureClassifier(images.shape[1], images.shape[2], num_classes)
    opt = torch.optim.Adam(model.parameters(), lr)
    n = len(images)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * ((n + batch_size - 1) // batch_size))
    model.train()
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            x = augment(images[idx].float() / 255, gen)
            loss = F.cross_entropy(model(x), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
    model.eval()
    info = {"train_images": n, "num_classes": num_classes, "epochs": epochs, "feature_dim": FEATURE_DIM,
            "augmentation": "affine (rotation 12 deg, scale 0.9-1.1, shift 10%), random erasing"}
    if test_images is not None and test_labels is not None and len(test_images):
        predictions = predict(model, test_images.float() / 255).argmax(1)
        info["heldout_accuracy"] = round((predictions == test_labels).float().mean().item(), 4)
        info["heldout_images"] = len(test_images)
    return model, info


def load_or_train_classifier(images, labels, test_images=None, test_labels=None,
                             epochs: int = 8) -> tuple[FeatureClassifier, dict]:
    """Cached in $VQVAE_CACHE (default ~/.cache/vqvae)/classifiers/, keyed by the training data."""
    path = cache_dir() / "classifiers" / f"{_data_key(images, labels, epochs)}.pt"
    if path.is_file():
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
            model = FeatureClassifier(*payload["shape"])
            model.load_state_dict(payload["state"])
            return model.eval(), dict(payload["info"], cached=True)
        except Exception:
            pass  # a stale or foreign file: retrain and overwrite it
    model, info = train_classifier(images, labels, test_images, test_labels, epochs=epochs)
    atomic_torch_save({"shape": list(model.shape), "state": model.state_dict(), "info": info}, path)
    return model, dict(info, cached=False)


@torch.no_grad()
def predict(model: FeatureClassifier, x: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    return torch.cat([torch.softmax(model(x[i:i + batch]), 1) for i in range(0, len(x), batch)])


@torch.no_grad()
def features(model: FeatureClassifier, x: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    return torch.cat([model.features(x[i:i + batch]) for i in range(0, len(x), batch)]).double()


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between two feature sets (N, D).

    The trace of the matrix square root is computed as the sum of square roots of the
    eigenvalues of S_a^(1/2) S_b S_a^(1/2), which is symmetric, so eigh applies.
    """
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    vals, vecs = torch.linalg.eigh(cov_a)
    sqrt_a = vecs @ torch.diag(vals.clamp_min(0).sqrt()) @ vecs.T
    middle = sqrt_a @ cov_b @ sqrt_a
    tr_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    return float(((mu_a - mu_b) ** 2).sum() + torch.trace(cov_a) + torch.trace(cov_b) - 2 * tr_sqrt)


def _kth_neighbour_radius(x: torch.Tensor, k: int) -> torch.Tensor:
    """Distance from each row of x to its k-th nearest other row."""
    if len(x) <= k:
        raise ValueError(f"k={k} nearest neighbours need more than {k} points, got {len(x)}")
    d = torch.cdist(x, x)
    return d.kthvalue(k + 1, dim=1).values  # the 1st "neighbour" is the point itself, at 0


def _inside_manifold(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor) -> torch.Tensor:
    """(len(points),) bool: inside at least one ball (centre, radius)."""
    return (torch.cdist(points, centres) <= radii[None]).any(1)


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> dict:
    """Kynkäänniemi et al. 2019: precision = share of `fake` inside the union of balls around each
    real point reaching its k-th nearest real neighbour; recall = the same with the roles swapped."""
    real, fake = real.double(), fake.double()
    precision = _inside_manifold(fake, real, _kth_neighbour_radius(real, k)).double().mean().item()
    recall = _inside_manifold(real, fake, _kth_neighbour_radius(fake, k)).double().mean().item()
    return {"precision": round(precision, 4), "recall": round(recall, 4)}


def class_figures(probs: torch.Tensor) -> dict:
    """Mean top-class confidence; class coverage = entropy of predicted classes / log(#classes)
    (1.0 when every class is equally frequent); and the per-class counts."""
    counts = torch.bincount(probs.argmax(1), minlength=probs.shape[1]).double()
    p = counts / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum().item()
    return {"confidence": round(probs.max(1).values.mean().item(), 4),
            "class_coverage": round(entropy / math.log(probs.shape[1]), 4) + 0.0,  # + 0.0: no "-0.0"
            "classes_present": int((counts > 0).sum()), "class_counts": counts.long().tolist()}


ROWS = ("real", "reconstructions", "samples", "noise")


def calibrated_scores(classifier: FeatureClassifier, reference: torch.Tensor, real: torch.Tensor,
                      reconstructions: torch.Tensor, samples: torch.Tensor, k: int = 3, seed: int = 0) -> dict:
    """All images float (N, C, H, W) in [0, 1]; `reference` and `real` are disjoint real held-out
    images, `reconstructions` are the VQ-VAE's of `real`. Every row is scored at the same n
    (the smallest set's size) against the same reference of n images.

    Returns {"n", "k", "rows": {real, reconstructions, samples, noise: {frechet_distance,
    precision, recall, confidence, class_coverage, classes_present, class_counts}},
    "samples_vs_reconstructions": the samples' Fréchet distance / the reconstructions'}.
    """
    n = min(len(reference), len(real), len(reconstructions), len(samples))
    if n <= k:
        raise ValueError(f"calibrated scores need more than k={k} images per set, got {n}")
    noise = torch.rand((n,) + tuple(samples.shape[1:]), generator=torch.Generator().manual_seed(seed))
    ref_features = features(classifier, reference[:n])
    rows = {}
    for name, images in zip(ROWS, (real[:n], reconstructions[:n], samples[:n], noise)):
        f = features(classifier, images)
        rows[name] = {"frechet_distance": round(frechet_distance(f, ref_features), 4),
                      **precision_recall(ref_features, f, k), **class_figures(predict(classifier, images))}
    ratio = rows["samples"]["frechet_distance"] / max(rows["reconstructions"]["frechet_distance"], 1e-9)
    return {"n": n, "k": k, "rows": rows, "samples_vs_reconstructions": round(ratio, 3)}


def inception_fid(real: torch.Tensor, fake: torch.Tensor, weights: PretrainedWeights | None = None) -> dict:
    """Standard FID (torchmetrics over torch-fidelity's Inception-v3) between two sets of colour images,
    float (N, 3, H, W) in [0, 1], when the Inception weights are on disk or `weights` allows a download
    (see metrics/pretrained.py)."""
    if real.shape[1] != 3:
        return {"available": False, "reason": "the standard FID is for colour images; these are grayscale"}
    metric, source = inception_fid_metric(weights or PretrainedWeights())
    if metric is None:
        return {"available": False, "reason": source}
    for images, is_real in ((real, True), (fake, False)):
        for i in range(0, len(images), 200):
            metric.update((images[i:i + 200].clamp(0, 1) * 255).round().to(torch.uint8), real=is_real)
    return {"available": True, "fid": round(float(metric.compute()), 3), "weights": source}
