"""The run folder: where each stage's files go, metrics.json, and loading models back.

    RUN/config.json                 resolved config
    RUN/checkpoints/{vqvae,prior}-{last,best}.pt
    RUN/metrics.json                one section per stage ("vqvae", "prior", "samples", ...)
    RUN/reconstructions.png, curves.png, prior_curves.png, samples.png, samples.npy,
    RUN/codes/                      cached code maps the prior trains on
    RUN/report.md, RUN/tensorboard/
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .config import RunConfig
from .errors import CheckpointError
from .models import VQVAE, Prior, PriorSpec, build_prior
from .training.checkpoint import atomic_write_text, load_checkpoint


def read_metrics(run_dir: Path) -> dict:
    path = Path(run_dir) / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else {}


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
    """A checkpoint file, or a run folder (its best checkpoint, else its last)."""
    path = Path(path)
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


def vqvae_from_checkpoint(ckpt: dict) -> tuple[VQVAE, RunConfig]:
    config = RunConfig.from_dict(ckpt["config"])
    model = VQVAE(config.model, config.quantizer)
    model.load_state_dict(ckpt["model_state"])
    return model, config


def load_vqvae(path: str | Path, device: str | torch.device = "cpu") -> tuple[VQVAE, RunConfig]:
    """Rebuild a VQ-VAE from a checkpoint file or run folder, with no other input."""
    ckpt = load_checkpoint(find_checkpoint(path, "vqvae"), kind="vqvae")
    model, config = vqvae_from_checkpoint(ckpt)
    return model.to(device).eval(), config


def codebook_fingerprint(model: VQVAE) -> str:
    """Identifies the codebook a prior was trained on, to catch a prior paired with another VQ-VAE."""
    import hashlib

    data = model.quantizer.codebook.detach().float().cpu().contiguous().numpy().tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


def prior_fingerprint(prior: torch.nn.Module) -> str:
    """Identifies a prior's weights, so samples cached on disk are re-drawn when the prior changes."""
    import hashlib

    h = hashlib.sha256()
    for name, tensor in sorted(prior.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def load_prior(path: str | Path, device: str | torch.device = "cpu") -> tuple[Prior, RunConfig, dict]:
    """Rebuild a prior of the kind its checkpoint records; returns (model, config, checkpoint extras
    incl. 'vqvae_fingerprint')."""
    path = find_checkpoint(path, "prior")
    ckpt = load_checkpoint(path, kind="prior")
    config = RunConfig.from_dict(ckpt["config"])
    # Checkpoints from before the transformer prior record no kind: they hold a Gated PixelCNN.
    kind = ckpt.get("prior_kind", "pixelcnn")
    if kind != config.prior.kind:
        raise CheckpointError(f"{path} records a {kind} prior but its config says prior.kind={config.prior.kind!r}")
    spec = PriorSpec(**{**ckpt["prior_spec"], "class_names": tuple(ckpt["prior_spec"]["class_names"])})
    model = build_prior(config.prior, spec, dropout=0.0)
    model.load_state_dict(ckpt["model_state"])
    return model.to(device).eval(), config, {"vqvae_fingerprint": ckpt.get("vqvae_fingerprint")}
