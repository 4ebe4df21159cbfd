"""Drawing images from a run: the prior samples code maps, the VQ-VAE decodes them.

`sample` is what `vqvae sample` runs; `cached_samples` re-uses RUN/samples.npy for scoring
when it came from the same prior with the run's own settings, and re-draws it otherwise.
A run's own settings are its config's `sample` section, with the settings `vqvae tune-sampling`
chose on validation data (RUN/sampling.json) over it while they belong to the run's prior.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from .config import RunConfig, SampleConfig, apply_overrides
from .errors import CheckpointError, ConfigError, OutputError
from .figures import save_grid
from .files import atomic_save_npy, atomic_write_text, file_sha256
from .models import code_dtype
from .models.pretrained import is_model_folder
from .resources import check_output_fits
from .runlock import locks_run
from .runs import check_prior_matches, load_prior, load_vqvae, prior_fingerprint
from .training.distributed import resolve_device


@torch.no_grad()
def decode_and_save(model, codes: torch.Tensor, npy_path: Path, batch: int = 500) -> torch.Tensor:
    """Code maps -> images in [0, 1] on the CPU, also saved as uint8 (N, C, H, W) at `npy_path`."""
    images = torch.cat([model.decode_indices(codes[i:i + batch]).float().clamp(0, 1).cpu()
                        for i in range(0, len(codes), batch)])
    atomic_save_npy(npy_path, (images * 255).round().to(torch.uint8).numpy())
    return images


def check_class_word(prior, class_: str | int | None, word: str, meaning: str) -> None:
    """A word a command gives its own meaning to (`sample --class all`, `inpaint --class none`) is
    ambiguous when the prior also has a class of that name: an error that says how to draw the class.
    A word the command does not use is a class name like any other."""
    if str(class_) == word and prior.conditional and word in prior.spec.class_names:
        index = list(prior.spec.class_names).index(word)
        raise ConfigError(f"--class {word} is ambiguous: it means {meaning}, and this prior also has a class named "
                          f"'{word}' (index {index}); pass --class {index} to draw that class")


def class_labels(prior, class_: str | int | None, num_samples: int, device,
                 every_class: bool = True) -> tuple[torch.Tensor | None, int]:
    """Labels for conditional sampling, and the grid's row length. `every_class`: "all" means every
    class (sampling), else it can only be a class's name (inpainting)."""
    spec = prior.spec
    if class_ is None or class_ == "":
        if prior.conditional and spec.class_weights:
            return weighted_classes(spec.class_weights, num_samples).to(device), 10
        if prior.conditional:
            return torch.arange(num_samples, device=device) % spec.num_classes, spec.num_classes
        return None, 0
    if not prior.conditional:
        raise ConfigError("--class needs a class-conditional prior (train it with `train-prior --conditional`); "
                          "this prior is unconditional")
    if every_class and str(class_) == "all":
        check_class_word(prior, class_, "all", "every class")
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
        if names and all(_is_integer(n) for n in names):
            # Classes named by label values (a .npy's labels {3, 7}): a number is a label, never a
            # position, so `--class 0` cannot quietly draw class "3", nor a class no image had.
            raise ConfigError(f"--class {class_} is not a class of this prior: its training data had the labels "
                              f"{', '.join(names)}")
        if not 0 <= index < spec.num_classes:
            raise ConfigError(f"--class {index} is out of range: this prior has classes 0..{spec.num_classes - 1} "
                              f"({', '.join(names)})")
    return torch.full((num_samples,), index, device=device), 0


