"""Bad input and faults: no silent wrong result, no traceback, no damaged run (issue 10)."""
import errno
import json
import math
import os
import re
import shutil
import stat
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch

from conftest import SIZE, bar_images, memory_data, orientation, tiny_overrides
from vqvae import api
from vqvae.cli import build_parser, main
from vqvae.config import DataConfig, RunConfig, apply_overrides, load_config
from vqvae.data import ImageSet, load_dataset, read_idx
from vqvae.errors import ConfigError, DataError, TrainingError
from vqvae.models import VQVAE
from vqvae.checkpoint import load_checkpoint
from vqvae.training.prior_stage import cached_codes



class Result(NamedTuple):
    code: int
    out: str
    err: str


def cli(capsys, *args) -> Result:
    """Run the CLI in-process. A traceback would fail the test itself."""
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)


def one_line_error(result: Result, *expected: str) -> None:
    lines = [line for line in result.err.splitlines() if line.startswith("error:")]
    assert result.code == 2 and len(lines) == 1, result
    for text in expected:
        assert text in lines[0], (text, lines[0])


# --------------------------------------------------------------------------- 1: non-finite batches

def test_skipped_batch_leaves_every_buffer_as_it_was(tiny_config, tmp_path, monkeypatch, capsys):
    """A loss made non-finite inside the forward pass (the encoder's output), before the EMA
    codebook update runs: skipping the batch must also undo that update."""
    original = VQVAE.encode
    calls = {"n": 0}

    def encode(self, x):
        z = original(self, x)
        if self.training:
            calls["n"] += 1
            if calls["n"] == 6:
                z = z * float("nan")
        return z

    monkeypatch.setattr(VQVAE, "encode", encode)
    cfg = apply_overrides(tiny_config, ["train.on_nonfinite=skip", "quantizer.restart_after_steps=0"])
    result = api.train_vqvae(cfg, tmp_path / "run", data=memory_data())
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "vqvae-last.pt")["model_state"]
    for key, value in state.items():
        assert torch.isfinite(value.float()).all(), key
    steps = cfg.train.epochs * 4 - 1  # 128 images in batches of 32; one skipped
    assert int(state["quantizer.num_updates"]) == steps == result.history[-1]["step"]
    assert result.history[1]["skipped_batches"] == 1
    # the tiny preset shows no progress, but a skipped batch is still reported
    assert "non-finite loss at step 6" in capsys.readouterr().err


@pytest.mark.filterwarnings("error::RuntimeWarning")  # nor warn while drawing its non-finite reconstructions
def test_diverged_run_does_not_exit_zero(bar_folder, tmp_path, capsys):
    run = tmp_path / "run"
    result = cli(capsys, "train", "--preset", "tiny", "--out", run, "--set", *tiny_overrides(bar_folder),
                 "train.lr=1e30", "train.on_nonfinite=skip", "train.epochs=2")
    one_line_error(result, "training diverged", "lower train.lr")
    assert "batches skipped (non-finite loss)" in result.err
    state = load_checkpoint(run / "checkpoints" / "vqvae-last.pt")["model_state"]
    assert torch.isfinite(state["quantizer.ema_embed_sum"]).all()


def test_stop_message_names_only_a_checkpoint_that_exists(tiny_config, tmp_path, monkeypatch):
    original = VQVAE.encode
    monkeypatch.setattr(VQVAE, "encode", lambda self, x: original(self, x) * float("nan"))
    with pytest.raises(TrainingError) as caught:
        api.train_vqvae(tiny_config, tmp_path / "run", data=memory_data())
    message = str(caught.value)
    assert "step 1 " in message and "No checkpoint had been written yet" in message
    assert "kept at" not in message


# --------------------------------------------------------------------------- 2: every --set counts

def test_repeated_set_options_all_count(bar_folder, tmp_path):
    args = build_parser().parse_args(["train", "--set", "train.epochs=1", "--set", "train.lr=0.001",
                                      "train.seed=3", "--set", "train.epochs=5"])
    assert args.overrides == ["train.epochs=1", "train.lr=0.001", "train.seed=3", "train.epochs=5"]
    cfg = apply_overrides(load_config("tiny"), args.overrides)
    assert (cfg.train.epochs, cfg.train.lr, cfg.train.seed) == (5, 0.001, 3)


# --------------------------------------------------------------------------- 4, 5, 6: resume

def test_extending_a_finished_run_starts_a_fresh_schedule(tiny_config, tmp_path, capsys):
    cfg = apply_overrides(tiny_config, ["train.epochs=2", "train.lr_schedule=cosine", "train.lr_min_ratio=0.1",
                                        "train.lr=0.004"])
    data = memory_data()
    api.train_vqvae(cfg, tmp_path, data=data)
    result = api.train_vqvae(apply_overrides(cfg, ["train.epochs=4"]), tmp_path, resume=True, data=data)
    lrs = [h["lr"] for h in result.history]
    assert lrs[1] == pytest.approx(0.0004)  # the first run ended at its floor
    # The 2 added epochs (8 steps) follow their own cosine from 0.004: half-way after epoch 3, the
    # floor at the end. Re-planning 16 steps would give 0.1 + 0.9 * 0.5 * (1 + cos(0.75 pi)) there.
    assert lrs[2] == pytest.approx(0.004 * (0.1 + 0.9 * 0.5))
    assert lrs[3] == pytest.approx(0.0004)
    notes = result.metrics["resume_notes"]
    assert len(notes) == 1 and "extending the finished 2-epoch run to 4 epochs" in notes[0]
    assert "fresh cosine schedule over the 2 added epoch(s)" in capsys.readouterr().out


