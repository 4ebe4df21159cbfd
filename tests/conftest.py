"""Shared fixtures: tiny synthetic labelled images and a tiny trained run, built once per session."""
from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from PIL import Image

from vqvae.config import load_config
from vqvae.data import ImageSet

SIZE = 16


def bar_images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n uint8 (SIZE, SIZE) images: class 0 a horizontal bar, class 1 a vertical bar, random position."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, SIZE, SIZE), np.uint8)
    labels = np.arange(n) % 2
    for i, label in enumerate(labels):
        pos = rng.integers(3, SIZE - 5)
        if label == 0:
            images[i, pos:pos + 3, 2:-2] = 255
        else:
            images[i, 2:-2, pos:pos + 3] = 255
    return images, labels


def orientation(images: torch.Tensor) -> torch.Tensor:
    """1 where an image (N, 1, H, W) looks like a vertical bar, 0 for horizontal."""
    x = images.float()[:, 0]
    return (x.mean(1).var(1) > x.mean(2).var(1)).long()


def memory_data(n=160) -> tuple[ImageSet, ImageSet]:
    """(train, test) in-memory sets of bar images: the first 32 are the test split."""
    images, labels = bar_images(n)
    t = torch.from_numpy(images)[:, None]
    train = ImageSet("bars-train", SIZE, 1, images=t[32:], labels=torch.from_numpy(labels[32:]))
    test = ImageSet("bars-test", SIZE, 1, images=t[:32], labels=torch.from_numpy(labels[:32]))
    return train, test


def save_bar_folder(root, n: int, class_names=("horizontal", "vertical")):
    """n bar images as PNGs in one subfolder per class of `root`, named by `class_names` (label 0, 1)."""
    images, labels = bar_images(n)
    for i, (img, label) in enumerate(zip(images, labels)):
        folder = root / class_names[label]
        folder.mkdir(exist_ok=True)
        Image.fromarray(img).save(folder / f"{i:04d}.png")
    return root


@pytest.fixture(scope="session")
def bar_folder(tmp_path_factory):
    """A folder of PNGs in class subfolders (horizontal/, vertical/)."""
    return save_bar_folder(tmp_path_factory.mktemp("bars"), 240)


def tiny_overrides(folder) -> list[str]:
    return [f"data.dataset={folder}", f"data.image_size={SIZE}", "data.num_workers=0", "data.test_fraction=0.2",
            "train.batch_size=32", "train.epochs=3", "train.warmup_steps=0", "prior_train.batch_size=32",
            "prior_train.epochs=2", "prior_train.warmup_steps=0", "train.device=cpu", "prior_train.device=cpu",
            "quantizer.kmeans_iters=3", "quantizer.restart_after_steps=5", "sample.num_samples=16",
            "sample.batch_size=16"]


@pytest.fixture
def tiny_config(bar_folder):
    return load_config("tiny", tiny_overrides(bar_folder))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("VQVAE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def trained_run(bar_folder, tmp_path_factory):
    """A tiny run folder with a VQ-VAE and a class-conditional prior, for CLI and sampling tests."""
    from vqvae import api

    run = tmp_path_factory.mktemp("run")
    cfg = load_config("tiny", tiny_overrides(bar_folder) + ["prior.conditional=true"])
    api.train_vqvae(cfg, run)
    api.train_prior(cfg, run)
    return run


class Killed(Exception):
    """Raised inside `killed_after_steps`: a training process killed mid-run."""


@contextlib.contextmanager
def killed_after_steps(steps: int):
    """Within the block, the VQ-VAE stage raises Killed after its `steps`-th optimiser step."""
    from vqvae.training.vqvae_stage import VQVAEStage

    original = VQVAEStage.after_step
    calls = {"n": 0}

    def after_step(self, values):
        original(self, values)
        calls["n"] += 1
        if calls["n"] == steps:
            raise Killed

    VQVAEStage.after_step = after_step
    try:
        yield
    finally:
        VQVAEStage.after_step = original
