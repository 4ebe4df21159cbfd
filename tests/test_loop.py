"""The Stage contract in training/loop.py is the whole of what `fit` needs: a toy stage that
provides only what the contract names trains, keeps its best checkpoint, and resumes exactly."""
import math

import pytest
import torch
from torch import nn

from vqvae.checkpoint import load_checkpoint
from vqvae.config import RunConfig, TrainConfig
from vqvae.data import TensorBatches
from vqvae.training.distributed import DistContext
from vqvae.training.loop import Stage, checkpoint_path, fit


class Interrupted(Exception):
    pass


class LineStage(Stage):
    """Least squares on a line, y = 3x - 1: only the members the contract names."""

    kind = "line"
    config_section = "train"  # a kind CONFIG_SECTIONS does not know names its section itself
    summary_keys = ("mse", "val_mse")
    epoch_statistics = ("mse_sum", "num_batches")

    def __init__(self, train_cfg: TrainConfig, stop_at_step: int = 0):
        x = torch.linspace(-1, 1, 64)[:, None]
        y = 3 * x - 1 + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
        self.model = nn.Linear(1, 1)
        self.train_cfg = train_cfg
        self.config_dict = {**RunConfig().to_dict(), "train": train_cfg.__dict__.copy()}
        self.batches = TensorBatches((x[:48], y[:48]), train_cfg.batch_size, torch.device("cpu"),
                                     seed=train_cfg.seed)
        self.val = (x[48:], y[48:])
        self.stop_at_step, self.steps = stop_at_step, 0
        self.begin_epoch()

    def begin_epoch(self):
        self.mse_sum, self.num_batches = torch.zeros(()), torch.zeros(())

    def loss(self, model, batch):
        self.steps += 1
        if self.steps == self.stop_at_step:
            raise Interrupted  # stands in for a kill between two steps
        x, y = batch
        mse = nn.functional.mse_loss(model(x), y)
        return mse, {"mse": mse}

    def after_step(self, values):
        self.mse_sum += values[0]
        self.num_batches += 1

    def epoch_summary(self):
        return {"mse": (self.mse_sum / self.num_batches).item()}

    @torch.no_grad()
    def evaluate(self):
        mse = nn.functional.mse_loss(self.model(self.val[0]), self.val[1]).item()
        return {"val_loss": mse, "val_mse": mse}


def train_cfg(**changes) -> TrainConfig:
    return TrainConfig(**{"epochs": 4, "batch_size": 8, "lr": 0.05, "progress": False, "device": "cpu", **changes})


def test_a_stage_with_only_the_contract_trains_and_keeps_its_best(tmp_path):
    torch.manual_seed(0)
    stage = LineStage(train_cfg(epochs=10, lr=0.1))
    state = fit(stage, tmp_path, DistContext())
    assert state.epoch == 10 and state.step == 10 * 6 and len(state.history) == 10
    assert state.history[-1]["mse"] < state.history[0]["mse"]
    assert state.best == min(h["val_mse"] for h in state.history)
    best = load_checkpoint(checkpoint_path(tmp_path, "line", "best"), kind="line")
    assert best["loop"]["best"] == state.best
    assert math.isclose(stage.model.weight.item(), 3, abs_tol=0.5)


def test_the_contract_needs_loss_and_evaluate():
    class NoEvaluate(Stage):
        def loss(self, model, batch):
            return None, {}

    with pytest.raises(TypeError, match="evaluate"):
        NoEvaluate()


def test_resuming_mid_epoch_restores_the_epoch_statistics_bitwise(tmp_path):
    """Interrupted at step 10 (epoch 2, batch 4) after a checkpoint at step 8: the resumed run's
    weights and history, including the epoch's running statistics, equal an uninterrupted run's."""
    cfg = train_cfg(checkpoint_every_steps=4, lr_schedule="cosine", warmup_steps=3)
    torch.manual_seed(0)
    straight = LineStage(cfg)
    fit(straight, tmp_path / "straight", DistContext())
    torch.manual_seed(0)
    with pytest.raises(Interrupted):
        fit(LineStage(cfg, stop_at_step=11), tmp_path / "split", DistContext())
    saved = load_checkpoint(checkpoint_path(tmp_path / "split", "line", "last"), kind="line")
    assert saved["loop"]["step"] == 8 and saved["loop"]["batch_in_epoch"] == 2
    assert set(saved["epoch_state"]) == {"mse_sum", "num_batches"} and saved["epoch_state"]["num_batches"] == 2
    torch.manual_seed(123)  # resuming restores the generators; this seed must not matter
    resumed = LineStage(cfg)
    state = fit(resumed, tmp_path / "split", DistContext(), resume=True)
    assert torch.equal(resumed.model.weight, straight.model.weight)
    assert torch.equal(resumed.model.bias, straight.model.bias)
    drop = ("seconds", "images_per_s")
    expected = load_checkpoint(checkpoint_path(tmp_path / "straight", "line", "last"))["loop"]["history"]
    assert [{k: v for k, v in h.items() if k not in drop} for h in state.history] == \
           [{k: v for k, v in h.items() if k not in drop} for h in expected]


def test_each_stage_reads_its_config_section_from_the_one_mapping():
    """check_resume_config runs before a stage exists and reads CONFIG_SECTIONS; the stages' own
    config_section (messages, resume notes) must name the same section."""
    from vqvae.training.loop import CONFIG_SECTIONS
    from vqvae.training.prior_stage import PriorStage
    from vqvae.training.vqvae_stage import VQVAEStage

    for cls in (VQVAEStage, PriorStage):
        assert cls.__new__(cls).config_section == CONFIG_SECTIONS[cls.kind]
    assert set(CONFIG_SECTIONS.values()) == {"train", "prior_train"}
