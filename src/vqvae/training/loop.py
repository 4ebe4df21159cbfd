"""The one training loop both stages (VQ-VAE and prior) run.

It owns what is common: the optimiser and learning-rate schedule, bf16 autocast, DDP,
the non-finite guard, progress bars, TensorBoard, checkpoints (last and best, atomic,
mid-epoch if asked) and exact resume. A `Stage` (the contract is written down once, below)
supplies the model, its batches, its loss, its per-epoch statistics and its validation.

`fit` reads top to bottom: restore (or start); for each epoch, for each step: forward,
the non-finite check (stop, or skip the batch leaving every buffer as it was), backward,
optimiser step, a periodic checkpoint; at the epoch's end: evaluate on validation, keep the
best, save the last. The final test evaluation is the stage's, after `fit` returns.

A stage may train a second network against its model (a GAN's discriminator, the "critic"):
both forwards come first, one non-finite check covers both, then one backward and one
optimiser step per network. The critic has its own optimiser, schedule and checkpoint state.
An exponential moving average of the model's weights (train.ema_decay) is kept here too.
"""
from __future__ import annotations

import contextlib
import functools
import math
import sys
import time
import warnings
from abc import ABC, abstractmethod
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


# Where a user changes each stage kind's training settings (a section of RunConfig): a Stage's
# `config_section`, and what `check_resume_config` reads before any stage is built.
CONFIG_SECTIONS = {"vqvae": "train", "prior": "prior_train"}


