"""What a user reads and sees: one-line warnings, the summary's timings, readable curve axes."""
from __future__ import annotations

import shutil

from conftest import tiny_overrides
from vqvae.cli import main
from vqvae.figures import history_figure
from vqvae.report import timings_text


def test_a_skipped_file_warns_in_one_clean_line(bar_folder, tmp_path, capsys):
    data = tmp_path / "images"
    shutil.copytree(bar_folder, data)
    (data / "horizontal" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    settings = [s for s in tiny_overrides(data) if not s.startswith("data.dataset")] + ["train.epochs=1"]
    assert main(["train", "--preset", "tiny", "--data", str(data), "--out", str(tmp_path / "run"),
                 "--set", *settings]) == 0
    err = capsys.readouterr().err
    warned = [line for line in err.splitlines() if "broken.png" in line]
    assert len(warned) == 1 and warned[0].startswith("warning: skipped 1 unreadable"), err
    assert "UserWarning" not in err and ".py:" not in err


def test_pipeline_timings_read_as_a_sentence():
    text = timings_text({"vqvae_s": 47.0, "prior_s": 131.2, "sample_s": 0.7, "evaluate_s": 1.4})
    assert text == "time: 180.3 s (VQ-VAE 47.0 s, prior 131.2 s, sampling 0.7 s, evaluation 1.4 s)"


def visible_labels(axis, low, high, minor=False):
    ticks = axis.get_minor_ticks() if minor else axis.get_major_ticks()
    locs = axis.get_minorticklocs() if minor else axis.get_majorticklocs()
    return [t.label1.get_text() for t, loc in zip(ticks, locs) if low <= loc <= high and t.label1.get_text()]


def test_curves_tick_whole_epochs_and_plain_numbers():
    two_epochs = [{"epoch": 1, "bits": 2.3, "val_bits": 2.2}, {"epoch": 2, "bits": 1.9, "val_bits": 1.95}]
    long_run = [{"epoch": e, "mse": 0.2 / e, "val_mse": 0.25 / e} for e in range(1, 41)]
    for history, keys in ((two_epochs, ["bits", "val_bits"]), (long_run, ["mse", "val_mse"])):
        fig = history_figure(history, [("loss", keys)])
        fig.canvas.draw()
        ax = fig.axes[0]
        epochs = visible_labels(ax.xaxis, *ax.get_xlim())
        assert epochs and all(label.isdigit() for label in epochs), epochs
        labels = visible_labels(ax.yaxis, *ax.get_ylim()) + visible_labels(ax.yaxis, *ax.get_ylim(), minor=True)
        assert labels and all(float(label) > 0 for label in labels), labels  # plain numbers: no "2.3x10^0"
    assert ax.get_yscale() == "log"  # the long run spans more than a decade


def test_missing_optional_packages_name_their_extra(monkeypatch, tmp_path):
    import sys

    import pytest
    import torch

    from vqvae.errors import ConfigError
    from vqvae.metrics import sample_quality
    from vqvae.models import codebook_search

    monkeypatch.setitem(sys.modules, "torchmetrics", None)  # import fails as if not installed
    images = torch.rand(4, 3, 8, 8)
    result = sample_quality.inception_fid(images, images)
    assert not result["available"] and "pip install 'vqvae[metrics]'" in result["reason"]

    monkeypatch.setattr(codebook_search, "_TRITON", False)
    with pytest.raises(ConfigError, match=r"pip install 'vqvae\[gpu\]'"):
        codebook_search.checked_search(torch.randn(8, 4), torch.randn(16, 4), kernel="triton")
