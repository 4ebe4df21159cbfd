"""Stage 1: train the VQ-VAE, then write its run-folder files.

With `loss.*` beyond the seed's MSE (l1, LPIPS, a patch discriminator: training/losses.py) the
stage trains the discriminator as the loop's second network ("critic")."""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import torch

from ..config import RunConfig
from ..errors import ConfigError, OutputError
from ..data import Batches, ImageSet, Splits, as_splits
from ..data.cache import printable
from ..figures import plot_history, save_reconstruction_grid, spread_indices
from ..metrics.codebook import codebook_stats
from ..metrics.reconstruction import evaluate_reconstruction
from ..models import VQVAE
from ..models.vqvae import check_model_config
from ..resources import check_model_fits
from ..runlock import locks_run
from ..nn.discriminator import PatchDiscriminator
from ..nn.perceptual import LPIPS, missing_weights_advice, vgg16_weights_path
from ..runs import update_metrics
from .distributed import DistContext, all_reduce_sum, barrier, setup
from .losses import DiscriminatorWatch, TokenizerObjective, decoder_last_layer, uses_objective
from .loop import Stage, TrainResult, check_resume_config, fit, require_finite, use_best_weights

TERMS = ("loss", "recon")  # then the quantizer's own named terms (vq: codebook, commitment)
# Fields that shape the discriminator: fixed when a run resumes (its weights are in the checkpoint).
# Curves of a run with a discriminator (panels without data are left out).
GAN_PANELS = [("adversarial terms", ["adversarial", "disc_loss", "r1"]),
              ("adaptive weight", ["adaptive_weight"]),
              ("discriminator logits (mean)", ["logits_real", "logits_fake"]),
              ("discriminator accuracy", ["disc_accuracy"])]
GAN_SUMMARY = ("perceptual", "adversarial", "adaptive_weight", "disc_loss", "disc_accuracy")
# When the discriminator trains and its term acts: a resume may change them, with a note.
SCHEDULE_ON_RESUME = ("disc_start", "disc_warmup_steps", "disc_ramp_steps")
WATCHED = ("disc_accuracy", "logits_real", "logits_fake", "disc_loss")  # what the DiscriminatorWatch reads
CRITIC_FIXED_ON_RESUME = (("loss", "adversarial"), ("loss", "disc_layers"), ("loss", "disc_channels"))


