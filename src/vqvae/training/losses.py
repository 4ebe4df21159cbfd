"""The tokenizer's perceptual and adversarial objective (VQGAN: Esser et al., CVPR 2021, eq. 4-7).

The model (generator) minimises
    reconstruction + perceptual_weight * LPIPS + quantizer terms + ramp(step) * lambda * adversarial
where lambda is taming-transformers' adaptive weight: the ratio of the gradient norms of the
reconstruction(+perceptual) term and of the adversarial term at the decoder's last layer,
clamped to [0, 1e4], times `loss.disc_weight`. The patch discriminator (the loop's "critic")
minimises the hinge or non-saturating loss on real images and the model's detached
reconstructions, plus an optional R1 penalty. The adversarial term switches on at
`loss.disc_start` steps; the discriminator trains from `loss.disc_warmup_steps` before that.

Under DDP each process holds its share of the batch: the gradients that define lambda are
averaged over processes before their norms are taken, so lambda is the one process would
compute at the global batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..config import LossConfig
from ..nn.discriminator import INPUT_SCALE

# Taming's clamp of the adaptive weight, and the epsilon under its denominator.
MAX_ADAPTIVE_WEIGHT = 1e4
GRADIENT_EPSILON = 1e-4


def uses_objective(cfg: LossConfig) -> bool:
    """False for the seed's loss (MSE + quantizer terms), which the model computes itself."""
    return cfg.reconstruction != "l2" or cfg.perceptual != "none" or cfg.adversarial != "none"


