"""`vqvae evaluate`: a checkpoint's or a run's figures on held-out images, and the run's
calibrated sample score (the protocol is metrics/protocol.py; this module loads the run's
models and samples for it)."""
from __future__ import annotations

import json
from pathlib import Path

from .config import at_least, check_value
from .data import Batches, ImageSet, TensorBatches, check_data_channels, load_dataset, load_splits
from .files import atomic_write_text
from .metrics.protocol import SCORE_IMAGES, score_samples, scored_images, why_unscorable
from .metrics.reconstruction import evaluate_reconstruction
from .models.pretrained import is_model_folder
from .report import write_report
from .runs import check_output_path, check_prior_matches, load_prior, load_vqvae, update_metrics
from .sampling import cached_samples
from .training.distributed import resolve_device
from .training.prior_stage import encode_images, heldout_bits, heldout_labels


def evaluate(path: str | Path, data: str | None = None, out: str | Path | None = None, num_samples: int | None = None,
             device: str = "auto", samples: bool = True) -> dict:
    """Metrics for a checkpoint or a run folder.

    Always: reconstruction on held-out images (`data`, or the run's own test split). For a run
    folder with a prior: its held-out bits per code, and the calibrated sample score (`sample_quality`:
    Fréchet distance, precision, recall, confidence and class coverage of real held-out images,
    reconstructions, samples and noise, at the same n), plus report.md/report.html. Writes the
    "evaluation" section of RUN/metrics.json, and `out` as JSON if given.
    """
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
        labels = heldout_labels(prior, codes, test_set.labels)
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


def sample_quality(run_dir: str | Path, heldout: ImageSet, train_set: ImageSet, val_set: ImageSet | None = None,
                   num_images: int = SCORE_IMAGES, device: str = "auto") -> dict:
    """The calibrated sample score of a run (see metrics/sample_quality.py) on `heldout` images.

    `heldout`, in a fixed random order, is split into two disjoint parts: the reference, and the real
    images that are scored and reconstructed; n = min(num_images, half of heldout). The classifier trains on
    `train_set` and reports its accuracy on `val_set` (else on `heldout`). `evaluate` passes the
    run's test split; tuning passes validation data. The run's samples are re-used when they came
    from its prior with its sample settings, else re-drawn.
    """
    dev = resolve_device(device)
    skipped = why_unscorable(heldout, train_set, num_images)
    if skipped:
        return {"skipped": skipped}
    run_dir = Path(run_dir)
    vqvae, _ = load_vqvae(run_dir, dev)
    prior, config, _ = load_prior(run_dir, dev)
    samples = cached_samples(run_dir, config, prior, scored_images(heldout, num_images), dev)
    return score_samples(vqvae, samples, heldout, train_set, val_set, dev)