class VQVAEStage(Stage):
    kind = "vqvae"
    summary_keys = ("loss", "recon", "codes_used", "perplexity", "val_mse", "val_codes_used", "images_per_s")
    epoch_statistics = ("counts", "term_sums", "num_batches")  # set by begin_epoch

    def __init__(self, model: VQVAE, config: RunConfig, splits: Splits, ctx: DistContext,
                 perceptual: LPIPS | None = None):
        self.model = model
        self.terms = TERMS + model.loss_names
        # The perceptual/adversarial objective, or None for the seed's loss (the model's own).
        self.objective = TokenizerObjective(config.loss, perceptual) if uses_objective(config.loss) else None
        if self.objective is not None:
            self.terms += self.objective.generator_terms
            self.last_layer = decoder_last_layer(model.decoder)
        if config.loss.adversarial != "none":
            self.critic = PatchDiscriminator(config.model.in_channels, config.loss.disc_channels,
                                             config.loss.disc_layers).to(ctx.device)
            self.critic_train_cfg = dataclasses.replace(config.train, lr=config.loss.disc_lr or config.train.lr)
            self.terms += self.objective.critic_terms
        if self.objective is not None:
            self.summary_keys = self.summary_keys + tuple(k for k in GAN_SUMMARY if k in self.terms)
        self.watch = DiscriminatorWatch(config.loss, config.loss.disc_lr or config.train.lr,
                                        "lpips" if perceptual is not None else "none")
        self.step = 0
        self.train_cfg = config.train
        self.config_dict = config.to_dict()
        self.ctx = ctx
        self.batches = Batches(splits.train, config.train.batch_size, ctx.device, ctx.rank, ctx.world, shuffle=True,
                               seed=config.train.seed, num_workers=config.data.num_workers,
                               channels_last=config.train.channels_last)
        self.val_batches = (Batches(splits.val, 500, ctx.device, shuffle=False, num_workers=config.data.num_workers)
                            if splits.val is not None else None)
        self.begin_epoch()

    def begin_epoch(self) -> None:
        self.counts = torch.zeros(self.model.quantizer.usage_size, dtype=torch.long, device=self.ctx.device)
        self.term_sums = torch.zeros(len(self.terms), device=self.ctx.device)
        self.num_batches = torch.zeros((), device=self.ctx.device)

    def before_step(self, step: int) -> None:
        self.step = step

    def loss(self, model, batch):
        x, _ = batch
        out = model(x)
        self._indices = out.indices
        quantizer_terms = {k: out.losses[k] for k in self.model.loss_names}
        if self.objective is None:
            return out.loss, {"loss": out.loss, "recon": out.reconstruction_loss, **quantizer_terms}
        self._images, self._reconstructions = x, out.reconstruction.detach()  # for critic_loss
        g = self.objective.generator(x, out.reconstruction, self.critic, self.last_layer, self.step)
        total = g.total
        for name, value in quantizer_terms.items():
            total = total + self.model.loss_weight(name) * value
        terms = {"loss": total, "recon": g.terms["recon"], **quantizer_terms,
                 **{k: g.terms[k] for k in self.objective.generator_terms}}
        return total, terms

    def critic_loss(self, critic, batch):
        return self.objective.critic(critic, self._images, self._reconstructions, self.step)

    def after_step(self, values) -> None:
        self.counts += self.model.quantizer.usage_counts(self._indices)
        self.term_sums += values
        self.num_batches += 1
        self._last_values = values

    def step_problem(self, step: int):
        if self.critic is None or self.watch.cfg.collapse_action == "off":
            return None
        if self.objective.adversarial_factor(self.step) == 0:  # the term is off (alike on every process)
            return self.watch.update(0.0, False, step, (0.0, 0.0), 0.0)
        # The watch reads the global batch's figures (the mean of the processes' equal shares): every
        # process then keeps the same watch and stops at the same step, and DDP sees what one process would.
        watched = self._last_values[[self.terms.index(k) for k in WATCHED]]
        if self.ctx.distributed:
            watched = all_reduce_sum(watched.clone()) / self.ctx.world
        accuracy, real, fake, disc_loss = watched.tolist()
        return self.watch.update(accuracy, True, step, (real, fake), disc_loss)

    def training_state(self) -> dict:
        return self.watch.state() if self.critic is not None else {}

    def load_training_state(self, state: dict) -> None:
        self.watch.load(state)

    def resume_notes(self, saved_config: dict, step: int) -> list[str]:
        if self.critic is None:
            return []
        saved, loss = saved_config.get("loss", {}), self.objective.cfg
        changed = [f"loss.{k} {saved.get(k, 0)} -> {getattr(loss, k)}" for k in SCHEDULE_ON_RESUME
                   if saved.get(k, 0) != getattr(loss, k)]
        if not changed:
            return []
        # Steps counted from 1, as in the loop's messages: step i + 1 runs with self.step = i.
        return [f"{', '.join(changed)} on resume at step {step}: the discriminator trains from step "
                f"{loss.disc_start - loss.disc_warmup_steps + 1} and its term enters the model's loss from step "
                f"{loss.disc_start + 1}" + (f" (ramping over {loss.disc_ramp_steps} steps)" if loss.disc_ramp_steps else "")
                + ("; both are past, so this changes nothing" if step >= loss.disc_start + loss.disc_ramp_steps else "")]

    def compile(self, mode: str) -> None:
        # Encoder and decoder only: the quantizer's codebook updates are data-dependent.
        self.model.encoder.compile(mode=mode)
        self.model.decoder.compile(mode=mode)

    def _reduced(self):
        counts = all_reduce_sum(self.counts.clone())
        sums = all_reduce_sum(self.term_sums.clone()) / self.ctx.world
        return counts, sums / self.num_batches.clamp_min(1)

    def epoch_summary(self) -> dict:
        counts, means = self._reduced()
        return {**{k: round(v, 6) for k, v in zip(self.terms, means.tolist())}, **codebook_stats(counts)}

    def postfix(self) -> dict:
        means = dict(zip(self.terms, (self.term_sums / self.num_batches.clamp_min(1)).tolist()))
        shown = {"recon": f"{means['recon']:.4f}"}
        if "commitment" in means:
            shown["commit"] = f"{means['commitment']:.4f}"
        if self.objective is not None and self.objective.perceptual is not None:
            shown["lpips"] = f"{means['perceptual']:.4f}"
        if self.critic is not None:  # the GAN's state at a glance: weight, discriminator loss, logits, accuracy
            shown.update(adv=f"{means['adversarial']:.3f}", w=f"{means['adaptive_weight']:.3g}",
                         d=f"{means['disc_loss']:.3f}", real=f"{means['logits_real']:.2f}",
                         fake=f"{means['logits_fake']:.2f}", acc=f"{means['disc_accuracy']:.2f}")
        return {**shown, "used": f"{int((self.counts > 0).sum())}/{self.counts.numel()}"}

    def evaluate(self) -> dict:
        if self.val_batches is None:
            return {}
        r = evaluate_reconstruction(self.model, self.val_batches.epoch(0), self.train_cfg.eval_batches)
        # The validation MSE chooses the best checkpoint. In an adversarial run it would always prefer
        # the weights from before the discriminator's term reached full weight (they have the lowest
        # MSE and the blurriest textures), so those epochs are not candidates: their record has no
        # val_loss, and a run that never gets there keeps its last checkpoint.
        candidate = not (self.objective is not None and self.objective.adversarial
                         and self.objective.adversarial_factor(self.step) < 1.0)
        return {**({"val_loss": r["mse"]} if candidate else {}), "val_mse": round(r["mse"], 6),
                "val_mse_clipped": round(r["mse_clipped"], 6), "val_codes_used": r["codes_used"],
                "val_perplexity": r["perplexity"]}

    def epoch_images(self, writer, epoch: int) -> None:
        if self.val_batches is None:
            return
        x, _ = next(iter(self.val_batches.epoch(0)))
        x = x[:16]
        with torch.no_grad():
            self.model.eval()
            # nan_to_num: a diverging run's non-finite pixels show black instead of a numpy cast warning.
            x_hat = self.model(x).reconstruction.float().nan_to_num(0.0, 0.0, 0.0).clamp(0, 1)
            self.model.train()
        from torchvision.utils import make_grid

        writer.add_image("reconstructions", make_grid(torch.cat([x, x_hat]).cpu(), nrow=16), epoch)