def _is_integer(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def weighted_classes(weights, n: int) -> torch.Tensor:
    """n class indices in proportion to `weights` (largest remainders round the counts), interleaved
    so that any first m of them also follow the weights roughly: (n,) int64."""
    w = torch.tensor(weights, dtype=torch.float64)
    exact = w / w.sum() * n
    counts = exact.floor().long()
    counts[(exact - counts).argsort(descending=True)[:n - int(counts.sum())]] += 1
    labels = torch.repeat_interleave(torch.arange(len(w)), counts)
    # Order by each label's position within its class, scaled by its count: a class's k-th copy
    # comes at about k / count of the way through.
    rank = torch.cat([torch.arange(int(c), dtype=torch.float64) / max(int(c), 1) for c in counts])
    return labels[torch.argsort(rank, stable=True)]


def check_guidance(prior, guidance: float) -> None:
    """Guidance needs a prior that has both a conditional and an unconditional mode (the
    option ranges themselves are checked by the config rules)."""
    if guidance != 1 and not prior.conditional:
        raise ConfigError("--guidance needs a class-conditional prior (train it with `train-prior --conditional "
                          "--set prior.label_dropout=0.1`); this prior is unconditional")
    if guidance != 1 and prior.null_class is None:
        raise ConfigError("--guidance needs a prior trained with label dropout (`--set prior.label_dropout=0.1` on "
                          "train-prior); this one has no unconditional mode")


def effective_guidance(prior, configured: float) -> float:
    """The guidance a run's `sample.guidance` gives this prior: itself for a conditional prior with
    a null class, else 1 (no guidance), so a preset's guidance never stops an unconditional prior
    from sampling. An explicit --guidance is checked instead (`check_guidance`)."""
    return configured if prior.conditional and prior.null_class is not None else 1.0


TUNED_FILE = "sampling.json"  # RUN/sampling.json: the settings tune-sampling chose, and for which prior
TUNED_FIELDS = ("guidance", "temperature", "top_p", "top_k")


def read_tuned(run_dir: Path) -> dict | None:
    """RUN/sampling.json as written by `vqvae tune-sampling`, or None when there is none."""
    path = Path(run_dir) / TUNED_FILE
    if not path.is_file():
        return None
    try:
        tuned = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON (damaged?): {e}; run `vqvae tune-sampling` again or "
                              f"remove it") from None
    if not isinstance(tuned, dict) or not isinstance(tuned.get("chosen"), dict):
        raise CheckpointError(f"{path} is not the file `vqvae tune-sampling` writes (no 'chosen' settings)")
    return tuned


def run_sample_config(run_dir: Path, config: RunConfig, prior) -> SampleConfig:
    """The run's sample settings: its config's, with the tuned ones (RUN/sampling.json) over them
    when they were chosen for this very prior (a retrained prior ignores stale tuning)."""
    tuned = read_tuned(run_dir) if Path(run_dir).is_dir() else None
    if tuned is None or tuned.get("prior_fingerprint") != prior_fingerprint(prior):
        return config.sample
    chosen = {f"sample.{k}": v for k, v in tuned["chosen"].items() if k in TUNED_FIELDS}
    return apply_overrides(config, chosen).sample


@torch.no_grad()
def draw_codes(prior, labels: torch.Tensor | None, n: int, batch: int, temperature: float, top_k: int,
               top_p: float, guidance: float, seed: int, dev, **options) -> torch.Tensor:
    """n code maps (n, h, w) from the prior, `batch` at a time, from one seeded generator; `options`
    go to the prior's own `sample` (a prior kind's own settings)."""
    generator = torch.Generator(device=dev).manual_seed(seed)
    codes = []
    for start in range(0, n, batch):
        b = min(batch, n - start)
        codes.append(prior.sample(b, labels[start:start + b] if labels is not None else None, temperature, top_k,
                                  generator, top_p=top_p, guidance=guidance, **options))
    return torch.cat(codes)


