"""Reconstruction metrics of `vqvae evaluate`: PSNR conventions, SSIM against torchmetrics, the
calibrated texture measure, and rFID / LPIPS from weight files (random backbones of the right
shapes stand in for the real weights), their skip line and their errors."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vqvae.errors import ConfigError
from vqvae.metrics.pretrained import PretrainedWeights, reconstruction_perceptual
from vqvae.metrics.reconstruction import psnr_8bit_per_image, ssim_per_image
from vqvae.metrics.texture import (PatchDistance, binomial_blur, calibrated_texture, laplacian_pyramid,
                                   sliced_wasserstein)
from vqvae.report import report_markdown


def textured(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """n colour images in [0, 1]: smooth random fields with fine grain, so every pyramid level has detail."""
    gen = torch.Generator().manual_seed(seed)
    coarse = F.interpolate(torch.rand(n, 3, size // 4, size // 4, generator=gen), size=size, mode="bicubic")
    return (coarse + 0.08 * torch.randn(n, 3, size, size, generator=gen)).clamp(0, 1)


# --- PSNR and SSIM

def test_psnr_conventions_match_scikit_image_per_image_and_differ_from_the_set_psnr():
    from skimage.metrics import peak_signal_noise_ratio

    x = torch.full((2, 1, 4, 4), 100.0)
    y = x.clone()
    y[0] += 1  # 8-bit MSE 1
    y[1] += 10  # 8-bit MSE 100
    per_image = psnr_8bit_per_image(x, y)
    for i in range(2):
        expected = peak_signal_noise_ratio(x[i].numpy().astype(np.uint8), y[i].numpy().astype(np.uint8), data_range=255)
        assert per_image[i].item() == pytest.approx(expected, abs=1e-9)
    set_psnr = 10 * math.log10(255 ** 2 / 50.5)
    assert per_image.mean().item() == pytest.approx(10 * math.log10(255 ** 2) - 10, abs=1e-9)  # (48.13 + 28.13) / 2
    assert per_image.mean().item() > set_psnr + 5  # the two conventions are far apart on uneven errors
    assert psnr_8bit_per_image(x, x).tolist() == [100.0, 100.0]  # exact copies: capped, not infinite


def test_ssim_equals_torchmetrics_including_flat_regions():
    from torchmetrics.functional.image import structural_similarity_index_measure

    x = textured(3, 24)
    x[0, :, :12, :12] = 0.5  # a flat patch: variances round to slightly negative without the clamp
    y = (x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    ours = ssim_per_image(x, y)
    theirs = structural_similarity_index_measure(y.double(), x.double(), data_range=1.0, reduction="none")
    assert torch.allclose(ours, theirs, atol=1e-10)
    assert ssim_per_image(x, x).tolist() == pytest.approx([1.0] * 3)
    with pytest.raises(ValueError, match="11x11"):
        ssim_per_image(x[..., :10, :10], y[..., :10, :10])


# --- texture measure

def test_laplacian_pyramid_levels_and_exact_reconstruction():
    x = textured(2, 28)
    levels = laplacian_pyramid(x)
    assert [level.shape[-1] for level in levels] == [28, 14]
    assert [level.shape[-1] for level in laplacian_pyramid(textured(1, 64))] == [64, 32, 16]
    restored = levels[-1]
    for band in reversed(levels[:-1]):
        restored = band + F.interpolate(restored, size=band.shape[-2:], mode="bilinear", align_corners=False)
    assert torch.allclose(restored, x, atol=1e-6)


def test_sliced_wasserstein_is_the_mean_shift_for_shifted_point_sets():
    a = torch.randn(500, 4, generator=torch.Generator().manual_seed(0))
    direction = torch.tensor([[1.0], [0.0], [0.0], [0.0]])
    assert sliced_wasserstein(a, a + torch.tensor([0.3, 0, 0, 0]), direction) == pytest.approx(0.3, abs=1e-6)
    assert sliced_wasserstein(a, a[torch.randperm(500)], direction) == pytest.approx(0.0, abs=1e-7)


def test_texture_rows_order_real_blurred_noise_and_lost_contrast_counts():
    images = textured(96)
    reference, real = images[:48], images[48:]
    distance = PatchDistance(reference, descriptors=4096, projections=64)
    real_row = distance(real)
    blurred = distance(binomial_blur(real))
    faint = distance(real.mean((2, 3), keepdim=True) + 0.5 * (real - real.mean((2, 3), keepdim=True)))
    noise = distance(torch.rand(real.shape, generator=torch.Generator().manual_seed(3)))
    for row in (blurred, faint, noise):
        assert row["swd_x1e3_mean"] > 3 * real_row["swd_x1e3_mean"]
    assert noise["swd_x1e3_mean"] > blurred["swd_x1e3_mean"]
    assert 0.85 < real_row["high_frequency_power_ratio"] < 1.15
    assert blurred["high_frequency_power_ratio"] < 0.5 < 3 < noise["high_frequency_power_ratio"]
    # Halving the detail's amplitude is caught at the finest level: with each set normalised by its
    # own statistics (as ProGAN does) it would score like real images there.
    assert faint["swd_x1e3"][0] > 3 * real_row["swd_x1e3"][0]
    assert distance(real) == real_row  # seeded: the same figures every time


def test_calibrated_texture_rows_and_ratio():
    images = textured(40, 16)
    result = calibrated_texture(images[:20], images[20:], binomial_blur(images[20:]))
    assert list(result["rows"]) == ["real", "blurred", "reconstructions", "noise"]
    assert result["levels"] == [16] and result["n"] == 20
    # the "reconstructions" here are the blurred row's blur (of the images before their 8-bit rounding)
    rows = result["rows"]
    assert rows["reconstructions"]["swd_x1e3_mean"] == pytest.approx(rows["blurred"]["swd_x1e3_mean"], rel=0.01)
    assert result["reconstructions_vs_real"] > 1


# --- rFID and LPIPS from weight files

@pytest.fixture(scope="module")
def random_inception(tmp_path_factory):
    """A state dict of torch-fidelity's Inception-v3 with random weights, saved as the real file is."""
    import torch_fidelity.feature_extractor_inceptionv3 as tf_inception

    mp = pytest.MonkeyPatch()
    mp.setattr(tf_inception, "load_state_dict_from_url", lambda *a, **k: {})  # build the layers, load nothing
    mp.setattr(tf_inception.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
    torch.manual_seed(0)
    network = tf_inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    mp.undo()
    for module in network.modules():  # variance-preserving, so 2048 features survive ~40 random layers
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    path = tmp_path_factory.mktemp("weights") / "inception-random.pth"
    torch.save(network.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def random_vgg(tmp_path_factory):
    """torchvision's VGG16 `features.*` entries with random weights (the classifier is left out: 500 MB)."""
    import torchvision

    torch.manual_seed(0)
    features = torchvision.models.vgg16(weights=None).features.state_dict()
    path = tmp_path_factory.mktemp("weights") / "vgg16-random.pth"
    torch.save({f"features.{k}": v for k, v in features.items()}, path)
    return path


@pytest.fixture
def no_hub_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))