def build_perceptual(config: RunConfig, device: torch.device) -> tuple[LPIPS | None, str]:
    """The LPIPS network loss.perceptual asks for, and a one-line note when "auto" found no
    weights. An explicit "lpips" without its VGG16 weights is a ConfigError naming the file."""
    setting = config.loss.perceptual
    if setting == "none":
        return None, ""
    path = vgg16_weights_path(config.loss.lpips_vgg_weights)
    if setting == "auto" and not path.is_file():
        kept = "reconstruction and adversarial" if config.loss.adversarial != "none" else "reconstruction"
        return None, f"vqvae: LPIPS is off ({missing_weights_advice(path)}); training with the {kept} terms"
    return LPIPS(path).to(device), ""


def objective_summary(config: RunConfig, perceptual: bool, note: str) -> dict:
    """What the model was trained to minimise, for metrics.json and the report."""
    loss = config.loss
    out = {"reconstruction": loss.reconstruction, "perceptual": "lpips" if perceptual else "none",
           "adversarial": loss.adversarial}
    if perceptual:
        out["perceptual_weight"] = loss.perceptual_weight
    if loss.adversarial != "none":
        out.update(disc_weight=loss.disc_weight, adaptive_weight=loss.adaptive_weight, disc_start=loss.disc_start,
                   disc_warmup_steps=loss.disc_warmup_steps,
                   disc_ramp_steps=loss.disc_ramp_steps, r1_weight=loss.r1_weight,
                   adam_betas=list(config.train.adam_betas))
    if config.train.ema_decay:
        out["ema_decay"] = config.train.ema_decay
    if note:
        out["note"] = note
    return out


def build_vqvae(config: RunConfig, device: torch.device) -> VQVAE:
    model = VQVAE(config.model, config.quantizer).to(device)
    if config.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


