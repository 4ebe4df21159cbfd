"""The Python API. The CLI and the benchmarks call these same functions.

    import vqvae
    cfg = vqvae.load_config("mnist", ["train.epochs=5"])
    vqvae.run_pipeline(cfg, "runs/demo")            # VQ-VAE, codes, prior, samples, evaluation
    model, cfg = vqvae.load_vqvae("runs/demo")       # rebuild from the checkpoint alone
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from .config import RunConfig, apply_overrides, at_least, check_value, load_config
from .data import ImageSet, check_data_channels, load_dataset, load_splits
from .errors import ConfigError, DataError
from .figures import plot_usage_histogram, save_grid, save_reconstruction_grid, spread_indices
from .files import atomic_save_npy, atomic_write_text
from .metrics.codebook import codebook_stats
from .metrics.reconstruction import evaluate_reconstruction
from .models import code_dtype
from .models.pretrained import is_model_folder
from .runs import (check_output_path, check_prior_matches, codebook_fingerprint, load_prior, load_vqvae, prior_fingerprint,
                   read_metrics, update_metrics)
from .training.distributed import is_main_process, resolve_device
from .training.prior_stage import heldout_bits, train_prior
from .training.loop import TrainResult
from .training.vqvae_stage import train_vqvae

__all__ = ["load_config", "train_vqvae", "train_prior", "reconstruct", "encode", "decode", "evaluate", "sample",
           "run_pipeline", "load_vqvae", "load_prior", "write_report", "sample_quality", "TrainResult"]


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
    out = check_output_path(out)
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
    from .models import quantizer_info
    from .training.prior_stage import encode_images

    out_dir = check_output_path(out_dir, folder=True)
    dev = resolve_device(device)
    model, config = load_vqvae(checkpoint, dev)
    images = _images(config, data)
    codes = encode_images(model, images, dev)
    atomic_save_npy(out_dir / "codes.npy", codes.numpy())
    if images.labels is not None:
        atomic_save_npy(out_dir / "labels.npy", images.labels.numpy())
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
    out = check_output_path(out)
    check_output_path(Path(out).with_suffix(".npy"))
    dev = resolve_device(device)
    model, _ = load_vqvae(checkpoint, dev)
    indices, meta = load_codes(codes)
    K, size = model.codebook_size, model.latent_size
    kind = model.quantizer_config.kind
    recorded = meta.get("quantizer", {}).get("kind")
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
    images = _decode_and_save(model, indices.to(dev), Path(out).with_suffix(".npy"))
    return save_grid(images[:256], Path(out), nrow=16)


@torch.no_grad()
def _decode_and_save(model, codes: torch.Tensor, npy_path: Path, batch: int = 500) -> torch.Tensor:
    """Code maps -> images in [0, 1] on the CPU, also saved as uint8 (N, C, H, W) at `npy_path`."""
    images = torch.cat([model.decode_indices(codes[i:i + batch]).float().clamp(0, 1).cpu()
                        for i in range(0, len(codes), batch)])
    np.save(npy_path, (images * 255).round().to(torch.uint8).numpy())
    return images


def _class_labels(prior, class_: str | int | None, num_samples: int, device) -> tuple[torch.Tensor | None, int]:
    """Labels for conditional sampling, and the grid's row length."""
    spec = prior.spec
    if class_ is None or class_ == "":
        if prior.conditional:
            return torch.arange(num_samples, device=device) % spec.num_classes, spec.num_classes
        return None, 0
    if not prior.conditional:
        raise ConfigError("--class needs a class-conditional prior (train it with `train-prior --conditional`); "
                          "this prior is unconditional")
    if str(class_) == "all":
        per_class = max(1, num_samples // spec.num_classes)
        return torch.arange(spec.num_classes, device=device).repeat_interleave(per_class), per_class
    names = list(spec.class_names)
    if str(class_) in names:
        index = names.index(str(class_))
    else:
        try:
            index = int(class_)
        except ValueError:
            raise ConfigError(f"--class {class_!r} is not a class of this prior; classes: {', '.join(names)}") from None
        if not 0 <= index < spec.num_classes:
            raise ConfigError(f"--class {index} is out of range: this prior has classes 0..{spec.num_classes - 1} "
                              f"({', '.join(names)})")
    return torch.full((num_samples,), index, device=device), 0


def sample(run_dir: str | Path, out_dir: str | Path | None = None, num_samples: int | None = None,
           batch_size: int | None = None, temperature: float | None = None, top_k: int | None = None,
           seed: int | None = None, class_: str | int | None = None, prior_path: str | Path | None = None,
           vqvae_path: str | Path | None = None, device: str = "auto", name: str = "samples",
           top_p: float | None = None, guidance: float | None = None) -> dict:
    """Draw new images: prior samples code maps (incrementally), the VQ-VAE decodes them.

    Unset options come from the run's `sample` config. `guidance` (conditional priors trained with
    label dropout): 0 = unconditional, 1 = conditional, > 1 = classifier-free guidance.
    Writes OUT/{name}.png (a grid), OUT/{name}.npy (uint8 (N, C, H, W)), OUT/{name}_codes.npy, and
    OUT/{name}.json: the settings and the prior's fingerprint, which `evaluate` checks before it
    scores cached samples.
    """
    dev = resolve_device(device)
    run_dir = Path(run_dir)
    prior, config, extra = load_prior(prior_path or run_dir, dev)
    vqvae, _ = load_vqvae(vqvae_path or run_dir, dev)
    check_prior_matches(prior, vqvae, extra["vqvae_fingerprint"])
    # The run's sample.* settings, with these arguments over them, checked like any config.
    asked = {"num_samples": num_samples, "batch_size": batch_size, "temperature": temperature, "top_k": top_k,
             "top_p": top_p, "guidance": guidance, "seed": seed}
    s = apply_overrides(config, {f"sample.{k}": v for k, v in asked.items() if v is not None}).sample
    n, batch, temperature, top_k, top_p, guidance, seed = (s.num_samples, s.batch_size, s.temperature, s.top_k,
                                                            s.top_p, s.guidance, s.seed)
    _check_guidance(prior, guidance)
    labels, row = _class_labels(prior, class_, n, dev)
    n = len(labels) if labels is not None else n
    generator = torch.Generator(device=dev).manual_seed(seed)
    t0 = time.perf_counter()
    codes = []
    for start in range(0, n, batch):
        b = min(batch, n - start)
        codes.append(prior.sample(b, labels[start:start + b] if labels is not None else None, temperature, top_k,
                                  generator, top_p=top_p, guidance=guidance))
    codes = torch.cat(codes)
    sample_seconds = time.perf_counter() - t0
    out_dir = Path(out_dir or run_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    images = _decode_and_save(vqvae, codes, out_dir / f"{name}.npy")
    np.save(out_dir / f"{name}_codes.npy", codes.cpu().to(code_dtype(prior.spec.codebook_size)).numpy())
    shown = images[: (row * prior.spec.num_classes if row and labels is not None and class_ == "all" else 100)]
    grid = save_grid(shown, out_dir / f"{name}.png", nrow=row or 10)
    settings = {"prior_fingerprint": prior_fingerprint(prior), "num_samples": n, "temperature": temperature,
                "top_k": top_k, "top_p": top_p, "guidance": guidance, "seed": seed,
                "class": None if class_ is None else str(class_)}
    atomic_write_text(out_dir / f"{name}.json", json.dumps(settings, indent=2) + "\n")
    return {**settings, "seconds": round(sample_seconds, 3), "samples_per_s": round(n / sample_seconds, 1),
            "grid": str(grid)}


def _check_guidance(prior, guidance: float) -> None:
    """Guidance needs a prior that has both a conditional and an unconditional mode (the
    option ranges themselves are checked by the config rules)."""
    if guidance != 1 and not prior.conditional:
        raise ConfigError("--guidance needs a class-conditional prior (train it with `train-prior --conditional "
                          "--set prior.label_dropout=0.1`); this prior is unconditional")
    if guidance != 1 and prior.null_class is None:
        raise ConfigError("--guidance needs a prior trained with label dropout (`--set prior.label_dropout=0.1` on "
                          "train-prior); this one has no unconditional mode")


def evaluate(path: str | Path, data: str | None = None, out: str | Path | None = None, num_samples: int | None = None,
             device: str = "auto", samples: bool = True) -> dict:
    """Metrics for a checkpoint or a run folder.

    Always: reconstruction on held-out images (`data`, or the run's own test split). For a run
    folder with a prior: its held-out bits per code, and the calibrated sample score (`sample_quality`:
    Fréchet distance, precision, recall, confidence and class coverage of real held-out images,
    reconstructions, samples and noise, at the same n), plus report.md/report.html. Writes the
    "evaluation" section of RUN/metrics.json, and `out` as JSON if given.
    """
    from .data import Batches, TensorBatches
    from .training.prior_stage import encode_images

    if num_samples is not None:
        check_value("--num-samples", num_samples, at_least(1))
    if out:
        out = check_output_path(out)
    dev = resolve_device(device)
    path = Path(path)
    model, config = load_vqvae(path, dev)
    if data:
        check_data_channels(data, config.data)
        test_set = load_dataset(data, config.data)
        train_set = val_set = None
    else:
        train_set, val_set, test_set = load_splits(config.data)
    result: dict = {"test_dataset": test_set.name,
                    "reconstruction": evaluate_reconstruction(model, Batches(test_set, 500, dev, shuffle=False).epoch(0))}
    is_run = path.is_dir() and any((path / "checkpoints" / f"prior-{w}.pt").is_file() for w in ("best", "last"))
    if is_run:
        prior, _, extra = load_prior(path, dev)
        check_prior_matches(prior, model, extra["vqvae_fingerprint"])
        codes = encode_images(model, test_set, dev).long()
        labels = test_set.labels if prior.conditional else None
        if prior.conditional and labels is None:
            result["prior"] = {"skipped": f"{test_set.name} has no labels for this conditional prior"}
        else:
            bits = heldout_bits(prior, TensorBatches((codes, labels), 500, dev, shuffle=False))
            result["prior"] = {"test_bits_per_code": round(bits, 5), "test_codes": len(codes)}
        if samples:
            if train_set is None:
                train_set, val_set, _ = load_splits(config.data)
            result["samples"] = sample_quality(path, test_set, train_set, val_set, num_samples or SCORE_IMAGES,
                                               str(dev))
    if path.is_dir() and not is_model_folder(path):  # a model folder is read-only: `out` takes the figures
        update_metrics(path, "evaluation", result)
        if is_run:
            write_report(path)
    if out:
        atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    return result


SCORE_IMAGES = 1000  # images per row of the calibrated sample score, where the held-out data allows


def _cached_samples(run_dir: Path, config: RunConfig, prior, n: int, dev) -> torch.Tensor:
    """RUN/samples.npy as float images, re-drawn unless RUN/samples.json shows they came from this
    very prior (weights fingerprint) with the run's sample settings and at least n of them."""
    s = config.sample
    wanted = {"prior_fingerprint": prior_fingerprint(prior), "temperature": s.temperature, "top_k": s.top_k,
              "top_p": s.top_p, "guidance": s.guidance, "seed": s.seed, "class": None}
    npy, meta_path = run_dir / "samples.npy", run_dir / "samples.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    fresh = (npy.is_file() and all(meta.get(k) == v for k, v in wanted.items())
             and meta.get("num_samples", 0) >= n)
    if not fresh:
        sample(run_dir, num_samples=max(n, s.num_samples), temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
               guidance=s.guidance, seed=s.seed, device=str(dev))
    return torch.from_numpy(np.load(npy)[:n]).float() / 255


def _in_fixed_random_order(data: ImageSet, count: int, seed: int = 0) -> torch.Tensor:
    """`count` images of `data` as uint8, in a fixed random order: a dataset may be sorted by class
    (the bundled MNIST images are), and its first half would then hold other classes than its second."""
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:count]
    if data.in_memory:
        return data.images[order]
    return torch.stack([data[i][0] for i in order.tolist()])