def reconstruction_loss(x_hat: torch.Tensor, x: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-pixel mean, in fp32, of images in [0, 1]: "l1" is taming's absolute error, taken on the
    [-1, 1] scale its networks see (twice the [0, 1] error), so perceptual_weight=1 and the
    adaptive weight balance the terms as taming's do; "l2" is the seed's squared error on [0, 1]."""
    diff = x_hat.float() - x.float()
    return 2 * diff.abs().mean() if kind == "l1" else diff.pow(2).mean()


def generator_adversarial_loss(logits_fake: torch.Tensor, kind: str) -> torch.Tensor:
    """What the model minimises to fool the discriminator: -E[D(x_hat)] for hinge (taming's
    generator loss), E[softplus(-D(x_hat))] (= -log sigmoid) for the non-saturating GAN."""
    logits_fake = logits_fake.float()
    return -logits_fake.mean() if kind == "hinge" else F.softplus(-logits_fake).mean()


def discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor, kind: str) -> torch.Tensor:
    """Hinge: (E[relu(1 - D(x))] + E[relu(1 + D(x_hat))]) / 2; non-saturating: the same with
    softplus(-D(x)) and softplus(D(x_hat)) (binary cross-entropy on logits)."""
    if kind == "hinge":
        return 0.5 * (F.relu(1 - logits_real).mean() + F.relu(1 + logits_fake).mean())
    return 0.5 * (F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean())


def discriminator_accuracy(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Fraction of patches judged right (real > 0, reconstruction < 0), real and fake weighted equally."""
    return 0.5 * ((logits_real > 0).float().mean() + (logits_fake < 0).float().mean())


def r1_penalty(logits_real: torch.Tensor, real: torch.Tensor, input_scale: float) -> torch.Tensor:
    """E ||grad D||^2 on real images (Mescheder et al., ICML 2018); `real` (in [0, 1]) requires grad.
    The gradient is taken with respect to what the discriminator reads, input_scale * real - 1
    ([-1, 1], as the literature's R1 weights assume): d/dreal divided by input_scale."""
    (grad,) = torch.autograd.grad(logits_real.sum(), real, create_graph=True)
    return (grad.float() / input_scale).pow(2).flatten(1).sum(1).mean()


def _mean_over_processes(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = t.clone()
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return t


def adaptive_weight(nll: torch.Tensor, adversarial: torch.Tensor, last_layer: torch.Tensor) -> torch.Tensor:
    """taming's `calculate_adaptive_weight`: |d nll / d W| / (|d adversarial / d W| + 1e-4), W the
    decoder's last layer weight, clamped to [0, 1e4] and detached. Under DDP the two gradients
    are averaged over processes first (each process's loss is the mean over its share)."""
    (g_nll,) = torch.autograd.grad(nll, last_layer, retain_graph=True)
    (g_adv,) = torch.autograd.grad(adversarial, last_layer, retain_graph=True)
    g_nll, g_adv = _mean_over_processes(g_nll.float()), _mean_over_processes(g_adv.float())
    return (g_nll.norm() / (g_adv.norm() + GRADIENT_EPSILON)).clamp(0, MAX_ADAPTIVE_WEIGHT).detach()


def decoder_last_layer(decoder: nn.Module) -> nn.Parameter:
    """The weight of the layer that writes the image: a decoder's `last_layer` when it names it,
    else its last convolution in registration order (the output conv of both architectures)."""
    named = getattr(decoder, "last_layer", None)
    if isinstance(named, nn.Module):
        return named.weight
    if isinstance(named, nn.Parameter):
        return named
    convs = [m for m in decoder.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    if not convs:
        raise TypeError(f"{type(decoder).__name__} has no convolution to take the adaptive weight's gradients at; "
                        f"give it a `last_layer` attribute")
    return convs[-1].weight


@dataclass
class GeneratorLoss:
    total: torch.Tensor  # what the model minimises, less the quantizer's terms
    terms: dict  # reconstruction, perceptual, adversarial (unweighted), adaptive_weight (the weight applied)


class TokenizerObjective:
    """The perceptual and adversarial objective of one run: built once from `loss.*`, called by
    the VQ-VAE stage for the model's loss and the discriminator's."""

    def __init__(self, cfg: LossConfig, perceptual: nn.Module | None):
        self.cfg = cfg
        self.perceptual = perceptual  # a frozen LPIPS (nn/perceptual.py), or None
        self.adversarial = cfg.adversarial != "none"
        self.generator_terms = ("perceptual", "adversarial", "adaptive_weight")
        self.critic_terms = (("disc_loss", "logits_real", "logits_fake", "disc_accuracy")
                             + (("r1",) if cfg.r1_weight > 0 else ()))

    def adversarial_factor(self, step: int) -> float:
        """0 before loss.disc_start steps, then 1 (or rising linearly over loss.disc_ramp_steps)."""
        if not self.adversarial or step < self.cfg.disc_start:
            return 0.0
        if self.cfg.disc_ramp_steps == 0:
            return 1.0
        return min(1.0, (step - self.cfg.disc_start + 1) / self.cfg.disc_ramp_steps)

    def critic_trains(self, step: int) -> bool:
        """Whether the discriminator takes a step at `step`: from loss.disc_warmup_steps before disc_start."""
        return self.adversarial and step >= self.cfg.disc_start - self.cfg.disc_warmup_steps

    def generator(self, x: torch.Tensor, x_hat: torch.Tensor, critic: nn.Module | None,
                  last_layer: torch.Tensor, step: int) -> GeneratorLoss:
        """The model's loss on images `x` and their reconstructions `x_hat` at step `step`. `critic`
        is the unwrapped discriminator: its parameters get no gradient from this loss."""
        zero = x_hat.new_zeros((), dtype=torch.float32)
        recon = reconstruction_loss(x_hat, x, self.cfg.reconstruction)
        perceptual = self.perceptual(x, x_hat).mean() if self.perceptual is not None else zero
        nll = recon + self.cfg.perceptual_weight * perceptual
        factor = self.adversarial_factor(step)
        if factor == 0.0:
            return GeneratorLoss(nll, {"recon": recon, "perceptual": perceptual, "adversarial": zero,
                                       "adaptive_weight": zero})
        critic.requires_grad_(False)  # the gradient flows through the discriminator to x_hat only
        try:
            adversarial = generator_adversarial_loss(critic(x_hat), self.cfg.adversarial)
        finally:
            critic.requires_grad_(True)
        weight = self.cfg.disc_weight * factor
        if self.cfg.adaptive_weight:
            weight = weight * adaptive_weight(nll, adversarial, last_layer)
        weight = torch.as_tensor(weight, dtype=torch.float32, device=x_hat.device)
        return GeneratorLoss(nll + weight * adversarial, {"recon": recon, "perceptual": perceptual,
                                                          "adversarial": adversarial, "adaptive_weight": weight})

    def critic(self, critic: nn.Module, x: torch.Tensor, fake: torch.Tensor,
               step: int) -> tuple[torch.Tensor | None, dict]:
        """The discriminator's loss on real `x` and detached reconstructions `fake`, and its
        statistics; (None, zeros) on a step where it does not train yet (critic_trains)."""
        if not self.critic_trains(step):
            zero = fake.new_zeros((), dtype=torch.float32)
            return None, {name: zero for name in self.critic_terms}
        real = x.detach().requires_grad_(self.cfg.r1_weight > 0)
        # One forward of real and fake together: under DDP each parameter is used once per step.
        logits = critic(torch.cat([real, fake.detach().to(real.dtype)])).float()
        logits_real, logits_fake = logits.split([x.shape[0], fake.shape[0]])
        loss = discriminator_loss(logits_real, logits_fake, self.cfg.adversarial)
        terms = {"disc_loss": loss.detach(), "logits_real": logits_real.detach().mean(),
                 "logits_fake": logits_fake.detach().mean(),
                 "disc_accuracy": discriminator_accuracy(logits_real.detach(), logits_fake.detach())}
        if self.cfg.r1_weight > 0:
            r1 = r1_penalty(logits_real, real, INPUT_SCALE)
            loss = loss + 0.5 * self.cfg.r1_weight * r1
            terms["r1"] = r1.detach()
        return loss, terms


class DiscriminatorWatch:
    """Watches the discriminator, once its term is on, for the two ways it stops guiding the decoder:
    - a collapse: it wins almost every patch (disc_accuracy >= loss.collapse_accuracy) for
      loss.collapse_steps steps in a row; the reconstructions are told apart so easily that its
      gradient no longer points anywhere useful (and the adaptive weight often runs to its clamp);
    - a stall: its accuracy, averaged over about the last collapse_steps steps, is below
      loss.stall_accuracy although its term has been on for 2 x collapse_steps steps (time for a
      fresh discriminator to learn): it tells reconstructions from real images no better than chance
      (hinge loss near 1.0, non-saturating near ln 2, logits near 0), so its gradient is close to noise.
    Each is said once per episode (warn) or stops the run (stop); a stall's episode ends when the mean
    recovers half-way to collapse_accuracy. `disc_lr` (the discriminator's learning rate in effect)
    and `perceptual` (the perceptual term trained with) are for the advice."""

    def __init__(self, cfg: LossConfig, disc_lr: float, perceptual: str = "none"):
        self.cfg = cfg
        self.disc_lr = disc_lr
        self.perceptual = perceptual  # what the run trains with ("none" when "auto" found no weights)
        self.run = 0  # consecutive collapsed steps so far
        self.warned = False  # warned during the current run of collapsed steps
        self.active_steps = 0  # steps with the adversarial term on, since it last switched on
        self.mean_accuracy = 0.0  # mean of disc_accuracy over those steps, the last collapse_steps of them mostly
        self.stall_warned = False

    def update(self, accuracy: float, active: bool, step: int, logits: tuple[float, float],
               disc_loss: float) -> tuple[str, bool] | None:
        """After a step: (message, stop?) when a collapse or a stall is found, else None."""
        if self.cfg.collapse_action == "off":
            return None
        if not active:
            self.run, self.warned, self.active_steps, self.stall_warned = 0, False, 0, False
            return None
        collapse = self._collapse(accuracy, step, logits)
        stall = self._stall(accuracy, step, logits, disc_loss)  # its mean is kept up on every active step
        return collapse or stall

    def _collapse(self, accuracy, step, logits):
        if accuracy < self.cfg.collapse_accuracy:
            self.run, self.warned = 0, False
            return None
        self.run += 1
        if self.run < self.cfg.collapse_steps or (self.warned and self.cfg.collapse_action == "warn"):
            return None
        self.warned = True
        stop = self.cfg.collapse_action == "stop"
        message = (f"vqvae: discriminator collapse at step {step}: it told reconstructions from real images with "
                   f"accuracy >= {self.cfg.collapse_accuracy:g} for {self.run} steps in a row (mean logits real "
                   f"{logits[0]:.3g}, fake {logits[1]:.3g}); lower loss.disc_weight (now {self.cfg.disc_weight:g}) or "
                   f"raise loss.disc_start (now {self.cfg.disc_start}) so the decoder is better first"
                   + (f", or shorten the discriminator's head start, loss.disc_warmup_steps (now "
                      f"{self.cfg.disc_warmup_steps})" if self.cfg.disc_warmup_steps else "")
                   + ", or set " + ("loss.collapse_action=warn to train on" if stop
                                    else "loss.collapse_action=stop to stop here"))
        return message, stop

    def _stall(self, accuracy, step, logits, disc_loss):
        self.active_steps += 1
        # The plain mean over the first collapse_steps steps, then an exponential mean of that span.
        self.mean_accuracy += (accuracy - self.mean_accuracy) / min(self.active_steps, self.cfg.collapse_steps)
        if self.mean_accuracy >= self.cfg.stall_accuracy:
            if self.mean_accuracy >= (self.cfg.stall_accuracy + self.cfg.collapse_accuracy) / 2:
                self.stall_warned = False  # a clear recovery: a later stall is a new one (no repeats on a mean near the line)
            return None
        if self.active_steps < 2 * self.cfg.collapse_steps or (self.stall_warned and self.cfg.collapse_action == "warn"):
            return None
        self.stall_warned = True
        stop = self.cfg.collapse_action == "stop"
        c = self.cfg
        message = (f"vqvae: discriminator stall at step {step}: its accuracy averaged {self.mean_accuracy:.3f} over "
                   f"about the last {c.collapse_steps} steps, no better than chance (loss {disc_loss:.3g}; mean logits "
                   f"real {logits[0]:.3g}, fake {logits[1]:.3g}), so its gradient "
                   f"carries little signal for the decoder. "
                   + (f"An R1 penalty can flatten it: lower loss.r1_weight (now {c.r1_weight:g}). "
                      if c.r1_weight > 0 else "")
                   + ("Knobs: LPIPS (loss.perceptual=lpips, the published recipe), " if self.perceptual == "none"
                      else "Knobs: ")
                   + f"a faster discriminator (loss.disc_lr, now {self.disc_lr:g} in effect), a head start in a new "
                     f"run (loss.disc_warmup_steps, now {c.disc_warmup_steps}, at most loss.disc_start, now "
                     f"{c.disc_start}); or set "
                   + ("loss.collapse_action=warn to train on" if stop else "loss.collapse_action=stop to stop here"))
        return message, stop

    def state(self) -> dict:
        return {"collapse_run": self.run, "collapse_warned": self.warned, "stall_active_steps": self.active_steps,
                "stall_mean_accuracy": self.mean_accuracy, "stall_warned": self.stall_warned}

    def load(self, state: dict) -> None:
        """From a checkpoint's training state; runs saved before the stall watch start it afresh."""
        self.run, self.warned = int(state.get("collapse_run", 0)), bool(state.get("collapse_warned", False))
        self.active_steps = int(state.get("stall_active_steps", 0))
        self.mean_accuracy = float(state.get("stall_mean_accuracy", 0.0))
        self.stall_warned = bool(state.get("stall_warned", False))
