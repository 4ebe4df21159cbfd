"""The one training loop both stages (VQ-VAE and prior) run.

It owns what is common: the optimiser and learning-rate schedule, bf16 autocast, DDP,
the non-finite guard, progress bars, TensorBoard, checkpoints (last and best, atomic,
mid-epoch if asked) and exact resume. A `Stage` supplies the model, its batches, its
loss, its per-epoch statistics and its held-out evaluation.
"""
from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from ..checkpoint import load_checkpoint, save_checkpoint
from ..config import RunConfig, TrainConfig
from ..errors import CheckpointError, ConfigError, TrainingError
from ..files import TMP_SUFFIX
from ..runs import remove_stale_files
from .distributed import DistContext, barrier


@dataclass
class LoopState:
    epoch: int = 0  # epochs completed
    step: int = 0  # optimiser steps taken
    batch_in_epoch: int = 0  # batches of the current epoch done (mid-epoch checkpoints)
    best: float = math.inf  # best validation loss so far
    history: list = field(default_factory=list)  # one dict per completed epoch
    # Step at which the current learning-rate schedule began: 0 for the run's own (with warmup),
    # the end of a finished run that was extended with more epochs (a fresh schedule, no warmup).
    schedule_start: int = 0
    notes: list = field(default_factory=list)  # what changed on resume, also printed and in metrics

    @classmethod
    def from_dict(cls, loop: dict) -> "LoopState":
        known = {f.name for f in fields(cls)}  # checkpoints written before a field existed lack it
        return cls(**{k: v for k, v in loop.items() if k in known})


