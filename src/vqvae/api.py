"""The Python API: what users call; the CLI and the benchmarks call these same functions.

    import vqvae
    cfg = vqvae.load_config("mnist", ["train.epochs=5"])
    vqvae.run_pipeline(cfg, "runs/demo")            # VQ-VAE, codes, prior, samples, evaluation
    model, cfg = vqvae.load_vqvae("runs/demo")       # rebuild from the checkpoint alone

The model commands (reconstruct, encode, decode) are defined here; every other entry point
lives in the module that does its job and is re-exported: training in training/, sampling in
sampling.py (its settings chosen on validation data by sample_tuning.py), inpainting in inpainting.py,
evaluation and the run's sample score in evaluation.py (its protocol in metrics/protocol.py), the report
in report.py, the whole job in pipeline.py.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .config import RunConfig, at_least, check_value, load_config
from .data import ImageSet, check_data_channels, load_dataset, load_splits
from .errors import ConfigError, DataError
from .evaluation import evaluate, sample_quality
from .figures import save_grid, save_reconstruction_grid, spread_indices
from .files import atomic_save_npy, atomic_write_text
from .inpainting import inpaint
from .metrics.codebook import codebook_stats
from .models import quantizer_info
from .pipeline import run_pipeline
from .report import write_report
from .runs import OUTPUT_IMAGE_SUFFIXES, check_output_path, codebook_fingerprint, load_prior, load_vqvae
from .sample_tuning import tune_sampling
from .sampling import decode_and_save, sample
from .training.distributed import resolve_device
from .training.loop import TrainResult
from .training.prior_stage import encode_images, train_prior
from .training.vqvae_stage import train_vqvae

__all__ = ["load_config", "train_vqvae", "train_prior", "reconstruct", "encode", "decode", "evaluate", "sample",
           "run_pipeline", "load_vqvae", "load_prior", "write_report", "sample_quality", "tune_sampling", "TrainResult",
           "inpaint"]


def _images(config: RunConfig, data: str | None) -> ImageSet:
    """`data` (a name or path) at the model's size, or the run's own held-out split."""
    if data:
        check_data_channels(data, config.data)
        return load_dataset(data, config.data)
    return load_splits(config.data).test


def reconstruct(checkpoint: str | Path, out: str | Path, data: str | None = None, num_images: int = 32,
                device: str = "auto") -> Path:
    """Side-by-side grid: rows of originals, each followed by its reconstructions. The images
    are a spread of the set (every class where there are labels, else evenly spaced)."""
    check_value("--num", num_images, at_least(1))
    out = check_output_path(out, suffixes=OUTPUT_IMAGE_SUFFIXES)
    dev = resolve_device(device)
    model, config = load_vqvae(checkpoint, dev)
    images = _images(config, data)
    x = torch.stack([images[i][0] for i in spread_indices(len(images), num_images, images.labels)])
    x = x.to(dev).float() / 255
    with torch.no_grad():
        x_hat = model(x).reconstruction
    return save_reconstruction_grid(x, x_hat, Path(out))


def encode(checkpoint: str | Path, out_dir: str | Path, data: str | None = None, device: str = "auto") -> dict:
    """Dataset -> integer code maps: OUT/codes.npy (N, h, w) (residual VQ: (N, depth, h, w)), int16
    (int32 above 2^15 codes), OUT/labels.npy if labelled, and OUT/codes.json with their shape, the
    codebook they index, and the quantizer's kind and parameters (`quantizer`)."""
    out_dir = check_output_path(out_dir, folder=True)
    dev = resolve_device(device)
    model, config = load_vqvae(checkpoint, dev)
    images = _images(config, data)
    codes = encode_images(model, images, dev)
    # An earlier encoding in the same folder must not leave its labels beside these codes: its
    # codes.json goes first (codes without it are not checked as this model's), then labels.npy.
    (out_dir / "codes.json").unlink(missing_ok=True)
    atomic_save_npy(out_dir / "codes.npy", codes.numpy())
    if images.labels is not None:
        atomic_save_npy(out_dir / "labels.npy", images.labels.numpy())
    else:
        (out_dir / "labels.npy").unlink(missing_ok=True)
    meta = {"shape": list(codes.shape), "dtype": str(codes.numpy().dtype), "codebook_size": model.codebook_size,
            "quantizer": quantizer_info(model.quantizer),
            "latent_size": model.latent_size, "vqvae_fingerprint": codebook_fingerprint(model),
            "dataset": images.name, "class_names": list(images.class_names),
            **codebook_stats(model.quantizer.usage_counts(codes.long()))}
    atomic_write_text(out_dir / "codes.json", json.dumps(meta, indent=2) + "\n")
    return meta