class Stage(ABC):
    """The Stage contract: what a training stage (training/vqvae_stage.py, training/prior_stage.py)
    provides to `fit`. `fit` owns the optimiser, schedule, checkpoints and progress; a stage
    owns its model, its data and what its figures mean.

    Set in __init__ (or as class attributes):
        kind: "vqvae" or "prior": names the checkpoints, progress bars and messages.
        config_section: "train" or "prior_train": where a user changes this stage's settings
            (messages tell them which option to set); by default CONFIG_SECTIONS[kind].
        summary_keys: the history fields printed at each epoch end.
        epoch_statistics: names of the tensor attributes holding the epoch's running
            statistics (reset by `begin_epoch`): saved in mid-epoch checkpoints and put back on
            resume, so a resumed epoch reports what an uninterrupted one would.
        model: the module to train (its trainable parameters are the optimiser's).
        batches: the training batches: `len(batches)` batches per epoch, and
            `batches.epoch(epoch, skip)` yields epoch `epoch`'s batches after the first `skip`,
            the same batches in the same order on every call (exact resume depends on it).
        train_cfg: this stage's TrainConfig.
        config_dict: the whole RunConfig as a dict, saved in every checkpoint.

    Optional, for a second network trained against the model (a discriminator):
        critic: the module (None: no second network). Its trainable parameters get their own
            optimiser and learning-rate schedule, set by critic_train_cfg; its weights,
            optimiser and schedule are saved in every checkpoint beside the model's.
        critic_train_cfg: the TrainConfig of its optimiser (the stage's, usually with another lr).

    Methods: `loss` and `evaluate` are required; the others have defaults that do nothing.
    """

    kind: str
    summary_keys: tuple = ()
    epoch_statistics: tuple = ()
    model: nn.Module
    batches: object  # data.Batches or data.TensorBatches
    train_cfg: TrainConfig
    config_dict: dict
    critic: nn.Module | None = None
    critic_train_cfg: TrainConfig | None = None

    @property
    def config_section(self) -> str:
        return CONFIG_SECTIONS[self.kind]

    @abstractmethod
    def loss(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(the loss to minimise, its named terms). `model` is `self.model` or its DDP wrapper:
        call that one, so gradients are synchronised."""

    @abstractmethod
    def evaluate(self) -> dict:
        """Validation figures of `self.model` (in eval mode), on rank 0: 'val_loss' (lower is
        better) chooses the best checkpoint; {} when the run has no validation split (then the
        last checkpoint is the one kept)."""

    def critic_loss(self, critic: nn.Module, batch) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        """With a critic: (its loss, its named terms) on the step's batch, called after `loss` (which
        may keep what the critic needs, e.g. the model's detached outputs). The loss is None on a
        step where the critic does not train; the terms have the same names on every step.
        `critic` is `self.critic` or its DDP wrapper: call that one."""
        raise NotImplementedError(f"{type(self).__name__} has a critic but no critic_loss")

    def begin_epoch(self) -> None:
        """Reset the per-epoch statistics (not called when resuming mid-epoch)."""

    def before_step(self, step: int) -> None:
        """Before each step's forward: `step` optimiser steps have been taken (for losses that
        switch on at a step)."""

    def after_step(self, values: torch.Tensor) -> None:
        """After each optimiser step. values: the step's loss terms (detached, fp32), stacked in
        the order `loss` returned them, then those of `critic_loss`."""

    def step_problem(self, step: int) -> tuple[str, bool] | None:
        """After `after_step`: (a one-line message, stop?) when the step revealed a problem the
        user must hear of (a collapsed discriminator); the loop prints it, or stops the run with
        it. `step`: the optimiser steps taken."""
        return None

    def training_state(self) -> dict:
        """State the stage carries across epochs (counters of consecutive steps), saved in every
        checkpoint ..."""
        return {}

    def load_training_state(self, state: dict) -> None:
        """... and put back on resume ({} from a checkpoint written before the stage had any)."""

    def resume_notes(self, saved_config: dict, step: int) -> list[str]:
        """On resume at `step`: notes on settings of the stage's own (beyond its optimiser's) that
        this call changes, saying from when they act. `saved_config`: the checkpoint's config."""
        return []

    def epoch_summary(self) -> dict:
        """The epoch's training statistics for its history record. Called on every process (it
        may all-reduce)."""
        return {}

    def postfix(self) -> dict:
        """What the progress bar shows after the step count."""
        return {}

    def epoch_state(self) -> dict:
        """The epoch's statistics so far, saved in a mid-epoch checkpoint ..."""
        return {name: getattr(self, name) for name in self.epoch_statistics}

    def load_epoch_state(self, state: dict) -> None:
        """... and put back on resume ({} when the checkpoint was written at an epoch's end)."""
        if state:
            for name in self.epoch_statistics:
                getattr(self, name).copy_(state[name])

    def checkpoint_extra(self) -> dict:
        """More plain values for every checkpoint (what is needed to rebuild the model)."""
        return {}

    def compile(self, mode: str) -> None:
        """torch.compile what can be compiled (in place: state-dict keys stay the same)."""
        self.model.compile(mode=mode)

    def epoch_images(self, writer, epoch: int) -> None:
        """Images for TensorBoard at an epoch's end (rank 0, when tensorboard is installed)."""


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict  # the "vqvae" section of metrics.json (empty on ranks other than 0)
    history: list  # one dict per epoch
    model: torch.nn.Module  # the trained model (this process's replica under torchrun)


# What a run trains and is tested on: a resumed run keeps them (its metrics would otherwise
# describe a mixture of two datasets).
DATA_FIXED_ON_RESUME = ("dataset", "test_dataset", "test_fraction", "val_fraction", "image_size", "channels")


