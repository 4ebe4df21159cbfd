"""Take a trained model anywhere: a model folder, or ONNX graphs checked against ONNX Runtime.

    export_folder(source, out)  -> OUT/config.json, vqvae.safetensors (+ prior.safetensors), README.md
    export_onnx(source, out)    -> OUT/encoder.onnx  images (B, C, H, W) float32 in [0, 1] -> indices (B, h, w) int64
                                   OUT/decoder.onnx  indices (B, h, w) int64 -> images (B, C, H, W) float32
                                   OUT/export.json   names, shapes, and the verification result

`source` is a run folder, a checkpoint file or a model folder. The ONNX graphs are traced through
the model's own `codes` and `decode_indices`, so the nearest-code search is inside the encoder
and, for a vq codebook, nothing else is needed at run time. Both have a dynamic batch size.
When ONNX Runtime is installed the export is checked on the spot on held-out images: the same
indices (bar exact distance ties) and images within IMAGE_TOLERANCE, or an ExportError and no
files written.
"""
from __future__ import annotations

import inspect
import json
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from . import __version__
from .config import RunConfig
from .data import load_dataset, load_splits
from .errors import DataError, ExportError
from .models import VQVAE
from .models.pretrained import is_model_folder, read_folder_config, write_model_folder
from .runs import (check_prior_matches, find_checkpoint, load_prior, load_vqvae, read_metrics, read_model,
                   vqvae_from_checkpoint)

# The quantizer kinds whose export is verified. A new kind whose `codes` and `decode_indices`
# trace cleanly only needs adding here; the on-the-spot check says whether it does. (rvq's codes
# have a depth axis, which the graphs' (batch, h, w) index maps do not carry.)
ONNX_QUANTIZER_KINDS = ("vq", "fsq", "lfq")
ONNX_OPSET = 17
IMAGE_TOLERANCE = 1e-4  # largest |ONNX Runtime - PyTorch| per pixel accepted, images in [0, 1]
# Two codes within this relative distance of an encoder output are a tie: float summation order
# (ONNX Runtime's convolutions vs PyTorch's) may pick either, and both decode equally well.
TIE_TOLERANCE = 1e-4
VERIFY_IMAGES = 256


# --------------------------------------------------------------------------- model folder

def export_folder(source: str | Path, out: str | Path) -> dict:
    """A run folder, checkpoint or model folder -> a model folder at `out` (see models/pretrained.py).

    Holds the VQ-VAE and, when `source` has one, its prior (refused if it belongs to another
    VQ-VAE), the test metrics of the run, and a model card. Returns {"path", "models", "files"
    (name -> bytes)}.
    """
    source, out = Path(source), Path(out)
    vqvae_file = find_checkpoint(source, "vqvae")
    models = {"vqvae": read_model(vqvae_file, "vqvae")}
    model, config = vqvae_from_checkpoint(models["vqvae"], vqvae_file)  # refuses weights that do not fit
    if _has_prior(source):
        prior, _, extra = load_prior(source)
        check_prior_matches(prior, model, extra["vqvae_fingerprint"])
        models["prior"] = read_model(find_checkpoint(source, "prior"), "prior")
    metrics = _card_metrics(source)
    write_model_folder(out, models, metrics, model_card(model, config, models, metrics))
    files = {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.is_file() and not p.name.startswith(".")}
    return {"path": str(out), "models": list(models), "files": files}


def _has_prior(source: Path) -> bool:
    if not source.is_dir():
        return False  # a checkpoint file is one model
    if is_model_folder(source):
        return "prior" in read_folder_config(source).get("models", {})
    return any((source / "checkpoints" / f"prior-{which}.pt").is_file() for which in ("best", "last"))


def _card_metrics(source: Path) -> dict:
    """The held-out figures a model card quotes: from the run's metrics.json, or carried over
    from the model folder being re-exported. A checkpoint file alone has none."""
    if not source.is_dir():
        return {}
    if is_model_folder(source):
        return read_folder_config(source).get("metrics", {})
    metrics = read_metrics(source)
    keep = {"vqvae": ("test", "test_dataset", "train_dataset", "train_images", "epochs"),
            "prior": ("test_bits_per_code", "best_val_bits_per_code", "epochs", "conditional", "class_names")}
    return {section: {k: metrics[section][k] for k in keys if k in metrics[section]}
            for section, keys in keep.items() if section in metrics}


