"""The run folder: where each stage's files go, metrics.json, and loading models back.

    RUN/config.json                 resolved config
    RUN/checkpoints/{vqvae,prior}-{last,best}.pt
    RUN/metrics.json                one section per stage ("vqvae", "prior", "samples", ...)
    RUN/reconstructions.png, curves.png, prior_curves.png, codebook_usage.png
    RUN/samples.{png,npy,json}, samples_codes.npy   the run's samples (samples.json: their settings and hash)
    RUN/.lock                       held while a command writes to the run (runlock.py)
    RUN/codes/                      cached code maps the prior trains on
    RUN/report.md, RUN/tensorboard/

Models load from a run folder, a checkpoint file, or a model folder (`vqvae export`, see
models/pretrained.py): `find_checkpoint` and `read_model` accept all three.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .config import RunConfig, read_config_file
from .errors import CheckpointError, ConfigError, OutputError
from .files import atomic_write_text, remove_stale_temporaries
from .models import VQVAE, Prior, PriorSpec, build_prior
from .models.diffusers_format import is_diffusers_folder
from .models.pretrained import is_model_folder, load_weights, read_model_folder, weights_file
from .checkpoint import load_checkpoint
from .resources import check_model_fits

# What a run writes into its own folder: no output option may name one of these.
RUN_FILES = ("config.json", "metrics.json", "report.md", "report.html", "reconstructions.png", "curves.png",
             "prior_curves.png", "codebook_usage.png", "samples.png", "samples.npy", "samples_codes.npy",
             "samples.json", ".lock")
RUN_FOLDERS = ("checkpoints", "codes", "tensorboard")


def read_run_config(run_dir: Path) -> RunConfig:
    """RUN/config.json as a checked RunConfig, or an error that says what is wrong with it."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not a run folder (no config.json)")
    try:
        return RunConfig.from_dict(read_config_file(path, "run config"))
    except ConfigError as e:
        raise ConfigError(f"{path} cannot be used: {e}") from None


OUTPUT_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")  # what an image --out may be written as


def check_output_path(path: str | Path, option: str = "--out", folder: bool = False,
                      suffixes: tuple[str, ...] = ()) -> Path:
    """Refuse an output path that would overwrite a run's own files (config, metrics,
    checkpoints, codes cache, figures), that is a file where a folder is needed (or the
    reverse), or whose extension is not one of `suffixes` (when given). Returns the path."""
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise OutputError(f"{option} {path} is an existing file; it must name a folder")
    if not folder and path.is_dir():
        raise OutputError(f"{option} {path} is a folder; it must name a file")
    resolved = path.resolve()
    for parent in resolved.parents:
        if (parent / "config.json").is_file() and (parent / "checkpoints").is_dir():
            relative = resolved.relative_to(parent).parts
            if relative and relative[0] in RUN_FOLDERS:
                raise OutputError(f"{option} {path} would write into {relative[0]}/ of the run in {parent}; "
                                  f"choose another path")
            if len(relative) == 1 and relative[0] in RUN_FILES:
                raise OutputError(f"{option} {path} would overwrite the file {relative[0]} of the run in {parent}; "
                                  f"choose another path")
            break
    if suffixes and path.suffix.lower() not in suffixes:
        raise OutputError(f"{option} {path}: the file name must end in {', '.join(suffixes)} (the format is "
                          f"chosen by the extension), e.g. {path.with_suffix(suffixes[0]).name}")
    return path


def remove_stale_files(run_dir: Path) -> None:
    """Delete temporary files a killed process left in the run folder (they block nothing, but
    would accumulate), saying so."""
    run_dir = Path(run_dir)
    stale = [p for folder in (run_dir, run_dir / "checkpoints", run_dir / "codes")
             for p in remove_stale_temporaries(folder)]
    if stale:
        print(f"removed {len(stale)} stale temporary file(s) left by an interrupted write: "
              f"{', '.join(p.name for p in stale)}", flush=True)


def read_metrics(run_dir: Path) -> dict:
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON (damaged?): {e}; move it away to start it afresh") from None


def update_metrics(run_dir: Path, section: str, values: dict) -> dict:
    metrics = read_metrics(run_dir)
    metrics[section] = values
    atomic_write_text(Path(run_dir) / "metrics.json", json.dumps(metrics, indent=2, default=_json_default) + "\n")
    return metrics


def _json_default(o):
    if torch.is_tensor(o):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def find_checkpoint(path: str | Path, kind: str) -> Path:
    """A checkpoint file, a run folder (its best checkpoint, else its last), or a model folder
    (its KIND.safetensors)."""
    path = Path(path)
    if path.is_dir() and is_model_folder(path):
        return weights_file(path, kind)
    if path.is_dir() and is_diffusers_folder(path):
        raise CheckpointError(f"{path} is a diffusers VQModel folder: import it as a run first "
                              f"(vqvae import {path} --out RUN, or VQVAE.from_diffusers)")
    if path.is_dir():
        for which in ("best", "last"):
            candidate = path / "checkpoints" / f"{kind}-{which}.pt"
            if candidate.is_file():
                return candidate
        raise CheckpointError(f"{path} holds no {kind} checkpoint (looked for checkpoints/{kind}-best.pt and "
                              f"{kind}-last.pt)")
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    return path