def check_resume_config(run_dir: Path, kind: str, config: RunConfig, sections: tuple[str, ...],
                        more: tuple[tuple[str, str], ...] = ()) -> None:
    """A resumed run must build the same model it saved (compare the architecture sections, and
    the (section, field) pairs in `more`, those that shape a second network) and may not ask for
    fewer epochs than it has trained."""
    path = checkpoint_path(run_dir, kind, "last")
    if not path.is_file():
        return  # nothing to compare with; `fit` says what it does about that
    checkpoint = load_checkpoint(path, kind=kind)
    # Rebuilt through RunConfig so fields added since the run was saved compare at their defaults.
    saved = RunConfig.from_dict(checkpoint["config"]).to_dict()
    now = config.to_dict()
    # Fewer epochs than trained would stop at once and leave config.json saying fewer than the
    # weights had (an epoch begun counts: its steps are in the weights).
    section = CONFIG_SECTIONS[kind]
    loop = checkpoint.get("loop", {})
    trained = int(loop.get("epoch", 0)) + (1 if loop.get("batch_in_epoch", 0) else 0)
    if now[section]["epochs"] < trained:
        raise ConfigError(f"{section}.epochs={now[section]['epochs']} on resume, but {run_dir} has trained "
                          f"{trained} epoch(s) of its {kind}: resuming cannot take epochs back; leave "
                          f"{section}.epochs out, or set it to {trained} or more")
    # quantizer.search_precision only changes how the same codes are found: free to change.
    fields = [(s, k) for s in sections for k in now[s] if (s, k) != ("quantizer", "search_precision")]
    fields += [("data", k) for k in DATA_FIXED_ON_RESUME] + list(more)
    changed = [f"{s}.{k}: {saved[s].get(k)!r} -> {now[s][k]!r}" for s, k in fields if saved[s].get(k) != now[s][k]]
    if changed:
        raise ConfigError(f"cannot resume {run_dir} with a different model or data: {'; '.join(changed)}. "
                          f"Only training settings (train.*, prior_train.*, sample.*, and loss.* except the discriminator's "
                          f"adversarial, disc_layers and disc_channels) may change on resume")


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
    """Train `stage.model` for `stage.train_cfg.epochs` epochs (counting those a resumed run had
    done), saving RUN/checkpoints/KIND-last.pt (and -best.pt) as it goes. Returns the loop state:
    epochs, steps, best validation loss and one history record per epoch."""
    cfg, device, model = stage.train_cfg, ctx.device, stage.model
    steps_per_epoch = len(stage.batches)
    total_steps = max(1, cfg.epochs * steps_per_epoch)
    nets = [Optimised.build(model, cfg, total_steps, device)]
    if stage.critic is not None:
        nets.append(Optimised.build(stage.critic, stage.critic_train_cfg or cfg, total_steps, device))
    ema = WeightAverage(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    last_path = checkpoint_path(run_dir, stage.kind, "last")

    # Restore, or start.
    if start_from_checkpoint(stage, run_dir, ctx, resume):
        state = restore(stage, last_path, nets, ema, ctx)
    else:
        state = LoopState()
        torch.manual_seed(cfg.seed)
    for net in nets:
        use_schedule(net.optimizer, net.scheduler, lr_lambda(net.cfg, total_steps, state.schedule_start))

    train_model, train_critic = prepare_for_training(stage, ctx)
    autocast = (functools.partial(torch.autocast, device.type, dtype=torch.bfloat16) if amp_enabled(cfg.amp, device)
                else contextlib.nullcontext)
    writer = _open_tensorboard(run_dir, stage.kind) if ctx.is_main else None
    # On CUDA in "stop" mode the check lags one step so the host never waits for the device.
    lagged = LaggedCheck(stage, last_path) if device.type == "cuda" and cfg.on_nonfinite == "stop" else None

    model.train()
    if stage.critic is not None:
        stage.critic.train()
    while state.epoch < cfg.epochs:
        epoch, first_batch = state.epoch, state.batch_in_epoch  # first_batch > 0: resumed mid-epoch
        if first_batch == 0:
            stage.begin_epoch()
        t0, images_seen, skipped = time.perf_counter(), 0, 0
        bar = progress_bar(stage, ctx, epoch, steps_per_epoch, first_batch)
        for batch in stage.batches.epoch(epoch, first_batch):
            # The forward pass itself changes state (EMA codebooks, usage counters, restarts):
            # a skipped batch must leave all of it as it was, so keep a copy to put back.
            before = [_forward_state(net.module) for net in nets] if cfg.on_nonfinite == "skip" else None
            where = (state.step + 1, epoch, state.batch_in_epoch + 1)  # (step, epoch, batch) for messages
            stage.before_step(state.step)
            with out_of_memory_advice(stage, device):
                with autocast():
                    loss, terms = stage.loss(train_model, batch)
                    critic_loss = None
                    if stage.critic is not None:
                        critic_loss, critic_terms = stage.critic_loss(train_critic, batch)
                        terms = {**terms, **critic_terms}
                values = torch.stack([t.detach().float() for t in terms.values()])
                bad = nonfinite_flags(values, ctx)
                if lagged is not None:
                    lagged.check()  # the previous step's flags, copied without blocking
                    lagged.record(bad, where, list(terms))
                elif bool(bad.any()):
                    message = nonfinite_message(stage.kind, where, list(terms), bad)
                    if cfg.on_nonfinite != "skip":
                        raise stop_error(stage, last_path, message)
                    for net, kept in zip(nets, before):
                        net.module.load_state_dict(kept, strict=False)
                        net.optimizer.zero_grad(set_to_none=True)
                    skipped += 1
                    if ctx.is_main and skipped == 1:  # the first of the epoch; the count comes at its end
                        (bar.write if bar is not None else _warn)(message + "; batch skipped")
                    state.batch_in_epoch += 1
                    continue
                # One backward and one optimiser step per network; the critic's loss was computed on
                # the model's detached outputs, so the two graphs share nothing.
                nets[0].step(loss)
                if len(nets) > 1:
                    nets[1].step(critic_loss)
            if ema is not None:
                ema.update(model)
            state.step += 1
            state.batch_in_epoch += 1
            images_seen += batch[0].shape[0] * ctx.world
            stage.after_step(values)
            problem = stage.step_problem(state.step)
            if problem is not None and ctx.is_main and not problem[1]:
                (bar.write if bar is not None else _warn)(problem[0])
            if problem is not None and problem[1]:
                raise TrainingError(problem[0])
            if bar is not None:
                bar.update(1)
                if state.step % 5 == 0:
                    bar.set_postfix(stage.postfix(), refresh=False)
            if writer is not None and state.step % 50 == 0:
                for name, value in zip(terms, values.tolist()):
                    writer.add_scalar(f"train_step/{name}", value, state.step)
            # Periodic checkpoint, mid-epoch (the epoch's end writes its own).
            if cfg.checkpoint_every_steps and state.step % cfg.checkpoint_every_steps == 0 \
                    and state.batch_in_epoch < steps_per_epoch:
                if lagged is not None:
                    lagged.check()  # never write weights a non-finite step has touched
                save(stage, run_dir, "last", nets, ema, state, ctx, stage.epoch_state())

        # End of epoch: evaluate on validation (the averaged weights, when kept), keep the best, save.
        if lagged is not None:
            lagged.check()
        if bar is not None:
            bar.close()
        seconds = time.perf_counter() - t0
        record = {"epoch": epoch + 1, "step": state.step, "lr": nets[0].scheduler.get_last_lr()[0],
                  **stage.epoch_summary()}
        if ctx.is_main:
            model.eval()
            with ema.applied(model) if ema is not None else contextlib.nullcontext():
                record.update(stage.evaluate())
            model.train()
        if skipped:
            record["skipped_batches"] = skipped
            if ctx.is_main:
                _warn(f"{stage.kind} epoch {epoch + 1}/{cfg.epochs}: {skipped} of {steps_per_epoch - first_batch} "
                      f"batches skipped (non-finite loss)")
        record["seconds"] = round(seconds, 3)
        record["images_per_s"] = round(images_seen / seconds, 1) if seconds > 0 else None
        state.history.append(record)
        state.epoch += 1
        state.batch_in_epoch = 0
        improved = ctx.is_main and record.get("val_loss", math.inf) < state.best
        if improved:
            state.best = record["val_loss"]
        if cfg.keep_best and improved:
            save(stage, run_dir, "best", nets, ema, state, ctx)
        save(stage, run_dir, "last", nets, ema, state, ctx)
        if writer is not None:
            with ema.applied(model) if ema is not None else contextlib.nullcontext():
                log_epoch(writer, stage, record)
        if ctx.is_main and cfg.progress:
            shown = {k: v for k, v in record.items() if k in stage.summary_keys}
            print(f"{stage.kind} epoch {epoch + 1}/{cfg.epochs}: " +
                  " ".join(f"{k}={_fmt(v)}" for k, v in shown.items()), flush=True)

    if writer is not None:
        writer.close()
    if ema is not None:
        ema.copy_to(model)  # the trained model is the average (what the checkpoints' model_state hold)
    # keep_last=false drops the last checkpoint only when a best one stands in for it (an adversarial
    # run whose discriminator never reached full weight has none).
    if (ctx.is_main and not cfg.keep_last and last_path.exists() and state.epoch >= cfg.epochs
            and checkpoint_path(run_dir, stage.kind, "best").exists()):
        last_path.unlink()
    return state


@dataclass
class Optimised:
    """A network `fit` trains, with its own optimiser and learning-rate schedule."""

    module: nn.Module
    params: list
    cfg: TrainConfig
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR

    @classmethod
    def build(cls, module: nn.Module, cfg: TrainConfig, total_steps: int, device: torch.device) -> "Optimised":
        params = [p for p in module.parameters() if p.requires_grad]
        optimizer = make_optimizer(params, cfg, device)
        return cls(module, params, cfg, optimizer,
                   torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, total_steps)))

    def step(self, loss: torch.Tensor | None) -> None:
        """One backward and optimiser step (none when `loss` is None); the schedule always advances,
        so every network's rate follows the step count."""
        if loss is not None:
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
            self.optimizer.step()
        with warnings.catch_warnings():  # a network that has not trained yet (before loss.disc_start)
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            self.scheduler.step()


