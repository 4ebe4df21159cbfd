"""Take a trained model anywhere: a model folder, ONNX graphs checked against ONNX Runtime, or a
diffusers VQModel folder checked against diffusers; and bring a diffusers VQModel in as a run.

    export_folder(source, out)     -> OUT/config.json, vqvae.safetensors (+ prior.safetensors), README.md
    export_onnx(source, out)       -> OUT/encoder.onnx  images (B, C, H, W) float32 in [0, 1] -> indices (B, h, w) int64
                                      OUT/decoder.onnx  indices (B, h, w) int64 -> images (B, C, H, W) float32
                                      OUT/export.json   names, shapes, and the verification result
    export_diffusers(source, out)  -> OUT/config.json, diffusion_pytorch_model.safetensors: VQModel.from_pretrained(OUT)
    import_diffusers(folder, out)  -> a run folder (config.json, checkpoints/vqvae-best.pt) to encode, decode and
                                      train priors on (models/diffusers_format.py says how the formats map)

`source` is a run folder, a checkpoint file or a model folder. The ONNX graphs are traced through
the model's own `codes` and `decode_indices`, so the nearest-code search is inside the encoder
and, for a vq codebook, nothing else is needed at run time. Both have a dynamic batch size.
When ONNX Runtime is installed the export is checked on the spot on held-out images: the same
indices (bar exact distance ties) and images within IMAGE_TOLERANCE, or an ExportError and no
files written.
"""
from __future__ import annotations

import inspect
import os
import shutil
import warnings
from pathlib import Path

import torch
from torch import nn

from ._version import __version__
from .checkpoint import save_checkpoint
from .config import RunConfig, apply_overrides, get_preset
from .data import describe_data, load_dataset, load_splits
from .errors import CheckpointError, DataError, ExportError
from .files import atomic_write_json, commit_file
from .models import VQVAE
from .models import diffusers_format
from .models.pretrained import is_model_folder, load_weights, read_folder_config, write_model_folder
from .runs import (check_output_path, check_prior_matches, find_checkpoint, load_prior, load_vqvae, read_metrics,
                   read_model, update_metrics, vqvae_from_checkpoint)

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
            "prior": ("test_bits_per_code", "best_val_bits_per_code", "test_masked_nats", "best_val_masked_nats",
                      "masked_nats_meaning", "epochs", "conditional", "class_names")}
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
             f"- encoder/decoder: {architecture(m)}; {params:,} parameters"]
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
    elif "test_masked_nats" in prior_metrics:  # MaskGIT has no likelihood: its own figure, named
        meaning = prior_metrics.get("masked_nats_meaning", "masked cross-entropy; not a likelihood, not bits per code")
        lines.append(f"- prior (MaskGIT): {prior_metrics['test_masked_nats']:.4f} nats per masked code on test codes "
                     f"({meaning})")
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


def architecture(m) -> str:
    """The encoder/decoder in a few words, for model cards."""
    if getattr(m, "arch", "vqvae") == "vqgan":
        return (f"VQGAN-class, {m.hidden_channels} base channels x {list(m.channel_mult)}, "
                f"{len(m.channel_mult) - 1} downsamplings, {m.layers_per_block} residual blocks per resolution, "
                "attention at " + (", ".join(f"1/{f}" for f in m.attention_resolutions) or "no block's resolution")
                + (" and in the middle blocks" if m.mid_attention else ""))
    return (f"{m.hidden_channels} channels, {m.num_downsamples} downsamplings, "
            f"{m.num_residual_blocks} residual blocks")


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
            commit_file(tmp[name], paths[name])
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
    atomic_write_json(out / "export.json", report)
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
        # F.pad (the vqgan's asymmetric downsampling pad) is traced with its pads in a reversed Slice,
        # which the exporter's constant folding leaves as it is and says so: the graph is correct.
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1", category=UserWarning)
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
    return _compare_outputs(model, images, images_from, want_indices, got_indices, want_images, got_images,
                            {"onnxruntime": ort.__version__}, "the ONNX export does not match PyTorch")


def _compare_outputs(model: VQVAE, images: torch.Tensor, images_from: str, want: torch.Tensor, got: torch.Tensor,
                     want_images: torch.Tensor, got_images: torch.Tensor, runtime: dict, mismatch: str) -> dict:
    """The figures of an export check (codes equal but for distance ties, images within
    IMAGE_TOLERANCE); an ExportError starting with `mismatch` when they fail."""
    differ = got != want
    ties = _distance_ties(model, images, want, got) if differ.any() else torch.zeros_like(differ)
    wrong = int((differ & ~ties).sum())
    image_error = float((got_images - want_images).abs().max())
    result = {"images": images_from, **runtime, "codes_compared": differ.numel(),
              "codes_equal": int((~differ).sum()), "distance_ties": int((differ & ties).sum()),
              "max_abs_image_difference": image_error, "image_tolerance": IMAGE_TOLERANCE}
    if wrong or image_error > IMAGE_TOLERANCE:
        raise ExportError(f"{mismatch} on {images_from}: {wrong} of {differ.numel()} codes differ (not ties), "
                          f"largest image difference {image_error:.2e} (tolerance {IMAGE_TOLERANCE:g}); nothing "
                          f"was written")
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


# --------------------------------------------------------------------------- diffusers

DIFFUSERS_VERIFY_IMAGES = 64  # diffusers runs the model again beside ours: fewer images than ONNX's check