@locks_run("sample", lambda a: a["out_dir"] or a["run_dir"], only_run_folders=True)
def sample(run_dir: str | Path, out_dir: str | Path | None = None, num_samples: int | None = None,
           batch_size: int | None = None, temperature: float | None = None, top_k: int | None = None,
           seed: int | None = None, class_: str | int | None = None, prior_path: str | Path | None = None,
           vqvae_path: str | Path | None = None, device: str = "auto", name: str = "samples",
           top_p: float | None = None, guidance: float | None = None, steps: int | None = None,
           choice_temperature: float | None = None) -> dict:
    """Draw new images: prior samples code maps (incrementally), the VQ-VAE decodes them.

    Unset options come from the run's sample settings (`run_sample_config`: its config's, or those
    tune-sampling chose). `guidance` (conditional priors trained with label dropout): 0 =
    unconditional, 1 = conditional, > 1 = classifier-free guidance. `steps` and
    `choice_temperature` are MaskGIT's (an error for the autoregressive priors); temperature,
    top_k and top_p shape every prior's draw of a code at a position, MaskGIT's too.
    Writes OUT/{name}.png (a grid), OUT/{name}.npy (uint8 (N, C, H, W)), OUT/{name}_codes.npy, and
    OUT/{name}.json: the settings and the prior's fingerprint, which `evaluate` checks before it
    scores cached samples.
    """
    dev = resolve_device(device)
    run_dir = Path(run_dir)
    if out_dir is None and is_model_folder(run_dir):
        raise OutputError(f"{run_dir} is an exported model folder, which is for use and not written to: pass "
                          f"--out FOLDER for the samples")
    out_dir = Path(out_dir or run_dir)
    another_run = (out_dir / "config.json").is_file() and (out_dir / "checkpoints").is_dir()
    if another_run and out_dir.resolve() != run_dir.resolve():
        raise OutputError(f"--out {out_dir} is another run's folder: its samples would be replaced by those of "
                          f"{run_dir}; choose a new folder")
    prior, config, extra = load_prior(prior_path or run_dir, dev)
    vqvae, _ = load_vqvae(vqvae_path or run_dir, dev)
    check_prior_matches(prior, vqvae, extra["vqvae_fingerprint"])
    masked = prior.config.kind == "maskgit"
    if not masked and (steps is not None or choice_temperature is not None):
        raise ConfigError(f"--steps and --choice-temperature are for a maskgit prior; this one is {prior.config.kind}, "
                          f"which draws one code per position in raster order")
    # The run's sample.* settings, with these arguments over them, checked like any config.
    asked = {"num_samples": num_samples, "batch_size": batch_size, "temperature": temperature, "top_k": top_k,
             "top_p": top_p, "guidance": guidance, "seed": seed, "steps": steps,
             "choice_temperature": choice_temperature}
    config.sample = run_sample_config(run_dir, config, prior)
    s = apply_overrides(config, {f"sample.{k}": v for k, v in asked.items() if v is not None}).sample
    n, batch, temperature, top_k, top_p, seed = s.num_samples, s.batch_size, s.temperature, s.top_k, s.top_p, s.seed
    if guidance is None:  # the run's setting: it applies where the prior can be guided
        guidance = effective_guidance(prior, s.guidance)
    check_guidance(prior, guidance)
    # Checked before anything is drawn: the images are held (as floats) and saved whole.
    m, h = vqvae.model_config, prior.spec.latent_size
    pixels = m.in_channels * m.image_size * m.image_size
    check_output_fits("samples", n, memory_per_item=pixels * 5 + h * h * 8 + 8, disk_per_item=pixels + h * h * 4,
                      device="cpu", folder=out_dir, option="--num-samples")
    maskgit_options = {"steps": s.steps, "choice_temperature": s.choice_temperature} if masked else {}
    labels, row = class_labels(prior, class_, n, dev)
    n = len(labels) if labels is not None else n
    t0 = time.perf_counter()
    codes = draw_codes(prior, labels, n, batch, temperature, top_k, top_p, guidance, seed, dev, **maskgit_options)
    sample_seconds = time.perf_counter() - t0
    images = decode_and_save(vqvae, codes, out_dir / f"{name}.npy")
    atomic_save_npy(out_dir / f"{name}_codes.npy", codes.cpu().to(code_dtype(prior.spec.codebook_size)).numpy())
    shown = images[: (row * prior.spec.num_classes if row and labels is not None and class_ == "all" else 100)]
    grid = save_grid(shown, out_dir / f"{name}.png", nrow=row or 10)
    settings = {"prior_fingerprint": prior_fingerprint(prior), "num_samples": n, "temperature": temperature,
                "top_k": top_k, "top_p": top_p, "guidance": guidance, "seed": seed,
                "class": None if class_ is None else str(class_), **maskgit_options,
                "npy_sha256": file_sha256(out_dir / f"{name}.npy")}  # ties the settings to these very images
    atomic_write_text(out_dir / f"{name}.json", json.dumps(settings, indent=2) + "\n")
    return {**settings, "seconds": round(sample_seconds, 3), "samples_per_s": round(n / sample_seconds, 1),
            "grid": str(grid)}


def cached_samples(run_dir: Path, config: RunConfig, prior, n: int, dev) -> torch.Tensor:
    """RUN/samples.npy as float images, re-drawn unless RUN/samples.json shows they came from this
    very prior (weights fingerprint) with the run's sample settings (`run_sample_config`), at least n
    of them, and records the hash of this samples.npy."""
    s = run_sample_config(run_dir, config, prior)
    wanted = {"prior_fingerprint": prior_fingerprint(prior), "temperature": s.temperature, "top_k": s.top_k,
              "top_p": s.top_p, "guidance": effective_guidance(prior, s.guidance), "seed": s.seed, "class": None}
    if prior.config.kind == "maskgit":
        wanted.update(steps=s.steps, choice_temperature=s.choice_temperature)
    npy, meta_path = run_dir / "samples.npy", run_dir / "samples.json"
    try:
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    except (OSError, ValueError):
        meta = {}  # damaged: re-drawn
    # The settings must match, and samples.npy must be the very file they were recorded with
    # (its hash), not one another command or a person put there since.
    fresh = (isinstance(meta, dict) and npy.is_file() and all(meta.get(k) == v for k, v in wanted.items())
             and isinstance(meta.get("num_samples"), int) and meta["num_samples"] >= n
             and meta.get("npy_sha256") == file_sha256(npy))
    if not fresh:
        sample(run_dir, num_samples=max(n, s.num_samples), temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
               guidance=wanted["guidance"], seed=s.seed, device=str(dev),
               **{k: wanted[k] for k in ("steps", "choice_temperature") if k in wanted})
    return torch.from_numpy(np.load(npy)[:n]).float() / 255
