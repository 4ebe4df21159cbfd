"""Extending a finished run (`train --resume RUN --set train.epochs=N`): what the learning-rate
schedule of the added epochs does to the result.

    python benchmarks/bench_resume_extend.py --out benchmarks/results/cpu-resume-extend.json

The `mnist` preset (cosine schedule) on the bundled 5,000 images, for --first epochs, then
extended to --total; against --total epochs straight and against the extension as it was
before issue 10 (the cosine re-planned over the longer run, so the rate jumps from its floor
back to mid-schedule). Figures: validation MSE (chooses nothing here: the last epoch is
compared) and test MSE of the best-on-validation weights, as every run reports them.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

from vqvae import api
from vqvae.config import apply_overrides, get_preset
from vqvae.data import load_splits
from vqvae.training import loop

from result_file import print_and_write


def train(cfg, run_dir, resume=False, data=None):
    result = api.train_vqvae(cfg, run_dir, resume=resume, data=data)
    return {"val_mse_last_epoch": result.history[-1]["val_mse"], "test_mse": round(result.metrics["test"]["mse"], 6),
            "lr_per_epoch": [h["lr"] for h in result.history], "notes": result.metrics["resume_notes"]}


def replanned(original):
    """The extension as before issue 10: the schedule of the whole, longer run from step 0."""
    def resumed_settings(cfg, saved, state, *args):
        notes = original(cfg, saved, state, *args)
        state.schedule_start = 0
        return notes + ["(benchmark) schedule re-planned over the whole run, as before issue 10"]
    return resumed_settings


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--first", type=int, default=2)
    ap.add_argument("--total", type=int, default=4)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", help="write the results JSON here too")
    args = ap.parse_args()
    base = apply_overrides(get_preset("mnist"), [f"train.device={args.device}", "train.progress=false"])
    data = load_splits(base.data)
    first = apply_overrides(base, [f"train.epochs={args.first}"])
    total = apply_overrides(base, [f"train.epochs={args.total}"])
    results = {"preset": "mnist", "first_epochs": args.first, "total_epochs": args.total, "device": args.device,
               "torch": torch.__version__}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        results["straight"] = train(total, tmp / "straight", data=data)
        results["first_only"] = train(first, tmp / "fresh", data=data)
        for name in ("extended_fresh_schedule", "extended_replanned_as_before"):
            run = tmp / name
            shutil.copytree(tmp / "fresh", run)  # the same finished first run, extended two ways
            original = loop._resumed_settings
            if name == "extended_replanned_as_before":
                loop._resumed_settings = replanned(original)
            try:
                results[name] = train(total, run, resume=True, data=data)
            finally:
                loop._resumed_settings = original
    results["seconds"] = round(time.perf_counter() - t0, 1)
    print_and_write(results, args.out)


if __name__ == "__main__":
    main()
