"""Perceptual and adversarial training of the tokenizer (training/losses.py, the critic in the
loop's Stage contract): the adaptive weight, disc_start, exact resume, DDP, collapse, LPIPS."""
import json
import warnings

import pytest
import torch
import torchvision
from conftest import Killed, killed_after_steps, memory_data
from torch import nn

from vqvae import api
from vqvae.checkpoint import load_checkpoint, save_checkpoint
from vqvae.config import LossConfig, apply_overrides
from vqvae.errors import ConfigError, TrainingError
from vqvae.models import VQVAE
from vqvae.nn.discriminator import PatchDiscriminator
from vqvae.nn.perceptual import LPIPS
from vqvae.training.losses import (MAX_ADAPTIVE_WEIGHT, DiscriminatorWatch, TokenizerObjective, adaptive_weight, decoder_last_layer,
                                   discriminator_loss, r1_penalty, reconstruction_loss)
from vqvae.training.vqvae_stage import VQVAEStage

# A discriminator that fits 16-pixel images (2 stride-2 layers leave 2x2 patches), narrow for speed.
GAN = ["loss.adversarial=hinge", "loss.reconstruction=l1", "loss.disc_layers=2", "loss.disc_channels=8",
       "loss.disc_start=3", "train.adam_betas=0.5,0.9", "train.epochs=2", "train.lr_schedule=constant"]


def checkpoint(run, which="last"):
    return load_checkpoint(run / "checkpoints" / f"vqvae-{which}.pt")


def test_adaptive_weight_equals_a_hand_computation():
    """y = h W^T; nll = mean((y - t)^2), adversarial = -mean(c * y): the gradients at W are
    2/(Bm) (y - t)^T h and -1/(Bm) c^T h, and the weight is the ratio of their norms."""
    g = torch.Generator().manual_seed(0)
    h, t, c = torch.randn(5, 3, generator=g), torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    layer = nn.Linear(3, 4, bias=False)
    y = layer(h)
    nll, adversarial = (y - t).pow(2).mean(), -(c * y).mean()
    grad_nll = 2 / 20 * (y - t).detach().T @ h
    grad_adv = -1 / 20 * c.T @ h
    expected = grad_nll.norm() / (grad_adv.norm() + 1e-4)
    assert torch.allclose(adaptive_weight(nll, adversarial, layer.weight), expected, rtol=1e-5)
    # An adversarial term the layer cannot move is clamped, not infinite.
    assert adaptive_weight(100 * nll, 0 * y.sum(), layer.weight) == MAX_ADAPTIVE_WEIGHT


def test_the_decoder_last_layer_is_the_output_convolution(tiny_config):
    model = VQVAE(tiny_config.model, tiny_config.quantizer)
    assert decoder_last_layer(model.decoder) is model.decoder.layers[-1].weight
    assert model.decoder.layers[-1].weight.shape[1] == tiny_config.model.in_channels  # writes the image


def test_adversarial_term_is_zero_before_disc_start_and_not_after():
    objective = TokenizerObjective(LossConfig(adversarial="hinge", disc_start=5, reconstruction="l1"), None)
    torch.manual_seed(0)
    decoder = nn.Conv2d(4, 1, 3, padding=1)
    critic = PatchDiscriminator(1, 8, 2)
    x, z = torch.rand(4, 1, 16, 16), torch.randn(4, 4, 16, 16)
    before = objective.generator(x, decoder(z), critic, decoder.weight, step=4)
    assert before.terms["adversarial"] == 0 and before.terms["adaptive_weight"] == 0
    assert torch.equal(before.total, before.terms["recon"])
    assert objective.critic(critic, x, decoder(z).detach(), step=4)[0] is None
    after = objective.generator(x, decoder(z), critic, decoder.weight, step=5)
    assert after.terms["adversarial"] != 0 and after.terms["adaptive_weight"] > 0
    assert not torch.equal(after.total, after.terms["recon"])
    loss, terms = objective.critic(critic, x, decoder(z).detach(), step=5)
    assert loss is not None and loss.requires_grad and 0 <= terms["disc_accuracy"] <= 1
    # The model's loss gives the discriminator no gradient.
    after.total.backward()
    assert all(p.grad is None for p in critic.parameters()) and decoder.weight.grad is not None


