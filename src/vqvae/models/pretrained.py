"""The model folder: a trained model to use anywhere, read with no pickle and no run folder.

    FOLDER/config.json          {"format": "vqvae-toolkit-model", "version": 1, "models": {...}, "metrics": {...}}
                                each model: {"weights", "config", "extras", "sha256" (of its weights file),
                                "config_sha256" (of its config and extras)}, checked on load
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

import glob
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes
from torch import nn

from ..checkpoint import TRAINING_STATE
from ..errors import CheckpointError
from ..files import TMP_SUFFIX, atomic_write_bytes, default_mode, file_sha256, fsync_folder, process_alive

FORMAT = "vqvae-toolkit-model"
VERSION = 1
KINDS = ("vqvae", "prior")
USE_NOTE = ("Weights for use (encode, decode, sample, export), not for resuming training: optimizer and loop "
            "state are not included; keep the run's checkpoints for that.")


def weights_file(folder: str | Path, kind: str) -> Path:
    return Path(folder) / f"{kind}.safetensors"


def read_folder_config(folder: str | Path) -> dict:
    """FOLDER/config.json, checked to be a model folder of a format version this code reads, with
    the structure `write_model_folder` gives it."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder} is not a model folder (no config.json)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:  # ValueError: bad JSON or bytes that are not UTF-8
        raise CheckpointError(f"{path} is not valid JSON (damaged?): {str(e)[:200]}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{folder} is not a model folder of this toolkit (config.json has no "
                              f"'format': '{FORMAT}'); pass a run folder, a checkpoint, or a folder written by "
                              f"`vqvae export --format folder`")
    version = meta.get("version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{path}: 'version' is {json.dumps(version)}; expected a whole number")
    if version > VERSION:
        raise CheckpointError(f"{folder} has model-folder format version {meta['version']}; this version of the "
                              f"toolkit reads up to {VERSION}: upgrade the package")
    models = meta.get("models")
    problem = None
    if not isinstance(models, dict) or "vqvae" not in models:
        problem = "'models' must be an object holding at least 'vqvae'"
    elif not isinstance(meta.get("metrics", {}), dict):
        problem = "'metrics' must be an object"
    else:
        for kind, entry in models.items():
            if kind not in KINDS or not isinstance(entry, dict) or not isinstance(entry.get("config"), dict) \
                    or not isinstance(entry.get("extras", {}), dict):
                problem = (f"models.{kind} must be a model ({', '.join(KINDS)}) with a 'config' object and an "
                           f"'extras' object")
                break
    if problem:
        raise CheckpointError(f"{path} is damaged or hand-edited: {problem}; export the model folder again")
    return meta


def is_model_folder(path: str | Path) -> bool:
    """True for a folder written by `write_model_folder` (a run folder's config.json has no format marker)."""
    path = Path(path) / "config.json"
    if not path.is_file():
        return False
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError):  # not JSON, not UTF-8: the command reading it says so
        return False
    return isinstance(meta, dict) and meta.get("format") == FORMAT


def config_digest(entry: dict) -> str:
    """sha256 of a model's config and extras as stored in config.json (canonical JSON)."""
    canonical = json.dumps({"config": entry.get("config"), "extras": entry.get("extras", {})}, sort_keys=True)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def read_model_folder(folder: str | Path, kind: str) -> dict:
    """The checkpoint-shaped dict {"kind", "config", "model_state", **extras} of one model in a folder.

    Reads JSON and safetensors only: nothing in the folder can run code. The hashes config.json
    records of the weights file and of the model's config are checked: a weights file from
    another export, or a config edited by hand (distance, image_size), is refused rather than
    loaded into a model it does not describe. (Folders written before the hashes load unchecked.)"""
    folder = Path(folder)
    meta = read_folder_config(folder)
    entry = meta["models"].get(kind)
    if entry is None:
        raise CheckpointError(f"model folder {folder} holds no {kind} (it holds: {', '.join(meta['models'])})")
    path = weights_file(folder, kind)
    if not path.is_file():
        raise CheckpointError(f"model folder {folder} lists a {kind} but {path.name} is missing")
    recorded = entry.get("sha256")
    if recorded is not None and recorded != file_sha256(path):
        raise CheckpointError(f"{path} is not the file exported with this config.json (its sha256 differs from the "
                              f"one recorded): the folder mixes files of different exports; export it again")
    if entry.get("config_sha256") not in (None, config_digest(entry)):
        raise CheckpointError(f"{folder}/config.json: the {kind}'s config was changed after export (its sha256 "
                              f"differs from the one recorded), so the weights may not fit it; export it again")
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

    The folder must be new, empty or a model folder already (then it is replaced as a whole, so
    no stale prior stays paired with a new VQ-VAE). Everything is written into a temporary folder
    beside it, which is then renamed into place: a kill at any moment leaves the old folder or
    the new one, never a mix of two exports (a kill between the two renames of a replacement
    leaves the old folder under a temporary name; the next export removes what killed exports left). config.json
    records the sha256 of each weights file and of each model's config, checked on load.
    """
    folder = Path(folder)
    unknown = sorted(set(models) - set(KINDS))
    if unknown or "vqvae" not in models:
        raise CheckpointError(f"a model folder holds a vqvae and optionally a prior; got {sorted(models)}")
    if folder.exists() and not folder.is_dir():
        raise CheckpointError(f"{folder} exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()) and not is_model_folder(folder):
        raise CheckpointError(f"{folder} is not empty and not a model folder: choose a new or empty folder")
    parent = folder.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    remove_stale_exports(folder)
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{folder.name}.{os.getpid()}-", suffix=TMP_SUFFIX))
    try:
        os.chmod(tmp, default_mode(folder=True))  # mkdtemp makes it 0700; a folder to share is readable as any other
        entries = {}
        for kind, checkpoint in models.items():
            state = {name: t.detach().cpu().contiguous() for name, t in checkpoint["model_state"].items()}
            data = safetensors_bytes(state, metadata={"format": FORMAT, "kind": kind})
            atomic_write_bytes(weights_file(tmp, kind), data)
            entry = {"weights": weights_file(tmp, kind).name, **model_entry(checkpoint),
                     "sha256": hashlib.sha256(data).hexdigest()}
            entries[kind] = {**entry, "config_sha256": config_digest(entry)}
        if card is not None:
            atomic_write_bytes(tmp / "README.md", card.encode())
        meta = {"format": FORMAT, "version": VERSION, "note": USE_NOTE, "models": entries, "metrics": metrics or {}}
        atomic_write_bytes(tmp / "config.json", (json.dumps(meta, indent=2) + "\n").encode())
        _move_into_place(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _move_into_place(tmp: Path, folder: Path) -> None:
    if folder.is_dir() and any(folder.iterdir()):  # an earlier export: set it aside, then swap
        old = Path(tempfile.mkdtemp(dir=tmp.parent, prefix=f".{folder.name}.{os.getpid()}-", suffix=TMP_SUFFIX))
        os.replace(folder, old / "old")
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, folder)  # new, or an empty folder (rename replaces an empty one)
    fsync_folder(folder.absolute().parent)


def remove_stale_exports(folder: Path) -> None:
    """Temporary folders that exports to `folder` left when they were killed
    (".<name>.<pid>-<random>.tmp" beside it, whose process no longer runs)."""
    folder = Path(folder).absolute()
    prefix = f".{folder.name}."
    for stale in folder.parent.glob(f"{glob.escape(prefix)}*-*{TMP_SUFFIX}"):
        pid = stale.name[len(prefix):].split("-", 1)[0]
        if stale.is_dir() and pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)


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
