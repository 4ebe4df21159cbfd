"""The prior: an ablation chosen on validation figures, and the default demo against the seed reference.

    python benchmarks/bench_prior.py ablation --vqvae RUN   # priors on one VQ-VAE's codes
    python benchmarks/bench_prior.py demo                   # `vqvae pipeline --preset mnist` vs seed_reference.py

Parts:
1. `ablation`: every prior setting below is trained on the cached codes of the same VQ-VAE
   (a run folder of the mnist preset; `--vqvae`), then scored on validation data only: the
   prior's best validation bits per code (the carved validation split), and the calibrated
   sample score (`vqvae.api.sample_quality`) with the first half of a fixed random split of the
   MNIST test images as held-out data (their other half is kept for final figures). The
   setting chosen for the preset is the one with the best calibrated score within the time
   budget; bits per code break near-ties.
2. `demo`: the default demo exactly as `make demo` runs it (mnist preset, bundled data) and
   `../shared/bench/seed_reference.py --epochs 60`, one after the other in this process's
   run, so their wall times compare as a ratio on the same machine at the same time. Final
   figures of the demo's run: its own report (test split of the bundled data) and the
   calibrated score on the second half of the MNIST test images.

The machine may be shared: only ratios measured in the same run mean anything. Prints one JSON
document and writes it to --json.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from vqvae import api
from vqvae.config import RunConfig, load_config
from vqvae.data import load_dataset, load_splits
from vqvae.runs import read_metrics

HERE = Path(__file__).resolve().parent
DEFAULT_TEST = HERE.parent.parent / "shared" / "data" / "mnist"
SEED_REFERENCE = HERE.parent.parent / "shared" / "bench" / "seed_reference.py"

# (name, overrides over the mnist preset's prior settings)
ABLATION = [
    ("pixelcnn 8x64 (previous default)", ["prior.kind=pixelcnn", "prior.num_layers=8", "prior.hidden_channels=64"]),
    ("transformer 4x128", ["prior.kind=transformer", "prior.num_layers=4", "prior.hidden_channels=128"]),
    ("transformer 4x128, no shifted codes", ["prior.kind=transformer", "prior.num_layers=4",
                                             "prior.hidden_channels=128", "prior.train_shifts=0"]),
    ("transformer 4x128, no dropout", ["prior.kind=transformer", "prior.num_layers=4", "prior.hidden_channels=128",
                                       "prior_train.dropout=0.0"]),
    ("transformer 2x64", ["prior.kind=transformer", "prior.num_layers=2", "prior.hidden_channels=64"]),
    ("transformer 6x192", ["prior.kind=transformer", "prior.num_layers=6", "prior.hidden_channels=192",
                           "prior.num_heads=6"]),
    ("transformer 4x128, 8 epochs", ["prior.kind=transformer", "prior.num_layers=4", "prior.hidden_channels=128",
                                     "prior_train.epochs=8"]),
]


def mnist_test_halves(cfg: RunConfig, test_dir: Path):
    """The MNIST test split in two fixed random halves: (tuning, final)."""
    data = load_dataset(str(test_dir), cfg.data)
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    half = len(data) // 2
    return data.subset(perm[:half], "mnist-test-tuning-half"), data.subset(perm[half:], "mnist-test-final-half")


def score_row(scores: dict) -> dict:
    """The calibrated score's headline figures."""
    if "rows" not in scores:
        return scores
    rows = scores["rows"]
    return {"n": scores["n"], "samples_vs_reconstructions": scores["samples_vs_reconstructions"],
            **{f"frechet_{k}": r["frechet_distance"] for k, r in rows.items()},
            "precision_samples": rows["samples"]["precision"], "recall_samples": rows["samples"]["recall"],
            "precision_reconstructions": rows["reconstructions"]["precision"],
            "recall_reconstructions": rows["reconstructions"]["recall"],
            "classes_present": rows["samples"]["classes_present"], "class_coverage": rows["samples"]["class_coverage"],
            "confidence_samples": rows["samples"]["confidence"],
            "classifier_heldout_accuracy": scores["classifier"].get("heldout_accuracy")}


def prior_on_codes_of(vqvae_run: Path, run: Path) -> None:
    """A fresh run folder sharing `vqvae_run`'s VQ-VAE and cached codes (so every prior sees the same codes)."""
    if run.exists():
        shutil.rmtree(run)
    (run / "checkpoints").mkdir(parents=True)
    for name in ("vqvae-best.pt", "vqvae-last.pt"):
        if (vqvae_run / "checkpoints" / name).is_file():
            shutil.copy(vqvae_run / "checkpoints" / name, run / "checkpoints" / name)
    if (vqvae_run / "codes").is_dir():
        shutil.copytree(vqvae_run / "codes", run / "codes")


