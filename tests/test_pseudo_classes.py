"""Priors on images without labels, conditioned on clusters of their code maps (prior.pseudo_classes)."""
import numpy as np
import pytest
import torch

from vqvae import api
from vqvae.config import load_config
from vqvae.data import ImageSet, TensorBatches
from vqvae.errors import ConfigError
from vqvae.runs import load_prior, load_vqvae, read_metrics
from vqvae.sampling import weighted_classes
from vqvae.training.prior_stage import encode_images, heldout_bits
from vqvae.training.pseudo_classes import find_pseudo_classes

from conftest import SIZE, bar_images, tiny_overrides


def unlabelled_bars(n=200):
    """(train, test) bar images with no labels at all."""
    images, _ = bar_images(n)
    t = torch.from_numpy(images)[:, None]
    return (ImageSet("bars-unlabelled", SIZE, 1, images=t[40:]), ImageSet("bars-unlabelled-test", SIZE, 1,
                                                                           images=t[:40]))


def test_clusters_follow_the_code_maps_not_their_order(trained_run):
    vqvae, _ = load_vqvae(trained_run)
    h = vqvae.latent_size
    # Two kinds of maps (all code 0, all code 1) with a little noise, interleaved: the clusters
    # must split them by kind whatever the order.
    g = torch.Generator().manual_seed(0)
    kind = torch.arange(60) % 2
    codes = kind[:, None, None].expand(60, h, h).clone()
    flip = torch.rand(60, h, h, generator=g) < 0.05
    codes[flip] = 2
    labels = find_pseudo_classes(vqvae, codes, 2)
    agree = (labels == kind).float().mean().item()
    assert agree in (0.0, 1.0)  # the same partition, up to the clusters' names
    assert torch.bincount(labels).tolist() == [30, 30]


def test_weighted_classes_follow_the_weights_and_interleave():
    labels = weighted_classes([0.5, 0.3, 0.2], 10)
    assert torch.bincount(labels).tolist() == [5, 3, 2]
    assert sorted(labels[:3].tolist()) == [0, 1, 2]  # every class early, not in blocks
    assert torch.bincount(weighted_classes([0.25] * 4, 6), minlength=4).sum() == 6


def test_prior_on_pseudo_classes_trains_without_labels_and_guides(bar_folder, tmp_path):
    train, test = unlabelled_bars()
    run = tmp_path / "run"
    cfg = load_config("tiny", tiny_overrides(bar_folder) + ["prior.pseudo_classes=3", "prior.label_dropout=0.2",
                                                           "prior.conditional=false"])
    api.train_vqvae(cfg, run, data=(train, test))
    metrics = api.train_prior(cfg, run, data=(train, test)).metrics
    assert metrics["conditional"] and metrics["pseudo_classes"] == 3
    assert metrics["class_names"] == ["cluster 0", "cluster 1", "cluster 2"]
    prior, config, _ = load_prior(run)
    assert prior.conditional and prior.null_class == 3 and config.prior.pseudo_classes == 3
    assert len(prior.spec.class_weights) == 3 and abs(sum(prior.spec.class_weights) - 1) < 1e-5
    # Sampled clusters follow the training frequencies; guidance applies (there is a null class).
    drawn = api.sample(run, tmp_path / "s", num_samples=12, guidance=2.0, device="cpu")
    assert drawn["guidance"] == 2.0 and drawn["num_samples"] == 12
    # Inpainting without a class infers the cluster, with the clusters' frequencies as p(c).
    images = torch.stack([test[i][0] for i in range(4)])
    inpainted = api.inpaint(run, images, "0,8,16,16", tmp_path / "inpainted.png", device="cpu")
    assert inpainted["class"] == "inferred" and inpainted["class_prior"] == "the prior's recorded class frequencies"
    assert set(inpainted["inferred_class_name"]) <= {"cluster 0", "cluster 1", "cluster 2"}
    assert all(1 / 3 <= p <= 1 for p in inpainted["inferred_class_posterior"])  # the argmax of 3 clusters
    # The held-out bits of its unconditional mode equal those computed with the null class by hand.
    vqvae, _ = load_vqvae(run)
    codes = encode_images(vqvae, test, torch.device("cpu")).long()
    null = torch.full((len(codes),), prior.null_class)
    by_hand = heldout_bits(prior, TensorBatches((codes, null), 500, torch.device("cpu"), shuffle=False))
    assert abs(read_metrics(run)["prior"]["test_bits_per_code"] - round(by_hand, 5)) < 1e-4
    # Validation is scored the same way (not with each map's own cluster), so the two figures compare.
    val_codes = torch.from_numpy(np.load(run / "codes" / "val.npy")).long()
    val_null = torch.full((len(val_codes),), prior.null_class)
    val_by_hand = heldout_bits(prior, TensorBatches((val_codes, val_null), 500, torch.device("cpu"), shuffle=False))
    assert abs(metrics["best_val_bits_per_code"] - round(val_by_hand, 5)) < 1e-4