def test_hinge_and_non_saturating_discriminator_losses():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.5])
    assert discriminator_loss(real, fake, "hinge") == pytest.approx(0.5 * (0.25 + 0.75))
    bce = 0.5 * (nn.functional.binary_cross_entropy_with_logits(real, torch.ones(2))
                 + nn.functional.binary_cross_entropy_with_logits(fake, torch.zeros(2)))
    assert discriminator_loss(real, fake, "non_saturating") == pytest.approx(bce.item())


def test_r1_penalty_of_a_linear_discriminator_is_its_squared_weight_norm():
    """D reads u = 2x - 1 and is <w, u>: grad_u D = w for every image, so E ||grad||^2 = ||w||^2
    (the penalty is on the [-1, 1] input the discriminator sees, not on the [0, 1] image)."""
    w = torch.randn(1, 3, 4, 4)
    real = torch.rand(5, 3, 4, 4, requires_grad=True)
    logits = ((2 * real - 1) * w).flatten(1).sum(1)
    assert r1_penalty(logits, real, input_scale=2.0).item() == pytest.approx(w.pow(2).sum().item(), rel=1e-5)


def test_l1_is_taken_on_the_minus_one_to_one_scale_of_taming():
    """taming's L1 is |x - x_hat| on images in [-1, 1]: twice the [0, 1] difference; l2 stays the seed's MSE."""
    x, x_hat = torch.full((1, 1, 2, 2), 0.5), torch.full((1, 1, 2, 2), 0.75)
    assert reconstruction_loss(x_hat, x, "l1").item() == pytest.approx(((2 * x_hat - 1) - (2 * x - 1)).abs().mean().item())
    assert reconstruction_loss(x_hat, x, "l1").item() == pytest.approx(0.5)
    assert reconstruction_loss(x_hat, x, "l2").item() == pytest.approx(0.0625)


def test_gan_training_keeps_the_discriminator_still_until_disc_start(tiny_config, tmp_path):
    # 4 steps per epoch; the discriminator starts at step 4 (the second epoch).
    cfg = apply_overrides(tiny_config, GAN + ["loss.disc_start=4"])
    result = api.train_vqvae(cfg, tmp_path / "run", data=memory_data())
    first, second = result.history
    assert first["adversarial"] == 0 and first["disc_loss"] == 0 and first["adaptive_weight"] == 0
    assert second["adversarial"] != 0 and second["disc_loss"] > 0 and second["adaptive_weight"] > 0
    ckpt = checkpoint(tmp_path / "run")
    assert {"critic_state", "critic_optimizer_state", "critic_scheduler_state"} <= set(ckpt)
    assert ckpt["critic_optimizer_state"]["state"]  # it trained
    assert ckpt["critic_optimizer_state"]["param_groups"][0]["betas"] == (0.5, 0.9)
    # An epoch before the discriminator is on is never the best checkpoint, however low its MSE.
    assert "val_loss" not in first and "val_mse" in first and "val_loss" in second
    best = checkpoint(tmp_path / "run", "best")
    assert torch.equal(best["model_state"]["decoder.layers.0.weight"], ckpt["model_state"]["decoder.layers.0.weight"])
    # Every term is in metrics.json's last epoch, and the curves have the GAN's panels.
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())["vqvae"]
    for key in ("recon", "adversarial", "adaptive_weight", "disc_loss", "logits_real", "logits_fake", "disc_accuracy"):
        assert key in metrics["last_epoch"], key
    assert metrics["objective"]["adversarial"] == "hinge"


def test_a_gan_run_whose_discriminator_never_starts_keeps_its_last_checkpoint(tiny_config, tmp_path):
    """No epoch is a best-checkpoint candidate: keep_last=false must not delete the only weights."""
    cfg = apply_overrides(tiny_config, GAN + ["loss.disc_start=1000", "train.keep_last=false"])
    api.train_vqvae(cfg, tmp_path / "run", data=memory_data())
    assert (tmp_path / "run" / "checkpoints" / "vqvae-last.pt").is_file()
    assert not (tmp_path / "run" / "checkpoints" / "vqvae-best.pt").exists()
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())["vqvae"]  # strict JSON: no Infinity
    assert metrics["best_val_mse"] is None and "val_mse" in metrics["last_epoch"]