@locks_run("train", lambda a: a["run_dir"])
def train_vqvae(config: RunConfig, run_dir: str | Path, resume: bool = False,
                data: Splits | tuple[ImageSet, ImageSet] | None = None) -> TrainResult:
    """Train a VQ-VAE into `run_dir` (created), or continue it with `resume=True`.

    Writes config.json, checkpoints, reconstructions.png, curves.png and the "vqvae" section of
    metrics.json. The best checkpoint is chosen on the validation split; the test split is
    read once, at the end, for the final figures. `data`: Splits, or (train, test) sets whose
    validation split is then carved from train. Under torchrun every process calls this; rank 0
    writes the files.
    """
    run_dir = Path(run_dir)
    check_model_config(config.model)  # before any data is read or cached, or a folder made
    if config.quantizer.kind == "rvq" and config.quantizer.rvq_depth < 2:
        # One level is quantizer.kind=vq with code maps of another shape, (N, 1, h, w), that decode
        # and the priors refuse. Checked here, not in the config rules, so runs of depth 1 still load.
        raise ConfigError(f"quantizer.rvq_depth={config.quantizer.rvq_depth}: must be >= 2 to train (a residual "
                          f"quantizer of one level is quantizer.kind=vq)")
    try:
        str(run_dir.absolute()).encode("utf-8")
    except UnicodeEncodeError:  # bytes kept as surrogates: tensorboard cannot write there
        raise OutputError(f"the run folder {printable(run_dir)} has a name that is not UTF-8 (tensorboard cannot log there); "
                          f"choose a UTF-8 name") from None
    ctx = setup(config.train.device)
    check_model_fits(lambda: VQVAE(config.model, config.quantizer), ctx.device, "the VQ-VAE",
                     "reduce quantizer.codebook_size, model.hidden_channels or model.code_dim")
    perceptual, perceptual_note = build_perceptual(config, ctx.device)  # before any data: a missing file fails fast
    if resume:
        check_resume_config(run_dir, "vqvae", config, ("model", "quantizer"), CRITIC_FIXED_ON_RESUME)
    splits = as_splits(data, config.data)
    train_set, test_set = splits.train, splits.test
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        config.save(run_dir / "config.json")
    torch.manual_seed(config.train.seed)
    model = build_vqvae(config, ctx.device)
    stage = VQVAEStage(model, config, splits, ctx, perceptual)
    if ctx.is_main and perceptual_note:
        print(perceptual_note, flush=True)
    if ctx.is_main and config.train.progress:
        print(f"vqvae: {len(train_set)} training / {len(splits.val) if splits.val else 0} validation / "
              f"{len(test_set)} test images ({train_set.name}); "
              f"{sum(p.numel() for p in model.parameters()):,} parameters; device {ctx.device}"
              f"{f' x {ctx.world} processes' if ctx.distributed else ''}", flush=True)
    t0 = time.perf_counter()
    state = fit(stage, run_dir, ctx, resume=resume)
    train_seconds = time.perf_counter() - t0
    use_best_weights(model, run_dir, "vqvae", ctx.device)
    metrics = {}
    if ctx.is_main:
        model.eval()
        test = evaluate_reconstruction(model, Batches(test_set, 500, ctx.device, shuffle=False,
                                                      num_workers=config.data.num_workers).epoch(0))
        last = state.history[-1] if state.history else {}
        epoch_seconds = sum(h["seconds"] for h in state.history)
        images = sum(h["images_per_s"] * h["seconds"] for h in state.history if h["images_per_s"])
        metrics = {"test": test, "test_dataset": test_set.name, "train_dataset": train_set.name,
                   "train_images": len(train_set), "val_images": len(splits.val) if splits.val else 0,
                   "best_val_mse": state.best if splits.val and math.isfinite(state.best) else None,
                   "epochs": state.epoch, "steps": state.step,
                   "train_seconds": round(epoch_seconds, 2),
                   "images_per_s": round(images / epoch_seconds, 1) if epoch_seconds else None,
                   "last_epoch": last, "this_call_seconds": round(train_seconds, 2), "resume_notes": state.notes,
                   "objective": objective_summary(config, perceptual is not None, perceptual_note)}
        update_metrics(run_dir, "vqvae", metrics)
        write_vqvae_figures(model, test_set, state.history, run_dir, ctx.device)
    barrier()
    if ctx.is_main:
        require_finite("vqvae", {k: metrics["test"][k] for k in ("mse", "psnr_db")}, state, run_dir, "train",
                       config.train.lr)
    return TrainResult(run_dir, metrics, state.history, model)


@torch.no_grad()
def write_vqvae_figures(model: VQVAE, test_set: ImageSet, history: list, run_dir: Path, device) -> None:
    # A spread of the held-out set (every class, or evenly spaced images), not its first images:
    # datasets stored sorted by class would otherwise show one class only.
    x = torch.stack([test_set[i][0] for i in spread_indices(len(test_set), 32, test_set.labels)]).to(device).float() / 255
    model.eval()
    x_hat = model(x).reconstruction.float()
    save_reconstruction_grid(x, x_hat, run_dir / "reconstructions.png")
    if history:
        plot_history(history, run_dir / "curves.png", [
            ("loss terms", ["recon", "perceptual", "commitment", "codebook", "entropy", "val_mse"]),
            ("codebook usage (codes used)", ["codes_used", "val_codes_used"]),
            ("perplexity", ["perplexity", "val_perplexity"]),
        ] + GAN_PANELS, title="VQ-VAE training")