def test_pseudo_classes_setting_is_checked():
    with pytest.raises(ConfigError, match="prior.pseudo_classes"):
        load_config("tiny", ["prior.pseudo_classes=1", "prior.label_dropout=0.1"])
    with pytest.raises(ConfigError, match="needs prior.label_dropout > 0"):
        load_config("tiny", ["prior.pseudo_classes=4"])


def test_unlabelled_folder_gets_the_presets_unlabelled_prior_unless_the_user_chose(tmp_path):
    from PIL import Image

    from vqvae.config import UNLABELLED_PRIOR
    from vqvae.data import choose_preset

    for i in range(3):
        Image.new("L", (28, 28)).save(tmp_path / f"{i}.png")
    choice = choose_preset("mnist", [f"data.dataset={tmp_path}"])
    assert choice.overrides == UNLABELLED_PRIOR["mnist"] and "clusters" in choice.message
    cfg = load_config(choice.preset, choice.overrides)
    assert cfg.prior.pseudo_classes > 0 and not cfg.prior.conditional and cfg.prior.label_dropout > 0
    # The user's own settings win: a plain unconditional prior, or their guidance.
    assert choose_preset("mnist", [f"data.dataset={tmp_path}", "prior.pseudo_classes=0"]).overrides == []
    mine = choose_preset("mnist", [f"data.dataset={tmp_path}", "sample.guidance=1"]).overrides
    assert "prior.pseudo_classes=30" in mine and not any(o.startswith("sample.guidance") for o in mine)


def test_a_prior_on_pseudo_classes_resumes_through_the_api_and_reports_its_unconditional_mode(tmp_path, bar_folder):
    """train_prior records a prior on pseudo-classes as conditional: resuming with the settings it was
    started with must pass the resume check, and the report must not say "given the class"."""
    from conftest import tiny_overrides
    from vqvae import api
    from vqvae.config import load_config

    settings = tiny_overrides(bar_folder) + ["prior.kind=maskgit", "prior.num_layers=1", "prior.hidden_channels=16",
                                             "prior.conditional=false", "prior.pseudo_classes=2", "prior.label_dropout=0.1"]
    run = tmp_path / "run"
    api.train_vqvae(load_config("tiny", settings), run)
    api.train_prior(load_config("tiny", settings), run)
    resumed = api.train_prior(load_config("tiny", settings + ["prior_train.epochs=3"]), run, resume=True)
    assert resumed.metrics["epochs"] == 3
    api.evaluate(run, device="cpu", samples=False)
    report = (run / "report.md").read_text()
    assert "nats per masked code in its unconditional mode (a prior on pseudo-classes)" in report
    assert "given the class" not in report


def test_a_prior_on_pseudo_classes_validated_the_old_way_is_not_resumed(tmp_path, bar_folder):
    """Before validation used the unconditional mode, a prior on pseudo-classes kept a best figure
    scored with each map's own cluster, lower than any new epoch's: resuming it is a one-line error."""
    from vqvae.checkpoint import load_checkpoint, save_checkpoint
    from vqvae.training.loop import checkpoint_path

    settings = tiny_overrides(bar_folder) + ["prior.conditional=false", "prior.pseudo_classes=2",
                                             "prior.label_dropout=0.1"]
    run = tmp_path / "run"
    api.train_vqvae(load_config("tiny", settings), run)
    api.train_prior(load_config("tiny", settings), run)
    path = checkpoint_path(run, "prior", "last")
    saved = load_checkpoint(path)
    assert saved["validation_labels"] == "null class"
    old = {k: v for k, v in saved.items() if k not in ("format", "version", "kind", "config", "model_state",
                                                       "validation_labels")}
    save_checkpoint(path, "prior", saved["config"], saved["model_state"], **old)
    with pytest.raises(ConfigError, match="validated with each map's own cluster") as caught:
        api.train_prior(load_config("tiny", settings + ["prior_train.epochs=3"]), run, resume=True)
    assert "\n" not in str(caught.value)