def test_changed_lr_and_weight_decay_are_applied_on_resume(tiny_config, tmp_path):
    cfg = apply_overrides(tiny_config, ["train.epochs=2", "train.lr_schedule=constant", "train.lr=0.01"])
    data = memory_data()
    api.train_vqvae(cfg, tmp_path, data=data)
    result = api.train_vqvae(apply_overrides(cfg, ["train.epochs=3", "train.lr=0.001", "train.weight_decay=0.05"]),
                             tmp_path, resume=True, data=data)
    assert [h["lr"] for h in result.history] == [0.01, 0.01, 0.001]
    group = load_checkpoint(tmp_path / "checkpoints" / "vqvae-last.pt")["optimizer_state"]["param_groups"][0]
    assert group["lr"] == 0.001 and group["weight_decay"] == 0.05 and group.get("decoupled_weight_decay", True)
    assert any("train.lr changed on resume: 0.01 -> 0.001" in n for n in result.metrics["resume_notes"])
    assert any("train.weight_decay changed on resume: 0 -> 0.05" in n for n in result.metrics["resume_notes"])


@pytest.mark.parametrize("flag", [["--data", "mnist-5k"], ["--preset", "tiny"], ["--out", "elsewhere"],
                                  ["--config", "some.json"], ["--test-data", "mnist-5k"]])
def test_resume_refuses_options_it_would_ignore(trained_run, flag, capsys):
    one_line_error(cli(capsys, "train", "--resume", trained_run, *flag), f"{flag[0]} cannot be combined with --resume")


def test_resume_refuses_other_data_through_set(trained_run, bar_folder, tmp_path, capsys):
    run, other_data = tmp_path / "run", tmp_path / "other"
    shutil.copytree(trained_run, run)
    shutil.copytree(bar_folder, other_data)  # readable images of the right size: only the name differs
    one_line_error(cli(capsys, "train", "--resume", run, "--set", f"data.dataset={other_data}", "train.epochs=4"),
                   "different model or data", "data.dataset")
    assert load_checkpoint(run / "checkpoints" / "vqvae-last.pt")["loop"]["epoch"] == 3