def test_mid_epoch_resume_with_the_discriminator_is_bitwise(tiny_config, tmp_path):
    """Killed at step 7 (a checkpoint every 2 steps: the last holds step 6, epoch 2 batch 2), with
    the discriminator training since step 3, R1 on and a weight average: the resumed run's model,
    discriminator, optimisers and history equal an uninterrupted run's."""
    cfg = apply_overrides(tiny_config, GAN + ["train.checkpoint_every_steps=2", "train.ema_decay=0.9",
                                              "loss.r1_weight=1.0", "loss.disc_ramp_steps=2"])
    data = memory_data()
    api.train_vqvae(cfg, tmp_path / "straight", data=data)
    with killed_after_steps(7), pytest.raises(Killed):
        api.train_vqvae(cfg, tmp_path / "killed", data=data)
    saved = checkpoint(tmp_path / "killed")
    assert saved["loop"]["step"] == 6 and saved["loop"]["batch_in_epoch"] == 2
    api.train_vqvae(cfg, tmp_path / "killed", resume=True, data=data)
    a, b = checkpoint(tmp_path / "straight"), checkpoint(tmp_path / "killed")
    for part in ("model_state", "training_model_state", "critic_state"):
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), (part, key)
    for key, value in a["critic_optimizer_state"]["state"].items():
        assert torch.equal(value["exp_avg"], b["critic_optimizer_state"]["state"][key]["exp_avg"])
    drop = ("seconds", "images_per_s")
    assert [{k: v for k, v in h.items() if k not in drop} for h in a["loop"]["history"]] == \
           [{k: v for k, v in h.items() if k not in drop} for h in b["loop"]["history"]]
    # The weight average is what the checkpoint offers for use, and it differs from the trained weights.
    assert any(not torch.equal(a["model_state"][k], a["training_model_state"][k]) for k in a["model_state"])


def test_an_old_format_checkpoint_still_resumes(tiny_config, tmp_path):
    """A checkpoint as the toolkit wrote it before the loss section, betas, weight average and
    stage state existed resumes to the same weights as the new format."""
    cfg = apply_overrides(tiny_config, ["train.epochs=1", "train.lr_schedule=constant"])
    data = memory_data()
    api.train_vqvae(cfg, tmp_path / "new", data=data)
    path = tmp_path / "new" / "checkpoints" / "vqvae-last.pt"
    new = load_checkpoint(path)
    old = {k: v for k, v in new.items() if k not in ("stage_state", "format", "version", "kind", "config",
                                                     "model_state")}
    config = json.loads(json.dumps(new["config"]))
    del config["loss"]
    for section in ("train", "prior_train"):
        del config[section]["adam_betas"], config[section]["ema_decay"]
    (tmp_path / "old" / "checkpoints").mkdir(parents=True)
    save_checkpoint(tmp_path / "old" / "checkpoints" / "vqvae-last.pt", "vqvae", config, new["model_state"], **old)
    (tmp_path / "old" / "config.json").write_text((tmp_path / "new" / "config.json").read_text())
    more = apply_overrides(cfg, ["train.epochs=2"])
    api.train_vqvae(more, tmp_path / "new", resume=True, data=data)
    api.train_vqvae(more, tmp_path / "old", resume=True, data=data)
    a, b = checkpoint(tmp_path / "new"), checkpoint(tmp_path / "old")
    for key, value in a["model_state"].items():
        assert torch.equal(value, b["model_state"][key]), key


def test_a_collapsed_discriminator_stops_the_run_with_the_step_and_what_to_change(tiny_config, tmp_path, capsys):
    # A discriminator 50x faster than a barely moving model wins at once.
    cfg = apply_overrides(tiny_config, GAN + ["loss.disc_start=0", "loss.disc_lr=0.01", "train.lr=1e-6",
                                              "loss.collapse_accuracy=0.9", "loss.collapse_steps=2",
                                              "loss.collapse_action=stop", "train.epochs=3",
                                              "loss.stall_accuracy=0"])  # its first steps are at chance
    with pytest.raises(TrainingError) as caught:
        api.train_vqvae(cfg, tmp_path / "run", data=memory_data())
    message = str(caught.value)
    assert "\n" not in message
    assert "discriminator collapse at step" in message and "loss.disc_weight" in message
    step = int(message.split("at step ")[1].split(":")[0])
    assert 2 <= step < 12  # two collapsed steps in a row at least; stopped before the end
    # "warn" trains on, saying it once.
    warned = api.train_vqvae(apply_overrides(cfg, ["loss.collapse_action=warn", "train.epochs=2"]), tmp_path / "warn",
                             data=memory_data())
    assert len(warned.history) == 2
    assert sum("discriminator collapse" in line for line in capsys.readouterr().err.splitlines()) == 1