class WeightAverage:
    """An exponential moving average of a model's trainable parameters (buffers are the model's
    own). Its decay warms up as (1 + n) / (10 + n) over the first updates, as taming's LitEma
    does, so a short run's average is not dominated by its initial weights."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay, self.updates = decay, 0
        self.names = [name for name, p in model.named_parameters() if p.requires_grad]
        self.shadow = [p.detach().clone() for _, p in self._params(model)]

    def _params(self, model: nn.Module) -> list:
        params = dict(model.named_parameters())
        return [(name, params[name]) for name in self.names]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self.shadow, [p.detach() for _, p in self._params(model)], 1 - decay)
        self.updates += 1

    def state_dict(self, model: nn.Module) -> dict:
        """The model's state dict with the averaged parameters in place of the trained ones."""
        state = model.state_dict()
        state.update({name: value.clone() for name, value in zip(self.names, self.shadow)})
        return state

    def load(self, state: dict, updates: int) -> None:
        for name, value in zip(self.names, self.shadow):
            value.copy_(state[name])
        self.updates = updates

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        for (_, p), value in zip(self._params(model), self.shadow):
            p.copy_(value)

    @contextlib.contextmanager
    def applied(self, model: nn.Module):
        """The averaged weights in `model` for the duration (evaluation), the trained ones after."""
        kept = [p.detach().clone() for _, p in self._params(model)]
        self.copy_to(model)
        try:
            yield
        finally:
            with torch.no_grad():
                for (_, p), value in zip(self._params(model), kept):
                    p.copy_(value)