def test_perceptual_skipped_without_weights_names_how_to_enable(no_hub_weights):
    x = textured(4, 16)
    result = reconstruction_perceptual([(x, x)], 3, PretrainedWeights())
    assert set(result["skipped"]) == {"rFID", "LPIPS"} and "rfid" not in result and "lpips_vgg" not in result
    line = result["skipped_line"]
    assert "\n" not in line and "--inception-weights" in line and "--lpips-vgg-weights" in line
    assert "--allow-download" in line and "torch-home" in line
    grey = reconstruction_perceptual([(x[:, :1], x[:, :1])], 1, PretrainedWeights())
    assert "grayscale" in grey["skipped_line"] and "--inception-weights" not in grey["skipped_line"]


def test_lpips_from_a_vgg_file_matches_lpips_own_trunk(no_hub_weights, random_vgg, monkeypatch):
    import lpips
    import torchvision

    x = textured(6, 32)
    y = binomial_blur(x)
    result = reconstruction_perceptual([(x[:3], y[:3]), (x[3:], y[3:])], 3, PretrainedWeights(lpips_vgg=random_vgg))
    assert result["num_images"] == 6 and set(result["skipped"]) == {"rFID"}
    assert result["lpips_vgg_weights"] == str(random_vgg)
    # lpips's own construction around the same trunk: torchvision's vgg16 holding the file's weights
    vgg = torchvision.models.vgg16(weights=None)
    vgg.features.load_state_dict({k[len("features."):]: v for k, v in torch.load(random_vgg, weights_only=True).items()})
    monkeypatch.setattr(lpips.pretrained_networks.tv, "vgg16", lambda **kwargs: vgg)
    reference = lpips.LPIPS(net="vgg", verbose=False).eval()
    expected = reference((x * 255).round() / 255, (y * 255).round() / 255, normalize=True).mean().item()
    assert expected > 1e-3 and result["lpips_vgg"] == pytest.approx(expected, abs=1e-5)
    same = reconstruction_perceptual([(x, x)], 3, PretrainedWeights(lpips_vgg=random_vgg))
    assert same["lpips_vgg"] == pytest.approx(0.0, abs=1e-6)