def read_model(path: Path, kind: str) -> dict:
    """The checkpoint-shaped dict of a model file from `find_checkpoint`: a checkpoint, or the
    weights of a model folder with their config (no training state)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return read_model_folder(path.parent, kind)
    try:
        return load_checkpoint(path, kind=kind)
    except CheckpointError as e:
        last = path.with_name(f"{kind}-last.pt")
        if path.name != f"{kind}-best.pt" or not last.is_file():
            raise
        try:
            load_checkpoint(last, kind=kind)
        except CheckpointError:
            raise e from None
        # The best checkpoint is damaged (a truncated copy, a full disk) but the last one is intact:
        # say so rather than stop, and let the user choose it.
        raise CheckpointError(f"{e}. {last.name} beside it is intact: to use it, move the damaged file away "
                              f"(mv {path} {path}.damaged) and run the command again") from None


def vqvae_from_checkpoint(ckpt: dict, source: str | Path = "checkpoint") -> tuple[VQVAE, RunConfig]:
    config = RunConfig.from_dict(ckpt["config"])
    check_model_fits(lambda: VQVAE(config.model, config.quantizer), "cpu", f"the VQ-VAE of {source}",
                     "its config asks for more than this machine holds", training=False)
    model = VQVAE(config.model, config.quantizer)
    load_weights(model, ckpt["model_state"], source)
    return model, config


def load_vqvae(path: str | Path, device: str | torch.device = "cpu") -> tuple[VQVAE, RunConfig]:
    """Rebuild a VQ-VAE from a checkpoint file, run folder or model folder, with no other input."""
    source = find_checkpoint(path, "vqvae")
    model, config = vqvae_from_checkpoint(read_model(source, "vqvae"), source)
    return model.to(device).eval(), config


def codebook_fingerprint(model: VQVAE) -> str:
    """Identifies the codebook a prior was trained on, to catch a prior paired with another VQ-VAE."""
    import hashlib

    if model.quantizer_config.kind == "vq" and not model.quantizer_config.lookup_dim:
        tensors = [model.quantizer.codebook]  # as before the other kinds existed: old priors still match
    else:  # what maps latents to codes and codes to the decoder's input (projections, codebooks)
        tensors = [v for k, v in sorted(model.quantizer.state_dict().items()) if v.is_floating_point()]
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def weights_fingerprint(model: torch.nn.Module) -> str:
    """Identifies a model's weights (every tensor of its state): caches of what it computed (a
    prior's samples, a VQ-VAE's codes) are redone when any weight changes."""
    import hashlib

    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


prior_fingerprint = weights_fingerprint  # samples cached on disk are re-drawn when the prior changes


def load_prior(path: str | Path, device: str | torch.device = "cpu") -> tuple[Prior, RunConfig, dict]:
    """Rebuild a prior of the kind its checkpoint records; returns (model, config, checkpoint extras
    incl. 'vqvae_fingerprint')."""
    source = find_checkpoint(path, "prior")
    ckpt = read_model(source, "prior")
    config = RunConfig.from_dict(ckpt["config"])
    kind = ckpt.get("prior_kind")
    if kind != config.prior.kind:
        raise CheckpointError(f"{path} records prior kind {kind!r} but its config says prior.kind={config.prior.kind!r}")
    spec = PriorSpec(**{**ckpt["prior_spec"], "class_names": tuple(ckpt["prior_spec"]["class_names"]),
                        "class_weights": tuple(ckpt["prior_spec"].get("class_weights", ()))})
    check_model_fits(lambda: build_prior(config.prior, spec, dropout=0.0), "cpu", f"the prior of {source}",
                     "its config asks for more than this machine holds", training=False)
    model = build_prior(config.prior, spec, dropout=0.0)
    load_weights(model, ckpt["model_state"], source)
    return model.to(device).eval(), config, {"vqvae_fingerprint": ckpt.get("vqvae_fingerprint")}


def check_prior_matches(prior: Prior, vqvae: VQVAE, prior_fingerprint: str | None) -> None:
    """Refuse a prior paired with a VQ-VAE whose codes it was not trained on."""
    if prior.spec.codebook_size != vqvae.codebook_size:
        raise ConfigError(f"the prior models {prior.spec.codebook_size} codes but the VQ-VAE has "
                          f"{vqvae.codebook_size}: they do not belong together")
    if prior.spec.latent_size != vqvae.latent_size:
        raise ConfigError(f"the prior models {prior.spec.latent_size}x{prior.spec.latent_size} code maps but the "
                          f"VQ-VAE makes {vqvae.latent_size}x{vqvae.latent_size}")
    if prior_fingerprint and prior_fingerprint != codebook_fingerprint(vqvae):
        raise ConfigError("the prior was trained on the codes of a different VQ-VAE (codebook fingerprints differ); "
                          "train a prior for this VQ-VAE with `vqvae train-prior`")