def test_resume_on_a_truncated_config_json_is_a_clear_error(trained_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    text = (run / "config.json").read_text()
    (run / "config.json").write_text(text[: len(text) // 2])
    one_line_error(cli(capsys, "train", "--resume", run), "config.json is not valid JSON")
    one_line_error(cli(capsys, "train-prior", run), "config.json is not valid JSON")


# --------------------------------------------------------------------------- 7: decode checks its codes

def test_decode_refuses_codes_of_another_model_or_size(trained_run, tmp_path):
    api.encode(trained_run, tmp_path / "codes", device="cpu")
    meta = json.loads((tmp_path / "codes" / "codes.json").read_text())
    api.decode(trained_run, tmp_path / "codes", tmp_path / "ok.png", device="cpu")  # its own codes decode
    meta["vqvae_fingerprint"] = "0123456789abcdef"
    (tmp_path / "codes" / "codes.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="made by a different VQ-VAE"):
        api.decode(trained_run, tmp_path / "codes", tmp_path / "d.png", device="cpu")
    np.save(tmp_path / "small.npy", np.zeros((2, 3, 3), np.int16))  # the model makes 4x4 code maps
    with pytest.raises(ConfigError, match=r"code maps have shape \(3, 3\), but this VQ-VAE decodes 4x4"):
        api.decode(trained_run, tmp_path / "small.npy", tmp_path / "d.png", device="cpu")


def test_bad_codes_files_are_clear_errors(trained_run, tmp_path, capsys):
    np.save(tmp_path / "empty.npy", np.zeros((0, 4, 4), np.int16))
    one_line_error(cli(capsys, "decode", trained_run, tmp_path / "empty.npy", "--out", tmp_path / "d.png"),
                   "holds no codes")
    np.save(tmp_path / "codes.npy", np.zeros((2, 4, 4), np.int16))
    (tmp_path / "codes.json").write_text('{"codebook_size": 16,')
    one_line_error(cli(capsys, "decode", trained_run, tmp_path / "codes.npy", "--out", tmp_path / "d.png"),
                   "codes.json is not valid JSON")
    (tmp_path / "codes.json").write_text("[1, 2]")
    one_line_error(cli(capsys, "decode", trained_run, tmp_path / "codes.npy", "--out", tmp_path / "d.png"),
                   "holds a JSON list")


# --------------------------------------------------------------------------- 9: outputs never overwrite a run

@pytest.mark.parametrize("command,message", [
    (["evaluate", "{run}", "--no-samples", "--out", "{run}/config.json"], "would overwrite the file config.json"),
    (["reconstruct", "{run}", "--out", "{run}/metrics.json"], "would overwrite the file metrics.json"),
    (["decode", "{run}", "{codes}", "--out", "{run}/checkpoints/vqvae-best.png"], "would write into checkpoints/"),
    (["decode", "{run}", "{codes}", "--out", "{run}/report.png"], None),  # writes report.npy too: allowed
    (["encode", "{run}", "--out", "{run}/codes"], "would write into codes/"),
])
def test_output_options_never_overwrite_a_runs_own_files(trained_run, tmp_path, command, message, capsys):
    np.save(tmp_path / "codes.npy", np.zeros((1, 4, 4), np.int16))
    before = {p: p.read_bytes() for p in trained_run.rglob("*") if p.is_file() and "tensorboard" not in p.parts}
    args = [a.format(run=trained_run, codes=tmp_path / "codes.npy") for a in command]
    result = cli(capsys, *args)
    if message is None:
        assert result.code == 0
        (trained_run / "report.png").unlink()
        (trained_run / "report.npy").unlink()
    else:
        one_line_error(result, message)
    after = {p: p.read_bytes() for p in before}
    changed = [p for p in before if before[p] != after[p]]
    assert [p for p in changed if p.name not in ("metrics.json", ".lock")] == []  # .lock: its holder record


# --------------------------------------------------------------------------- 10: one validator

@pytest.mark.parametrize("settings,message", [
    ({"train": {"epochs": 1.5}}, "train.epochs=1.5: expected a whole number"),
    ({"train": {"epochs": True}}, "train.epochs=true: expected a whole number"),
    ({"train": {"lr": None}}, "train.lr=null: expected a number"),
    ({"train": {"lr": [0.1]}}, "train.lr=[0.1]: expected a number"),
    ({"train": {"dropout": 2}}, "train.dropout=2.0: must be in [0, 1)"),
    ({"train": 5}, "section 'train' must be an object"),
    ([1, 2], "holds a JSON list"),
])
def test_config_file_values_pass_the_same_checks(tmp_path, settings, message, capsys):
    (tmp_path / "c.json").write_text(json.dumps(settings))
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config("tiny", config_file=str(tmp_path / "c.json"))
    one_line_error(cli(capsys, "train", "--config", tmp_path / "c.json", "--out", tmp_path / "run"), message)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override,message", [
    ("train.lr=nan", "train.lr=nan: must be a finite number > 0"),
    ("train.weight_decay=-1", "train.weight_decay=-1.0: must be >= 0"),
    ("train.device=tpu", "train.device='tpu': must be auto, cpu, cuda"),
    ("prior_train.dropout=2", "prior_train.dropout=2.0: must be in [0, 1)"),
    ("train.warmup_steps=-10", "train.warmup_steps=-10: must be >= 0"),
    ("train.lr_min_ratio=5", "train.lr_min_ratio=5.0: must be in [0, 1]"),
    ("data.num_workers=-1", "data.num_workers=-1: must be >= 0"),
    ("sample.top_k=-3", "sample.top_k=-3: must be >= 0"),
    ("sample.temperature=inf", "sample.temperature=inf: must be a finite number > 0"),
    ("train.batch_size=0", "train.batch_size=0: must be >= 1"),
    ("train.epochs=-1", "train.epochs=-1: must be >= 1"),
])
def test_out_of_range_settings_name_the_one_wrong_field(override, message, tmp_path, capsys):
    with pytest.raises(ConfigError) as caught:
        apply_overrides(load_config("tiny"), [override])
    assert str(caught.value).startswith(message)
    one_line_error(cli(capsys, "train", "--preset", "tiny", "--out", tmp_path / "run", "--set", override), message)


def test_saved_configs_are_validated_too(trained_run):
    saved = json.loads((trained_run / "config.json").read_text())
    saved["train"]["epochs"] = 2.5
    with pytest.raises(ConfigError, match="train.epochs=2.5: expected a whole number"):
        RunConfig.from_dict(saved)
    saved["train"]["epochs"], saved["sample"]["temperature"] = 2, -1.0
    with pytest.raises(ConfigError, match="sample.temperature=-1.0: must be > 0"):
        RunConfig.from_dict(saved)


@pytest.mark.parametrize("args,message", [
    (["sample", "{run}", "--temperature", "0"], "sample.temperature=0.0: must be > 0"),
    (["sample", "{run}", "--temperature", "-1"], "sample.temperature=-1.0: must be > 0"),
    (["sample", "{run}", "--temperature", "nan"], "sample.temperature=nan: must be a finite number > 0"),
    (["sample", "{run}", "--top-k", "-3"], "sample.top_k=-3: must be >= 0"),
    (["sample", "{run}", "--batch-size", "0"], "sample.batch_size=0: must be >= 1"),
    (["sample", "{run}", "-n", "0"], "sample.num_samples=0: must be >= 1"),
    (["reconstruct", "{run}", "--num", "-1"], "--num=-1: must be >= 1"),
    (["evaluate", "{run}", "--num-samples", "0"], "--num-samples=0: must be >= 1"),
    (["reconstruct", "{run}", "--device", "tpu"], "device 'tpu' is not a device"),
    (["sample", "{run}", "--device", "tpu"], "device 'tpu' is not a device"),
])
def test_bad_command_options_are_one_line_errors(trained_run, tmp_path, args, message, capsys):
    args = [a.format(run=trained_run) for a in args] + ["--out", tmp_path / ("x.png" if "reconstruct" in args else
                                                                           "x.json" if "evaluate" in args else "o")]
    one_line_error(cli(capsys, *args), message)


# --------------------------------------------------------------------------- 12, 13: figures and help

def test_spread_indices_cover_every_class_or_the_whole_set():
    from vqvae.figures import spread_indices

    labels = torch.arange(100) // 10  # sorted by class, as the bundled MNIST images are
    picked = spread_indices(100, 20, labels)
    assert len(picked) == 20 and len(set(picked)) == 20
    assert sorted(labels[picked].tolist()) == sorted(list(range(10)) * 2)
    assert spread_indices(100, 5) == [0, 25, 50, 74, 99]
    assert spread_indices(3, 10, torch.tensor([0, 0, 1])) == [0, 2, 1]


def test_reconstruction_grids_show_every_class(bar_folder, trained_run, tmp_path, monkeypatch):
    """The folder lists all horizontal bars before the vertical ones; both must be shown."""
    import vqvae.api

    shown = {}
    monkeypatch.setattr(vqvae.api, "save_reconstruction_grid", lambda x, x_hat, path: shown.setdefault("x", x))
    api.reconstruct(trained_run, tmp_path / "r.png", data=str(bar_folder), num_images=8, device="cpu")
    assert sorted(orientation(shown["x"]).tolist()) == [0] * 4 + [1] * 4


def test_help_states_each_default_once():
    from vqvae.cli import HelpFormatter

    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.choices and isinstance(a.choices, dict)).choices
    for name, sub in subparsers.items():
        text = sub.format_help()
        assert "(default: None)" not in text, name
        assert not re.search(r"\(default:[^)]*\)\s+\(default:", text), name
        for action in sub._actions:
            if action.help:
                assert HelpFormatter(name)._get_help_string(action).count("(default:") <= 1, (name, action.dest)


# --------------------------------------------------------------------------- files and faults

def test_truncated_idx_gz_is_a_data_error(tmp_path, capsys):
    import gzip

    images = np.random.default_rng(0).integers(0, 255, (20, 28, 28)).astype(np.uint8)
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 3, 0, 0, 0, 20, 0, 0, 0, 28, 0, 0, 0, 28]) + images.tobytes())
    data = (tmp_path / "t10k-images-idx3-ubyte.gz").read_bytes()
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated or damaged"):
        read_idx(tmp_path / "t10k-images-idx3-ubyte.gz")
    with pytest.raises(DataError, match="truncated or damaged"):
        load_dataset(str(tmp_path), DataConfig())
    # The CLI reads the header first (to choose or check the preset): the same one-line error there,
    # also when the cut comes before the end of the header (zeros compress to a few bytes).
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 3, 0, 0, 0, 20, 0, 0, 0, 28, 0, 0, 0, 28]) + bytes(20 * 28 * 28))
    data = (tmp_path / "t10k-images-idx3-ubyte.gz").read_bytes()
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(data[: len(data) // 2])
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--preset", "tiny"]) == 2
    assert "truncated or damaged" in capsys.readouterr().err


def test_out_naming_a_file_or_an_unwritable_folder(bar_folder, trained_run, tmp_path, monkeypatch, capsys):
    (tmp_path / "file").write_text("x")
    one_line_error(cli(capsys, "train", "--preset", "tiny", "--out", tmp_path / "file"), "is an existing file")
    one_line_error(cli(capsys, "encode", trained_run, "--out", tmp_path / "file"), "is an existing file")
    one_line_error(cli(capsys, "sample", trained_run, "--out", tmp_path / "file"), "is an existing file")
    one_line_error(cli(capsys, "reconstruct", trained_run, "--out", tmp_path), "is a folder")
    assert (tmp_path / "file").read_text() == "x"

    # Tests run as root, which may write anywhere: a folder without write permission is simulated.
    def refuse(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr("pathlib.Path.mkdir", refuse)
    one_line_error(cli(capsys, "train", "--preset", "tiny", "--out", tmp_path / "ro" / "run", "--set",
                        *tiny_overrides(bar_folder)), "cannot write", "permission denied")


def test_full_disk_keeps_the_earlier_checkpoint_and_says_so(bar_folder, tmp_path, monkeypatch, capsys):
    import vqvae.files

    run = tmp_path / "run"
    real_fsync, writes = os.fsync, {"n": 0}

    def fsync(fd):
        writes["n"] += 1
        if writes["n"] > 6:  # config.json, then epoch 1's checkpoints; later writes find the disk full
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(vqvae.files.os, "fsync", fsync)
    result = cli(capsys, "train", "--preset", "tiny", "--out", run, "--set", *tiny_overrides(bar_folder))
    one_line_error(result, "the disk is full", "is kept")
    monkeypatch.undo()
    assert load_checkpoint(run / "checkpoints" / "vqvae-last.pt")["loop"]["epoch"] >= 1
    assert not [p for p in run.rglob("*.tmp")]


def test_refused_checkpoints_do_not_advise_unsafe_loading(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"format": "vqvae-toolkit-checkpoint", "x": Evil()}, tmp_path / "evil.pt")
    for name in ("evil.pt", "text.pt"):
        (tmp_path / "text.pt").write_text("hello")
        with pytest.raises(Exception) as caught:
            load_checkpoint(tmp_path / name)
        message = str(caught.value)
        assert "weights_only" not in message and "False" not in message, message
        assert message.endswith(")") and "\n" not in message, message
    assert "GLOBAL posix.system" in str(pytest.raises(Exception, load_checkpoint, tmp_path / "evil.pt").value)


def test_stale_temporary_from_a_kill_in_the_first_save_blocks_nothing(bar_folder, tmp_path, capsys):
    run = tmp_path / "run"
    cfg = load_config("tiny", tiny_overrides(bar_folder) + ["train.epochs=1"])
    (run / "checkpoints").mkdir(parents=True)
    cfg.save(run / "config.json")
    stale = run / "checkpoints" / ".vqvae-last.pt.k1ll3d.tmp"
    stale.write_bytes(b"half a checkpoint")
    result = cli(capsys, "train", "--resume", run)
    assert result.code == 0 and "starting from the beginning" in result.out
    assert not stale.exists() and load_checkpoint(run / "checkpoints" / "vqvae-last.pt")["loop"]["epoch"] == 1
    fresh = tmp_path / "fresh"
    (fresh / "checkpoints").mkdir(parents=True)
    (fresh / "checkpoints" / ".vqvae-last.pt.k1ll3d.tmp").write_bytes(b"half")
    assert cli(capsys, "train", "--preset", "tiny", "--out", fresh, "--set", *tiny_overrides(bar_folder),
               "train.epochs=1")[0] == 0
    assert [p.name for p in (fresh / "checkpoints").iterdir()] and not list(fresh.rglob("*.tmp"))


def test_run_files_get_the_users_umask(tiny_config, tmp_path):
    old = os.umask(0o022)
    try:
        api.train_vqvae(apply_overrides(tiny_config, ["train.epochs=1"]), tmp_path, data=memory_data())
    finally:
        os.umask(old)
    for name in ("config.json", "metrics.json", "checkpoints/vqvae-last.pt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name


def test_config_and_codes_cache_are_written_atomically(tmp_path, monkeypatch):
    import vqvae.files
    from vqvae.errors import OutputError

    cfg = load_config("tiny", [f"data.image_size={SIZE}"])
    cfg.save(tmp_path / "config.json")
    before = (tmp_path / "config.json").read_text()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(vqvae.files.os, "fsync", full)
    with pytest.raises(OutputError, match="the disk is full"):
        apply_overrides(cfg, ["train.epochs=7"]).save(tmp_path / "config.json")
    monkeypatch.undo()
    assert (tmp_path / "config.json").read_text() == before and len(list(tmp_path.iterdir())) == 1
    # A damaged codes cache is rebuilt, not a traceback.
    model = VQVAE(cfg.model, cfg.quantizer).eval()
    data = ImageSet("bars", SIZE, 1, images=torch.from_numpy(bar_images(8)[0])[:, None])
    codes = cached_codes(model, data, "train", tmp_path, torch.device("cpu"))
    (tmp_path / "codes" / "train.json").write_text('{"fingerprint": ')
    assert torch.equal(cached_codes(model, data, "train", tmp_path, torch.device("cpu")), codes)
    assert math.isfinite(float(codes.float().mean()))


# --------------------------------------------------------------------------- issue 16, run side

def test_train_prior_set_only_changes_prior_settings(trained_run, capsys):
    before = (trained_run / "config.json").read_bytes()
    for key in ("data.dataset=elsewhere", "train.lr=0.5", "data.image_size=32", "quantizer.codebook_size=8"):
        one_line_error(cli(capsys, "train-prior", trained_run, "--set", key), f"--set {key.split('=')[0]}",
                       "prior.*, prior_train.*, sample.*")
    assert (trained_run / "config.json").read_bytes() == before


@pytest.mark.parametrize("args", [["train", "--preset", "tiny", "--out", "{tmp}/x", "--set", "train.epochs=0"],
                                  ["train-prior", "{run}", "--set", "prior_train.epochs=0"]])
def test_zero_epochs_is_refused(args, trained_run, tmp_path, capsys):
    before = (trained_run / "metrics.json").read_bytes()
    args = [a.format(tmp=tmp_path, run=trained_run) for a in args]
    one_line_error(cli(capsys, *args), "epochs=0: must be >= 1")
    assert (trained_run / "metrics.json").read_bytes() == before and not (tmp_path / "x").exists()


@pytest.mark.parametrize("overrides,message", [
    (["quantizer.fsq_levels=8,5"], "quantizer.fsq_levels=[8, 5] does not apply to quantizer.kind=vq"),
    (["quantizer.rvq_depth=3"], "quantizer.rvq_depth=3 does not apply to quantizer.kind=vq"),
    (["quantizer.rvq_dropout=0.5"], "quantizer.rvq_dropout=0.5 does not apply"),
    (["quantizer.kind=fsq", "quantizer.codebook_size=64", "quantizer.entropy_weight=0.5"], "kind lfq"),
    (["quantizer.kind=fsq", "quantizer.codebook_size=64", "quantizer.update=loss"], "quantizer.update='loss' does not"),
    (["quantizer.kind=lfq", "quantizer.init=uniform"], "quantizer.init='uniform' does not apply"),
    (["quantizer.kind=lfq", "quantizer.restart_after_steps=50"], "quantizer.restart_after_steps=50 does not apply"),
    (["quantizer.kind=fsq", "quantizer.codebook_size=64", "quantizer.ema_decay=0.9"], "kinds vq and rvq"),
    (["quantizer.kind=fsq", "quantizer.codebook_size=64", "quantizer.commitment_weight=1"], "has no codebook"),
    (["quantizer.fsq_levels=a,b"], "expected a comma-separated list"),
    (["quantizer.fsq_levels=8.5,5"], "expected a comma-separated list"),
    (["preset=cifar10"], "choose it with --preset cifar10"),
    (["sample.guidance=1e300"], "sample.guidance=1e+300: must be in [0, 100]"),
    (["sample.temperature=1e-45"], "sample.temperature=1e-45: must be > 0, in"),
    (["train.seed=36893488147419103232"], "train.seed=36893488147419103232: must be in"),
])
def test_options_that_would_be_ignored_or_overflow_are_errors(overrides, message):
    with pytest.raises(ConfigError) as e:
        load_config("tiny", overrides)
    assert message in str(e.value)


def test_every_preset_validates_and_a_preset_value_on_another_kind_is_no_error():
    from vqvae.config import PRESETS
    for name in PRESETS:
        load_config(name)
    # tiny's update=ema is the preset's, not the user's: switching the kind keeps working
    assert load_config("tiny", ["quantizer.kind=fsq", "quantizer.codebook_size=64"]).quantizer.kind == "fsq"


def test_a_codebook_option_in_a_config_file_is_refused_when_set_chooses_fsq(tmp_path):
    """The file and the overrides are checked together: neither alone is wrong."""
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"quantizer": {"ema_decay": 0.9}, "data": {"image_size": 64}}))
    with pytest.raises(ConfigError, match="quantizer.ema_decay=0.9 does not apply to quantizer.kind=fsq"):
        load_config("tiny", ["quantizer.kind=fsq", "quantizer.codebook_size=64"], config_file=str(path))
    cfg = load_config("tiny", ["data.image_size=32"], config_file=str(path))  # the overrides still win
    assert cfg.quantizer.ema_decay == 0.9 and cfg.data.image_size == 32 and cfg.model.image_size == 32


