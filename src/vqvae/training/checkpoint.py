"""Checkpoints: plain dicts of tensors and primitives, written atomically, loaded safely.

Format (version 1): {"format", "version", "kind" ("vqvae" | "prior"), "config" (the whole
resolved RunConfig as a dict), "model_state", and for resuming "optimizer_state",
"scheduler_state", "rng", "loop" (epoch, step, batch in epoch, best, history), plus
stage extras}. Loading uses `torch.load(weights_only=True)`, which refuses anything but
tensors and primitive containers, so a checkpoint can never run code.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from ..errors import CheckpointError

FORMAT = "vqvae-toolkit-checkpoint"
VERSION = 1


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


def atomic_save(obj, path: Path) -> None:
    """Write to a temporary file in the same folder, flush to disk, then rename over `path`:
    a crash at any moment leaves either the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def save_checkpoint(path: Path, kind: str, config: dict, model_state: dict, **extra) -> None:
    payload = {"format": FORMAT, "version": VERSION, "kind": kind, "config": config,
               "model_state": strip_wrapper_prefixes(model_state), **extra}
    atomic_save(payload, path)


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
        raise CheckpointError(f"{path} is not a checkpoint of this toolkit (cannot load it safely: "
                              f"{str(e).splitlines()[0][:200]})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint of this toolkit (no '{FORMAT}' marker)")
    if payload.get("version", 0) > VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {payload['version']}; this version of the "
                              f"toolkit reads up to {VERSION}: upgrade the package")
    if kind is not None and payload.get("kind") != kind:
        raise CheckpointError(f"{path} holds a {payload.get('kind')!r} model, but a {kind!r} checkpoint is needed")
    return payload
