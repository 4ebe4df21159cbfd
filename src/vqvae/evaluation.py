"""`vqvae evaluate`: a checkpoint's or a run's figures on held-out images, and the run's
calibrated sample score (the protocol is metrics/protocol.py; this module loads the run's
models and samples for it).

Reconstruction figures: MSE, PSNR in both paper conventions and SSIM (metrics/reconstruction.py),
the calibrated texture measure (metrics/texture.py), and rFID and LPIPS where their networks'
weights are on disk (metrics/pretrained.py)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .config import at_least, check_value
from .data import Batches, ImageSet, TensorBatches, check_data_channels, load_dataset, load_splits, relabel
from .files import atomic_write_text
from .metrics.pretrained import PretrainedWeights, reconstruction_perceptual
from .metrics.protocol import SCORE_IMAGES, in_fixed_random_order, score_samples, scored_images, why_unscorable
from .metrics.reconstruction import evaluate_reconstruction
from .metrics.texture import PATCH_SIZE, calibrated_texture
from .models.pretrained import is_model_folder
from .report import write_report
from .runlock import locks_run
from .runs import check_output_path, check_prior_matches, load_prior, load_vqvae, update_metrics
from .sampling import cached_samples
from .training.distributed import resolve_device
from .training.prior_stage import MASKED_NATS_MEANING, encode_images, heldout_figure, heldout_labels


TEXTURE_IMAGES = 2000  # images per row of the calibrated texture measure, where the held-out data allows


@locks_run("evaluate", lambda a: a["path"], only_run_folders=True)
def evaluate(path: str | Path, data: str | None = None, out: str | Path | None = None, num_samples: int | None = None,
             device: str = "auto", samples: bool = True, inception_weights: str | Path | None = None,
             lpips_vgg_weights: str | Path | None = None, allow_download: bool = False) -> dict:
    """Metrics for a checkpoint or a run folder.

    Always, on held-out images (`data`, or the run's own test split): reconstruction (MSE, PSNR both
    ways, SSIM, codebook usage), the calibrated texture measure (`texture`), and rFID and LPIPS
    (`perceptual`) when their weights are on disk (`inception_weights`, `lpips_vgg_weights`, or the
    libraries' own cache; `allow_download` lets the libraries fetch them), else `perceptual` names
    them under "skipped". For a run folder with a prior: its held-out bits per code, and the calibrated
    sample score (`sample_quality`: Fréchet distance, precision, recall, confidence and class coverage
    of real held-out images, reconstructions, samples and noise, at the same n). For a run folder:
    report.md/report.html. Writes the "evaluation" section of RUN/metrics.json, and `out` as JSON if given.
    """
    if num_samples is not None:
        check_value("--num-samples", num_samples, at_least(1))
    if out:
        out = check_output_path(out)
    weights = PretrainedWeights(Path(inception_weights) if inception_weights else None,
                                Path(lpips_vgg_weights) if lpips_vgg_weights else None, allow_download)
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
                    "reconstruction": evaluate_reconstruction(model, Batches(test_set, 500, dev, shuffle=False).epoch(0)),
                    "texture": texture_scores(model, test_set, dev),
                    "perceptual": reconstruction_perceptual(_with_reconstructions(model, test_set, dev),
                                                            test_set.channels, weights, dev)}
    is_run = path.is_dir() and any((path / "checkpoints" / f"prior-{w}.pt").is_file() for w in ("best", "last"))
    if is_run:
        prior, _, extra = load_prior(path, dev)
        check_prior_matches(prior, model, extra["vqvae_fingerprint"])
        codes = encode_images(model, test_set, dev).long()
        # Matched by class name: a prior from before labels were mapped to the classes present
        # numbers its classes 0..max label, the data now numbers only those present. A prior on
        # pseudo-classes is scored in its unconditional mode (heldout_labels).
        named = prior.conditional and not prior.config.pseudo_classes
        test_labels = relabel(test_set, prior.spec.class_names).labels if named else test_set.labels
        labels = heldout_labels(prior, codes, test_labels)
        if prior.conditional and labels is None:
            result["prior"] = {"skipped": f"{test_set.name} has no labels for this conditional prior"}
        else:
            value = heldout_figure(prior, TensorBatches((codes, labels), 500, dev, shuffle=False))
            if prior.config.kind == "maskgit":  # no likelihood: its masked cross-entropy, under its own name
                result["prior"] = {"test_masked_nats": round(value, 5), "masked_nats_meaning": MASKED_NATS_MEANING,
                                   "test_codes": len(codes)}
            else:
                result["prior"] = {"test_bits_per_code": round(value, 5), "test_codes": len(codes)}
        if samples:
            if train_set is None:
                train_set, val_set, _ = load_splits(config.data)
            result["samples"] = sample_quality(path, test_set, train_set, val_set, num_samples or SCORE_IMAGES,
                                               str(dev), weights)
    if path.is_dir() and not is_model_folder(path):  # a model folder is read-only: `out` takes the figures
        update_metrics(path, "evaluation", result)
        write_report(path)
    if out:
        atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    return result


def _reconstruct(model, images: torch.Tensor, device, batch: int = 500) -> torch.Tensor:
    """Float images (N, C, H, W) in [0, 1] on the CPU -> the model's reconstructions, clipped, on the CPU."""
    with torch.no_grad():
        return torch.cat([model(images[i:i + batch].to(device)).reconstruction.float().clamp(0, 1).cpu()
                          for i in range(0, len(images), batch)])


def _with_reconstructions(model, images: ImageSet, device):
    """(originals, reconstructions) batches of `images`, on `device`."""
    model.eval()
    for x, _ in Batches(images, 250, device, shuffle=False).epoch(0):
        with torch.no_grad():
            yield x, model(x).reconstruction.float()


def texture_scores(model, heldout: ImageSet, device, num_images: int = TEXTURE_IMAGES, seed: int = 0) -> dict:
    """The calibrated texture measure (metrics/texture.py) of the model's reconstructions: `heldout`,
    in a fixed random order, gives a reference of n images and n others, real and reconstructed;
    n = min(num_images, half of heldout)."""
    n = min(num_images, len(heldout) // 2)
    if n < 1 or heldout.image_size < PATCH_SIZE:
        return {"skipped": f"{heldout.name} has {len(heldout)} images of {heldout.image_size} px; the texture "
                           f"measure needs 2 images of at least {PATCH_SIZE} px"}
    model.eval()
    pool = in_fixed_random_order(heldout, 2 * n, seed).float() / 255
    reference, real = pool[:n], pool[n:]  # (n, C, H, W) each, disjoint
    result = calibrated_texture(reference, real, _reconstruct(model, real, device), seed)
    result["heldout"] = f"{heldout.name}: {n} images the reference, {n} others real, blurred and reconstructed"
    return result


def sample_quality(run_dir: str | Path, heldout: ImageSet, train_set: ImageSet, val_set: ImageSet | None = None,
                   num_images: int = SCORE_IMAGES, device: str = "auto",
                   weights: PretrainedWeights | None = None) -> dict:
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
    return score_samples(vqvae, samples, heldout, train_set, val_set, dev, weights)