def sample_quality(run_dir: str | Path, heldout: ImageSet, train_set: ImageSet, val_set: ImageSet | None = None,
                   num_images: int = SCORE_IMAGES, device: str = "auto") -> dict:
    """The calibrated sample score of a run (see metrics/sample_quality.py) on `heldout` images.

    `heldout`, in a fixed random order, is split into two disjoint parts: the reference, and the real
    images that are scored and reconstructed; n = min(num_images, half of heldout). The classifier trains on
    `train_set` and reports its accuracy on `val_set` (else on `heldout`). `evaluate` passes the
    run's test split; tuning passes validation data.
    """
    from .metrics.sample_quality import calibrated_scores, inception_fid, load_or_train_classifier

    dev = resolve_device(device)
    run_dir = Path(run_dir)
    if train_set.labels is None or heldout.labels is None:
        return {"skipped": "sample-quality scores need a labelled dataset to train their classifier"}
    n = min(num_images, len(heldout) // 2)
    if n < 10:
        return {"skipped": f"{heldout.name} has {len(heldout)} images; the calibrated score needs at least 20"}
    vqvae, _ = load_vqvae(run_dir, dev)
    prior, config, _ = load_prior(run_dir, dev)
    samples = _cached_samples(run_dir, config, prior, n, dev)
    accuracy_set = val_set if val_set is not None and val_set.labels is not None and len(val_set) else heldout
    classifier, info = load_or_train_classifier(train_set.tensor(), train_set.labels, accuracy_set.tensor(),
                                                accuracy_set.labels)
    info["heldout_set"] = accuracy_set.name
    pool = _in_fixed_random_order(heldout, 2 * n).float() / 255
    reference, real = pool[:n], pool[n:2 * n]
    with torch.no_grad():
        reconstructions = torch.cat([vqvae(real[i:i + 500].to(dev)).reconstruction.float().clamp(0, 1).cpu()
                                     for i in range(0, n, 500)])
    scores = calibrated_scores(classifier, reference, real, reconstructions, samples)
    scores["heldout"] = f"{heldout.name}: {n} images the reference, {n} others the real row"
    scores["classifier"] = info
    scores["inception_fid"] = inception_fid(reference, samples)
    return scores


def write_report(run_dir: str | Path) -> Path:
    """RUN/report.md and RUN/report.html: metrics, reconstruction and sample grids, curves,
    and a codebook-usage histogram."""
    run_dir = Path(run_dir)
    metrics = read_metrics(run_dir)
    codes_path = run_dir / "codes" / "test.npy"
    if codes_path.is_file():
        K = metrics.get("prior", {}).get("codebook_size") or int(np.load(codes_path).max()) + 1
        plot_usage_histogram(torch.bincount(torch.from_numpy(np.load(codes_path).astype(np.int64)).flatten(),
                                            minlength=K), run_dir / "codebook_usage.png", "held-out codebook usage")
    ev = metrics.get("evaluation", {})
    rec = ev.get("reconstruction", {})
    lines = [f"# VQ-VAE run report: {run_dir.name}", ""]
    if rec:
        lines += ["## Reconstruction (held-out)", "",
                  f"- test set: {ev.get('test_dataset')} ({rec.get('num_images')} images)",
                  f"- MSE {rec.get('mse', float('nan')):.5f} (clipped to [0, 1]: {rec.get('mse_clipped', float('nan')):.5f}), "
                  f"PSNR {rec.get('psnr_db', float('nan')):.2f} dB",
                  f"- codes used {rec.get('codes_used')} of {rec.get('codes_used', 0) + rec.get('dead_codes', 0)}, "
                  f"perplexity {rec.get('perplexity')}", ""]
    prior = ev.get("prior", {})
    if "test_bits_per_code" in prior:
        lines += ["## Prior", "", f"- test negative log-likelihood: {prior['test_bits_per_code']:.4f} bits per code",
                  ""]
    sq = ev.get("samples", {})
    if "rows" in sq:
        lines += ["## Sample quality (calibrated; classifier features)", "",
                  "Each row: n images scored against the same reference of n real held-out images. Real images "
                  "and the VQ-VAE's reconstructions of them bound what samples can reach; noise shows the far end. "
                  "Fréchet distance: lower is better; precision (no malformed images) and recall (no missing "
                  f"modes): higher is better, k = {sq['k']} nearest neighbours.", "",
                  "| images | Fréchet distance | precision | recall | confidence | class coverage | classes present |",
                  "|---|---|---|---|---|---|---|"]
        for name, r in sq["rows"].items():
            lines.append(f"| {name} | {r['frechet_distance']:.3f} | {r['precision']:.3f} | {r['recall']:.3f} | "
                         f"{r['confidence']:.3f} | {r['class_coverage']:.3f} | {r['classes_present']} |")
        c = sq.get("classifier", {})
        fid = sq.get("inception_fid", {})
        fid_text = fid.get("fid") if fid.get("available") else f"unavailable ({fid.get('reason')})"
        lines += ["", f"Samples' Fréchet distance / reconstructions': {sq['samples_vs_reconstructions']:.2f}. "
                  f"n = {sq['n']} ({sq.get('heldout')}). Classifier: held-out accuracy {c.get('heldout_accuracy')} "
                  f"on {c.get('heldout_set')}, trained on {c.get('train_images')} images with augmentation. "
                  f"Inception FID: {fid_text}", ""]
    for title, name in (("Reconstructions (originals above, reconstructions below)", "reconstructions.png"),
                        ("Samples", "samples.png"), ("VQ-VAE training", "curves.png"),
                        ("Prior training", "prior_curves.png"), ("Codebook usage", "codebook_usage.png")):
        if (run_dir / name).is_file():
            lines += [f"## {title}", "", f"![{title}]({name})", ""]
    md = "\n".join(lines)
    (run_dir / "report.md").write_text(md + "\n")
    (run_dir / "report.html").write_text(_markdown_to_html(md))
    return run_dir / "report.md"


def _markdown_to_html(md: str) -> str:
    """Just enough Markdown for the report: headings, bullets, tables, images."""
    import html
    import re

    out, in_table = ["<!doctype html><meta charset='utf-8'><title>VQ-VAE report</title>",
                     "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}td,th{padding:2px 8px;"
                     "border-bottom:1px solid #ddd}img{max-width:100%;image-rendering:pixelated}</style>"], False
    for line in md.splitlines():
        if line.startswith("|"):
            cells = [html.escape(c.strip()) for c in line.strip("|").split("|")]
            if set("".join(cells)) <= set("-"):
                continue
            if not in_table:
                out.append("<table>")
                in_table = True
            out.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
            continue
        if in_table:
            out.append("</table>")
            in_table = False
        image = re.fullmatch(r"!\[(.*)\]\((.*)\)", line)
        if line.startswith("## "):
            out.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("# "):
            out.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("- "):
            out.append(f"<li>{html.escape(line[2:])}</li>")
        elif image:
            out.append(f"<img alt='{html.escape(image.group(1))}' src='{html.escape(image.group(2))}'>")
        elif line:
            out.append(f"<p>{html.escape(line)}</p>")
    if in_table:
        out.append("</table>")
    return "\n".join(out) + "\n"


def run_pipeline(config: RunConfig, run_dir: str | Path, progress: bool = True) -> dict:
    """The whole job: VQ-VAE, cached codes, prior, samples, evaluation and report, in one folder."""
    run_dir = Path(run_dir)
    timings = {}
    t = time.perf_counter()
    train_vqvae(config, run_dir)
    timings["vqvae_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    train_prior(config, run_dir)
    timings["prior_s"] = round(time.perf_counter() - t, 1)
    if not is_main_process():
        return {}  # under torchrun, sampling and evaluation are rank 0's
    t = time.perf_counter()
    sampled = sample(run_dir, device=config.train.device)
    timings["sample_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    evaluate(run_dir, device=config.train.device)
    timings["evaluate_s"] = round(time.perf_counter() - t, 1)
    update_metrics(run_dir, "pipeline", {"timings": timings, "sampling": sampled})
    if progress:
        print(summary_text(run_dir), flush=True)
    return read_metrics(run_dir)


def summary_text(run_dir: Path) -> str:
    m = read_metrics(run_dir)
    ev = m.get("evaluation", {})
    rec, prior, sq = ev.get("reconstruction", {}), ev.get("prior", {}), ev.get("samples", {})
    lines = [f"run folder: {run_dir}"]
    if rec:
        lines.append(f"  reconstruction: MSE {rec['mse_clipped']:.5f} (clipped), PSNR {rec['psnr_db']:.2f} dB, "
                     f"{rec['codes_used']} codes used, perplexity {rec['perplexity']}")
    if "test_bits_per_code" in prior:
        lines.append(f"  prior: {prior['test_bits_per_code']:.4f} bits per code on test codes")
    if "rows" in sq:
        r = sq["rows"]
        lines.append(f"  samples (n={sq['n']}): Fréchet {r['samples']['frechet_distance']:.2f} = "
                     f"{sq['samples_vs_reconstructions']:.2f}x the reconstructions' "
                     f"{r['reconstructions']['frechet_distance']:.2f} (real {r['real']['frechet_distance']:.2f}, "
                     f"noise {r['noise']['frechet_distance']:.0f}); precision {r['samples']['precision']:.3f}, "
                     f"recall {r['samples']['recall']:.3f}, {r['samples']['classes_present']} classes present")
    if "pipeline" in m:
        lines.append(f"  timings: {m['pipeline']['timings']}")
    lines.append(f"  report: {run_dir / 'report.md'}")
    return "\n".join(lines)
