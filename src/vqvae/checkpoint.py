"""Checkpoints: plain dicts of tensors and primitives, written atomically, loaded safely.

Format (version 1): {"format", "version", "kind" ("vqvae" | "prior"), "config" (the whole
resolved RunConfig as a dict), "model_state", and for resuming "optimizer_state",
"scheduler_state", "rng", "loop" (epoch, step, batch in epoch, best, history), plus
stage extras}. Loading uses `torch.load(weights_only=True)`, which refuses anything but
tensors and primitive containers, so a checkpoint can never run code.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import torch

from .errors import CheckpointError
from .files import atomic_torch_save

FORMAT = "vqvae-toolkit-checkpoint"
VERSION = 1
# The envelope and everything only resuming needs (the loop's `save` writes these): a model folder
# or any other copy for use keeps none of it. A key missing here is copied as if it described the
# model, and a state dict among them makes the copy fail.
TRAINING_STATE = frozenset({"format", "version", "kind", "config", "model_state", "optimizer_state",
                            "scheduler_state", "rng", "loop", "epoch_state", "stage_state",
                            "training_model_state", "ema_updates", "critic_state", "critic_optimizer_state",
                            "critic_scheduler_state"})


def strip_wrapper_prefixes(state: dict) -> dict:
    """DDP saves parameters as 'module.x', torch.compile as '_orig_mod.x': store the bare names
    so a checkpoint loads into a plain model whatever wrapped it during training."""
    out = {}
    for key, value in state.items():
        for prefix in ("module.", "_orig_mod."):
            while key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def save_checkpoint(path: Path, kind: str, config: dict, model_state: dict, **extra) -> None:
    payload = {"format": FORMAT, "version": VERSION, "kind": kind, "config": config,
               "model_state": strip_wrapper_prefixes(model_state), **extra}
    atomic_torch_save(payload, path)  # a crash or a full disk leaves the old file intact


def load_checkpoint(path: Path, kind: str | None = None, map_location="cpu") -> dict:
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; pass a checkpoint file (e.g. {path}/checkpoints/vqvae-last.pt) "
                              f"or use the run folder option")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path} is not a checkpoint of this toolkit: {_refusal_reason(e)}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint of this toolkit (no '{FORMAT}' marker)")
    version = payload.get("version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{path} is damaged: its format version is {version!r}, not a whole number")
    if version > VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {payload['version']}; this version of the "
                              f"toolkit reads up to {VERSION}: upgrade the package")
    if kind is not None and payload.get("kind") != kind:
        raise CheckpointError(f"{path} holds a {payload.get('kind')!r} model, but a {kind!r} checkpoint is needed")
    state = payload.get("model_state")
    if not isinstance(payload.get("config"), dict):
        raise CheckpointError(f"{path} is damaged: it holds no config (the settings its model is rebuilt from)")
    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise CheckpointError(f"{path} is damaged: its model_state is not a mapping of tensor names to tensors")
    return payload


def _refusal_reason(e: Exception) -> str:
    """Why torch.load refused a file, in our words: torch's own message advises re-running with
    weights_only=False, which is exactly what must not be done with a file of unknown origin."""
    if isinstance(e, pickle.UnpicklingError) and "weights only" in str(e).lower():
        found = [line.strip() for line in str(e).splitlines() if "GLOBAL" in line or "Unsupported" in line]
        what = f" ({found[0].rstrip('.')})" if found else ""
        return (f"it holds Python objects other than tensors and plain values{what}, which could run code when "
                f"loaded, so it was not loaded (cannot load it safely)")
    return "it is not a PyTorch checkpoint file, or it is damaged (cannot load it safely)"
