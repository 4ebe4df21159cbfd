"""Stage 2: encode the data once, train a prior (Gated PixelCNN, transformer or MaskGIT) on the cached
code maps.

The autoregressive priors are trained and chosen on their likelihood (bits per code); MaskGIT, which
has none, on its masked cross-entropy (nats per masked code; on held-out codes at the fixed mask
ratios of models/maskgit_prior.py). The two figures are kept under different names everywhere.

The seed's source re-encodes every batch with the VQ-VAE on every prior epoch; the codes
never change (the VQ-VAE is frozen), so here they are computed once, stored in RUN/codes/,
and reused, also by later runs of `train-prior` on the same VQ-VAE.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..config import QuantizerConfig, RunConfig
from ..checkpoint import load_checkpoint
from ..data import Batches, ImageSet, Splits, TensorBatches, as_splits, data_identity, relabel
from ..errors import ConfigError, DataError
from ..figures import plot_history
from ..files import atomic_save_npy, atomic_write_text
from ..models import VQVAE, MaskGITPrior, Prior, PriorSpec, build_prior, code_dtype
from ..models.maskgit_prior import VALIDATION_MASK_RATIOS, VALIDATION_MASK_SEED, masked_cross_entropy, \
    training_mask, validation_masks
from ..resources import check_model_fits
from ..runlock import locks_run
from ..runs import codebook_fingerprint, load_vqvae, update_metrics, weights_fingerprint
from .distributed import DistContext, all_reduce_sum, barrier, setup
from .pseudo_classes import class_frequencies, find_pseudo_classes
from .loop import Stage, TrainResult, check_resume_config, checkpoint_path, fit, require_finite, use_best_weights

LN2 = math.log(2.0)


def shift_images(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Translate (B, C, H, W) images by (dy, dx) pixels, filling with zeros."""
    if dy == 0 and dx == 0:
        return x
    H, W = x.shape[-2:]
    padded = F.pad(x, (max(dx, 0), max(-dx, 0), max(dy, 0), max(-dy, 0)))
    top, left = max(-dy, 0), max(-dx, 0)
    return padded[..., top:top + H, left:left + W]


def shift_offsets(shifts: int) -> list[tuple[int, int]]:
    """(0, 0) first, then every other offset within `shifts` pixels."""
    offsets = [(dy, dx) for dy in range(-shifts, shifts + 1) for dx in range(-shifts, shifts + 1)]
    return [(0, 0)] + [o for o in offsets if o != (0, 0)]


@torch.no_grad()
def encode_images(model: VQVAE, data: ImageSet, device: torch.device, batch_size: int = 500,
                  shifts: int = 0) -> torch.Tensor:
    """All images of `data` -> code maps (N, h, w) (residual VQ: (N, depth, h, w)) on the CPU as int16
    (int32 above 2^15 codes), in dataset order; with
    `shifts`, the codes of every shifted copy follow, offset by offset: ((2s+1)^2 * N, h, w)."""
    model.eval()
    offsets = shift_offsets(shifts)
    out: list[list[torch.Tensor]] = [[] for _ in offsets]
    for x, _ in Batches(data, batch_size, device, shuffle=False).epoch(0):
        for k, (dy, dx) in enumerate(offsets):
            out[k].append(model.codes(shift_images(x, dy, dx)).to(code_dtype(model.codebook_size)).cpu())
    return torch.cat([torch.cat(parts) for parts in out])


def cached_codes(model: VQVAE, data: ImageSet, split: str, run_dir: Path, device: torch.device,
                 shifts: int = 0) -> torch.Tensor:
    """Code maps of `data`, from RUN/codes/<split>.npy when they were made by this same VQ-VAE
    (all its weights: the encoder decides the codes as much as the codebook) from these same
    images (`data_identity`: another folder of the same name and size is other images)."""
    folder = Path(run_dir) / "codes"
    meta_path, codes_path = folder / f"{split}.json", folder / f"{split}.npy"
    key = {"vqvae_weights": weights_fingerprint(model), "data": data_identity(data), "dataset": data.name,
           "num_images": len(data),
           "codebook_size": model.codebook_size, "latent_size": model.latent_size, "shifts": shifts}
    if meta_path.is_file() and codes_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            meta = {}  # a damaged cache is rebuilt
        if isinstance(meta, dict) and all(meta.get(k) == v for k, v in key.items()):
            return torch.from_numpy(np.load(codes_path)).long()
    codes = encode_images(model, data, device, shifts=shifts)
    # Atomic, codes first: the metadata that validates them is written only once they are complete.
    atomic_save_npy(codes_path, codes.numpy())
    atomic_write_text(meta_path, json.dumps({**key, "shape": list(codes.shape), "dtype": str(codes.numpy().dtype)},
                                            indent=2) + "\n")
    return codes.long()