def test_config_file_naming_another_preset_is_an_error(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"preset": "cifar10", "train": {"epochs": 2}}))
    with pytest.raises(ConfigError, match="names preset 'cifar10' but the preset in use is 'tiny'"):
        load_config("tiny", [], str(path))
    path.write_text(json.dumps({"preset": "tiny", "train": {"epochs": 2}}))
    assert load_config("tiny", [], str(path)).train.epochs == 2


def test_test_data_that_is_the_training_data_is_refused(bar_folder, tmp_path, capsys):
    one_line_error(cli(capsys, "train", "--preset", "tiny", "--data", bar_folder, "--test-data",
                       f"{bar_folder}/../{bar_folder.name}", "--out", tmp_path / "x"), "is the training data")
    assert not (tmp_path / "x").exists()


def test_device_mps_without_mps_is_an_error(trained_run, tmp_path, capsys):
    if torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    one_line_error(cli(capsys, "reconstruct", trained_run, "--device", "mps", "--out", tmp_path / "r.png"),
                   "no MPS")


def test_one_atomic_writer_keeps_old_file_on_failure_and_uses_the_umask(tmp_path, monkeypatch):
    from vqvae import files
    target = tmp_path / "a.json"
    files.atomic_write_json(target, {"v": 1})
    old_umask = os.umask(0o022)
    try:
        files.atomic_save_npy(tmp_path / "a.npy", np.arange(3))
        files.atomic_torch_save({"x": torch.ones(1)}, tmp_path / "a.pt")
        for name in ("a.json", "a.npy", "a.pt"):
            assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o644, name
    finally:
        os.umask(old_umask)

    def half_then_fail(f):
        f.write(b'{"v": 2')
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(Exception, match="the disk is full"):
        files.atomic_write(target, half_then_fail)
    assert json.loads(target.read_text()) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "a.npy", "a.pt"]  # no temporary left
    # the folder is flushed after the rename
    synced = []
    monkeypatch.setattr(files, "fsync_folder", lambda folder: synced.append(folder))
    files.atomic_write_text(target, "x")
    assert synced == [tmp_path]