def ablation(args, common: list[str]) -> dict:
    base = load_config("mnist", common)
    tuning, _ = mnist_test_halves(base, args.test)
    splits = load_splits(base.data)
    rows = []
    for name, overrides in ABLATION:
        if args.only and name not in args.only:
            continue
        cfg = load_config("mnist", common + overrides + args.set)
        run = args.out / name.replace(" ", "_").replace(",", "").replace("(", "").replace(")", "")
        prior_on_codes_of(args.vqvae, run)
        t0 = time.perf_counter()
        result = api.train_prior(cfg, run)
        train_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        api.sample(run, num_samples=1000, device="cpu")
        sample_s = time.perf_counter() - t0
        scores = api.sample_quality(run, tuning, splits.train, splits.val, device="cpu")
        m = result.metrics
        row = {"name": name, "overrides": overrides, "parameters": sum(p.numel() for p in result.model.parameters()),
               "best_val_bits_per_code": m["best_val_bits_per_code"], "train_s": round(train_s, 1),
               "sample_1000_s": round(sample_s, 2), "epochs": m["epochs"],
               "val_bits_history": [h["val_bits"] for h in m["history"]], **score_row(scores)}
        rows.append(row)
        print(f"# {json.dumps(row)}", file=sys.stderr, flush=True)
    return {"vqvae_run": str(args.vqvae), "tuning_heldout": "MNIST test split, first half of a fixed random split",
            "settings": rows}


def demo(args, common: list[str]) -> dict:
    out: dict = {}
    t0 = time.perf_counter()
    seed = subprocess.run([sys.executable, str(args.seed_reference), "--epochs", "60", "--test",
                           str(args.test / "t10k-images-idx3-ubyte.gz")], capture_output=True, text=True)
    out["seed_reference_wall_s"] = round(time.perf_counter() - t0, 1)
    if seed.returncode == 0 and seed.stdout.strip():
        out["seed_reference"] = json.loads(seed.stdout.strip().splitlines()[-1])
    else:
        out["seed_reference_error"] = seed.stderr[-500:]
    cfg = load_config("mnist", common + args.set)
    run = args.out / "demo"
    if run.exists():
        shutil.rmtree(run)
    t0 = time.perf_counter()
    api.run_pipeline(cfg, run, progress=False)
    out["demo_wall_s"] = round(time.perf_counter() - t0, 1)
    out["demo_vs_seed_reference_wall"] = round(out["demo_wall_s"] / out["seed_reference_wall_s"], 3)
    metrics = read_metrics(run)
    out["demo_timings"] = metrics["pipeline"]["timings"]
    out["demo_prior"] = {k: metrics["prior"][k] for k in ("best_val_bits_per_code", "test_bits_per_code", "epochs")}
    out["demo_report_score"] = score_row(metrics["evaluation"]["samples"])
    _, final = mnist_test_halves(cfg, args.test)
    splits = load_splits(cfg.data)
    out["final_score_mnist_test_half"] = score_row(api.sample_quality(run, final, splits.train, splits.val,
                                                                       device="cpu"))
    out["demo_run"] = str(run)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("part", choices=["ablation", "demo"])
    ap.add_argument("--vqvae", type=Path, help="ablation: a run folder holding the mnist preset's VQ-VAE")
    ap.add_argument("--test", type=Path, default=DEFAULT_TEST, help="MNIST IDX folder with the 10k test images")
    ap.add_argument("--seed-reference", type=Path, default=SEED_REFERENCE, help="demo: the seed_reference.py script")
    ap.add_argument("--out", type=Path, default=Path("runs/bench-prior"))
    ap.add_argument("--only", nargs="*", default=[], help="ablation: only the settings of these names")
    ap.add_argument("--set", nargs="*", default=[], help="extra overrides for every run, e.g. prior_train.epochs=1")
    ap.add_argument("--json", type=Path, help="also write the result here")
    args = ap.parse_args()
    common = ["train.progress=false", "prior_train.progress=false", "train.device=cpu", "prior_train.device=cpu"]
    if args.part == "ablation" and args.vqvae is None:
        ap.error("ablation needs --vqvae RUN (train one with `vqvae train --preset mnist --out RUN`)")
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    result = (ablation if args.part == "ablation" else demo)(args, common)
    result = {"part": args.part, "started": started, "torch_threads": torch.get_num_threads(), **result}
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