class Stage:
    """What a training stage provides to `fit`. Subclasses set the attributes in __init__."""

    kind: str  # "vqvae" or "prior": names checkpoints and metrics sections
    model: nn.Module
    batches: object  # data.Batches
    train_cfg: TrainConfig
    config_dict: dict  # the whole RunConfig, saved in every checkpoint
    config_section: str  # "train" or "prior_train": where a user changes this stage's settings
    summary_keys: tuple = ()  # history fields printed at each epoch end

    def loss(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def begin_epoch(self) -> None:
        pass

    def after_step(self, values: torch.Tensor) -> None:
        """values: the step's loss terms (detached, fp32), stacked in the order `loss` returned them."""
        pass

    def compile(self, mode: str) -> None:
        """torch.compile what can be compiled (in place: state-dict keys stay the same)."""
        self.model.compile(mode=mode)

    def epoch_summary(self) -> dict:
        return {}

    def postfix(self) -> dict:
        return {}

    def epoch_state(self) -> dict:
        return {}

    def load_epoch_state(self, state: dict) -> None:
        pass

    def evaluate(self) -> dict:
        """Validation figures: 'val_loss' (lower is better) chooses the best checkpoint; {} when
        the run has no validation split (then the last checkpoint is the one kept)."""
        raise NotImplementedError

    def checkpoint_extra(self) -> dict:
        return {}

    def epoch_images(self, writer, epoch: int) -> None:
        pass


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict  # the "vqvae" section of metrics.json (empty on ranks other than 0)
    history: list  # one dict per epoch
    model: torch.nn.Module  # the trained model (this process's replica under torchrun)


# What a run trains and is tested on: a resumed run keeps them (its metrics would otherwise
# describe a mixture of two datasets).
DATA_FIXED_ON_RESUME = ("dataset", "test_dataset", "test_fraction", "val_fraction", "image_size", "channels")


def check_resume_config(run_dir: Path, kind: str, config: RunConfig, sections: tuple[str, ...]) -> None:
    """A resumed run must build the same model it saved: compare the architecture sections."""
    path = checkpoint_path(run_dir, kind, "last")
    if not path.is_file():
        return  # nothing to compare with; `fit` says what it does about that
    # Rebuilt through RunConfig so fields added since the run was saved compare at their defaults.
    saved = RunConfig.from_dict(load_checkpoint(path, kind=kind)["config"]).to_dict()
    now = config.to_dict()
    fields = [(s, k) for s in sections for k in now[s]] + [("data", k) for k in DATA_FIXED_ON_RESUME]
    changed = [f"{s}.{k}: {saved[s].get(k)!r} -> {now[s][k]!r}" for s, k in fields if saved[s].get(k) != now[s][k]]
    if changed:
        raise ConfigError(f"cannot resume {run_dir} with a different model or data: {'; '.join(changed)}. "
                          f"Only training settings (train.*, prior_train.*, sample.*) may change on resume")


def amp_enabled(mode: str, device: torch.device) -> bool:
    if mode == "off":
        return False
    if mode == "bf16":
        return True
    # "auto": bf16 where it is fast: recent GPUs, and CPUs with native bf16 (AVX512-BF16 / AMX).
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def lr_factor(cfg: TrainConfig, step: int, total_steps: int, start: int = 0) -> float:
    """Multiplier of cfg.lr after `step` optimiser steps. `start` > 0: a schedule that began at
    that step (an extended run): no warmup, cosine from the full rate down over the rest."""
    if start == 0 and cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return 1.0
    first = start or cfg.warmup_steps
    progress = min(1.0, (step - first) / max(1, total_steps - first))
    return cfg.lr_min_ratio + (1 - cfg.lr_min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def checkpoint_path(run_dir: Path, kind: str, which: str) -> Path:
    return Path(run_dir) / "checkpoints" / f"{kind}-{which}.pt"


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _open_tensorboard(run_dir: Path, kind: str):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(Path(run_dir) / "tensorboard" / kind))


def fit(stage: Stage, run_dir: Path, ctx: DistContext, resume: bool = False) -> LoopState:
    cfg = stage.train_cfg
    device = ctx.device
    model = stage.model
    params = [p for p in model.parameters() if p.requires_grad]
    # On GPUs the fused kernel updates every parameter in one launch.
    fused = {"fused": True} if device.type == "cuda" else {}
    optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused) if cfg.weight_decay == 0 \
        else torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)
    steps_per_epoch = len(stage.batches)
    total_steps = max(1, cfg.epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(cfg, s, total_steps))
    state = LoopState()

    last_path = checkpoint_path(run_dir, stage.kind, "last")
    killed_in_first_save = any(last_path.parent.glob(f".{stage.kind}-*.pt.*{TMP_SUFFIX}"))
    barrier()  # every process has looked before rank 0 cleans up
    if ctx.is_main:
        remove_stale_files(run_dir)
    if resume and not last_path.is_file() and killed_in_first_save:
        # Killed while writing its first checkpoint: there is nothing to continue from.
        if ctx.is_main:
            print(f"{stage.kind}: no checkpoint in {last_path.parent} (the run was stopped while writing its first); "
                  f"starting from the beginning", flush=True)
        resume = False
    if resume:
        if not last_path.is_file():
            raise CheckpointError(f"cannot resume: {last_path} does not exist (no {stage.kind} checkpoint in "
                                  f"{run_dir}); run without --resume to start it")
        ckpt = load_checkpoint(last_path, kind=stage.kind, map_location=device)
        model.load_state_dict(ckpt["model_state"])
        optimizer.load_state_dict(ckpt["optimizer_state"])
        scheduler.load_state_dict(ckpt["scheduler_state"])
        state = LoopState.from_dict(ckpt["loop"])
        stage.load_epoch_state(ckpt.get("epoch_state", {}))
        _set_rng_state(ckpt["rng"], device)
        for note in _resumed_settings(cfg, ckpt["config"][stage.config_section], state, stage, optimizer, scheduler):
            state.notes.append(note)
            if ctx.is_main:
                print(f"{stage.kind}: {note}", flush=True)
    else:
        torch.manual_seed(cfg.seed)
    scheduler.lr_lambdas[0] = lambda s: lr_factor(cfg, s, total_steps, state.schedule_start)
    for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
        group["lr"] = base * scheduler.lr_lambdas[0](scheduler.last_epoch)  # as LambdaLR computes it

    if cfg.compile:
        stage.compile(cfg.compile_mode)
    train_model: nn.Module = model
    if ctx.distributed:
        # Codebook statistics are all-reduced inside the quantizer, so buffers need no broadcast.
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False)
    use_amp = amp_enabled(cfg.amp, device)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use_amp else contextlib.nullcontext
    writer = _open_tensorboard(run_dir, stage.kind) if ctx.is_main else None

    def save(which: str, epoch_state: dict | None = None):
        if not ctx.is_main:
            return
        save_checkpoint(
            checkpoint_path(run_dir, stage.kind, which), stage.kind, stage.config_dict, model.state_dict(),
            optimizer_state=optimizer.state_dict(), scheduler_state=scheduler.state_dict(),
            rng=_rng_state(device), loop=asdict(state), epoch_state=epoch_state or {},
            **stage.checkpoint_extra())

    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        tqdm = None

    def nonfinite_message(step, epoch, batch, terms, bad) -> str:
        names = [k for k, b in zip(terms, bad.tolist()) if b]
        return (f"{stage.kind}: non-finite loss at step {step} (epoch {epoch + 1}, batch {batch}) in term(s) "
                f"{', '.join(names)}")

    def stop_advice(message: str) -> str:
        kept = (f"The last good checkpoint is kept at {last_path}" if last_path.is_file()
                else "No checkpoint had been written yet")
        return (message + f". {kept}; lower the learning rate ({stage.config_section}.lr={cfg.lr:g}), or set "
                f"{stage.config_section}.on_nonfinite=skip")

    # On CUDA in "stop" mode the check lags one step so the host never waits for the device.
    lagged = device.type == "cuda" and cfg.on_nonfinite == "stop"
    guard = _LaggedGuard(device, lambda step, epoch, batch, names, bad: TrainingError(
        stop_advice(nonfinite_message(step, epoch, batch, dict.fromkeys(names), bad))))

    model.train()
    while state.epoch < cfg.epochs:
        epoch = state.epoch
        skip = state.batch_in_epoch
        if skip == 0:
            stage.begin_epoch()
        t0 = time.perf_counter()
        images_seen = 0
        skipped = 0
        show = cfg.progress and ctx.is_main and tqdm is not None
        bar = tqdm(total=steps_per_epoch, initial=skip, desc=f"{stage.kind} {epoch + 1}/{cfg.epochs}",
                   leave=False, dynamic_ncols=True) if show else None
        for batch in stage.batches.epoch(epoch, skip):
            # The forward pass itself changes state (EMA codebooks, usage counters, restarts):
            # a skipped batch must leave all of it as it was, so keep a copy to put back.
            before = _forward_state(model) if cfg.on_nonfinite == "skip" else None
            try:
                with autocast():
                    loss, terms = stage.loss(train_model, batch)
                values = torch.stack([t.detach().float() for t in terms.values()])
                bad = (~torch.isfinite(values)).float()
                if ctx.distributed:
                    dist.all_reduce(bad)
                if lagged:
                    # Check the previous step's flag, copied to the host without blocking: its
                    # kernels have usually finished while this step was being launched.
                    guard.check()
                    guard.record(bad, state.step + 1, epoch, state.batch_in_epoch + 1, list(terms))
                elif bool(bad.any()):
                    message = nonfinite_message(state.step + 1, epoch, state.batch_in_epoch + 1, terms, bad)
                    if cfg.on_nonfinite == "skip":
                        model.load_state_dict(before, strict=False)
                        skipped += 1
                        if ctx.is_main and skipped == 1:  # the first of the epoch; the count comes at its end
                            (bar.write if bar is not None else _warn)(message + "; batch skipped")
                        state.batch_in_epoch += 1
                        optimizer.zero_grad(set_to_none=True)
                        continue
                    raise TrainingError(stop_advice(message))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                optimizer.step()
                scheduler.step()
            except torch.OutOfMemoryError:
                raise TrainingError(f"out of memory on {device} with batch size {cfg.batch_size}: try "
                                    f"--set {stage.config_section}.batch_size={max(1, cfg.batch_size // 2)}") from None
            state.step += 1
            state.batch_in_epoch += 1
            images_seen += batch[0].shape[0] * ctx.world
            stage.after_step(values)
            if bar is not None:
                bar.update(1)
                if state.step % 5 == 0:
                    bar.set_postfix(stage.postfix(), refresh=False)
            if writer is not None and state.step % 50 == 0:
                for k, v in zip(terms, values.tolist()):
                    writer.add_scalar(f"train_step/{k}", v, state.step)
            if cfg.checkpoint_every_steps and state.step % cfg.checkpoint_every_steps == 0 \
                    and state.batch_in_epoch < steps_per_epoch:
                guard.check(final=True)  # never write weights a non-finite step has touched
                save("last", stage.epoch_state())
        guard.check(final=True)
        if bar is not None:
            bar.close()
        seconds = time.perf_counter() - t0
        record = {"epoch": epoch + 1, "step": state.step, "lr": scheduler.get_last_lr()[0], **stage.epoch_summary()}
        if ctx.is_main:
            model.eval()
            record.update(stage.evaluate())
            model.train()
        if skipped:
            record["skipped_batches"] = skipped
            if ctx.is_main:
                _warn(f"{stage.kind} epoch {epoch + 1}/{cfg.epochs}: {skipped} of {steps_per_epoch - skip} batches "
                      f"skipped (non-finite loss)")
        record["seconds"] = round(seconds, 3)
        record["images_per_s"] = round(images_seen / seconds, 1) if seconds > 0 else None
        state.history.append(record)
        state.epoch += 1
        state.batch_in_epoch = 0
        improved = ctx.is_main and record.get("val_loss", math.inf) < state.best
        if improved:
            state.best = record["val_loss"]
        if cfg.keep_best and improved:
            save("best")
        save("last")
        if writer is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "epoch":
                    writer.add_scalar(f"epoch/{k}", v, epoch + 1)
            stage.epoch_images(writer, epoch + 1)
            writer.flush()
        if ctx.is_main and cfg.progress:
            shown = {k: v for k, v in record.items() if k in stage.summary_keys}
            print(f"{stage.kind} epoch {epoch + 1}/{cfg.epochs}: " +
                  " ".join(f"{k}={_fmt(v)}" for k, v in shown.items()), flush=True)
    if writer is not None:
        writer.close()
    if ctx.is_main and not cfg.keep_last and last_path.exists() and state.epoch >= cfg.epochs:
        last_path.unlink()
    return state


