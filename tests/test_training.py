import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import SIZE, Killed, killed_after_steps, memory_data, tiny_overrides
from vqvae import api
from vqvae.config import apply_overrides
from vqvae.errors import CheckpointError, ConfigError, TrainingError
from vqvae.runs import load_vqvae
from vqvae.checkpoint import load_checkpoint, save_checkpoint
from vqvae.training.vqvae_stage import VQVAEStage



def test_short_training_lowers_loss_and_writes_the_run_folder(tiny_config, tmp_path):
    cfg = apply_overrides(tiny_config, ["train.epochs=4"])
    result = api.train_vqvae(cfg, tmp_path / "run")
    history = result.history
    assert history[-1]["recon"] < history[0]["recon"]
    for name in ("config.json", "metrics.json", "reconstructions.png", "curves.png",
                 "checkpoints/vqvae-last.pt", "checkpoints/vqvae-best.pt"):
        assert (tmp_path / "run" / name).is_file(), name
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())["vqvae"]
    for key in ("mse", "mse_clipped", "psnr_db", "codes_used", "perplexity", "dead_codes"):
        assert key in metrics["test"]
    assert "codes_used" in history[0] and "perplexity" in history[0] and "dead_codes" in history[0]


def test_checkpoint_round_trip_reproduces_outputs_exactly(tiny_config, tmp_path):
    api.train_vqvae(tiny_config, tmp_path, data=memory_data())
    model, cfg = load_vqvae(tmp_path / "checkpoints" / "vqvae-last.pt")
    again, _ = load_vqvae(tmp_path)
    x = torch.rand(4, 1, SIZE, SIZE)
    assert torch.equal(model(x).reconstruction, again(x).reconstruction)
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "vqvae-last.pt")
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in ckpt["model_state"])
    assert cfg.to_dict() == tiny_config.to_dict()


def test_resume_is_bitwise_identical(tiny_config, tmp_path):
    cfg = apply_overrides(tiny_config, ["train.lr_schedule=constant", "train.epochs=4"])
    data = memory_data()
    api.train_vqvae(cfg, tmp_path / "straight", data=data)
    api.train_vqvae(apply_overrides(cfg, ["train.epochs=2"]), tmp_path / "split", data=data)
    api.train_vqvae(cfg, tmp_path / "split", resume=True, data=data)
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "vqvae-last.pt")
    b = load_checkpoint(tmp_path / "split" / "checkpoints" / "vqvae-last.pt")
    assert a["loop"]["step"] == b["loop"]["step"]
    for key, value in a["model_state"].items():
        assert torch.equal(value, b["model_state"][key]), key
    assert [h["loss"] for h in a["loop"]["history"]] == [h["loss"] for h in b["loop"]["history"]]


def test_mid_epoch_checkpoint_resume_is_bitwise_identical(tiny_config, tmp_path):
    """Stop after 5 steps inside epoch 1 (a checkpoint every 5 steps) and resume from there."""
    cfg = apply_overrides(tiny_config, ["train.epochs=2", "train.checkpoint_every_steps=2"])
    data = memory_data()
    api.train_vqvae(cfg, tmp_path / "straight", data=data)
    with killed_after_steps(3), pytest.raises(Killed):  # step 3: the last checkpoint holds step 2, mid-epoch
        api.train_vqvae(cfg, tmp_path / "killed", data=data)
    saved = load_checkpoint(tmp_path / "killed" / "checkpoints" / "vqvae-last.pt")
    assert saved["loop"]["step"] == 2 and saved["loop"]["batch_in_epoch"] == 2
    api.train_vqvae(cfg, tmp_path / "killed", resume=True, data=data)
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "vqvae-last.pt")
    b = load_checkpoint(tmp_path / "killed" / "checkpoints" / "vqvae-last.pt")
    for key, value in a["model_state"].items():
        assert torch.equal(value, b["model_state"][key]), key