class PriorStage(Stage):
    kind = "prior"
    summary_keys = ("bits", "val_bits", "images_per_s")
    epoch_statistics = ("nats_sum", "num_batches")  # set by begin_epoch

    def __init__(self, model: Prior, config: RunConfig, train_codes, train_labels, val_codes, val_labels,
                 ctx: DistContext, fingerprint: str):
        self.model = model
        self.masked = isinstance(model, MaskGITPrior)
        # What an epoch reports: bits per code, or (MaskGIT) nats per masked code.
        self.figure = "masked_nats" if self.masked else "bits"
        self.summary_keys = (self.figure, f"val_{self.figure}", "images_per_s")
        self.train_cfg = config.prior_train
        self.config_dict = config.to_dict()
        self.ctx = ctx
        self.fingerprint = fingerprint
        self.label_dropout = config.prior.label_dropout if model.conditional else 0.0
        labels = model.conditional
        self.batches = TensorBatches((train_codes, train_labels if labels else None), self.train_cfg.batch_size,
                                     ctx.device, ctx.rank, ctx.world, shuffle=True, seed=self.train_cfg.seed)
        self.val_batches = (TensorBatches((val_codes, val_labels if labels else None), 500, ctx.device,
                                          shuffle=False) if val_codes is not None else None)
        self.begin_epoch()

    def begin_epoch(self) -> None:
        self.nats_sum = torch.zeros((), device=self.ctx.device)
        self.num_batches = torch.zeros((), device=self.ctx.device)

    def before_step(self, step: int) -> None:
        # Under torchrun every process starts from one seed, so each would draw the same MaskGIT
        # masks, label dropout and dropout for its own shard. Nothing here must agree across
        # processes (the data order has its own generator), so each draws from a stream of its own,
        # seeded by (seed, step, rank): a resumed run draws the same. One process keeps one stream.
        if self.ctx.distributed:
            torch.manual_seed(process_step_seed(self.train_cfg.seed, step, self.ctx.rank))

    def loss(self, model, batch):
        codes, labels = batch
        if self.label_dropout and model.training:
            # Classifier-free guidance: some maps train the unconditional prior, under the null class.
            dropped = torch.rand(labels.shape, device=labels.device) < self.label_dropout
            labels = labels.masked_fill(dropped, self.model.null_class)
        if self.masked:
            nats = masked_cross_entropy(model, codes, labels, training_mask(codes), self.model.mask_token)
        else:
            nats = F.cross_entropy(model(codes, labels).float(), codes)
        return nats, {"loss": nats}

    def after_step(self, values) -> None:
        self.nats_sum += values[0]
        self.num_batches += 1

    def epoch_summary(self) -> dict:
        mean = all_reduce_sum(self.nats_sum.clone()) / all_reduce_sum(self.num_batches.clone()).clamp_min(1)
        return {self.figure: round(mean.item() / (1 if self.masked else LN2), 5)}

    def postfix(self) -> dict:
        mean = (self.nats_sum / self.num_batches.clamp_min(1)).item()
        return {"nats/masked code": f"{mean:.4f}"} if self.masked else {"bits/code": f"{mean / LN2:.4f}"}

    def evaluate(self) -> dict:
        if self.val_batches is None:
            return {}
        value = heldout_figure(self.model, self.val_batches, self.train_cfg.eval_batches)
        return {"val_loss": value, f"val_{self.figure}": round(value, 5)}

    def checkpoint_extra(self) -> dict:
        spec = self.model.spec
        return {"prior_kind": self.model.config.kind,
                "prior_spec": {"codebook_size": spec.codebook_size, "latent_size": spec.latent_size,
                               "num_classes": spec.num_classes, "class_names": list(spec.class_names),
                               "class_weights": list(spec.class_weights)},
                "vqvae_fingerprint": self.fingerprint,
                # A prior on pseudo-classes is validated in its unconditional mode; earlier ones gave each
                # map its own cluster, a lower figure that no resumed epoch could beat.
                **({"validation_labels": "null class"} if self.model.config.pseudo_classes else {})}


