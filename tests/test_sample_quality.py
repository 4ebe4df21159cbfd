import numpy as np
import torch

from vqvae.metrics.sample_quality import (augment, calibrated_scores, class_figures, frechet_distance,
                                          precision_recall, train_classifier)

from conftest import bar_images


def test_frechet_distance_matches_closed_form_for_gaussians():
    g = torch.Generator().manual_seed(0)
    d, n = 4, 200_000
    a = torch.randn(n, d, generator=g)
    shifted = torch.randn(n, d, generator=g) + torch.tensor([1.0, 2.0, 0.0, 0.0])
    wide = 2 * torch.randn(n, d, generator=g)
    assert abs(frechet_distance(a, a)) < 1e-6
    assert abs(frechet_distance(a, shifted) - 5.0) < 0.05  # ||mu||^2
    assert abs(frechet_distance(a, wide) - d * (1 + 4 - 2 * 2)) < 0.05  # tr(S1 + S2 - 2 sqrt(S1 S2))


def test_class_figures():
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    f = class_figures(probs)
    assert f["class_counts"] == [2, 2] and abs(f["class_coverage"] - 1.0) < 1e-6
    assert abs(f["confidence"] - 0.75) < 1e-6
    assert class_figures(torch.tensor([[1.0, 0.0]] * 3))["class_coverage"] == 0


def test_precision_recall_sanity():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(500, 8, generator=g)
    same = precision_recall(real, real.clone())
    assert same == {"precision": 1.0, "recall": 1.0}
    other_draw = precision_recall(real, torch.randn(500, 8, generator=g))
    assert other_draw["precision"] > 0.8 and other_draw["recall"] > 0.8
    far = precision_recall(real, torch.randn(500, 8, generator=g) + 100)
    assert far == {"precision": 0.0, "recall": 0.0}
    # Malformed samples (half far off the real manifold) lower precision, not recall; samples
    # covering half the modes lower recall, not precision.
    half_bad = torch.cat([real[:250] + 0.01, torch.randn(250, 8, generator=g) + 100])
    pr = precision_recall(real, half_bad)
    assert 0.4 < pr["precision"] < 0.6 and pr["recall"] > 0.4
    two_modes = torch.cat([torch.randn(250, 8, generator=g) - 20, torch.randn(250, 8, generator=g) + 20])
    one_mode = torch.randn(500, 8, generator=g) - 20
    pr = precision_recall(two_modes, one_mode)
    assert pr["precision"] > 0.8 and 0.4 < pr["recall"] < 0.6


def test_augment_keeps_shape_and_range_and_varies():
    x = torch.rand(16, 1, 12, 12)
    a = augment(x, torch.Generator().manual_seed(0))
    b = augment(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    assert not torch.equal(a, b)


def test_calibrated_score_orders_real_reconstructions_and_noise():
    images, labels = bar_images(600)
    x = torch.from_numpy(images)[:, None]
    y = torch.from_numpy(labels)
    model, info = train_classifier(x[:400], y[:400], x[400:], y[400:], epochs=3)
    assert info["heldout_accuracy"] > 0.95
    real = x.float() / 255
    blurred = torch.nn.functional.avg_pool2d(real[500:600], 3, 1, 1)  # stand-in for imperfect reconstructions
    scores = calibrated_scores(model, real[400:500], real[500:600], blurred, real[:100])
    rows = scores["rows"]
    assert scores["n"] == 100 and set(rows) == {"real", "reconstructions", "samples", "noise"}
    assert rows["real"]["frechet_distance"] < rows["noise"]["frechet_distance"]
    assert rows["reconstructions"]["frechet_distance"] < rows["noise"]["frechet_distance"]
    assert rows["noise"]["precision"] < 0.1 < rows["real"]["precision"]
    assert rows["samples"]["classes_present"] == 2
    assert scores["samples_vs_reconstructions"] == round(
        rows["samples"]["frechet_distance"] / rows["reconstructions"]["frechet_distance"], 3)


def test_held_out_halves_are_drawn_in_a_fixed_random_order():
    """A class-sorted held-out set (the bundled MNIST images are sorted) must not give the reference
    one set of classes and the real row another."""
    from vqvae.metrics.protocol import in_fixed_random_order
    from vqvae.data import ImageSet

    labels = torch.arange(100) // 50  # 50 of class 0, then 50 of class 1
    data = ImageSet("sorted", 2, 1, images=labels.to(torch.uint8)[:, None, None, None].expand(-1, 1, 2, 2).clone(),
                    labels=labels)
    picked = in_fixed_random_order(data, 80)[:, 0, 0, 0]
    assert torch.equal(picked, in_fixed_random_order(data, 80)[:, 0, 0, 0])  # fixed
    for half in (picked[:40], picked[40:]):
        assert 10 < int(half.sum()) < 30  # both classes in each half


def test_scored_rows_of_a_cached_folder_come_from_its_test_split(tmp_path):
    """A labelled folder's test split is carved from the image cache by `index`: the scored rows must
    be test images of every class, not the first rows of the whole cache (which, class-sorted, are
    training images of one class)."""
    from PIL import Image

    from vqvae.config import load_config
    from vqvae.data import load_splits
    from vqvae.metrics.protocol import in_fixed_random_order

    # Every image is one flat grey whose value is unique: the pixel value names the image.
    for i in range(200):
        folder = tmp_path / "data" / ("a" if i < 100 else "b")  # class-sorted: a/ then b/
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8), i, np.uint8)).save(folder / f"{i:03d}.png")
    cfg = load_config("tiny", [f"data.dataset={tmp_path / 'data'}", "data.image_size=8", "data.num_workers=0",
                               "data.test_fraction=0.2"])
    splits = load_splits(cfg.data)
    test = splits.test
    assert test.index is not None  # the cache-backed case this test is about
    test_values = {int(v) for v in test.tensor()[:, 0, 0, 0]}
    picked = in_fixed_random_order(test, 40)
    values = [int(v) for v in picked[:, 0, 0, 0]]
    assert set(values) <= test_values and len(set(values)) == 40
    assert {v >= 100 for v in values} == {True, False}  # both classes