def test_exported_model_folder_is_readable_by_others(trained_run, tmp_path, capsys):
    old_umask = os.umask(0o022)
    try:
        assert cli(capsys, "export", trained_run, "--format", "folder", "--out", tmp_path / "m").code == 0
    finally:
        os.umask(old_umask)
    for p in (tmp_path / "m").iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p
    assert stat.S_IMODE((tmp_path / "m").stat().st_mode) == 0o755


def test_a_run_folder_has_one_writer_and_a_killed_holder_leaves_no_lock(trained_run, tmp_path, capsys):
    import signal
    import subprocess
    import sys
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom vqvae.runlock import run_lock\n"
                               "with run_lock(sys.argv[1], 'train'):\n    print('held', flush=True)\n    time.sleep(60)",
                               str(run)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert holder.stdout.readline().strip() == "held"
        before = (run / "metrics.json").read_bytes()
        for args in (["train", "--resume", run, "--set", "train.epochs=4"], ["train-prior", run, "--resume"],
                     ["evaluate", run, "--no-samples"], ["sample", run]):
            one_line_error(cli(capsys, *args), f"{run} is in use: process {holder.pid} (")
        assert (run / "metrics.json").read_bytes() == before
        # a model folder or another --out is not the run: those commands still work meanwhile
        assert cli(capsys, "sample", run, "--out", tmp_path / "s").code == 0
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the kernel released the lock with the killed process: no stale lock to remove by hand
    assert cli(capsys, "train", "--resume", run, "--set", "train.epochs=4").code == 0
    assert json.loads((run / "metrics.json").read_text())["vqvae"]["epochs"] == 4