def test_non_finite_loss_stops_with_step_and_term_or_skips(tiny_config, tmp_path, monkeypatch):
    original = VQVAEStage.loss
    calls = {"n": 0}

    def loss(self, model, batch):
        total, terms = original(self, model, batch)
        calls["n"] += 1
        if calls["n"] == 4:
            terms["commitment"] = terms["commitment"] * float("nan")
            total = total + terms["commitment"]
        return total, terms

    monkeypatch.setattr(VQVAEStage, "loss", loss)
    with pytest.raises(TrainingError, match=r"step 4 .*commitment"):
        api.train_vqvae(tiny_config, tmp_path / "stop", data=memory_data())
    calls["n"] = 0
    cfg = apply_overrides(tiny_config, ["train.on_nonfinite=skip"])
    result = api.train_vqvae(cfg, tmp_path / "skip", data=memory_data())
    model, _ = load_vqvae(tmp_path / "skip")
    assert all(torch.isfinite(p).all() for p in model.parameters())
    steps_per_epoch = 4  # 128 images, batch 32
    assert result.history[-1]["step"] == cfg.train.epochs * steps_per_epoch - 1


def test_resume_errors(tiny_config, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        api.train_vqvae(tiny_config, tmp_path / "empty", resume=True, data=memory_data())
    api.train_vqvae(tiny_config, tmp_path / "run", data=memory_data())
    with pytest.raises(ConfigError, match="model.hidden_channels: 16 -> 32"):
        api.train_vqvae(apply_overrides(tiny_config, ["model.hidden_channels=32"]), tmp_path / "run", resume=True,
                        data=memory_data())
    with pytest.raises(CheckpointError, match="holds a 'vqvae' model"):
        load_checkpoint(tmp_path / "run" / "checkpoints" / "vqvae-last.pt", kind="prior")


def test_foreign_and_unsafe_checkpoints_are_refused(tmp_path):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a checkpoint of this toolkit"):
        load_checkpoint(tmp_path / "other.pt")

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"format": "vqvae-toolkit-checkpoint", "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="cannot load it safely"):
        load_checkpoint(tmp_path / "evil.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "text.pt")


def test_atomic_save_leaves_old_file_when_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    save_checkpoint(path, "vqvae", {}, {"w": torch.ones(2)})

    def broken(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError):
        save_checkpoint(path, "vqvae", {}, {"w": torch.zeros(2)})
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["model_state"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_sigkill_mid_run_loses_at_most_the_work_since_the_last_checkpoint(bar_folder, tmp_path):
    run = tmp_path / "run"
    overrides = tiny_overrides(bar_folder) + ["train.epochs=400", "train.checkpoint_every_steps=3"]
    cmd = [sys.executable, "-m", "vqvae.cli", "train", "--preset", "tiny", "--out", str(run), "--set", *overrides]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = run / "checkpoints" / "vqvae-last.pt"
    deadline = time.time() + 120
    try:
        while time.time() < deadline and not (last.is_file() and load_checkpoint(last)["loop"]["step"] >= 10):
            time.sleep(0.2)
        time.sleep(0.37)  # land somewhere inside a later step or write
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    saved = load_checkpoint(last)  # complete and loadable
    step = saved["loop"]["step"]
    assert step >= 10
    result = subprocess.run([sys.executable, "-m", "vqvae.cli", "train", "--resume", str(run), "--set",
                             f"train.epochs={saved['loop']['epoch'] + 1}"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    resumed = load_checkpoint(last)
    assert resumed["loop"]["step"] > step and resumed["loop"]["epoch"] == saved["loop"]["epoch"] + 1


def test_out_of_memory_suggests_a_smaller_batch(tiny_config, tmp_path, monkeypatch):
    def loss(self, model, batch):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(VQVAEStage, "loss", loss)
    with pytest.raises(TrainingError, match=r"out of memory .* batch size 32: try --set train.batch_size=16"):
        api.train_vqvae(tiny_config, tmp_path / "run", data=memory_data())


def test_prior_resume_needs_a_prior_checkpoint(trained_run, tmp_path):
    import shutil

    from vqvae.config import RunConfig

    run = tmp_path / "vqvae-only"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("prior-*.pt"))
    cfg = RunConfig.from_dict(json.loads((run / "config.json").read_text()))
    with pytest.raises(CheckpointError, match="no prior checkpoint"):
        api.train_prior(cfg, run, resume=True)
