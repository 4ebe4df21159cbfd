"""Tokenizers side by side at the same training time: reconstruction figures on a held-out split.

    python benchmarks/bench_tokenizer.py --train /work/data/cifar10/train --test /work/data/cifar10/test \
        --image-size 32 --budget 750 --test-images 1000 --work /tmp/tok --model "vqvae=cifar10" \
        --model "vqgan=vqgan-f8-64 model.channel_mult=[1,2,2] ... loss.adversarial=none ..." \
        --model "vqgan-gan=vqgan-f8-64 model.channel_mult=[1,2,2] ..." \
        --out benchmarks/results/cpu-tokenizer-and-losses-cifar10.json

(docs/benchmarks-tokenizer.md has the full commands.) It compares architectures (the VQ-VAE
presets against the VQGAN-class encoder/decoder) and training objectives (MSE against the VQGAN
losses) alike.

Each --model is NAME=PRESET followed by --set style overrides. For each model: a short calibration run
(two epochs over a small subset; the second epoch's throughput, after start-up work such as the
codebook's k-means initialisation) measures its training throughput, in images per second of
training steps, on this machine, now; the budget in seconds times that throughput gives the number
of training images it may see, drawn as a random subset of the training data (repeated over whole
epochs when the budget exceeds the data), so every model trains for about the same wall-clock time
(the measured training seconds are reported beside the budget; `--throughput` gives a model's rates
instead, e.g. another model's calibration when the machine's load changed). A model with an adversarial loss
is calibrated twice, without and with the discriminator, and its discriminator starts after
--disc-start-fraction of its steps (loss.disc_start), so its budget counts both phases at their
cost; with --disc-warmup-fraction W the discriminator trains alone for the last W of the steps
before disc_start (loss.disc_warmup_steps), and the budget counts those steps at the cost of both
(an overestimate: a warm-up step has neither the model's adversarial pass through the discriminator
nor the adaptive weight's gradients, so a warm model gets a little less than its budget buys). Then `vqvae.api.evaluate` (the function behind `vqvae evaluate`) scores the run on
`--test-images` held-out images: both PSNRs, SSIM, the calibrated texture measure, codebook usage,
and rFID / LPIPS when weight files are given. Writes the JSON to --out and a grid
PNG beside it (first row held-out originals, then each model's reconstructions, in --model order).
Run folders go to --work (outside the repository; they hold checkpoints).
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from vqvae import api
from vqvae.config import load_config
from vqvae.data import load_dataset
from vqvae.figures import save_grid, spread_indices

VAL_FRACTION = 0.02  # of each model's training subset: its best checkpoint is chosen there
CALIBRATION_IMAGES = 512  # two short epochs; the second's throughput sets how many images the budget buys


def subset_npy(images: torch.Tensor, count: int, path: Path, seed: int) -> Path:
    """`count` random rows of uint8 images (N, C, H, W) as an .npy file (with repeats only when count > N)."""
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(images), generator=gen)[:count]
    np.save(path, images[order].numpy())
    return path


def parse_model(spec: str) -> tuple[str, str, list[str]]:
    name, _, rest = spec.partition("=")
    words = shlex.split(rest)
    if not name or not words:
        raise SystemExit(f"--model {spec!r}: expected NAME=PRESET [field=value ...]")
    return name, words[0], words[1:]


def calibrate(name, preset, overrides, common, train_images, work: Path, seed: int) -> tuple[float, float]:
    """(steady training images per second, wall seconds of the calibration) of one configuration."""
    calib = subset_npy(train_images, CALIBRATION_IMAGES, work / f"{name}-calibration.npy", seed)
    cfg = load_config(preset, [f"data.dataset={calib}", "data.val_fraction=0", "train.epochs=2",
                               "train.warmup_steps=0", *common, *overrides])
    t0 = time.perf_counter()
    history = api.train_vqvae(cfg, work / f"{name}-calibration").history
    return history[-1]["images_per_s"], time.perf_counter() - t0


def train_for_budget(name, preset, overrides, train_images, test_npy, budget_s, work: Path, seed: int,
                     disc_start_fraction: float, given_rates: list[float] | None = None,
                     disc_warmup_fraction: float = 0.0) -> dict:
    common = [f"data.test_dataset={test_npy}", "data.num_workers=0", "train.device=cpu", "train.progress=false",
              "train.checkpoint_every_steps=0"]
    probe = load_config(preset, [*common, *overrides])
    adversarial = probe.loss.adversarial != "none"
    if given_rates:  # --throughput: rates measured elsewhere (e.g. by another model's calibration at a lighter load)
        if len(given_rates) != (2 if adversarial else 1):
            raise SystemExit(f"--throughput {name}: give {'GENERATOR,WITH_DISCRIMINATOR' if adversarial else 'ONE'} "
                             f"images per second")
        rates, calibration = given_rates, {"given_images_per_s": given_rates, "wall_s": 0.0}
    elif adversarial:  # both phases: the generator alone until disc_start, then both networks
        before, wall_before = calibrate(f"{name}-generator", preset, [*overrides, "loss.adversarial=none"], common,
                                        train_images, work, seed)
        after, wall_after = calibrate(name, preset, [*overrides, "loss.disc_start=0"], common, train_images, work,
                                      seed)
        rates = [before, after]
        calibration = {"images_per_s_generator_only": before, "images_per_s_with_discriminator": after,
                       "wall_s": round(wall_before + wall_after, 1)}
    else:
        rate, wall = calibrate(name, preset, overrides, common, train_images, work, seed)
        rates, calibration = [rate], {"wall_s": round(wall, 1)}
    # An adversarial model's budget counts both phases at their own rates (harmonic mean); the
    # discriminator's warm-up steps cost what steps with both networks do.
    f = disc_start_fraction * (1 - disc_warmup_fraction)
    images_per_s = 1 / (f / rates[0] + (1 - f) / rates[1]) if adversarial else rates[0]
    budget_images = int(images_per_s * budget_s)
    epochs = max(1, math.ceil(budget_images / len(train_images)))
    per_epoch = max(1, budget_images // epochs)
    data = subset_npy(train_images, per_epoch, work / f"{name}-train.npy", seed)
    extra = []
    if adversarial:
        steps = epochs * math.ceil(per_epoch * (1 - VAL_FRACTION) / probe.train.batch_size)
        disc_start = int(disc_start_fraction * steps)
        extra = [f"loss.disc_start={disc_start}", f"loss.disc_warmup_steps={int(disc_warmup_fraction * disc_start)}"]
    cfg = load_config(preset, [f"data.dataset={data}", f"data.val_fraction={VAL_FRACTION}", f"train.epochs={epochs}",
                               "train.eval_batches=2", *common, *overrides, *extra])
    t0 = time.perf_counter()
    result = api.train_vqvae(cfg, work / name)
    wall = time.perf_counter() - t0
    m = result.metrics
    return {"preset": preset, "overrides": overrides + extra,
            "parameters": sum(p.numel() for p in result.model.parameters()),
            "calibration_images_per_s": round(images_per_s, 1), "calibration": calibration,
            "train_images_per_epoch": per_epoch, "epochs": epochs, "steps": m["steps"],
            "disc_start": cfg.loss.disc_start if adversarial else None,
            "disc_warmup_steps": cfg.loss.disc_warmup_steps if adversarial else None,
            "train_seconds": m["train_seconds"], "train_call_wall_s": round(wall, 1), "run": str(work / name),
            "last_epoch": result.history[-1]}


def headline(evaluation: dict) -> dict:
    rec, tex, per = evaluation["reconstruction"], evaluation["texture"], evaluation["perceptual"]
    rows = tex.get("rows", {})
    return {"psnr_8bit_per_image_db": rec["psnr_8bit_per_image_db"], "psnr_8bit_db": rec["psnr_8bit_db"],
            "psnr_float_db": round(rec["psnr_db"], 4), "ssim": rec["ssim"], "mse_clipped": round(rec["mse_clipped"], 6),
            "codes_used": rec["codes_used"], "dead_codes": rec["dead_codes"], "perplexity": rec["perplexity"],
            "texture_swd_x1e3_mean": rows.get("reconstructions", {}).get("swd_x1e3_mean"),
            "texture_swd_x1e3_per_level": rows.get("reconstructions", {}).get("swd_x1e3"),
            "high_frequency_power_ratio": rows.get("reconstructions", {}).get("high_frequency_power_ratio"),
            "rfid": per.get("rfid"), "lpips_vgg": per.get("lpips_vgg")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train", required=True, help="training images (folder, .npy, or a dataset name)")
    p.add_argument("--test", required=True, help="held-out images (folder or .npy)")
    p.add_argument("--model", action="append", required=True, help="NAME=PRESET [field=value ...] (repeatable)")
    p.add_argument("--budget", type=float, default=240, help="training seconds per model")
    p.add_argument("--test-images", type=int, default=0, help="held-out images to score (0 = all), a fixed random set")
    p.add_argument("--image-size", type=int, required=True)
    p.add_argument("--work", required=True, help="folder for run folders (outside the repository)")
    p.add_argument("--out", required=True, help="results JSON; the grid PNG goes beside it")
    p.add_argument("--inception-weights", help="as `vqvae evaluate --inception-weights`")
    p.add_argument("--lpips-vgg-weights", help="as `vqvae evaluate --lpips-vgg-weights`")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: leave the other core to others)")
    p.add_argument("--disc-start-fraction", type=float, default=0.5,
                   help="models with an adversarial loss: the discriminator starts after this fraction of their steps")
    p.add_argument("--disc-warmup-fraction", type=float, default=0.0,
                   help="models with an adversarial loss: the discriminator trains alone for this fraction of the "
                        "steps before its term starts (loss.disc_warmup_steps)")
    p.add_argument("--throughput", action="append", default=[],
                   help="NAME=RATE or NAME=GENERATOR,WITH_DISCRIMINATOR: that model's training images per second, "
                        "instead of calibrating it (when the machine's load changed between models)")
    p.add_argument("--machine", default="a shared 2-core CPU", help="what ran it, for the results file")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    for flag, value in (("--disc-start-fraction", args.disc_start_fraction),
                        ("--disc-warmup-fraction", args.disc_warmup_fraction)):
        if not 0 <= value <= 1:
            raise SystemExit(f"{flag} {value}: must be a fraction in [0, 1]")
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    models = [parse_model(spec) for spec in args.model]
    given = {}
    for spec in args.throughput:
        name, _, rates = spec.partition("=")
        try:
            given[name] = [float(r) for r in rates.split(",")]
        except ValueError:
            raise SystemExit(f"--throughput {spec!r}: expected NAME=RATE[,RATE] in images per second") from None
        if not all(math.isfinite(r) and r > 0 for r in given[name]):
            raise SystemExit(f"--throughput {spec!r}: rates must be finite numbers of images per second > 0")
    unknown = set(given) - {name for name, _, _ in models}
    if unknown:
        raise SystemExit(f"--throughput names no --model: {', '.join(sorted(unknown))}")
    data_cfg = load_config(models[0][1], [f"data.image_size={args.image_size}", "data.num_workers=0",
                                          *models[0][2]]).data
    train_images = load_dataset(args.train, data_cfg).tensor()
    test_images = load_dataset(args.test, data_cfg).tensor()
    if args.test_images:
        test_npy = subset_npy(test_images, args.test_images, work / "test.npy", args.seed)
    else:
        test_npy = work / "test.npy"
        np.save(test_npy, test_images.numpy())
    held_out = torch.from_numpy(np.load(test_npy))
    results = {"command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
               "machine": f"{args.machine}; torch threads {args.threads}; {platform.processor() or platform.machine()}",
               "torch": torch.__version__, "budget_s": args.budget, "train_data": args.train,
               "train_images": len(train_images), "test_data": args.test, "test_images": len(held_out),
               "models": {}}
    picks = spread_indices(len(held_out), 8, None)
    grid = [held_out[picks].float() / 255]
    for name, preset, overrides in models:
        overrides = [f"data.image_size={args.image_size}", f"model.image_size={args.image_size}", *overrides]
        print(f"{name}: {preset} {' '.join(overrides)}", flush=True)
        entry = train_for_budget(name, preset, overrides, train_images, test_npy, args.budget, work, args.seed,
                                 args.disc_start_fraction, given.get(name), args.disc_warmup_fraction)
        t0 = time.perf_counter()
        evaluation = api.evaluate(work / name, samples=False, device="cpu", inception_weights=args.inception_weights,
                                  lpips_vgg_weights=args.lpips_vgg_weights)
        entry["evaluate_wall_s"] = round(time.perf_counter() - t0, 1)
        entry["headline"] = headline(evaluation)
        entry["evaluation"] = evaluation
        results["models"][name] = entry
        print(json.dumps({name: entry["headline"]}), flush=True)
        model, _ = api.load_vqvae(work / name, "cpu")
        with torch.no_grad():
            grid.append(model(grid[0]).reconstruction.float().clamp(0, 1))
        # Written after every model, so a run cut short keeps the models it finished.
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        results["grid"] = str(save_grid(torch.cat(grid), out.with_suffix(".png"), nrow=len(picks)))
        results["grid_rows"] = ["held-out originals", *results["models"]]
        out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({name: m["headline"] for name, m in results["models"].items()}, indent=2))


if __name__ == "__main__":
    main()
