"""Hostile-user probe 3: each test is a failure found by feeding the CLI and API a user's own odd
data, files and settings (benchmarks/check_hostile_inputs.py, block `# --- probe3`)."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny_overrides
from vqvae import api, export_folder
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
    assert extras == {}  # the VQ-VAE stage declares no extras: everything else in its checkpoints is training state
    original, _ = load_vqvae(run)  # the run's weights for use: the average
    loaded, _ = load_vqvae(folder)
    x = torch.rand(4, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x).reconstruction, original(x).reconstruction)


def test_inpaint_reads_a_16_bit_image_as_training_does(tmp_path, bar_folder):
    # A single 16-bit --image was converted with PIL's clipping convert("L"): a black-to-white ramp
    # came out all white but its first pixel, and the kept pixels of the result were those.
    from vqvae.inpainting import read_images
    ramp = np.rint(np.linspace(0, 65535, 16))[None].repeat(16, 0).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "ramp16.png")
    images, names = read_images(tmp_path / "ramp16.png", load_config("tiny", tiny_overrides(bar_folder)))
    assert names == ("ramp16.png",)
    assert images.dtype == torch.uint8 and images.shape == (1, 1, 16, 16)
    assert images[0, 0, 0].tolist() == np.rint(ramp[0] / 257).astype(int).tolist()  # 0, 17, 34, ..., 255


def test_inpaint_mask_with_transparency_is_refused_and_wide_masks_keep_their_nonzero_pixels(tmp_path):
    from vqvae.errors import ConfigError
    from vqvae.inpainting import parse_mask
    # White everywhere, the hole transparent (how some editors and APIs mark it): read as grey, the
    # alpha was dropped and every pixel was re-drawn.
    rgba = np.full((16, 16, 4), 255, np.uint8)
    rgba[8:, :, 3] = 0
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    with pytest.raises(ConfigError, match="transparent pixels"):
        parse_mask(str(tmp_path / "alpha.png"), 16)
    opaque = rgba.copy()
    opaque[:, :, 3] = 255
    opaque[:8, :, :3] = 0
    Image.fromarray(opaque, "RGBA").save(tmp_path / "opaque.png")  # an alpha channel, all opaque: fine
    assert parse_mask(str(tmp_path / "opaque.png"), 16)[8:].all() and not parse_mask(str(tmp_path / "opaque.png"), 16)[:8].any()
    # A float mask of 0.4s and a 16-bit mask of 1s select their pixels (not rounded to 0 on the way to 8 bits).
    half = np.zeros((16, 16), np.float32)
    half[:, :4] = 0.4
    Image.fromarray(half).save(tmp_path / "float.tif")
    assert parse_mask(str(tmp_path / "float.tif"), 16).sum() == 64
    Image.fromarray((half > 0).astype(np.uint16)).save(tmp_path / "ones16.png")
    assert parse_mask(str(tmp_path / "ones16.png"), 16).sum() == 64


@pytest.mark.parametrize("name", ["out.npy", "out.json", "out", "out.gif"])
def test_inpaint_out_must_be_an_image_name(trained_run, tmp_path, name, capsys):
    # --out x.npy wrote the images to x.npy and then the PNG over it; --out x.json had its PNG
    # replaced by the settings; any other name got PNG bytes whatever its extension.
    image = tmp_path / "one.png"
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(image)
    assert cli("inpaint", trained_run, "--image", image, "--mask", "0,8,16,16", "--out", tmp_path / name) == 2
    assert "must end in .png, .jpg, .jpeg" in capsys.readouterr().err
    assert not list(tmp_path.glob("out*"))


def test_inpaint_out_jpg_is_a_jpeg(trained_run, tmp_path):
    image = tmp_path / "one.png"
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(image)
    assert cli("inpaint", trained_run, "--image", image, "--mask", "0,8,16,16", "--out", tmp_path / "o.jpg",
               "--class", "0") == 0
    assert Image.open(tmp_path / "o.jpg").format == "JPEG" and np.load(tmp_path / "o.npy").shape == (1, 1, 16, 16)


def test_resume_with_fewer_epochs_than_trained_is_refused(bar_folder, tmp_path, capsys):
    # It used to stop at once, say "done", and leave config.json claiming fewer epochs than the
    # weights had; an epoch begun (a mid-epoch checkpoint) counts as trained.
    from conftest import Killed, killed_after_steps
    run = tmp_path / "run"
    cfg = load_config("tiny", tiny_overrides(bar_folder) + ["train.epochs=3", "train.checkpoint_every_steps=1"])
    with killed_after_steps(len(api.load_splits(cfg.data).train) // 32 + 3), pytest.raises(Killed):
        api.train_vqvae(cfg, run)  # killed in epoch 2
    before = (run / "config.json").read_text()
    assert cli("train", "--resume", run, "--set", "train.epochs=1") == 2
    assert "has trained 2 epoch(s)" in capsys.readouterr().err
    assert (run / "config.json").read_text() == before
    assert cli("train", "--resume", run, "--set", "train.epochs=2") == 0  # finish the epoch begun
    notes = json.loads((run / "metrics.json").read_text())["vqvae"]["resume_notes"]
    assert any("train.epochs changed on resume mid-run: 3 -> 2" in n for n in notes)
    assert cli("train-prior", run, "--set", "prior_train.epochs=2") == 0
    assert cli("train-prior", run, "--resume", "--set", "prior_train.epochs=1") == 2
    assert "prior_train.epochs=1 on resume" in capsys.readouterr().err


def test_pipeline_with_a_residual_quantizer_is_refused_before_training(bar_folder, tmp_path, capsys):
    # The prior cannot model RVQ's several indices per position: said after the VQ-VAE had trained.
    out = tmp_path / "rvq"
    assert cli("pipeline", "--preset", "tiny", "--out", out, "--set", *tiny_overrides(bar_folder),
               "quantizer.kind=rvq", "quantizer.rvq_depth=2") == 2
    assert "one code index per position" in capsys.readouterr().err and not out.exists()


def test_rvq_of_one_level_is_refused(bar_folder, tmp_path, capsys):
    # Depth 1 encoded (N, 1, h, w) maps that decode refused, and the pipeline's prior died on them
    # with a traceback.
    assert cli("train", "--preset", "tiny", "--out", tmp_path / "r", "--set", *tiny_overrides(bar_folder),
               "quantizer.kind=rvq", "quantizer.rvq_depth=1") == 2
    assert "quantizer.rvq_depth=1: must be >= 2" in capsys.readouterr().err
    # A run trained at depth 1 before this check still loads: the refusal is at training only.
    from vqvae.config import RunConfig, load_config
    saved = load_config("tiny", ["quantizer.kind=rvq", "quantizer.rvq_depth=1"]).to_dict()
    assert RunConfig.from_dict(saved).quantizer.rvq_depth == 1


def test_prior_resume_after_the_vqvae_changed_is_refused(trained_run, tmp_path, capsys):
    # After `train --resume RUN --set train.epochs=N` the prior's codes are stale: resuming it compared
    # validation losses across the two code sets and reported "done" with the old prior's best.
    import shutil
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    assert cli("train", "--resume", run, "--set", "train.epochs=4") == 0
    before = (run / "checkpoints" / "prior-last.pt").read_bytes()
    assert cli("train-prior", run, "--resume", "--set", "prior_train.epochs=3") == 2
    assert "trained on the codes of a different VQ-VAE" in capsys.readouterr().err
    assert (run / "checkpoints" / "prior-last.pt").read_bytes() == before
    assert cli("train-prior", run) == 0 and cli("sample", run, "--out", tmp_path / "s") == 0


def test_export_num_images_0_is_refused_not_the_default(trained_run, tmp_path, capsys):
    # `--num-images 0` verified on the default 24 images instead (0 read as "not given").
    assert cli("export", trained_run, "--format", "onnx", "--out", tmp_path / "o", "--num-images", "0") == 2
    assert "num_images=0" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_a_palette_of_greys_is_grey_data(tmp_path, trained_run):
    # Palette PNGs (pngquant's output, say) counted as colour whatever their palette, so `encode`,
    # `reconstruct` and `evaluate --data` refused a folder of grey palette images for a grey model,
    # with no setting to override it.
    from vqvae.data import describe_data
    rng = np.random.default_rng(0)
    grey, colour = tmp_path / "grey", tmp_path / "colour"
    for folder in (grey, colour):
        folder.mkdir()
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).quantize(8).save(grey / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).quantize(8).save(colour / f"{i}.png")
    assert Image.open(grey / "0.png").mode == "P"
    assert describe_data(str(grey)).channels == 1 and describe_data(str(colour)).channels == 3
    assert cli("encode", trained_run, "--data", grey, "--out", tmp_path / "codes") == 0
    assert np.load(tmp_path / "codes" / "codes.npy").shape == (6, 4, 4)


def test_inpaint_margin_rf_works_under_no_grad(trained_run, tmp_path):
    # --margin rf measured the receptive field by backpropagation inside inpaint_images, which runs
    # under torch.no_grad: every `inpaint --margin rf` died with a RuntimeError traceback.
    from vqvae.inpainting import receptive_field
    vqvae, _ = load_vqvae(trained_run)
    with torch.no_grad():
        field = receptive_field(vqvae)
    assert field.size > 4 and field.stride == 4
    image = tmp_path / "one.png"
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(image)
    assert cli("inpaint", trained_run, "--image", image, "--mask", "0,12,16,16", "--margin", "rf",
               "--out", tmp_path / "o.png", "--class", "0") == 0
    assert json.loads((tmp_path / "o.json").read_text())["margin"] == "rf"


def test_inpaint_of_a_folder_names_each_result_s_file(trained_run, tmp_path):
    # A folder's unreadable file is skipped, which shifts every later result: OUT.json names each
    # result's file so the results can be matched to their inputs.
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(np.full((16, 16), 60 * i, np.uint8)).save(folder / f"{i}.png")
    (folder / "1b.png").write_bytes(b"")  # sorts between 1.png and 2.png
    assert cli("inpaint", trained_run, "--image", folder, "--mask", "0,12,16,16", "--out", tmp_path / "o.png",
               "--class", "0") == 0
    inputs = json.loads((tmp_path / "o.json").read_text())["inputs"]
    results = np.load(tmp_path / "o.npy")
    assert inputs == ["0.png", "1.png", "2.png", "3.png"] and len(results) == 4
    for name, result in zip(inputs, results):  # the kept rows are each named file's own pixels
        assert (result[0, :12] == 60 * int(name[0])).all()