def _forward_state(model: nn.Module) -> dict:
    """Copies of what a forward pass may change: buffers and parameters the optimiser does not
    train (an EMA codebook). Loading it back also resets any host-side mirrors of that state."""
    return {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()
            if not (isinstance(v, nn.Parameter) and v.requires_grad)}


def _warn(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _resumed_settings(cfg: TrainConfig, saved: dict, state: LoopState, stage: Stage, optimizer, scheduler) -> list[str]:
    """Apply what this call changes relative to the checkpoint's settings; notes saying what.

    Resuming an interrupted run with its own settings changes nothing here (bitwise exact).
    Extending a finished run (more epochs) starts a fresh schedule over the added epochs: the
    finished schedule ended at its floor, and re-planning it over the longer run would jump the
    rate back to mid-schedule. A changed lr or weight decay is applied from the next step.
    """
    notes = []
    section = stage.config_section
    finished = state.batch_in_epoch == 0 and state.epoch >= saved["epochs"]
    if finished and cfg.epochs > state.epoch:
        state.schedule_start = state.step
        added = cfg.epochs - state.epoch
        plan = (f"a fresh cosine schedule over the {added} added epoch(s), lr {cfg.lr:g} -> "
                f"{cfg.lr * cfg.lr_min_ratio:g}, no warmup" if cfg.lr_schedule == "cosine"
                else f"constant lr {cfg.lr:g}")
        notes.append(f"extending the finished {state.epoch}-epoch run to {cfg.epochs} epochs from step {state.step}: "
                     f"{plan}")
    if cfg.lr != saved["lr"]:
        for group in optimizer.param_groups:
            group["initial_lr"] = cfg.lr
        scheduler.base_lrs = [cfg.lr] * len(optimizer.param_groups)
        notes.append(f"{section}.lr changed on resume: {saved['lr']:g} -> {cfg.lr:g}, applied from step {state.step + 1}")
    if cfg.weight_decay != saved["weight_decay"]:
        notes.append(f"{section}.weight_decay changed on resume: {saved['weight_decay']:g} -> {cfg.weight_decay:g}, "
                     f"applied from step {state.step + 1}")
    # The loaded state carries the saved optimiser's settings; those of this call's optimiser
    # hold (weight decay and Adam vs AdamW, fused kernels on the device trained on now).
    for group in optimizer.param_groups:
        for key in ("weight_decay", "decoupled_weight_decay", "fused", "foreach"):
            if key in optimizer.defaults:
                group[key] = optimizer.defaults[key]
    return notes


def require_finite(kind: str, figures: dict, state: LoopState, run_dir: Path, section: str, lr: float) -> None:
    """A run whose final test figures are not finite has failed: say so instead of exiting 0."""
    bad = {k: v for k, v in figures.items() if isinstance(v, float) and not math.isfinite(v)}
    if not bad:
        return
    skipped = sum(h.get("skipped_batches", 0) for h in state.history)
    raise TrainingError(
        f"{kind}: training diverged: the final model's test {', '.join(f'{k} is {v}' for k, v in bad.items())}"
        f"{f'; {skipped} batches were skipped as non-finite (optimiser steps taken: {state.step})' if skipped else ''}. Its files "
        f"are in {run_dir}, but the model is unusable: lower {section}.lr (it was {lr:g})")


def use_best_weights(model: nn.Module, run_dir: Path, kind: str, device: torch.device) -> bool:
    """Load the best-on-validation weights into `model` (every process), so the final test figures
    are those of the model a user loads from the run. False when there is no best checkpoint."""
    barrier()  # rank 0 has written the checkpoint
    path = checkpoint_path(run_dir, kind, "best")
    if not path.is_file():
        return False
    model.load_state_dict(load_checkpoint(path, kind=kind, map_location=device)["model_state"])
    return True


class _LaggedGuard:
    """Holds one step's non-finite flags in pinned host memory until the next step checks them."""

    def __init__(self, device: torch.device, make_error):
        self.device, self.make_error = device, make_error
        self.pending = None

    def record(self, bad: torch.Tensor, step: int, epoch: int, batch: int, names: list[str]) -> None:
        host = torch.empty(bad.shape, dtype=bad.dtype, pin_memory=True)
        host.copy_(bad, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self.pending = (host, event, step, epoch, batch, names)

    def check(self, final: bool = False) -> None:
        if self.pending is None:
            return
        host, event, step, epoch, batch, names = self.pending
        event.synchronize()
        self.pending = None
        if bool(host.any()):
            raise self.make_error(step, epoch, batch, names, host)


def _fmt(v):
    return f"{v:.4g}" if isinstance(v, float) else str(v)
