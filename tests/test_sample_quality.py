import torch

from vqvae.metrics.sample_quality import class_figures, frechet_distance, train_classifier

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


def test_classifier_learns_and_real_images_score_closer_than_noise():
    images, labels = bar_images(600)
    x = torch.from_numpy(images)[:, None]
    y = torch.from_numpy(labels)
    model, info = train_classifier(x[:400], y[:400], x[400:], y[400:], epochs=3)
    assert info["test_accuracy"] > 0.95
    from vqvae.metrics.sample_quality import score_samples

    real = x.float() / 255
    scores = score_samples(model, real[400:500], real[:200], real[500:600])
    assert scores["real_heldout"]["frechet_distance"] < scores["noise"]["frechet_distance"]
    assert scores["samples"]["confidence"] > 0.9 and scores["samples"]["classes_present"] == 2
