import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import orientation, tiny_overrides
from vqvae import api
from vqvae.cli import main
from vqvae.config import load_config
from vqvae.errors import ConfigError
from vqvae.runs import load_prior, load_vqvae


def cli(*args):
    """Run the CLI in-process; returns (exit code)."""
    return main([str(a) for a in args])


def test_pipeline_writes_every_file(bar_folder, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli("pipeline", "--preset", "tiny", "--out", run, "--set", *tiny_overrides(bar_folder)) == 0
    for name in ("config.json", "metrics.json", "reconstructions.png", "curves.png", "prior_curves.png",
                 "samples.png", "samples.npy", "samples_codes.npy", "report.md", "report.html", "codebook_usage.png",
                 "codes/train.npy", "codes/test.npy", "checkpoints/prior-last.pt", "checkpoints/vqvae-last.pt"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) >= {"vqvae", "prior", "evaluation", "pipeline"}
    ev = metrics["evaluation"]
    assert ev["prior"]["test_bits_per_code"] > 0
    scores = ev["samples"]
    assert set(scores["rows"]) == {"real", "reconstructions", "samples", "noise"}
    for row in scores["rows"].values():
        assert np.isfinite(row["frechet_distance"]) and 0 <= row["confidence"] <= 1
        assert 0 <= row["precision"] <= 1 and 0 <= row["recall"] <= 1
    assert scores["n"] == 24  # half of the 48 held-out bar images: the other half is the reference
    assert "heldout_accuracy" in scores["classifier"]
    assert json.loads((run / "samples.json").read_text())["num_samples"] >= scores["n"]
    assert np.load(run / "samples.npy").shape == (24, 1, 16, 16)  # evaluate drew the n = 24 it scores
    assert "samples.png" in (run / "report.md").read_text()


def test_conditional_prior_respects_the_class(bar_folder, tmp_path):
    """A prior overfit on two classes (horizontal / vertical bars) draws the class it is asked for."""
    run = tmp_path / "run"
    cfg = load_config("tiny", tiny_overrides(bar_folder) + [
        "prior.conditional=true", "train.epochs=6", "model.hidden_channels=32", "prior.num_layers=4",
        "prior.hidden_channels=32", "prior_train.epochs=15", "prior_train.lr=0.003"])
    api.train_vqvae(cfg, run)
    api.train_prior(cfg, run)
    for label in (0, 1):
        api.sample(run, out_dir=tmp_path, num_samples=40, class_=label, name=f"class{label}", device="cpu")
        images = torch.from_numpy(np.load(tmp_path / f"class{label}.npy"))
        agreement = (orientation(images) == label).float().mean().item()
        assert agreement >= 0.8, (label, agreement)
    result = api.sample(run, out_dir=tmp_path, num_samples=8, class_="all", name="all", device="cpu")
    assert result["num_samples"] == 8


def test_sampling_bad_inputs(trained_run, tmp_path):
    with pytest.raises(ConfigError, match="out of range"):
        api.sample(trained_run, out_dir=tmp_path, num_samples=2, class_=5, device="cpu")
    with pytest.raises(ConfigError, match="not a class"):
        api.sample(trained_run, out_dir=tmp_path, num_samples=2, class_="diagonal", device="cpu")
    assert api.sample(trained_run, out_dir=tmp_path, num_samples=2, class_="vertical", device="cpu")["num_samples"] == 2


def test_unconditional_prior_refuses_class_and_wrong_vqvae(bar_folder, tmp_path):
    run, other = tmp_path / "run", tmp_path / "other"
    cfg = load_config("tiny", tiny_overrides(bar_folder))
    api.train_vqvae(cfg, run)
    api.train_prior(cfg, run)
    with pytest.raises(ConfigError, match="needs a class-conditional prior"):
        api.sample(run, out_dir=tmp_path, num_samples=2, class_=1, device="cpu")
    api.train_vqvae(load_config("tiny", tiny_overrides(bar_folder) + ["train.seed=7"]), other)
    with pytest.raises(ConfigError, match="different VQ-VAE"):
        api.sample(run, vqvae_path=other, out_dir=tmp_path, num_samples=2, device="cpu")
    bigger = tmp_path / "bigger"
    api.train_vqvae(load_config("tiny", tiny_overrides(bar_folder) + ["quantizer.codebook_size=8"]), bigger)
    with pytest.raises(ConfigError, match="models 16 codes but the VQ-VAE has 8"):
        api.sample(run, vqvae_path=bigger, out_dir=tmp_path, num_samples=2, device="cpu")


def test_encode_decode_reconstruct_evaluate_commands(trained_run, tmp_path, capsys):
    assert cli("reconstruct", trained_run, "--out", tmp_path / "rec.png", "--num", 8) == 0
    assert (tmp_path / "rec.png").is_file()
    assert cli("encode", trained_run, "--out", tmp_path / "codes") == 0
    meta = json.loads((tmp_path / "codes" / "codes.json").read_text())
    codes = np.load(tmp_path / "codes" / "codes.npy")
    assert list(codes.shape) == meta["shape"] and meta["codebook_size"] == 16 and codes.shape[1:] == (4, 4)
    assert cli("decode", trained_run, tmp_path / "codes", "--out", tmp_path / "dec.png") == 0
    decoded = np.load(tmp_path / "dec.npy")
    assert decoded.shape == (len(codes), 1, 16, 16)
    # decoding the codes equals reconstructing the images
    model, cfg = load_vqvae(trained_run)
    with torch.no_grad():
        direct = model.decode_indices(torch.from_numpy(codes[:4].astype(np.int64))).clamp(0, 1)
    assert np.abs(decoded[:4] / 255.0 - direct.numpy()).max() <= 0.5 / 255 + 1e-6
    assert cli("evaluate", trained_run, "--no-samples", "--out", tmp_path / "m.json") == 0
    assert "reconstruction" in json.loads((tmp_path / "m.json").read_text())
    assert cli("sample", trained_run, "--out", tmp_path, "-n", 4, "--top-k", 3, "--temperature", 0.8, "--class",
               "all") == 0
    assert (tmp_path / "samples.png").is_file()
    assert cli("presets") == 0 and cli("presets", "seed-mnist") == 0


def test_train_prior_command_and_resume(trained_run, tmp_path):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(trained_run, run)
    assert cli("train-prior", run, "--resume", "--set", "prior_train.epochs=3") == 0
    prior, cfg, _ = load_prior(run)
    assert cfg.prior_train.epochs == 3
    metrics = json.loads((run / "metrics.json").read_text())["prior"]
    assert metrics["epochs"] == 3 and len(metrics["history"]) == 3


def run_cli_subprocess(*args):
    return subprocess.run([sys.executable, "-m", "vqvae.cli", *map(str, args)], capture_output=True, text=True)


@pytest.mark.parametrize("args,message", [
    (["train", "--data", "/no/such/folder"], "neither a known name"),
    (["train", "--preset", "nope"], "unknown preset 'nope'"),
    (["train", "--set", "train.nope=1"], "unknown config field 'train.nope'; valid fields"),
    (["reconstruct", "/no/such.pt"], "does not exist"),
    (["train", "--resume", "/no/such/run"], "not a run folder"),
])
def test_bad_input_gives_a_clear_error_and_non_zero_exit(args, message):
    result = run_cli_subprocess(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_files_give_clear_errors(trained_run, tmp_path, bar_folder):
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run_cli_subprocess("train", "--preset", "tiny", "--data", empty, "--out", tmp_path / "x")
    assert r.returncode == 2 and "no readable images" in r.stderr
    (tmp_path / "foreign.pt").write_bytes(b"\x80\x04junk")
    r = run_cli_subprocess("evaluate", tmp_path / "foreign.pt")
    assert r.returncode == 2 and "not a checkpoint of this toolkit" in r.stderr and "Traceback" not in r.stderr
    np.save(tmp_path / "codes.npy", np.full((2, 4, 4), 40, np.int16))
    r = run_cli_subprocess("decode", trained_run, tmp_path / "codes.npy", "--out", tmp_path / "d.png")
    assert r.returncode == 2 and "outside this VQ-VAE's codebook of 16 codes" in r.stderr
    (tmp_path / "codes.json").write_text(json.dumps({"codebook_size": 512}))
    np.save(tmp_path / "codes.npy", np.zeros((2, 4, 4), np.int16))
    r = run_cli_subprocess("decode", trained_run, tmp_path / "codes.npy", "--out", tmp_path / "d.png")
    assert r.returncode == 2 and "index a codebook of 512 codes, but the VQ-VAE has 16" in r.stderr
    r = run_cli_subprocess("train", "--preset", "mnist", "--data", bar_folder.parent / "nothing")
    assert r.returncode == 2
    # MNIST-size IDX data for a 32x32 colour preset
    r = run_cli_subprocess("train", "--preset", "mnist", "--set", "data.image_size=32", "data.channels=3",
                           "--out", tmp_path / "y")
    assert r.returncode == 2 and "28x28 images with 1 channel(s), but the config expects 32x32" in r.stderr


def test_pipeline_with_a_conditional_prior_on_unlabelled_images_stops_before_training(tmp_path):
    from PIL import Image

    from vqvae.cli import main

    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(12):
        Image.fromarray(np.full((16, 16), 20 * i, np.uint8)).save(flat / f"{i}.png")
    run = tmp_path / "run"
    assert main(["pipeline", "--preset", "tiny", "--data", str(flat), "--out", str(run),
                 "--set", "data.num_workers=0", "data.image_size=16", "prior.conditional=true"]) == 2
    assert not (run / "checkpoints").exists() or not any((run / "checkpoints").iterdir())
