"""`vqvae tune-sampling`: choose a run's sampling settings (guidance, temperature, top-p) on
validation data, with a rule that sees diversity (metrics/selection.py), and write them into
the run (RUN/sampling.json) so that `sample`, `evaluate` and the report use them.

Protocol: the run's validation split (never its test split), in a fixed random order, gives
two disjoint halves of n images: the reference, and the real images the VQ-VAE reconstructs.
Every candidate setting draws `draws` sets of n samples, one per seed (the same seeds for every
setting, so settings are compared on the same random numbers), each scored against the same
reference with the calibrated score's classifier features: Fréchet distance, k-NN precision
and recall, classes present. A second, untrained network (fixed random weights, no labels)
gives a check Fréchet distance that the rule does not read.
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import torch

from .config import RunConfig, SampleConfig, apply_overrides, at_least, check_value
from .data import load_splits
from .errors import ConfigError
from .files import atomic_write_text
from .metrics.protocol import in_fixed_random_order, scored_images, why_unscorable
from .metrics.sample_quality import (FeatureClassifier, class_figures, features, frechet_distance,
                                     load_or_train_classifier, precision_recall, predict)
from .metrics.selection import RULE, choose_setting, interval
from .runs import check_prior_matches, load_prior, load_vqvae, prior_fingerprint, update_metrics
from .sampling import TUNED_FILE, check_guidance, class_labels, draw_codes, effective_guidance
from .training.distributed import resolve_device

DRAWS = 5
RECALL_MARGIN = 0.1
GUIDANCE_CANDIDATES = (1.0, 1.5, 2.0)  # for conditional priors trained with label dropout
K_NEIGHBOURS = 3


def untrained_features_network(channels: int, image_size: int, seed: int = 0) -> FeatureClassifier:
    """The classifier's architecture with fixed random weights: features that no label shaped,
    for a check the tuning rule does not read."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return FeatureClassifier(channels, image_size, num_classes=2).eval()


def candidate_settings(prior, sample_config: SampleConfig, guidance: list[float] | None,
                       temperature: list[float] | None, top_p: list[float] | None) -> list[dict]:
    """Every combination of the given values; an option not given keeps the run's value (for
    guidance: 1, 1.5 and 2 where the prior can be guided). `prior.config` is the run's prior
    settings, against which the sample settings are checked (MaskGIT's steps are valid only there)."""
    if guidance is None:
        guided = prior.conditional and prior.null_class is not None
        guidance = list(GUIDANCE_CANDIDATES) if guided else [effective_guidance(prior, sample_config.guidance)]
    temperature = temperature or [sample_config.temperature]
    top_p = top_p or [sample_config.top_p]
    settings = []
    for g, t, p in itertools.product(guidance, temperature, top_p):
        check_guidance(prior, g)
        # Each value checked by the config's own rules (temperature > 0, top-p in (0, 1], guidance >= 0).
        s = apply_overrides(RunConfig(prior=prior.config, sample=sample_config),
                            {"sample.guidance": g, "sample.temperature": t, "sample.top_p": p}).sample
        settings.append({"guidance": s.guidance, "temperature": s.temperature, "top_p": s.top_p})
    if len({tuple(s.values()) for s in settings}) != len(settings):
        raise ConfigError("tune-sampling: a value is given twice; give each candidate once")
    return settings


def _figures(images: torch.Tensor, classifier, ref_features, check_net, check_ref, check_scale) -> dict:
    f = features(classifier, images)
    return {"frechet_distance": frechet_distance(f, ref_features), **precision_recall(ref_features, f, K_NEIGHBOURS),
            "classes_present": class_figures(predict(classifier, images))["classes_present"],
            "untrained_frechet_distance": frechet_distance(features(check_net, images) / check_scale, check_ref)}