def make_optimizer(params: list, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """Adam, or AdamW when there is weight decay; on GPUs the fused kernel updates every
    parameter in one launch."""
    fused = {"fused": True} if device.type == "cuda" else {}
    betas = tuple(float(b) for b in cfg.adam_betas)
    if cfg.weight_decay == 0:
        return torch.optim.Adam(params, lr=cfg.lr, betas=betas, weight_decay=cfg.weight_decay, **fused)
    return torch.optim.AdamW(params, lr=cfg.lr, betas=betas, weight_decay=cfg.weight_decay, **fused)


def lr_lambda(cfg: TrainConfig, total_steps: int, start: int = 0):
    """The schedule as LambdaLR takes it: a plain function of the step count (LambdaLR would
    save a callable object's attributes, a TrainConfig among them, into every checkpoint)."""
    return lambda step: lr_factor(cfg, step, total_steps, start)


def use_schedule(optimizer: torch.optim.Optimizer, scheduler, schedule) -> None:
    """Make `schedule` the scheduler's, and set the current rate from it at the scheduler's
    step, as LambdaLR computes it."""
    scheduler.lr_lambdas[0] = schedule
    for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
        group["lr"] = base * schedule(scheduler.last_epoch)


def start_from_checkpoint(stage: Stage, run_dir: Path, ctx: DistContext, resume: bool) -> bool:
    """Whether `fit` continues from KIND-last.pt. Also removes the temporary files a killed
    process left (rank 0), and raises when `resume` has nothing to continue from."""
    last_path = checkpoint_path(run_dir, stage.kind, "last")
    killed_in_first_save = any(last_path.parent.glob(f".{stage.kind}-*.pt.*{TMP_SUFFIX}"))
    barrier()  # every process has looked before rank 0 cleans up
    if ctx.is_main:
        remove_stale_files(run_dir)
    if not resume:
        return False
    if not last_path.is_file() and killed_in_first_save:
        # Killed while writing its first checkpoint: there is nothing to continue from.
        if ctx.is_main:
            print(f"{stage.kind}: no checkpoint in {last_path.parent} (the run was stopped while writing its first); "
                  f"starting from the beginning", flush=True)
        return False
    if not last_path.is_file():
        raise CheckpointError(f"cannot resume: {last_path} does not exist (no {stage.kind} checkpoint in "
                              f"{run_dir}); run without --resume to start it")
    return True


def restore(stage: Stage, path: Path, nets: list[Optimised], ema: WeightAverage | None,
            ctx: DistContext) -> LoopState:
    """Put the model (and critic), optimisers, schedules, weight average, epoch statistics and
    random number generators back as `path` saved them, then apply what this call changes (see
    `_resumed_settings`)."""
    ckpt = load_checkpoint(path, kind=stage.kind, map_location=ctx.device)
    # With a weight average, model_state holds the average and training_model_state the trained weights.
    stage.model.load_state_dict(ckpt.get("training_model_state", ckpt["model_state"]))
    main = nets[0]
    main.optimizer.load_state_dict(ckpt["optimizer_state"])
    main.scheduler.load_state_dict(ckpt["scheduler_state"])
    state = LoopState.from_dict(ckpt["loop"])
    notes = []
    if len(nets) > 1:
        critic = nets[1]
        if "critic_state" not in ckpt:
            raise CheckpointError(f"{path} was saved without the second network (a discriminator) that this "
                                  f"run's settings train; resume it with its own loss settings")
        critic.module.load_state_dict(ckpt["critic_state"])
        critic.optimizer.load_state_dict(ckpt["critic_optimizer_state"])
        critic.scheduler.load_state_dict(ckpt["critic_scheduler_state"])
    if ema is not None:
        if "training_model_state" in ckpt:
            ema.load(ckpt["model_state"], ckpt.get("ema_updates", 0))
        else:
            ema.load(ckpt["model_state"], 0)
            notes.append(f"{stage.config_section}.ema_decay={stage.train_cfg.ema_decay:g} on resume: the weight "
                         f"average starts from the weights at step {state.step}")
    stage.load_epoch_state(ckpt.get("epoch_state", {}))
    stage.load_training_state(ckpt.get("stage_state", {}))
    _set_rng_state(ckpt["rng"], ctx.device)
    notes += _resumed_settings(stage.train_cfg, ckpt["config"][stage.config_section], state, stage,
                               main.optimizer, main.scheduler)
    notes += stage.resume_notes(ckpt["config"], state.step)
    if len(nets) > 1:  # the critic's rate and optimiser settings are this call's too
        _apply_optimizer_settings(nets[1].optimizer, nets[1].scheduler, nets[1].cfg.lr)
    for note in notes:
        state.notes.append(note)
        if ctx.is_main:
            print(f"{stage.kind}: {note}", flush=True)
    return state


def prepare_for_training(stage: Stage, ctx: DistContext) -> tuple[nn.Module, nn.Module | None]:
    """The modules the steps call: the stage's model (and critic), compiled if asked, wrapped in
    DDP under torchrun (checkpoints always save the unwrapped modules)."""
    if stage.train_cfg.compile:
        stage.compile(stage.train_cfg.compile_mode)
        if stage.critic is not None:
            stage.critic.compile(mode=stage.train_cfg.compile_mode)
    if not ctx.distributed:
        return stage.model, stage.critic
    device = ctx.device

    def wrap(module):
        # Codebook statistics are all-reduced inside the quantizer, so buffers need no broadcast.
        return nn.parallel.DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False)

    return wrap(stage.model), (wrap(stage.critic) if stage.critic is not None else None)