def process_step_seed(seed: int, step: int, rank: int) -> int:
    """A seed per (seed, step, process), distinct for up to 65,537 processes."""
    return ((seed * 1_000_003 + step) * 65_537 + rank) % 2**63


def heldout_labels(model: Prior, codes: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor | None:
    """The labels a prior's held-out figures (validation and test) are computed with: none for an
    unconditional prior, the dataset's for a class-conditional one, and the null class (its
    unconditional mode) for a prior on pseudo-classes: its clusters are not kept with it, and a
    held-out map's own cluster, found from the map itself, would flatter its likelihood."""
    if not model.conditional:
        return None
    if not model.config.pseudo_classes:
        return labels
    if model.null_class is None:
        raise ConfigError("held-out bits of a prior on pseudo-classes need its unconditional mode: train it with "
                          "prior.label_dropout > 0")
    return torch.full((len(codes),), model.null_class, dtype=torch.long)


@torch.no_grad()
def heldout_bits(model: Prior, batches: TensorBatches, max_batches: int = 0) -> float:
    """Mean negative log-likelihood in bits per code over all batches."""
    was_training = model.training
    model.eval()
    nats, count = 0.0, 0
    for b, (codes, labels) in enumerate(batches.epoch(0)):
        if max_batches and b >= max_batches:
            break
        nats += F.cross_entropy(model(codes, labels).float(), codes, reduction="sum").item()
        count += codes.numel()
    model.train(was_training)
    return nats / max(count, 1) / LN2


@torch.no_grad()
def heldout_masked_nats(model: MaskGITPrior, batches: TensorBatches, max_batches: int = 0) -> float:
    """MaskGIT's held-out figure: cross-entropy in nats per masked code, the mean over the mask ratios
    VALIDATION_MASK_RATIOS of the per-ratio means; the masked positions come from a fixed seed
    (VALIDATION_MASK_SEED), so every epoch and checkpoint is scored on the same ones."""
    was_training = model.training
    model.eval()
    nats = [0.0] * len(VALIDATION_MASK_RATIOS)
    count = [0] * len(VALIDATION_MASK_RATIOS)
    for b, (codes, labels) in enumerate(batches.epoch(0)):
        if max_batches and b >= max_batches:
            break
        for r, masked in enumerate(validation_masks(tuple(codes.shape), codes.device)):
            nats[r] += masked_cross_entropy(model, codes, labels, masked, model.mask_token, reduction="sum").item()
            count[r] += int(masked.sum())
    model.train(was_training)
    return sum(n / max(c, 1) for n, c in zip(nats, count)) / len(nats)


def heldout_figure(model: Prior, batches: TensorBatches, max_batches: int = 0) -> float:
    """The held-out figure a prior's checkpoints are chosen on: bits per code (autoregressive), or
    nats per masked code (MaskGIT, which has no likelihood)."""
    if isinstance(model, MaskGITPrior):
        return heldout_masked_nats(model, batches, max_batches)
    return heldout_bits(model, batches, max_batches)


MASKED_NATS_MEANING = (f"MaskGIT's masked cross-entropy, nats per masked code: mean over mask ratios "
                       f"{', '.join(map(str, VALIDATION_MASK_RATIOS))} (positions fixed by seed "
                       f"{VALIDATION_MASK_SEED}); not a likelihood, not comparable with bits per code")


def check_classes_trained(train_set: ImageSet, held_out: dict[str, ImageSet | None]) -> None:
    """A class with held-out images but no training image (a held-out split drawn from a folder can
    take every image of a rare class) would sit in a conditional prior untrained: `--class` would
    draw from its random embedding and class inference could pick it. A one-line error instead."""
    trained = set(train_set.labels.unique().tolist())
    for split, data in held_out.items():
        if data is None or data.labels is None:
            continue
        missing = sorted(set(data.labels.unique().tolist()) - trained)
        if missing:
            names = ", ".join(repr(train_set.class_names[c]) for c in missing[:10])
            what, it = ("class", "it") if len(missing) == 1 else (f"{len(missing)} classes", "them")
            raise DataError(f"{what} {names} of {train_set.name}: images in the {split} split but none in "
                            f"training; a conditional prior would never learn {it}, and --class would draw from an "
                            f"untrained class: add training images of {it}, or remove {it} from the data")


def check_one_index_per_position(quantizer: QuantizerConfig) -> None:
    """The priors model one code index per position; a residual quantizer gives several."""
    if quantizer.indices_per_position != 1:
        raise ConfigError(f"the prior models one code index per position, but this VQ-VAE "
                          f"(quantizer.kind={quantizer.kind}) gives {quantizer.indices_per_position} per position; "
                          f"train the VQ-VAE with quantizer.kind=vq, fsq or lfq to train a prior on its codes")


@locks_run("train-prior", lambda a: a["run_dir"])
def train_prior(config: RunConfig, run_dir: str | Path, resume: bool = False,
                data: Splits | tuple[ImageSet, ImageSet] | None = None) -> TrainResult:
    """Train the prior of the run in `run_dir` on codes of its VQ-VAE (RUN/checkpoints/vqvae-*.pt).

    Writes the prior's checkpoints, RUN/codes/, prior_curves.png and the "prior" section of
    metrics.json, which the result's `metrics` holds (empty on ranks other than 0). The best
    checkpoint is chosen on validation codes; test codes are scored once, at the end.
    """
    run_dir = Path(run_dir)
    ctx = setup(config.prior_train.device)
    if config.prior.pseudo_classes:
        # Conditional on clusters found without labels (training/pseudo_classes.py); the dataset's
        # labels, if any, are not read. Set before the resume check: the checkpoint records it so.
        config.prior.conditional = True
    if resume:
        check_resume_config(run_dir, "prior", config, ("prior",))
    vqvae, vq_config = load_vqvae(run_dir, ctx.device)
    check_one_index_per_position(vq_config.quantizer)
    last_prior = checkpoint_path(run_dir, "prior", "last")
    last = load_checkpoint(last_prior, kind="prior") if resume and last_prior.is_file() else None
    if last is not None:
        # Codes of another VQ-VAE mean other things: continuing would compare validation losses
        # across the two and keep the old codes' best checkpoint.
        trained_on = last.get("vqvae_fingerprint")
        if trained_on and trained_on != codebook_fingerprint(vqvae):
            raise ConfigError(f"cannot resume the prior in {run_dir}: it was trained on the codes of a different VQ-VAE "
                              f"(the run's VQ-VAE was trained further or again since); train a new prior for it: "
                              f"`vqvae train-prior {run_dir}` without --resume")
        if config.prior.pseudo_classes and last.get("validation_labels") != "null class":
            raise ConfigError(f"cannot resume the prior in {run_dir}: it is a prior on pseudo-classes validated with each "
                              f"map's own cluster, as earlier versions did; its best validation figure is not comparable "
                              f"with the unconditional one used now, so no resumed epoch would be kept; train a new "
                              f"prior: `vqvae train-prior {run_dir}` without --resume")
    config.model, config.quantizer = vq_config.model, vq_config.quantizer  # the VQ-VAE's own config is the truth
    check_model_fits(lambda: build_prior(config.prior, PriorSpec(vqvae.codebook_size, vqvae.latent_size, 0, ()),
                                         dropout=0.0), ctx.device, f"the {config.prior.kind} prior",
                     "reduce prior.num_layers or prior.hidden_channels")
    splits = as_splits(data, config.data)
    train_set, val_set, test_set = splits
    pseudo = config.prior.pseudo_classes
    if not pseudo and config.prior.conditional and (train_set.labels is None or not train_set.class_names):
        raise DataError(f"prior.conditional=true (--conditional, or the preset's) needs a labelled dataset; "
                        f"{train_set.name} has no labels: set prior.conditional=false, or use a named dataset or "
                        f"a folder with one subfolder per class")
    if config.prior.conditional and not pseudo and test_set.labels is None:
        raise DataError(f"--conditional needs labels on the test split too; {test_set.name} has none")
    if config.prior.conditional and not pseudo and last is not None:
        # The resumed prior's own classes, matched by name (a prior from before labels were mapped
        # to the classes present has classes 0..max label, and keeps them).
        names = last["prior_spec"]["class_names"]
        train_set, test_set = relabel(train_set, names), relabel(test_set, names)
        val_set = relabel(val_set, names) if val_set is not None else None
    if config.prior.conditional and not pseudo:
        check_classes_trained(train_set, {"validation": val_set, "test": test_set})
    split_names = {"train": train_set, "val": val_set, "test": test_set}
    # Rank 0 encodes (and caches) first; the others then read the cache.
    shifts = config.prior.train_shifts
    codes = {}
    for rank_turn in (True, False):
        if ctx.is_main == rank_turn:
            codes = {name: cached_codes(vqvae, data, name, run_dir, ctx.device, shifts if name == "train" else 0)
                     if data is not None else None for name, data in split_names.items()}
        barrier()
    train_codes, val_codes, test_codes = codes["train"], codes["val"], codes["test"]
    val_labels = val_set.labels if val_set else None
    test_labels = test_set.labels
    if pseudo:
        # Clusters of the unshifted training maps; each shifted copy keeps its image's cluster.
        image_labels = find_pseudo_classes(vqvae, train_codes[:len(train_set)], pseudo, seed=config.prior_train.seed)
        train_labels = image_labels.repeat(len(shift_offsets(shifts)))
        spec = PriorSpec(vqvae.codebook_size, vqvae.latent_size, pseudo, tuple(f"cluster {c}" for c in range(pseudo)),
                         tuple(class_frequencies(image_labels, pseudo)))
    else:
        train_labels = train_set.labels.repeat(len(shift_offsets(shifts))) if train_set.labels is not None else None
        spec = PriorSpec(vqvae.codebook_size, vqvae.latent_size,
                         len(train_set.class_names) if config.prior.conditional else 0,
                         tuple(train_set.class_names) if config.prior.conditional else ())
    torch.manual_seed(config.prior_train.seed)
    model = build_prior(config.prior, spec, dropout=config.prior_train.dropout).to(ctx.device)
    if pseudo and val_codes is not None:  # scored as the test split is: a map's own cluster would flatter it
        val_labels = heldout_labels(model, val_codes, None)
    stage = PriorStage(model, config, train_codes, train_labels, val_codes, val_labels, ctx,
                       codebook_fingerprint(vqvae))
    if ctx.is_main:
        config.save(run_dir / "config.json")
        if config.prior_train.progress:
            print(f"prior: {len(train_codes)} training / {len(val_codes) if val_codes is not None else 0} validation "
                  f"code maps of "
                  f"{spec.latent_size}x{spec.latent_size}, {spec.codebook_size} codes; "
                  f"{config.prior.kind} prior, {sum(p.numel() for p in model.parameters()):,} parameters"
                  f"{'; conditional on ' + str(spec.num_classes) + ' classes' if spec.num_classes else ''}", flush=True)
    state = fit(stage, run_dir, ctx, resume=resume)
    use_best_weights(model, run_dir, "prior", ctx.device)
    metrics = {}
    figure = stage.figure
    if ctx.is_main:
        val_values = [h[f"val_{figure}"] for h in state.history if f"val_{figure}" in h]
        seconds = sum(h["seconds"] for h in state.history)
        test_value = heldout_figure(model, TensorBatches((test_codes, heldout_labels(model, test_codes, test_labels)),
                                                         500, ctx.device, shuffle=False))
        # Autoregressive priors: *_bits_per_code; MaskGIT: *_masked_nats, with what it means.
        name = "masked_nats" if stage.masked else "bits_per_code"
        metrics = {f"val_{name}": val_values[-1] if val_values else None,
                   f"best_val_{name}": min(val_values, default=None),
                   f"test_{name}": round(test_value, 5),
                   f"train_{name}": state.history[-1][figure] if state.history else None,
                   **({"masked_nats_meaning": MASKED_NATS_MEANING} if stage.masked else {}),
                   "kind": model.config.kind, "epochs": state.epoch, "train_seconds": round(seconds, 2),
                   "codebook_size": spec.codebook_size, "latent_size": spec.latent_size,
                   "conditional": bool(spec.num_classes), "class_names": list(spec.class_names),
                   "pseudo_classes": pseudo,
                   "history": [{k: h.get(k) for k in ("epoch", figure, f"val_{figure}", "seconds")}
                               for h in state.history],
                   "resume_notes": state.notes}
        update_metrics(run_dir, "prior", metrics)
        if state.history:
            label = "loss (nats per masked code)" if stage.masked else "loss (bits per code)"
            plot_history(state.history, run_dir / "prior_curves.png", [(label, [figure, f"val_{figure}"])],
                         title="Prior training")
    barrier()
    if ctx.is_main:
        require_finite("prior", {name: test_value}, state, run_dir, "prior_train", config.prior_train.lr)
    return TrainResult(run_dir, metrics, state.history, model)