def model_card(model: VQVAE, config: RunConfig, models: dict, metrics: dict) -> str:
    """README.md of a model folder: what the model is, what it was trained and tested on, how to load it."""
    m, q = config.model, config.quantizer
    vq_metrics, prior_metrics = metrics.get("vqvae", {}), metrics.get("prior", {})
    test = vq_metrics.get("test", {})
    params = sum(p.numel() for p in model.parameters())
    lines = [f"# VQ-VAE image tokenizer ({config.preset or 'custom'} preset)", "",
             f"Exported by the vqvae toolkit {__version__}. For use (encode, decode, sample, ONNX export), "
             "not for resuming training: no optimizer or loop state is included; keep the run's checkpoints "
             "for that.", "", "## Model", "",
             f"- images: {m.image_size}x{m.image_size}, {m.in_channels} channel(s), values in [0, 1]",
             f"- codes: a {model.latent_size}x{model.latent_size} map per image, codebook of {model.codebook_size} "
             f"codes of dimension {m.code_dim or m.hidden_channels} ({getattr(q, 'kind', 'vq')}, {q.update} updates)",
             f"- encoder/decoder: {m.hidden_channels} channels, {m.num_downsamples} downsamplings, "
             f"{m.num_residual_blocks} residual blocks; {params:,} parameters"]
    if "prior" in models:
        prior_config = models["prior"]["config"]["prior"]
        spec = models["prior"].get("prior_spec", {})
        classes = spec.get("class_names") or []
        lines.append(f"- prior over codes: {prior_config.get('kind', 'Gated PixelCNN')}, "
                     f"{prior_config.get('num_layers', '?')} layers x {prior_config.get('hidden_channels', '?')} "
                     f"channels, " + (f"conditional on {len(classes)} classes ({', '.join(map(str, classes))})"
                                      if classes else "unconditional"))
    lines += ["", "## Data", ""]
    if vq_metrics:
        lines += [f"- trained on: {vq_metrics.get('train_dataset', config.data.dataset)} "
                  f"({vq_metrics.get('train_images', '?')} images), {vq_metrics.get('epochs', '?')} epochs",
                  f"- tested on: {vq_metrics.get('test_dataset', '?')}"]
    else:
        lines.append(f"- dataset: {config.data.dataset or 'not recorded'} (no run metrics were exported with it)")
    lines += ["", "## Test metrics (held-out images, measured at the end of training)", ""]
    if test:
        lines += [f"- reconstruction: MSE {test['mse_clipped']:.5f} (outputs clipped to [0, 1]), "
                  f"PSNR {test['psnr_db']:.2f} dB, over {test['num_images']} images",
                  f"- codebook usage: {test['codes_used']} of {model.codebook_size} codes used, "
                  f"perplexity {test['perplexity']}"]
    else:
        lines.append("- not recorded (exported from a checkpoint file, not a run folder)")
    if "test_bits_per_code" in prior_metrics:
        lines.append(f"- prior: {prior_metrics['test_bits_per_code']:.4f} bits per code on test codes")
    lines += ["", "## How to load", "", "```python", "import vqvae", "",
              'model = vqvae.VQVAE.from_pretrained("path/to/this/folder")  # no run folder or training code needed',
              "codes = model.codes(images)                # (B, C, H, W) floats in [0, 1] -> (B, h, w) int64",
              "images = model.decode_indices(codes)       # -> (B, C, H, W)"]
    if "prior" in models:
        lines.append('prior, config, extras = vqvae.load_prior("path/to/this/folder")')
    lines += ["```", "", "Every command that takes a run folder takes this folder too, e.g. "
              "`vqvae encode FOLDER --data IMAGES`, `vqvae decode FOLDER codes.npy`, "
              + ("`vqvae sample FOLDER --out samples/`, " if "prior" in models else "")
              + "`vqvae export FOLDER --format onnx --out onnx/`. Loading reads JSON and safetensors only.", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- ONNX

class CodesGraph(nn.Module):
    """images (B, C, H, W) in [0, 1] -> code indices (B, h, w): the model's own `codes`."""

    def __init__(self, model: VQVAE):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.codes(images)


class DecodeGraph(nn.Module):
    """code indices (B, h, w) -> images (B, C, H, W): the model's own `decode_indices`."""

    def __init__(self, model: VQVAE):
        super().__init__()
        self.model = model

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        return self.model.decode_indices(indices)


def quantizer_kind(model: VQVAE) -> str:
    return getattr(model.quantizer_config, "kind", "vq")  # configs from before quantizer kinds are vq


def export_onnx(source: str | Path, out: str | Path, data: str | None = None, num_images: int = VERIFY_IMAGES,
                verify: bool = True) -> dict:
    """encoder.onnx and decoder.onnx for the VQ-VAE of `source`, verified on `num_images` of
    `data` (default: the run's test split; random images if that cannot be loaded here)."""
    model, config = load_vqvae(source)
    images, images_from = verification_images(config, data, num_images) if verify else (None, "")
    return export_onnx_model(model, out, images, images_from)


def verification_images(config: RunConfig, data: str | None, num_images: int) -> tuple[torch.Tensor, str]:
    if num_images < 1:
        raise ExportError(f"verification needs at least 1 image; got num_images={num_images}")
    try:
        images = load_dataset(data, config.data) if data else load_splits(config.data).test
    except DataError as e:
        if data:
            raise
        m = config.model
        generator = torch.Generator().manual_seed(0)
        return (torch.rand(num_images, m.in_channels, m.image_size, m.image_size, generator=generator),
                f"{num_images} uniform random images (the run's test split is not available here: {e})")
    x = images.tensor(num_images).float() / 255
    return x, f"{len(x)} images of {images.name}"


def export_onnx_model(model: VQVAE, out: str | Path, images: torch.Tensor | None = None,
                      images_from: str = "given images") -> dict:
    """Trace, verify on `images` (if given and ONNX Runtime is installed), then move into `out`:
    files appear only once they pass. Returns (and writes as export.json) what was exported."""
    kind = quantizer_kind(model)
    if kind not in ONNX_QUANTIZER_KINDS:
        raise ExportError(f"quantizer.kind={kind!r} is not supported for ONNX export yet "
                          f"(supported: {', '.join(ONNX_QUANTIZER_KINDS)})")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = model.cpu().eval()
    m = model.model_config
    example = torch.rand(2, m.in_channels, m.image_size, m.image_size)
    paths = {name: out / f"{name}.onnx" for name in ("encoder", "decoder")}
    tmp = {name: out / f".{name}.onnx.tmp" for name in paths}
    try:
        trace_onnx(CodesGraph(model), example, tmp["encoder"], "images", "indices")
        trace_onnx(DecodeGraph(model), model.codes(example), tmp["decoder"], "indices", "images")
        verification = (verify_onnx(model, tmp["encoder"], tmp["decoder"], images, images_from)
                        if images is not None else {"skipped": "not asked for"})
        for name in paths:
            os.replace(tmp[name], paths[name])
    finally:
        for path in tmp.values():
            path.unlink(missing_ok=True)
    h = model.latent_size
    report = {
        "format": "onnx", "opset": ONNX_OPSET, "torch": torch.__version__, "quantizer": kind,
        "codebook_size": model.codebook_size,
        "encoder": {"file": "encoder.onnx", "bytes": paths["encoder"].stat().st_size,
                    "input": {"name": "images", "shape": ["batch", m.in_channels, m.image_size, m.image_size],
                              "dtype": "float32", "range": [0.0, 1.0]},
                    "output": {"name": "indices", "shape": ["batch", h, h], "dtype": "int64"}},
        "decoder": {"file": "decoder.onnx", "bytes": paths["decoder"].stat().st_size,
                    "input": {"name": "indices", "shape": ["batch", h, h], "dtype": "int64",
                              "range": [0, model.codebook_size - 1]},
                    "output": {"name": "images", "shape": ["batch", m.in_channels, m.image_size, m.image_size],
                               "dtype": "float32"}},
        "verification": verification}
    (out / "export.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def trace_onnx(module: nn.Module, example: torch.Tensor, path: Path, input_name: str, output_name: str) -> None:
    """torch.onnx.export with the TorchScript tracer and a dynamic batch dimension.

    The tracer, not the torch.export-based exporter that torch >= 2.9 prefers: it exports these
    models in about a second with no onnxscript dependency, and on torch 2.14 the newer exporter
    fixed the batch size of the encoder to the example's. `dynamo` only exists from torch 2.5."""
    try:
        import onnx  # noqa: F401  torch writes the file through it
    except ImportError:
        raise ExportError("ONNX export needs the onnx package: pip install 'vqvae[onnx]'") from None
    options = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the tracer's deprecation notice, see above
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(module, (example,), str(path), input_names=[input_name], output_names=[output_name],
                          dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
                          opset_version=ONNX_OPSET, **options)


@torch.no_grad()
def verify_onnx(model: VQVAE, encoder_path: Path, decoder_path: Path, images: torch.Tensor,
                images_from: str = "given images") -> dict:
    """Run both graphs in ONNX Runtime on `images` beside PyTorch: the encoder must give the same
    indices (bar exact ties, see TIE_TOLERANCE), the decoder, fed PyTorch's indices, the same
    images within IMAGE_TOLERANCE. A mismatch raises ExportError."""
    try:
        import onnxruntime as ort
    except ImportError:
        return {"skipped": "onnxruntime is not installed (pip install 'vqvae[onnx]'); the export is unverified"}
    model = model.cpu().eval()
    images = images.float().cpu()
    encoder = ort.InferenceSession(str(encoder_path), providers=["CPUExecutionProvider"])
    decoder = ort.InferenceSession(str(decoder_path), providers=["CPUExecutionProvider"])
    want_indices = model.codes(images)  # (B, h, w)
    got_indices = torch.from_numpy(encoder.run(["indices"], {"images": images.numpy()})[0])
    want_images = model.decode_indices(want_indices).float()
    got_images = torch.from_numpy(decoder.run(["images"], {"indices": want_indices.numpy()})[0])
    if got_indices.shape != want_indices.shape or got_images.shape != want_images.shape:
        raise ExportError(f"ONNX Runtime gives shapes {tuple(got_indices.shape)} / {tuple(got_images.shape)}, "
                          f"PyTorch {tuple(want_indices.shape)} / {tuple(want_images.shape)}")
    differ = got_indices != want_indices
    ties = _distance_ties(model, images, want_indices, got_indices) if differ.any() else torch.zeros_like(differ)
    wrong = int((differ & ~ties).sum())
    image_error = float((got_images - want_images).abs().max())
    result = {"images": images_from, "onnxruntime": ort.__version__, "codes_compared": differ.numel(),
              "codes_equal": int((~differ).sum()), "distance_ties": int((differ & ties).sum()),
              "max_abs_image_difference": image_error, "image_tolerance": IMAGE_TOLERANCE}
    if wrong or image_error > IMAGE_TOLERANCE:
        raise ExportError(f"the ONNX export does not match PyTorch on {images_from}: {wrong} of {differ.numel()} "
                          f"codes differ (not ties), largest image difference {image_error:.2e} (tolerance "
                          f"{IMAGE_TOLERANCE:g}); nothing was written")
    return result


def _distance_ties(model: VQVAE, images: torch.Tensor, want: torch.Tensor, got: torch.Tensor) -> torch.Tensor:
    """Where the two index maps differ, whether PyTorch's encoder output is equally far (within
    TIE_TOLERANCE, relative) from both codes: either choice is then correct. fsq and lfq round each
    channel on its own: no tie is allowed for them, every differing code counts as wrong."""
    if quantizer_kind(model) != "vq":
        return torch.zeros_like(want, dtype=torch.bool)
    # In the space the search runs in: projected (lookup_dim) and normalised (cosine), as the codes.
    codebook = model.quantizer.codes().detach().float()  # (K, D)
    z = model.quantizer.search_space(model.encode(images)).permute(0, 2, 3, 1)  # (B, h, w, D)
    d_want = ((z - codebook[want]) ** 2).sum(-1)  # (B, h, w)
    d_got = ((z - codebook[got.clamp(0, len(codebook) - 1)]) ** 2).sum(-1)
    return (d_got - d_want).abs() <= TIE_TOLERANCE * d_want.clamp_min(1e-12)