def test_a_failed_new_run_leaves_no_folder_for_its_lock(tmp_path, capsys):
    result = cli(capsys, "train", "--preset", "tiny", "--data", tmp_path / "nothing-here", "--out", tmp_path / "x",
                 "--set", "train.device=cpu")
    assert result.code == 2 and not (tmp_path / "x").exists()


def test_a_runs_sample_files_cannot_be_overwritten_by_another_commands_out(trained_run, tmp_path, capsys):
    run = trained_run
    def stamps():  # .lock is rewritten by every command that takes it
        return {p.name: p.stat().st_mtime_ns for p in run.iterdir() if p.is_file() and p.name != ".lock"}

    before = stamps()
    for args, name in ((["reconstruct", run, "--out", run / "samples.png"], "samples.png"),
                       (["evaluate", run, "--no-samples", "--out", run / "samples.npy"], "samples.npy"),
                       (["decode", run, "{codes}", "--out", run / "samples.jpg"], "samples.npy"),
                       (["evaluate", run, "--no-samples", "--out", run / "samples.json"], "samples.json")):
        if "{codes}" in args:
            assert cli(capsys, "encode", run, "--out", tmp_path / "codes").code == 0
            args = [tmp_path / "codes" if a == "{codes}" else a for a in args]
        one_line_error(cli(capsys, *args), f"would overwrite the file {name} of the run")
    assert stamps() == before