def save(stage: Stage, run_dir: Path, which: str, nets: list[Optimised], ema: WeightAverage | None,
         state: LoopState, ctx: DistContext, epoch_state: dict | None = None) -> None:
    """RUN/checkpoints/KIND-WHICH.pt, atomically, on rank 0: everything an exact resume needs.
    model_state is the model to use (the weight average when one is kept)."""
    if not ctx.is_main:
        return
    main = nets[0]
    extra = {}
    if ema is not None:
        extra.update(training_model_state=stage.model.state_dict(), ema_updates=ema.updates)
    if len(nets) > 1:
        critic = nets[1]
        extra.update(critic_state=critic.module.state_dict(), critic_optimizer_state=critic.optimizer.state_dict(),
                     critic_scheduler_state=critic.scheduler.state_dict())
    save_checkpoint(
        checkpoint_path(run_dir, stage.kind, which), stage.kind, stage.config_dict,
        ema.state_dict(stage.model) if ema is not None else stage.model.state_dict(),
        optimizer_state=main.optimizer.state_dict(), scheduler_state=main.scheduler.state_dict(),
        rng=_rng_state(ctx.device), loop=asdict(state), epoch_state=epoch_state or {},
        stage_state=stage.training_state(), **extra, **stage.checkpoint_extra())