def export_diffusers(source: str | Path, out: str | Path, data: str | None = None,
                     num_images: int = DIFFUSERS_VERIFY_IMAGES, verify: bool = True) -> dict:
    """A diffusers VQModel folder at `out` for the VQ-VAE of `source` (run folder, checkpoint or model
    folder): `diffusers.VQModel.from_pretrained(out)` loads it with no code of ours. Refused, naming
    the reason, for what VQModel cannot hold (models/diffusers_format.py `unsupported`). Where
    diffusers is installed the folder is loaded with it and checked on `num_images` of `data`
    (default: the run's test split) before it appears at `out`: the same codes (bar distance ties)
    and decoded images within IMAGE_TOLERANCE, or an ExportError and nothing written."""
    model, config = load_vqvae(source)
    diffusers_config, state = diffusers_format.to_diffusers(model)
    images, images_from = verification_images(config, data, num_images) if verify else (None, "")
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not diffusers_format.is_diffusers_folder(out))):
        raise ExportError(f"{out} is not a new or empty folder, nor a diffusers VQModel folder to replace")
    staging = out.parent / f".{out.name}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        diffusers_format.write_diffusers_folder(staging, diffusers_config, state, f"vqvae toolkit {__version__}")
        verification = (verify_diffusers(model, staging, images, images_from) if images is not None
                        else {"skipped": "not asked for"})
        out.mkdir(parents=True, exist_ok=True)
        for name in (diffusers_format.WEIGHTS_NAME, "config.json"):  # config.json last: it makes the folder
            os.replace(staging / name, out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"path": str(out), "config": diffusers_config, "verification": verification,
            "files": {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.is_file()}}


@torch.no_grad()
def diffusers_codes_and_images(vq_model, images: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A diffusers VQModel's codes for `images` ([0, 1]) and its decoding of `indices` (B, h, w), on
    our [0, 1] scale: the calls a diffusers user makes (encode, quantize; decode with
    force_not_quantize and the codebook lookup)."""
    latents = vq_model.encode(images * 2 - 1).latents
    _, _, (_, _, codes) = vq_model.quantize(latents)
    B, h, w = indices.shape
    shape = (B, h, w, vq_model.quantize.vq_embed_dim)
    decoded = vq_model.decode(indices.flatten(), force_not_quantize=True, shape=shape).sample
    return codes.view(B, latents.shape[2], latents.shape[3]), (decoded + 1) / 2


@torch.no_grad()
def verify_diffusers(model: VQVAE, folder: Path, images: torch.Tensor, images_from: str = "given images") -> dict:
    """Load `folder` with diffusers and compare it with `model` on `images`: the same codes (bar exact
    distance ties, see TIE_TOLERANCE) and decoded images within IMAGE_TOLERANCE, or an ExportError."""
    try:
        import diffusers
        from diffusers import VQModel
    except ImportError:
        return {"skipped": "diffusers is not installed (pip install diffusers); the export is unverified"}
    theirs = VQModel.from_pretrained(str(folder), low_cpu_mem_usage=False).eval()  # no `accelerate` needed
    model = model.cpu().eval()
    images = images.float().cpu()
    want = model.codes(images)
    got, got_images = diffusers_codes_and_images(theirs, images, want)
    want_images = model.decode_indices(want).float()
    return _compare_outputs(model, images, images_from, want, got, want_images, got_images,
                            {"diffusers": diffusers.__version__}, "diffusers' VQModel does not match this model")


IMPORT_PRESET = "vqgan-f8-64"  # the prior, training and sampling settings an imported run starts from


def import_diffusers(folder: str | Path, out: str | Path, data: str | None = None, image_size: int | None = None,
                     preset: str = IMPORT_PRESET, overrides: list[str] | None = None) -> dict:
    """A diffusers VQModel folder -> a run folder at `out` (config.json, checkpoints/vqvae-best.pt,
    metrics.json's "import" section) that `encode`, `decode`, `reconstruct`, `train-prior` and
    `sample` use like a trained run. `data`: the images its prior will train on (recorded as
    data.dataset); `image_size`: the images' side (default: the VQModel's sample_size); `preset`:
    where the prior's, training's and sampling's settings come from; `overrides`: --set items."""
    folder, out = Path(folder), Path(out)
    model = VQVAE.from_diffusers(folder, image_size)
    config = get_preset(preset)
    config.preset = ""
    config.model, config.quantizer = model.model_config, model.quantizer_config
    config.data.dataset, config.data.test_dataset = data or "", ""
    config.data.image_size, config.data.channels = config.model.image_size, config.model.in_channels
    config = apply_overrides(config, overrides or [])
    if (config.model, config.quantizer) != (model.model_config, model.quantizer_config):
        rebuilt = VQVAE(config.model, config.quantizer)  # --set changed it (e.g. quantizer.update=ema to fine-tune)
        load_weights(rebuilt, model.state_dict(), folder / diffusers_format.WEIGHTS_NAME)
        model = rebuilt
    if data:
        summary = describe_data(data, config.data)
        if summary.channels != config.data.channels:
            raise DataError(f"the VQModel takes {config.data.channels}-channel images, but {summary}")
    check_output_path(out, folder=True)
    if out.exists() and any(out.iterdir()):
        raise CheckpointError(f"{out} is not empty: import into a new or empty folder")
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    save_checkpoint(out / "checkpoints" / "vqvae-best.pt", "vqvae", config.to_dict(), model.state_dict())
    config.save(out / "config.json")
    info = {"from": str(folder), "format": "diffusers VQModel", "latent_size": model.latent_size,
            "codebook_size": model.codebook_size, "dataset": config.data.dataset or None}
    update_metrics(out, "import", info)
    return {"path": str(out), **info}