def test_cached_samples_are_keyed_to_their_content(trained_run, tmp_path):
    from vqvae.sampling import cached_samples
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    prior, config, _ = api.load_prior(run)
    first = cached_samples(run, config, prior, 8, "cpu")
    meta = json.loads((run / "samples.json").read_text())
    # another command's images put in place of samples.npy, samples.json untouched
    np.save(run / "samples.npy", np.zeros((16, 1, SIZE, SIZE), np.uint8))
    again = cached_samples(run, config, prior, 8, "cpu")
    assert torch.equal(again, first) and again.abs().sum() > 0  # re-drawn (same seed), not the zeros
    assert json.loads((run / "samples.json").read_text())["npy_sha256"] == meta["npy_sha256"]
    # a samples.npy that is not a plain array is re-drawn too, not loaded
    np.save(run / "samples.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert torch.equal(cached_samples(run, config, prior, 8, "cpu"), first)


def test_sample_never_writes_into_a_model_folder_or_another_run(trained_run, tmp_path, capsys):
    assert cli(capsys, "export", trained_run, "--format", "folder", "--out", tmp_path / "m").code == 0
    listing = sorted(p.name for p in (tmp_path / "m").iterdir())
    one_line_error(cli(capsys, "sample", tmp_path / "m"), "pass --out FOLDER")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == listing
    other = tmp_path / "other"
    shutil.copytree(trained_run, other)
    one_line_error(cli(capsys, "sample", trained_run, "--out", other), "is another run's folder")


def _export(trained_run, out, capsys):
    assert cli(capsys, "export", trained_run, "--format", "folder", "--out", out).code == 0
    return out


def test_a_model_folder_with_swapped_or_edited_files_is_refused(trained_run, tmp_path, capsys):
    from vqvae.models.pretrained import write_model_folder
    a = _export(trained_run, tmp_path / "a", capsys)
    other = tmp_path / "b"
    write_model_folder(other, {"vqvae": {"config": json.loads((a / "config.json").read_text())["models"]["vqvae"]
                                         ["config"], "model_state": {k: v + 1 for k, v in
                                                                     VQVAE.from_pretrained(a).state_dict().items()}}})
    shutil.copy(other / "vqvae.safetensors", a / "vqvae.safetensors")  # a weights file of another export
    one_line_error(cli(capsys, "reconstruct", a, "--out", tmp_path / "r.png"), "vqvae.safetensors is not the file "
                   "exported with this config.json")
    a = _export(trained_run, tmp_path / "c", capsys)
    for edit in (("quantizer", "distance", "cosine"), ("model", "image_size", 32)):
        meta = json.loads((a / "config.json").read_text())
        saved = json.loads(json.dumps(meta))
        meta["models"]["vqvae"]["config"][edit[0]][edit[1]] = edit[2]
        (a / "config.json").write_text(json.dumps(meta))
        one_line_error(cli(capsys, "reconstruct", a, "--out", tmp_path / "r.png"), "config was changed after export")
        (a / "config.json").write_text(json.dumps(saved))
    assert cli(capsys, "reconstruct", a, "--out", tmp_path / "r.png").code == 0


def test_an_export_killed_midway_leaves_the_old_folder_whole(trained_run, tmp_path, capsys, monkeypatch):
    from vqvae.models import pretrained
    folder = _export(trained_run, tmp_path / "m", capsys)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    real = pretrained.atomic_write_bytes

    def killed_at_config(path, data):
        if Path(path).name == "config.json":
            raise KeyboardInterrupt  # as a kill after the weights were written
        real(path, data)

    monkeypatch.setattr(pretrained, "atomic_write_bytes", killed_at_config)
    with pytest.raises(KeyboardInterrupt):  # a new export of a prior-less model, killed before its config.json
        pretrained.write_model_folder(folder, {"vqvae": {"config": json.loads((folder / "config.json").read_text())
                                                         ["models"]["vqvae"]["config"],
                                                         "model_state": VQVAE.from_pretrained(folder).state_dict()}})
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temporary folder left
    # a temporary folder a SIGKILL left is removed by the next export to the same place
    (tmp_path / ".m.999999999-x1y2.tmp").mkdir()  # a pid that runs no process
    (tmp_path / f".m.{os.getpid()}-busy.tmp").mkdir()  # an export in progress: kept

    monkeypatch.setattr(pretrained, "atomic_write_bytes", real)
    _export(trained_run, folder, capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".m.{os.getpid()}-busy.tmp", "m"]


@pytest.mark.parametrize("content", [b'["a list"]', b'{"format": "vqvae-toolkit-model", "version": 1}',
                                     b'{"format": "vqvae-toolkit-model", "version": "1", "models": {}}',
                                     b'{"format": "vqvae-toolkit-model", "version": 1, "models": {"vqvae": 5}}',
                                     b'{"format": "vqvae-toolkit-model", "version": 1, "models": []}',
                                     b'{"format": "vqvae-toolkit-model", "version": 1, "models": {"vqvae": {}}}',
                                     b'{"format": "vqvae-toolkit-model", \xff\xfe}'])
def test_a_model_folder_config_of_the_wrong_structure_is_one_line(content, trained_run, tmp_path, capsys):
    folder = _export(trained_run, tmp_path / "m", capsys)
    (folder / "config.json").write_bytes(content)
    for args in (["reconstruct", folder, "--out", tmp_path / "r.png"], ["sample", folder, "--out", tmp_path / "s"],
                 ["export", folder, "--format", "folder", "--out", tmp_path / "again"]):
        result = cli(capsys, *args)
        assert result.code == 2 and len([l for l in result.err.splitlines() if l.startswith("error:")]) == 1, result


def test_a_run_config_that_is_not_utf8_is_one_line(trained_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / "config.json").write_bytes(b'{"train": \xff\xfe}')
    for args in (["train-prior", run], ["train", "--resume", run]):
        result = cli(capsys, *args)
        assert result.code == 2 and len([l for l in result.err.splitlines() if l.startswith("error:")]) == 1, result


@pytest.mark.parametrize("payload,message", [
    ({"format": "vqvae-toolkit-checkpoint", "version": 1, "kind": "vqvae"}, "holds no config"),
    ({"format": "vqvae-toolkit-checkpoint", "version": "1", "kind": "vqvae"}, "not a whole number"),
    ({"format": "vqvae-toolkit-checkpoint", "version": 1, "kind": "vqvae", "config": {}, "model_state": {"w": 1}},
     "model_state is not a mapping of tensor names to tensors"),
    ({"format": "vqvae-toolkit-checkpoint", "version": 1, "kind": "vqvae", "config": {}}, "model_state is not"),
])
def test_crafted_checkpoints_are_one_line(payload, message, tmp_path, capsys):
    torch.save(payload, tmp_path / "x.pt")
    one_line_error(cli(capsys, "reconstruct", tmp_path / "x.pt", "--out", tmp_path / "r.png"), message)


@pytest.mark.parametrize("quantizer", ['"vq"', "null", "[1]"])
def test_codes_json_whose_quantizer_is_not_an_object_is_one_line(quantizer, trained_run, tmp_path, capsys):
    assert cli(capsys, "encode", trained_run, "--out", tmp_path / "c").code == 0
    meta = (tmp_path / "c" / "codes.json").read_text()
    meta = json.loads(meta)
    meta["quantizer"] = json.loads(quantizer)
    (tmp_path / "c" / "codes.json").write_text(json.dumps(meta))
    one_line_error(cli(capsys, "decode", trained_run, tmp_path / "c", "--out", tmp_path / "d.png"),
                   "codes.json's 'quantizer' is")


def test_a_truncated_best_checkpoint_names_the_intact_last_one(trained_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    best = run / "checkpoints" / "vqvae-best.pt"
    best.write_bytes(best.read_bytes()[:1000])
    one_line_error(cli(capsys, "train-prior", run, "--resume"), "vqvae-last.pt beside it is intact",
                   f"mv {best} {best}.damaged")
    best.rename(best.with_name("vqvae-best.pt.damaged"))
    assert cli(capsys, "reconstruct", run, "--out", tmp_path / "r.png").code == 0


@pytest.mark.parametrize("command", ["reconstruct", "decode"])
def test_image_out_without_an_image_extension_writes_nothing(command, trained_run, tmp_path, capsys):
    assert cli(capsys, "encode", trained_run, "--out", tmp_path / "c").code == 0
    args = [command, trained_run] + ([tmp_path / "c"] if command == "decode" else []) + ["--out", tmp_path / "out.gif"]
    one_line_error(cli(capsys, *args), "must end in .png, .jpg, .jpeg")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_a_closed_pipe_ends_quietly(tmp_path):
    import subprocess
    import sys
    result = subprocess.run(f"{sys.executable} -m vqvae.cli presets | head -1", shell=True, capture_output=True,
                            text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
                            executable="/bin/bash")
    assert result.stdout.startswith("mnist") and "Traceback" not in result.stderr and result.stderr == ""


def test_sizes_that_cannot_fit_are_refused_before_allocating(trained_run, bar_folder, tmp_path, capsys, monkeypatch):
    one_line_error(cli(capsys, "train", "--preset", "tiny", "--out", tmp_path / "x", "--set",
                       *tiny_overrides(bar_folder), "quantizer.codebook_size=1000000000"),
                   "the VQ-VAE needs at least", "reduce quantizer.codebook_size")
    assert not (tmp_path / "x").exists()
    one_line_error(cli(capsys, "sample", trained_run, "-n", "1000000000000", "--out", tmp_path / "s"),
                   "--num-samples 1000000000000", "at most about")
    assert not (tmp_path / "s").exists()
    from vqvae import resources
    monkeypatch.setattr(resources, "available_memory", lambda device: 10 ** 6)  # a 1 MB machine
    one_line_error(cli(capsys, "train-prior", trained_run, "--set", "prior.num_layers=1000"),
                   "the pixelcnn prior needs at least", "reduce prior.num_layers")