def progress_bar(stage: Stage, ctx: DistContext, epoch: int, steps_per_epoch: int, done: int):
    """A tqdm bar over the epoch's steps on rank 0 when progress is on, else None."""
    if not (stage.train_cfg.progress and ctx.is_main):
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return None
    return tqdm(total=steps_per_epoch, initial=done, desc=f"{stage.kind} {epoch + 1}/{stage.train_cfg.epochs}",
                leave=False, dynamic_ncols=True)


@contextlib.contextmanager
def out_of_memory_advice(stage: Stage, device: torch.device):
    """Turn running out of memory into an error that suggests a smaller batch."""
    try:
        yield
    except (torch.OutOfMemoryError, RuntimeError) as e:
        # The CPU allocator raises a plain RuntimeError ("DefaultCPUAllocator: can't allocate memory").
        if not isinstance(e, torch.OutOfMemoryError) and "can't allocate memory" not in str(e):
            raise
        batch_size = stage.train_cfg.batch_size
        raise TrainingError(f"out of memory on {device} with batch size {batch_size}: try "
                            f"--set {stage.config_section}.batch_size={max(1, batch_size // 2)} (or a smaller "
                            f"model)") from None


def nonfinite_flags(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """1.0 for each loss term that is not finite, on any process (all processes then agree to
    skip or stop)."""
    bad = (~torch.isfinite(values)).float()
    if ctx.distributed:
        dist.all_reduce(bad)
    return bad


def nonfinite_message(kind: str, where: tuple[int, int, int], names: list[str], bad: torch.Tensor) -> str:
    step, epoch, batch = where
    terms = [name for name, b in zip(names, bad.tolist()) if b]
    return f"{kind}: non-finite loss at step {step} (epoch {epoch + 1}, batch {batch}) in term(s) {', '.join(terms)}"


def stop_error(stage: Stage, last_path: Path, message: str) -> TrainingError:
    """The error that stops a run at a non-finite loss: what is kept, and what to change."""
    kept = (f"The last good checkpoint is kept at {last_path}" if last_path.is_file()
            else "No checkpoint had been written yet")
    section = stage.config_section
    return TrainingError(message + f". {kept}; lower the learning rate ({section}.lr={stage.train_cfg.lr:g}), or set "
                         f"{section}.on_nonfinite=skip")


def log_epoch(writer, stage: Stage, record: dict) -> None:
    """An epoch's figures (and the stage's images) to TensorBoard."""
    epoch = record["epoch"]
    for k, v in record.items():
        if isinstance(v, (int, float)) and k != "epoch":
            writer.add_scalar(f"epoch/{k}", v, epoch)
    stage.epoch_images(writer, epoch)
    writer.flush()


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
    if not finished and cfg.epochs != saved["epochs"]:
        notes.append(f"{section}.epochs changed on resume mid-run: {saved['epochs']} -> {cfg.epochs}; the learning-rate "
                     f"schedule is re-planned over {cfg.epochs} epochs from step {state.step + 1}")
    if cfg.lr != saved["lr"]:
        for group in optimizer.param_groups:
            group["initial_lr"] = cfg.lr
        scheduler.base_lrs = [cfg.lr] * len(optimizer.param_groups)
        notes.append(f"{section}.lr changed on resume: {saved['lr']:g} -> {cfg.lr:g}, applied from step {state.step + 1}")
    if cfg.weight_decay != saved["weight_decay"]:
        notes.append(f"{section}.weight_decay changed on resume: {saved['weight_decay']:g} -> {cfg.weight_decay:g}, "
                     f"applied from step {state.step + 1}")
    if list(cfg.adam_betas) != list(saved.get("adam_betas", [0.9, 0.999])):
        notes.append(f"{section}.adam_betas changed on resume: {list(saved.get('adam_betas', [0.9, 0.999]))} -> "
                     f"{list(cfg.adam_betas)}, applied from step {state.step + 1}")
    _apply_optimizer_settings(optimizer)
    return notes


def _apply_optimizer_settings(optimizer, scheduler=None, lr: float | None = None) -> None:
    """The loaded state carries the saved optimiser's settings; those of this call's optimiser
    hold (betas, weight decay and Adam vs AdamW, fused kernels on the device trained on now),
    and its base rate `lr` when given."""
    for group in optimizer.param_groups:
        for key in ("betas", "weight_decay", "decoupled_weight_decay", "fused", "foreach"):
            if key in optimizer.defaults:
                group[key] = optimizer.defaults[key]
    if lr is not None and scheduler is not None:
        for group in optimizer.param_groups:
            group["initial_lr"] = lr
        scheduler.base_lrs = [lr] * len(optimizer.param_groups)


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


class LaggedCheck:
    """The non-finite check one step late, for CUDA: a step's flags are copied to pinned host
    memory without blocking, and read at the next step, by when its kernels have usually
    finished; the host never waits for the device."""

    def __init__(self, stage: Stage, last_path: Path):
        self.stage, self.last_path = stage, last_path
        self.pending = None

    def record(self, bad: torch.Tensor, where: tuple[int, int, int], names: list[str]) -> None:
        host = torch.empty(bad.shape, dtype=bad.dtype, pin_memory=True)
        host.copy_(bad, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self.pending = (host, event, where, names)

    def check(self) -> None:
        """Raise the stop error if the recorded step had a non-finite loss term."""
        if self.pending is None:
            return
        host, event, where, names = self.pending
        event.synchronize()
        self.pending = None
        if bool(host.any()):
            raise stop_error(self.stage, self.last_path, nonfinite_message(self.stage.kind, where, names, host))


def _fmt(v):
    return f"{v:.4g}" if isinstance(v, float) else str(v)
