"""The prior and the whole pipeline against the seed's recipe, in one run, on the same data.

    python benchmarks/bench_prior.py            # about 20 minutes on 2 CPU cores
    python benchmarks/bench_prior.py --quick    # a smoke run of a few minutes

Parts:
1. `demo`: the default pipeline exactly as `make demo` runs it (mnist preset, bundled data,
   500 held-out images): wall time of each stage.
2. `ours`: the same pipeline measured on the 10,000-image MNIST test split.
3. `recipe`: our implementation of the seed's recipe: the seed-mnist VQ-VAE trained 60 epochs,
   then its prior (Gated PixelCNN, 15 blocks x 128 channels, Adam 1e-3, batch 256) for 7 epochs
   (about the 621 s the seed's own code needed), 1,000 samples, scored by the same scorer.
4. `ours_prior_on_recipe_codes`: our prior recipe trained on the recipe's own codes, so the
   bits per code of the two priors compare on identical data: time to reach the recipe's
   held-out bits, and the best held-out bits within the recipe's prior time.
Prints one JSON document.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from vqvae import api
from vqvae.config import PriorConfig, TrainConfig, get_preset, load_config

HERE = Path(__file__).resolve().parent
DEFAULT_TEST = HERE.parent.parent / "shared" / "data" / "mnist"


def scores(run: Path) -> dict:
    ev = api.evaluate(run, device="cpu")
    s = ev["samples"]
    return {"recon_mse_clipped": round(ev["reconstruction"]["mse_clipped"], 5),
            "codes_used": ev["reconstruction"]["codes_used"],
            "test_bits_per_code": ev["prior"]["test_bits_per_code"],
            "frechet_samples": s["samples"]["frechet_distance"], "frechet_real_heldout": s["real_heldout"]["frechet_distance"],
            "frechet_noise": s["noise"]["frechet_distance"], "samples_vs_real": s["samples"]["frechet_vs_real_ratio"],
            "confidence": s["samples"]["confidence"], "class_coverage": s["samples"]["class_coverage"],
            "classes_present": s["samples"]["classes_present"], "real_confidence": s["real_heldout"]["confidence"],
            "classifier_test_accuracy": s["classifier"].get("test_accuracy")}


def timed_pipeline(cfg, run: Path) -> dict:
    t0 = time.perf_counter()
    metrics = api.run_pipeline(cfg, run, progress=False)
    return {"wall_s": round(time.perf_counter() - t0, 1), **metrics["pipeline"]["timings"]}


def prior_history(run: Path) -> list[dict]:
    return json.loads((run / "metrics.json").read_text())["prior"]["history"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--test", type=Path, default=DEFAULT_TEST, help="MNIST IDX folder used as the held-out split")
    ap.add_argument("--out", type=Path, default=Path("runs/bench-prior"))
    ap.add_argument("--recipe-prior-epochs", type=int, default=7)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--skip", nargs="*", default=[], help="parts to skip: demo ours recipe")
    args = ap.parse_args()
    if args.out.exists():
        shutil.rmtree(args.out)
    quick = ["train.epochs=2", "prior_train.epochs=1", "sample.num_samples=200"] if args.quick else []
    common = ["train.progress=false", "prior_train.progress=false", "train.device=cpu", "prior_train.device=cpu"]
    results: dict = {}

    if "demo" not in args.skip:
        results["demo"] = timed_pipeline(load_config("mnist", common + quick), args.out / "demo")
        print(f"# demo: {results['demo']}", file=sys.stderr, flush=True)

    held_out = [f"data.test_dataset={args.test}", "train.eval_batches=1"]
    if "ours" not in args.skip:
        run = args.out / "ours"
        timing = timed_pipeline(load_config("mnist", common + held_out + quick), run)
        results["ours"] = {**timing, **scores(run), "prior_history": prior_history(run)}
        print(f"# ours: {results['ours']}", file=sys.stderr, flush=True)

    if "recipe" not in args.skip:
        run = args.out / "recipe"
        recipe = load_config("seed-mnist", common + held_out + [
            "train.epochs=60", f"prior_train.epochs={args.recipe_prior_epochs}", "prior_train.batch_size=256",
            "prior_train.lr=0.001", "sample.num_samples=1000"] + quick)
        timing = timed_pipeline(recipe, run)
        recipe_history = prior_history(run)
        results["recipe"] = {**timing, **scores(run), "prior_history": recipe_history}
        print(f"# recipe: {results['recipe']}", file=sys.stderr, flush=True)

        # Our prior recipe on the recipe's codes: same VQ-VAE, same cached codes.
        ours_on_recipe = args.out / "ours-prior-on-recipe-codes"
        ours_on_recipe.mkdir(parents=True)
        shutil.copytree(run / "codes", ours_on_recipe / "codes")
        (ours_on_recipe / "checkpoints").mkdir()
        for name in ("vqvae-last.pt", "vqvae-best.pt"):
            shutil.copy(run / "checkpoints" / name, ours_on_recipe / "checkpoints" / name)
        cfg = recipe
        mnist = get_preset("mnist")
        cfg.prior, cfg.prior_train = PriorConfig(**vars(mnist.prior)), TrainConfig(**vars(mnist.prior_train))
        cfg.prior_train.progress, cfg.prior_train.device = False, "cpu"
        if args.quick:
            cfg.prior_train.epochs = 1
        api.train_prior(cfg, ours_on_recipe)
        ours_history = prior_history(ours_on_recipe)
        target = recipe_history[-1]["val_bits"]
        recipe_time = sum(h["seconds"] for h in recipe_history)
        elapsed, reached = 0.0, None
        for h in ours_history:
            elapsed += h["seconds"]
            if reached is None and h["val_bits"] <= target:
                reached = round(elapsed, 1)
        within = [h["val_bits"] for h, t in zip(ours_history, _cumsum(h["seconds"] for h in ours_history))
                  if t <= recipe_time]
        results["prior_comparison_on_recipe_codes"] = {
            "recipe_val_bits": target, "recipe_prior_seconds": round(recipe_time, 1),
            "ours_seconds_to_reach_recipe_bits": reached,
            "time_ratio": round(reached / recipe_time, 3) if reached else None,
            "ours_best_bits_within_recipe_time": min(within) if within else None,
            "ours_history": ours_history}
        print(f"# prior comparison: {results['prior_comparison_on_recipe_codes']}", file=sys.stderr, flush=True)

    if "ours" in results and "recipe" in results:
        results["ratios"] = {
            "frechet_ours_vs_recipe": round(results["ours"]["frechet_samples"] / results["recipe"]["frechet_samples"], 3),
            "pipeline_wall_ours_vs_recipe": round(results["ours"]["wall_s"] / results["recipe"]["wall_s"], 3)}
    print(json.dumps(results, indent=2))


def _cumsum(values):
    total = 0.0
    for v in values:
        total += v
        yield total


if __name__ == "__main__":
    main()