def load_codes(path: str | Path) -> tuple[torch.Tensor, dict]:
    """codes.npy (or the folder holding it, with codes.json) -> (codes (N, h, w) int64, or
    (N, depth, h, w) for residual VQ, metadata)."""
    path = Path(path)
    if path.is_dir():
        path = path / "codes.npy"
    if not path.is_file():
        raise DataError(f"codes file {path} does not exist")
    try:
        codes = np.load(path, allow_pickle=False)
    except Exception as e:
        raise DataError(f"{path} is not a .npy array of codes: {e}") from None
    if codes.ndim == 2:
        codes = codes[None]
    if codes.ndim not in (3, 4) or not np.issubdtype(codes.dtype, np.integer):
        raise DataError(f"{path} holds a {codes.dtype} array of shape {codes.shape}; expected integer code maps "
                        f"(N, h, w), or (N, depth, h, w) from a residual quantizer")
    if codes.size == 0:
        raise DataError(f"{path} holds no codes (an array of shape {codes.shape})")
    meta_path = path.with_suffix(".json")
    meta = {}
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"{meta_path} is not valid JSON ({e}); repair it, or remove it to decode the codes "
                            f"without its checks") from None
        if not isinstance(meta, dict):
            raise DataError(f"{meta_path} holds a JSON {type(meta).__name__}; expected the object `encode` writes")
    return torch.from_numpy(codes.astype(np.int64)), meta


def decode(checkpoint: str | Path, codes: str | Path, out: str | Path, device: str = "auto") -> Path:
    """Code maps -> images: a grid PNG at `out` and the images as OUT.npy (uint8 (N, C, H, W)).

    Codes must come from this VQ-VAE: the fingerprint `encode` records in codes.json is checked
    (codes of another model with the same codebook size would decode to garbage), and so is
    the code-map size."""
    out = check_output_path(out, suffixes=OUTPUT_IMAGE_SUFFIXES)
    check_output_path(Path(out).with_suffix(".npy"))
    dev = resolve_device(device)
    model, _ = load_vqvae(checkpoint, dev)
    indices, meta = load_codes(codes)
    K, size = model.codebook_size, model.latent_size
    kind = model.quantizer_config.kind
    quantizer = meta.get("quantizer", {})
    if not isinstance(quantizer, dict):
        raise DataError(f"codes.json's 'quantizer' is {json.dumps(quantizer)}; expected the object `encode` writes "
                        f"(repair it, or remove codes.json to decode the codes without its checks)")
    recorded = quantizer.get("kind")
    if recorded not in (None, kind):
        raise ConfigError(f"these codes come from a quantizer.kind={recorded} model; this VQ-VAE is kind={kind}")
    if meta.get("codebook_size") not in (None, K):
        raise ConfigError(f"these codes index a codebook of {meta['codebook_size']} codes, but the VQ-VAE has {K}")
    if meta.get("vqvae_fingerprint") not in (None, codebook_fingerprint(model)):
        raise ConfigError("these codes were made by a different VQ-VAE (codebook fingerprints differ: "
                          f"{meta['vqvae_fingerprint']} in codes.json, {codebook_fingerprint(model)} here); decode "
                          "them with the model that encoded them")
    # (N, h, w), or (N, levels, h, w) for residual VQ, where the first 1..depth levels decode.
    if kind == "rvq":
        levels = indices.shape[1] if indices.ndim == 4 else 0
        if indices.ndim != 4 or not 1 <= levels <= model.quantizer.depth or tuple(indices.shape[2:]) != (size, size):
            raise ConfigError(f"the code maps have shape {tuple(indices.shape[1:])}, but this residual VQ-VAE decodes "
                              f"(levels 1..{model.quantizer.depth}, {size}, {size}) code maps")
    elif tuple(indices.shape[1:]) != (size, size):
        raise ConfigError(f"the code maps have shape {tuple(indices.shape[1:])}, but this VQ-VAE decodes "
                          f"{size}x{size} code maps")
    if int(indices.min()) < 0 or int(indices.max()) >= K:
        raise ConfigError(f"codes range over [{int(indices.min())}, {int(indices.max())}], outside this VQ-VAE's "
                          f"codebook of {K} codes (0..{K - 1})")
    images = decode_and_save(model, indices.to(dev), Path(out).with_suffix(".npy"))
    return save_grid(images[:256], Path(out), nrow=16)
