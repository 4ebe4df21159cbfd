"""The model folder: a trained model to use anywhere, read with no pickle and no run folder.

    FOLDER/config.json          {"format": "vqvae-toolkit-model", "version": 1, "models": {...}, "metrics": {...}}
    FOLDER/vqvae.safetensors    the VQ-VAE's weights and buffers
    FOLDER/prior.safetensors    the prior's, when there is one
    FOLDER/README.md            a model card (written by `vqvae export`)

The convention of diffusers and transformers (config.json beside the weights, `from_pretrained`
and `save_pretrained`). Each model's entry in config.json holds the config it is rebuilt from
("config": the resolved RunConfig as a dict, exactly as a checkpoint holds it) and "extras": the
checkpoint's other facts about the model (a prior's spec and kind, the fingerprint of the
codebook it was trained on), copied generically, so a new kind of model needs no change here.
Reading gives back a checkpoint-shaped dict, which the code that loads checkpoints turns into
a model. A folder holds weights only, no optimizer or loop state: it is for use, not for
resuming training (checkpoints stay the training format).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes
from torch import nn

from ..errors import CheckpointError
from ..files import atomic_write_bytes

FORMAT = "vqvae-toolkit-model"
VERSION = 1
KINDS = ("vqvae", "prior")
# Checkpoint keys that are training state or the envelope, never copied into a model folder.
TRAINING_STATE = frozenset({"format", "version", "kind", "config", "model_state", "optimizer_state",
                            "scheduler_state", "rng", "loop", "epoch_state"})
USE_NOTE = ("Weights for use (encode, decode, sample, export), not for resuming training: optimizer and loop "
            "state are not included; keep the run's checkpoints for that.")


def weights_file(folder: str | Path, kind: str) -> Path:
    return Path(folder) / f"{kind}.safetensors"


def read_folder_config(folder: str | Path) -> dict:
    """FOLDER/config.json, checked to be a model folder of a format version this code reads."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder} is not a model folder (no config.json)")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{folder} is not a model folder of this toolkit (config.json has no "
                              f"'format': '{FORMAT}'); pass a run folder, a checkpoint, or a folder written by "
                              f"`vqvae export --format folder`")
    if meta.get("version", 0) > VERSION:
        raise CheckpointError(f"{folder} has model-folder format version {meta['version']}; this version of the "
                              f"toolkit reads up to {VERSION}: upgrade the package")
    return meta


def is_model_folder(path: str | Path) -> bool:
    """True for a folder written by `write_model_folder` (a run folder's config.json has no format marker)."""
    path = Path(path) / "config.json"
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("format") == FORMAT
    except (json.JSONDecodeError, AttributeError):
        return False


def read_model_folder(folder: str | Path, kind: str) -> dict:
    """The checkpoint-shaped dict {"kind", "config", "model_state", **extras} of one model in a folder.

    Reads JSON and safetensors only: nothing in the folder can run code."""
    folder = Path(folder)
    meta = read_folder_config(folder)
    entry = meta.get("models", {}).get(kind)
    if entry is None:
        held = ", ".join(meta.get("models", {})) or "nothing"
        raise CheckpointError(f"model folder {folder} holds no {kind} (it holds: {held})")
    path = weights_file(folder, kind)
    if not path.is_file():
        raise CheckpointError(f"model folder {folder} lists a {kind} but {path.name} is missing")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = f.metadata() or {}
            state = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as e:
        raise CheckpointError(f"{path} is not a readable safetensors file: {str(e).splitlines()[0][:200]}") from None
    if header.get("kind") not in (None, kind):
        raise CheckpointError(f"{path} holds a {header['kind']!r} model, but config.json lists it as the {kind}")
    return {"kind": kind, "config": entry["config"], "model_state": state, **entry.get("extras", {})}


def model_entry(checkpoint: dict) -> dict:
    """What a model folder keeps of a checkpoint-shaped dict: its config and every extra that is
    not training state. Extras must be JSON data (a prior's spec, a fingerprint, a kind name)."""
    extras = {k: v for k, v in checkpoint.items() if k not in TRAINING_STATE}
    for key, value in extras.items():
        try:
            json.dumps(value)
        except TypeError:
            raise CheckpointError(f"checkpoint entry {key!r} ({type(value).__name__}) is not JSON data, so a model "
                                  f"folder cannot store it") from None
    return {"config": checkpoint["config"], "extras": extras}


def write_model_folder(folder: str | Path, models: dict[str, dict], metrics: dict | None = None,
                       card: str | None = None) -> Path:
    """Write `models` ({kind: checkpoint-shaped dict}) as a model folder, afresh.

    The folder must be new, empty or a model folder already (then its files are replaced and a
    model it held that is not in `models` is removed, so no stale prior stays paired with a new
    VQ-VAE). Each file is written atomically; config.json, which makes it a model folder, last.
    """
    folder = Path(folder)
    unknown = sorted(set(models) - set(KINDS))
    if unknown or "vqvae" not in models:
        raise CheckpointError(f"a model folder holds a vqvae and optionally a prior; got {sorted(models)}")
    if folder.exists() and not folder.is_dir():
        raise CheckpointError(f"{folder} exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()) and not is_model_folder(folder):
        raise CheckpointError(f"{folder} is not empty and not a model folder: choose a new or empty folder")
    folder.mkdir(parents=True, exist_ok=True)
    entries = {}
    for kind, checkpoint in models.items():
        state = {name: t.detach().cpu().contiguous() for name, t in checkpoint["model_state"].items()}
        data = safetensors_bytes(state, metadata={"format": FORMAT, "kind": kind})
        atomic_write_bytes(weights_file(folder, kind), data)
        entries[kind] = {"weights": weights_file(folder, kind).name, **model_entry(checkpoint)}
    for kind in set(KINDS) - set(models):
        weights_file(folder, kind).unlink(missing_ok=True)
    if card is not None:
        atomic_write_bytes(folder / "README.md", card.encode())
    meta = {"format": FORMAT, "version": VERSION, "note": USE_NOTE, "models": entries, "metrics": metrics or {}}
    atomic_write_bytes(folder / "config.json", (json.dumps(meta, indent=2) + "\n").encode())
    return folder


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Load `state` into `model` exactly, or name what does not fit: tensors missing from the file,
    tensors the model does not have, and shapes that differ from the ones its config builds."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} (the config builds {tuple(v.shape)})"
              for k, v in expected.items() if k in state and state[k].shape != v.shape]
    problems = [f"{label}: {_first(names)}" for label, names in
                (("missing tensors", missing), ("unexpected tensors", extra), ("wrong shapes", shapes)) if names]
    if problems:
        raise CheckpointError(f"{source}: the weights do not fit the model its config describes; "
                              + "; ".join(problems))
    model.load_state_dict(state)


def _first(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