def test_rfid_from_an_inception_file(no_hub_weights, random_inception, monkeypatch):
    # The 64 features of Inception's first block: the 2048-feature Fréchet distance (a 2048 x 2048
    # eigendecomposition) and the full network take minutes on a CPU; loading and feeding are the same.
    monkeypatch.setattr("vqvae.metrics.pretrained.INCEPTION_FEATURES", 64)
    x = textured(4, 16)
    result = reconstruction_perceptual([(x[:2], binomial_blur(x[:2]))], 3, PretrainedWeights(inception=random_inception))
    assert math.isfinite(result["rfid"]) and result["rfid"] > 0 and set(result["skipped"]) == {"LPIPS"}
    assert result["inception_weights"] == str(random_inception)


def test_weight_files_that_are_wrong_are_one_line_errors(tmp_path, random_vgg, no_hub_weights):
    x = textured(2, 16)
    with pytest.raises(ConfigError, match="--inception-weights .*missing.pth: no such file"):
        PretrainedWeights(inception=tmp_path / "missing.pth")
    text = tmp_path / "notes.pth"
    text.write_text("not weights")
    for kwargs, flag in (({"inception": text}, "--inception-weights"), ({"lpips_vgg": text}, "--lpips-vgg-weights")):
        with pytest.raises(ConfigError, match=f"{flag} .*notes.pth is not a PyTorch weights file") as e:
            reconstruction_perceptual([(x, x)], 3, PretrainedWeights(**kwargs))
        assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="does not hold torch-fidelity's Inception-v3") as e:
        reconstruction_perceptual([(x, x)], 3, PretrainedWeights(inception=random_vgg))  # the VGG file
    assert "\n" not in str(e.value)
    partial = tmp_path / "partial.pth"
    torch.save({k: v for k, v in torch.load(random_vgg, weights_only=True).items() if not k.startswith("features.28")}, partial)
    with pytest.raises(ConfigError, match="features.28.weight is missing"):
        reconstruction_perceptual([(x, x)], 3, PretrainedWeights(lpips_vgg=partial))


# --- evaluate and the report

def test_evaluate_reports_every_reconstruction_metric_and_the_skip_line(trained_run, tmp_path, no_hub_weights,
                                                                        capsys):
    import json

    from vqvae.cli import main

    assert main(["evaluate", str(trained_run), "--no-samples", "--out", str(tmp_path / "ev.json")]) == 0
    captured = capsys.readouterr()
    result = json.loads((tmp_path / "ev.json").read_text())
    rec = result["reconstruction"]
    assert rec["psnr_8bit_per_image_db"] >= rec["psnr_8bit_db"]  # Jensen: mean of logs >= log of mean
    assert abs(rec["psnr_8bit_db"] - rec["psnr_db"]) < 0.5 and 0 < rec["ssim"] <= 1
    assert result["texture"]["rows"]["noise"]["swd_x1e3_mean"] > result["texture"]["rows"]["real"]["swd_x1e3_mean"]
    assert "grayscale" in captured.err.strip().splitlines()[-1]
    report = (trained_run / "report.md").read_text()
    assert "| reconstructions |" in report and "mean of per-image PSNRs" in report and "skipped rFID" in report
    with pytest.raises(SystemExit):
        main(["evaluate", str(trained_run), "--inception-weights"])
    capsys.readouterr()
    assert main(["evaluate", str(trained_run), "--no-samples", "--inception-weights", str(tmp_path / "no.pth")]) == 2
    assert capsys.readouterr().err.strip() == f"error: --inception-weights {tmp_path / 'no.pth'}: no such file"


def test_report_shows_rfid_and_lpips_when_measured(tmp_path):
    metrics = {"evaluation": {"perceptual": {"rfid": 12.3456, "lpips_vgg": 0.12345, "num_images": 50}}}
    md = report_markdown(tmp_path, metrics)
    assert "rFID 12.346" in md and "LPIPS 0.1235" in md and "skipped" not in md