@pytest.fixture(scope="module")
def random_vgg16(tmp_path_factory):
    """A randomly initialised torchvision VGG16 state_dict of the right shapes (no download)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vgg") / "vgg16.pth"
    features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])  # vgg16's, without its head
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    return path


def test_lpips_loads_a_torchvision_vgg16_file_into_the_lpips_network(random_vgg16):
    import lpips

    ours = LPIPS(random_vgg16)
    state = torch.load(random_vgg16, weights_only=True)
    assert torch.equal(getattr(ours.net.net.slice5, "28").weight, state["features.28.weight"])
    assert torch.equal(getattr(ours.net.net.slice1, "0").bias, state["features.0.bias"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lpips passes torchvision's deprecated `pretrained`
        reference = lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False)
    reference.net.load_state_dict(ours.net.net.state_dict())
    x, y = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    assert torch.allclose(ours(x, y), reference(x, y, normalize=True).flatten())
    assert torch.all(ours(x, x) == 0) and torch.all(ours(x, y) > 0)
    assert not any(p.requires_grad for p in ours.parameters())
    ours.train()
    assert not ours.training  # its heads' dropout never switches on


def test_training_with_lpips_on_grey_images(tiny_config, tmp_path, random_vgg16):
    cfg = apply_overrides(tiny_config, GAN + ["loss.perceptual=lpips", f"loss.lpips_vgg_weights={random_vgg16}",
                                              "train.epochs=1"])
    result = api.train_vqvae(cfg, tmp_path / "run", data=memory_data())
    assert result.history[0]["perceptual"] > 0


def test_missing_vgg_weights(tiny_config, tmp_path, capsys):
    missing = tmp_path / "nowhere" / "vgg16.pth"
    cfg = apply_overrides(tiny_config, GAN + ["loss.perceptual=lpips", f"loss.lpips_vgg_weights={missing}"])
    with pytest.raises(ConfigError) as caught:
        api.train_vqvae(cfg, tmp_path / "run", data=memory_data())
    assert str(missing) in str(caught.value) and "vgg16" in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "run").exists()  # refused before training started
    # "auto" says so in one line and trains with the other terms.
    result = api.train_vqvae(apply_overrides(cfg, ["loss.perceptual=auto", "train.epochs=1"]), tmp_path / "auto",
                             data=memory_data())
    out = capsys.readouterr().out
    assert sum("LPIPS is off" in line for line in out.splitlines()) == 1
    assert result.history[0]["perceptual"] == 0 and result.history[0]["adversarial"] != 0


def test_discriminator_settings_are_checked(tiny_config):
    with pytest.raises(ConfigError, match="loss.disc_layers=2 or fewer"):
        apply_overrides(tiny_config, ["loss.adversarial=hinge", "loss.disc_layers=3"])
    with pytest.raises(ConfigError, match="train.adam_betas"):
        apply_overrides(tiny_config, ["train.adam_betas=0.5,1.0"])


# R1 weight 4: at 1.0 the weaker penalty leaves a discriminator whose second epoch is sensitive
# enough that summation order shows in the 5th digit; this checks the same code, not a looser bound.
@pytest.mark.parametrize("r1", [[], ["loss.r1_weight=4.0"]], ids=["plain", "r1"])
def test_two_gloo_processes_train_the_gan_as_one_process(tiny_config, tmp_path, r1):
    """The same global batch split over two processes: the adaptive weight (its gradients
    averaged over processes), the model and the GroupNorm discriminator match one process;
    with the R1 penalty too (a gradient of the discriminator's output taken inside its loss)."""
    from test_distributed import launch

    # No validation split: 128 training images in 4 batches of 32 that split evenly (16 + 16).
    cfg = apply_overrides(tiny_config, GAN + ["train.amp=off", "train.channels_last=false", "data.val_fraction=0",
                                              "loss.disc_start=2", "prior_train.epochs=1", *r1])
    launch(cfg, tmp_path / "ddp", 2)
    launch(cfg, tmp_path / "single", 1)
    ddp, single = checkpoint(tmp_path / "ddp" / "run"), checkpoint(tmp_path / "single" / "run")
    for a, b in zip(ddp["loop"]["history"], single["loop"]["history"]):
        for key in ("adaptive_weight", "disc_loss", "logits_real", "logits_fake", "recon", *(("r1",) if r1 else ())):
            # Equal to the 6 digits the history keeps; per-process adaptive weights miss by ~1e-3.
            assert a[key] == pytest.approx(b[key], rel=2e-5, abs=2e-6), (key, a[key], b[key])
    for key, value in ddp["critic_state"].items():
        assert torch.allclose(value, single["critic_state"][key], rtol=1e-4, atol=1e-5), key
    # The collapse and stall watch reads the global batch's accuracy, not rank 0's half of it.
    assert ddp["stage_state"]["stall_active_steps"] == single["stage_state"]["stall_active_steps"] > 0
    assert ddp["stage_state"]["stall_mean_accuracy"] == pytest.approx(single["stage_state"]["stall_mean_accuracy"],
                                                                      abs=1e-6)
    for key, value in ddp["model_state"].items():
        if value.is_floating_point():  # the k-means-seeded EMA codebook drifts most, by ~2e-4
            assert torch.allclose(value, single["model_state"][key], rtol=1e-3, atol=1e-3), key


def test_the_vqgan_tiny_preset_trains_with_the_vqgan_losses(bar_folder, tmp_path, capsys):
    """Every part of the path on the VQGAN-class decoder: its output conv takes the adaptive
    weight's gradients, the discriminator trains from step 1, LPIPS is "auto" (off here, said so)."""
    from conftest import tiny_overrides
    from vqvae.config import load_config

    cfg = load_config("vqgan-tiny", tiny_overrides(bar_folder) + ["train.epochs=1", "loss.lpips_vgg_weights=/nowhere.pth"])
    assert (cfg.loss.adversarial, cfg.loss.reconstruction, cfg.train.adam_betas) == ("hinge", "l1", [0.5, 0.9])
    model = VQVAE(cfg.model, cfg.quantizer)
    assert decoder_last_layer(model.decoder) is model.decoder.conv_out.weight
    result = api.train_vqvae(cfg, tmp_path / "run", data=memory_data())
    assert result.history[0]["adversarial"] != 0 and result.history[0]["adaptive_weight"] > 0
    assert "LPIPS is off" in capsys.readouterr().out


def test_the_non_finite_guard_covers_the_discriminator(tiny_config, tmp_path, monkeypatch):
    """A non-finite discriminator term stops the run naming it, or (skip) leaves both networks as
    they were: the skipped step's model and discriminator weights are untouched."""
    original = VQVAEStage.critic_loss
    calls = {"n": 0}

    def critic_loss(self, critic, batch):
        loss, terms = original(self, critic, batch)
        calls["n"] += 1
        if calls["n"] == 5 and loss is not None:
            loss = loss * float("nan")
            terms = {**terms, "disc_loss": terms["disc_loss"] * float("nan")}
        return loss, terms

    monkeypatch.setattr(VQVAEStage, "critic_loss", critic_loss)
    cfg = apply_overrides(tiny_config, GAN)
    with pytest.raises(TrainingError, match="non-finite loss at step 5 .* in term\\(s\\) disc_loss"):
        api.train_vqvae(cfg, tmp_path / "stop", data=memory_data())
    calls["n"] = 0
    result = api.train_vqvae(apply_overrides(cfg, ["train.on_nonfinite=skip"]), tmp_path / "skip", data=memory_data())
    assert result.history[1]["skipped_batches"] == 1
    assert all(torch.isfinite(v).all() for v in checkpoint(tmp_path / "skip")["critic_state"].values())


def test_a_stalled_discriminator_stops_the_run_with_the_step_and_what_to_change(tiny_config, tmp_path, capsys):
    # A discriminator that barely moves (lr 1e-12) outputs what its initialisation does for real and
    # reconstructed images alike: accuracy 0.5, hinge loss about 1, the complaint of taming's issues.
    cfg = apply_overrides(tiny_config, GAN + ["loss.disc_start=2", "loss.disc_lr=1e-12", "loss.collapse_steps=3",
                                              "loss.collapse_action=stop", "train.epochs=4"])
    with pytest.raises(TrainingError) as caught:
        api.train_vqvae(cfg, tmp_path / "run", data=memory_data())
    message = str(caught.value)
    assert "\n" not in message
    assert "discriminator stall at step" in message and "loss.disc_warmup_steps, now 0, at most loss.disc_start, now 2" in message
    assert "loss.disc_lr, now 1e-12 in effect" in message and "loss.perceptual=lpips" in message
    assert "r1_weight" not in message
    step = int(message.split("at step ")[1].split(":")[0])
    assert step == 2 + 2 * 3  # the term is on from step 3 (the loop counts from 1): judged after 2 x 3 steps
    # "warn" trains on, saying it once per stall.
    warned = api.train_vqvae(apply_overrides(cfg, ["loss.collapse_action=warn", "train.epochs=3"]), tmp_path / "warn",
                             data=memory_data())
    assert len(warned.history) == 3
    assert sum("discriminator stall" in line for line in capsys.readouterr().err.splitlines()) == 1


def test_the_stall_watch_averages_accuracy_and_resumes_from_its_state():
    cfg = LossConfig(adversarial="hinge", collapse_steps=2, stall_accuracy=0.55)
    watch = DiscriminatorWatch(cfg, 1e-4)
    said = [watch.update(a, True, s, (0.0, 0.0), 1.0) for s, a in enumerate([0.4, 0.6, 0.5], 1)]
    assert said == [None] * 3  # fewer than 2 x collapse_steps steps on
    assert watch.mean_accuracy == pytest.approx(0.5)  # the plain mean of the first 2, then (0.5 + 0.5) / 2
    resumed = DiscriminatorWatch(cfg, 1e-4)
    resumed.load(watch.state())
    for w in (watch, resumed):
        message, stop = w.update(0.5, True, 4, (0.0, 0.0), 1.0)
        assert "stall at step 4" in message and not stop
        assert w.update(0.5, True, 5, (0.0, 0.0), 1.0) is None  # said once per stall
    assert resumed.state() == watch.state()
    r1 = DiscriminatorWatch(LossConfig(adversarial="hinge", collapse_steps=1, r1_weight=2.0), 1e-4, "lpips")
    r1.update(0.5, True, 1, (0.0, 0.0), 1.0)
    message, _ = r1.update(0.5, True, 2, (0.0, 0.0), 1.0)
    assert "lower loss.r1_weight (now 2)" in message and "loss.perceptual=lpips" not in message
    # A mean that wavers about the threshold is the same stall, not a new one each time it dips.
    assert all(watch.update(a, True, s, (0.0, 0.0), 1.0) is None for s, a in zip(range(6, 12), [0.7, 0.4] * 3))
    # A discriminator that clearly recovers (half-way to collapse_accuracy, 0.77) ends the episode;
    # a later stall is said again.
    assert all(watch.update(0.9, True, s, (1.0, -1.0), 0.1) is None for s in (12, 13)) and watch.mean_accuracy >= 0.77
    said = [watch.update(0.0, True, s, (0.0, 0.0), 1.0) for s in range(14, 20)]
    assert sum(m is not None for m in said) == 1
    # A mean at or above the threshold is no stall; switching the term off starts the count afresh.
    fresh = DiscriminatorWatch(cfg, 1e-4)
    assert all(fresh.update(0.55, True, s, (0.5, -0.5), 0.7) is None for s in range(1, 10))
    fresh.update(0.5, False, 10, (0.0, 0.0), 1.0)
    assert fresh.active_steps == 0
    # stall_accuracy=0: never a stall, even at accuracy 0.
    off = DiscriminatorWatch(LossConfig(adversarial="hinge", collapse_steps=2, stall_accuracy=0.0), 1e-4)
    assert all(off.update(0.0, True, s, (0.0, 0.0), 1.0) is None for s in range(1, 10))
    # A checkpoint written before the stall watch existed starts it afresh, keeping the collapse count.
    old = DiscriminatorWatch(cfg, 1e-4)
    old.load({"collapse_run": 3, "collapse_warned": True})
    assert (old.run, old.warned, old.active_steps, old.mean_accuracy, old.stall_warned) == (3, True, 0, 0.0, False)


def test_the_collapse_message_names_the_warmup_when_there_is_one():
    cfg = LossConfig(adversarial="hinge", collapse_steps=1, disc_start=10, disc_warmup_steps=10)
    message, _ = DiscriminatorWatch(cfg, 1e-4).update(1.0, True, 11, (3.0, -3.0), 0.0)
    assert "collapse at step 11" in message and "loss.disc_warmup_steps (now 10)" in message
    message, _ = DiscriminatorWatch(LossConfig(adversarial="hinge", collapse_steps=1), 1e-4).update(
        1.0, True, 1, (3.0, -3.0), 0.0)
    assert "disc_warmup_steps" not in message


def test_the_warmup_trains_the_discriminator_and_leaves_the_model_bitwise_alone(tiny_config, tmp_path):
    # The term never starts within this run: with or without the warm-up, the model's steps are the
    # same to the bit (nothing of the discriminator's training reaches it, nor its random numbers).
    cfg = apply_overrides(tiny_config, GAN + ["loss.disc_start=1000", "train.epochs=1"])
    api.train_vqvae(cfg, tmp_path / "cold", data=memory_data())
    api.train_vqvae(apply_overrides(cfg, ["loss.disc_warmup_steps=1000"]), tmp_path / "warm", data=memory_data())
    cold, warm = checkpoint(tmp_path / "cold"), checkpoint(tmp_path / "warm")
    for key, value in cold["model_state"].items():
        assert torch.equal(value, warm["model_state"][key]), key
    assert any(not torch.equal(v, warm["critic_state"][k]) for k, v in cold["critic_state"].items())
    assert cold["loop"]["history"][0]["disc_loss"] == 0 and warm["loop"]["history"][0]["disc_loss"] > 0
    # Changing when the discriminator starts on resume is allowed, with a note saying from when it acts.
    more = apply_overrides(cfg, ["train.epochs=2", "loss.disc_start=1002", "loss.disc_warmup_steps=1001"])
    result = api.train_vqvae(more, tmp_path / "warm", resume=True, data=memory_data())
    notes = [n for n in result.metrics["resume_notes"] if "loss.disc_start" in n]
    assert len(notes) == 1 and "loss.disc_start 1000 -> 1002, loss.disc_warmup_steps 1000 -> 1001" in notes[0]
    assert "the discriminator trains from step 2 and its term enters the model's loss from step 1003" in notes[0]


def test_the_discriminator_warms_up_before_its_term_enters_the_models_loss():
    objective = TokenizerObjective(LossConfig(adversarial="hinge", disc_start=5, disc_warmup_steps=2,
                                              reconstruction="l1"), None)
    torch.manual_seed(0)
    decoder = nn.Conv2d(4, 1, 3, padding=1)
    critic = PatchDiscriminator(1, 8, 2)
    x, z = torch.rand(4, 1, 16, 16), torch.randn(4, 4, 16, 16)
    assert objective.critic(critic, x, decoder(z).detach(), step=2)[0] is None
    for step in (3, 4):  # it trains, and the model's loss is still the reconstruction's alone
        assert objective.critic(critic, x, decoder(z).detach(), step=step)[0] is not None
        g = objective.generator(x, decoder(z), critic, decoder.weight, step=step)
        assert g.terms["adversarial"] == 0 and torch.equal(g.total, g.terms["recon"])
    assert objective.generator(x, decoder(z), critic, decoder.weight, step=5).terms["adversarial"] != 0


@pytest.mark.parametrize("overrides, named", [
    (["loss.disc_start=10", "loss.disc_warmup_steps=11"], "loss.disc_warmup_steps=11"),
    (["loss.stall_accuracy=0.995"], "loss.stall_accuracy=0.995"),
    (["loss.stall_accuracy=1"], "loss.stall_accuracy"),
])
def test_bad_warmup_and_stall_settings_are_one_line_errors(tiny_config, overrides, named):
    with pytest.raises(ConfigError) as caught:
        apply_overrides(tiny_config, GAN + overrides)
    assert named in str(caught.value) and "\n" not in str(caught.value)
