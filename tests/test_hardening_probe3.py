"""Hostile-user probe 3: each test is a failure found by feeding the CLI and API a user's own odd
data, files and settings (benchmarks/check_hostile_inputs.py, block `# --- probe3`)."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny_overrides
from vqvae import api, export_folder
from vqvae.checkpoint import TRAINING_STATE
from vqvae.cli import main
from vqvae.config import load_config
from vqvae.runs import load_vqvae


def cli(*args):
    return main([str(a) for a in args])


def test_export_folder_of_a_run_with_weight_average_and_discriminator(bar_folder, tmp_path):
    # The vqgan presets train with a weight average (train.ema_decay) and a discriminator: their
    # checkpoints hold extra training state (state dicts), which a model folder must leave out
    # rather than refuse the export.
    run = tmp_path / "gan"
    cfg = load_config("tiny", tiny_overrides(bar_folder) + ["train.epochs=1", "train.ema_decay=0.9",
                                                            "loss.adversarial=hinge", "loss.disc_layers=2"])
    api.train_vqvae(cfg, run)
    checkpoint = torch.load(run / "checkpoints" / "vqvae-last.pt", weights_only=True)
    assert {"critic_state", "training_model_state"} <= set(checkpoint)  # what used to stop the export
    folder = tmp_path / "model"
    export_folder(run, folder)
    extras = json.loads((folder / "config.json").read_text())["models"]["vqvae"]["extras"]
    assert not set(extras) & TRAINING_STATE
    original, _ = load_vqvae(run)  # the run's weights for use: the average
    loaded, _ = load_vqvae(folder)
    x = torch.rand(4, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x).reconstruction, original(x).reconstruction)
