"""Why the earlier sample score called the demo's samples nearly real: the old and the new
classifier, each under the old and the new protocol, on the same samples of one run.

    python benchmarks/bench_score_calibration.py RUN     # RUN: a run folder of the mnist preset with samples.npy

- old classifier: the one this project used before (3 convs, 2x2 average pool, 64 features,
  random rolls of up to 2 pixels, 8 epochs), rebuilt here for the comparison;
- new classifier: `vqvae.metrics.sample_quality` (4x4 map, 128 features, affine + erasing);
- old protocol: reference = the training split (on which the classifier, the VQ-VAE and the
  prior trained), compared set = the run's 500 held-out images, n = 500; the ratio reported was
  samples / real held-out;
- new protocol: reference and real row are disjoint halves of held-out data (here a fixed random
  2,000 of the MNIST test images), n = 1,000, with the reconstructions of the real row and noise.
  (The committed results file, cpu-sample-score-calibration.json, was made when the script drew
  them from the first half of the test split and measured the classifiers' accuracy on that half.)
Prints one JSON document.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vqvae.data import load_splits
from vqvae.metrics.sample_quality import calibrated_scores, features, frechet_distance, load_or_train_classifier
from vqvae.runs import load_vqvae

from bench_prior import DEFAULT_TEST, mnist_test
from result_file import print_and_write


class OldClassifier(nn.Module):
    """The classifier of the previous sample score, as it was."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
            nn.Linear(256, 64), nn.ReLU())
        self.head = nn.Linear(64, num_classes)

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.features(x))


def train_old(images, labels, epochs=8, seed=0, batch_size=64, lr=3e-3):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = OldClassifier(int(labels.max()) + 1)
    opt = torch.optim.Adam(model.parameters(), lr)
    n = len(images)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * ((n + batch_size - 1) // batch_size))
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            x = images[idx].float() / 255
            x = torch.roll(x, shifts=tuple(torch.randint(-2, 3, (2,), generator=gen).tolist()), dims=(2, 3))
            loss = F.cross_entropy(model(x), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
    return model.eval()


@torch.no_grad()
def accuracy(model, images, labels):
    return round((model(images.float() / 255).argmax(1) == labels).float().mean().item(), 4)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--test", type=Path, default=DEFAULT_TEST)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    vqvae, cfg = load_vqvae(args.run)
    train, val, heldout = load_splits(cfg.data)
    test = mnist_test(cfg, args.test)
    pick = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:2000]  # a fixed 2,000
    samples = torch.from_numpy(np.load(args.run / "samples.npy")[:1000]).float() / 255
    pool = test.subset(pick, "mnist-test-2000").tensor(2000).float() / 255
    reference, real = pool[:1000], pool[1000:]
    with torch.no_grad():
        reconstructions = vqvae(real).reconstruction.clamp(0, 1)
    old = train_old(train.tensor(), train.labels)
    new, info = load_or_train_classifier(train.tensor(), train.labels, val.tensor(), val.labels)
    out = {"run": str(args.run), "classifier_accuracy_on_mnist_test": {
        "old": accuracy(old, test.tensor(), test.labels), "new": accuracy(new, test.tensor(), test.labels)}}
    train_images = train.tensor().float() / 255
    own_heldout = heldout.tensor().float() / 255
    for name, model in (("old", old), ("new", new)):
        # The old protocol: the training split as reference, the run's 500 held-out images as "real".
        ref = features(model, train_images)
        n = len(own_heldout)
        fd_real = frechet_distance(features(model, own_heldout), ref)
        fd_samples = frechet_distance(features(model, samples[:n]), ref)
        out[f"{name}_classifier_old_protocol"] = {
            "n": n, "frechet_real_heldout": round(fd_real, 3), "frechet_samples": round(fd_samples, 3),
            "samples_vs_real": round(fd_samples / fd_real, 3)}
        scores = calibrated_scores(model, reference, real, reconstructions, samples)
        out[f"{name}_classifier_new_protocol"] = {
            "n": scores["n"], "samples_vs_reconstructions": scores["samples_vs_reconstructions"],
            **{f"frechet_{k}": r["frechet_distance"] for k, r in scores["rows"].items()},
            **{f"precision_{k}": r["precision"] for k, r in scores["rows"].items()},
            **{f"recall_{k}": r["recall"] for k, r in scores["rows"].items()}}
    print_and_write(out, args.json)


if __name__ == "__main__":
    main()