def tune_sampling(run_dir: str | Path, guidance: list[float] | None = None, temperature: list[float] | None = None,
                  top_p: list[float] | None = None, draws: int = DRAWS, num_images: int | None = None,
                  recall_margin: float = RECALL_MARGIN, seed: int = 0, device: str = "auto",
                  write: bool = True) -> dict:
    """Score every candidate setting on the run's validation split over `draws` seeds, choose one
    by the rule in metrics/selection.py, and (write=True) record it in RUN/sampling.json, which
    `sample` and the report then use, and in RUN/metrics.json ("sampling_tuning").

    n (images per set) = min(num_images, half the validation split). Returns the table of
    settings (means and 95% intervals over draws), the reconstructions' row, the choice and why.
    """
    check_value("--draws", draws, at_least(2))
    check_value("--recall-margin", recall_margin, at_least(0))
    if num_images is not None:
        check_value("--num-images", num_images, at_least(1))
    dev = resolve_device(device)
    run_dir = Path(run_dir)
    prior, config, extra = load_prior(run_dir, dev)
    vqvae, _ = load_vqvae(run_dir, dev)
    check_prior_matches(prior, vqvae, extra["vqvae_fingerprint"])
    settings = candidate_settings(prior, config.sample, guidance, temperature, top_p)
    splits = load_splits(config.data)
    if splits.val is None or len(splits.val) == 0:
        raise ConfigError("tune-sampling chooses on the validation split, and this run has none "
                          "(data.val_fraction=0); train with data.val_fraction > 0")
    problem = why_unscorable(splits.val, splits.train, num_images or len(splits.val))
    if problem:
        raise ConfigError(f"tune-sampling cannot score this run on validation data: {problem}")
    n = scored_images(splits.val, num_images or len(splits.val))
    classifier, info = load_or_train_classifier(splits.train.tensor(), splits.train.labels, splits.val.tensor(),
                                                splits.val.labels)
    pool = in_fixed_random_order(splits.val, 2 * n).float() / 255
    reference, real = pool[:n], pool[n:2 * n]  # (n, C, H, W) each, disjoint
    with torch.no_grad():
        reconstructions = torch.cat([vqvae(real[i:i + 500].to(dev)).reconstruction.float().clamp(0, 1).cpu()
                                     for i in range(0, n, 500)])
    check_net = untrained_features_network(reference.shape[1], reference.shape[2])
    ref_features, check_ref = features(classifier, reference), features(check_net, reference)
    # Random weights give features of arbitrary scale: each is divided by its spread over the reference,
    # floored at a tenth of the mean spread so that a feature nearly constant there cannot dominate.
    spread = check_ref.std(0)
    check_scale = spread.clamp_min(0.1 * float(spread.mean()) + 1e-12)
    check_ref = check_ref / check_scale
    recon = _figures(reconstructions, classifier, ref_features, check_net, check_ref, check_scale)
    labels, _ = class_labels(prior, None, n, dev)
    batch = config.sample.batch_size
    # MaskGIT's decoding as the run samples it, so the setting is chosen under the decoding it is used with.
    options = ({"steps": config.sample.steps, "choice_temperature": config.sample.choice_temperature}
               if prior.config.kind == "maskgit" else {})
    rows = []
    for setting in settings:
        per_draw = []
        for d in range(draws):
            codes = draw_codes(prior, labels, n, batch, setting["temperature"], config.sample.top_k, setting["top_p"],
                               setting["guidance"], seed + d, dev, **options)
            with torch.no_grad():
                images = torch.cat([vqvae.decode_indices(codes[i:i + 500]).float().clamp(0, 1).cpu()
                                    for i in range(0, n, 500)])
            per_draw.append(_figures(images, classifier, ref_features, check_net, check_ref, check_scale))
        rows.append({"setting": setting, **{key: interval([f[key] for f in per_draw]) for key in per_draw[0]}})
    best, reason = choose_setting(rows, recon["recall"], recall_margin)
    result = {"chosen": rows[best]["setting"], "reason": reason, "rule": RULE.format(margin=recall_margin),
              "recall_margin": recall_margin, "draws": draws, "seeds": list(range(seed, seed + draws)), "n": n,
              "k": K_NEIGHBOURS, "heldout": f"{splits.val.name} (validation): {n} images the reference, "
                                            f"{n} others reconstructed",
              "reconstructions": {k: round(v, 4) for k, v in recon.items()}, "settings": rows,
              "classifier": {k: info[k] for k in ("heldout_accuracy", "train_images") if k in info},
              "prior_fingerprint": prior_fingerprint(prior), **({"maskgit_decoding": options} if options else {})}
    if write:
        atomic_write_text(run_dir / TUNED_FILE, json.dumps(result, indent=2) + "\n")
        update_metrics(run_dir, "sampling_tuning", result)
    return result
