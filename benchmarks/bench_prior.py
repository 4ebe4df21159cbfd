"""The prior: an ablation chosen on validation figures, and the default demo against the seed reference.

    python benchmarks/bench_prior.py ablation --vqvae RUN   # priors on one VQ-VAE's codes
    python benchmarks/bench_prior.py demo                   # `vqvae pipeline --preset mnist` vs seed_reference.py
    python benchmarks/bench_prior.py score RUN              # one trained run's validation score per sampling setting
    python benchmarks/bench_prior.py kinds --vqvae RUN --train-folder DIR --test-folder DIR
                                            # the three prior kinds on a cifar10-preset VQ-VAE's codes

Parts:
1. `ablation`: every prior setting below is trained on the cached codes of the same VQ-VAE
   (a run folder of the mnist preset; `--vqvae`), then scored on validation data only: the
   prior's best validation bits per code (the carved validation split of mnist-5k, 450 images)
   and the calibrated sample score with that same validation split as held-out data (225 images
   the reference, 225 the real row; samples averaged over 4 draws of 225), for a few sampling
   settings. The setting chosen for the preset is the one with the best validation score within
   the time budget; bits per code break near-ties. The test split is not read.
2. `demo`: the default demo exactly as `make demo` runs it (mnist preset, bundled data) and
   `../shared/bench/seed_reference.py --epochs 60`, one after the other in this process's
   run, so their wall times compare as a ratio on the same machine at the same time. Final
   figures of the demo's run: its own report (test split of the bundled data) and the
   calibrated score on the 10,000 MNIST test images (n = 1,000).

3. `kinds`: Gated PixelCNN, transformer and MaskGIT priors, each unconditional and class-conditional
   (label dropout 0.1), trained at one budget (the same epochs over the same code maps; networks
   of similar parameter counts, `KIND_NETWORKS`) on the codes of a `cifar10`-preset VQ-VAE
   (`--vqvae`; its folder is only read). The labelled data: `--per-class` images of each class of
   `--train-folder` (class subfolders; 10% carved for validation) and `--test-per-class` of each
   class of `--test-folder`, linked into --out, chosen with a fixed seed. Each prior's sampling
   setting is chosen by `vqvae tune-sampling` on the validation split (conditional: guidance 1,
   1.5, 2; unconditional: temperature 1, 0.9; --draws draws of --tune-images samples each); then
   the calibrated score of `vqvae evaluate` on the test images (n = half of them, at most 1,000)
   with the chosen setting, beside the real, reconstruction and noise rows (the same for every
   prior), and a grid of 40 samples per prior (conditional: one column per class).

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

import numpy as np
import torch

from vqvae import api
from vqvae.config import RunConfig, load_config
from vqvae.data import TensorBatches, load_dataset, load_splits
from vqvae.figures import save_grid
from vqvae.metrics.protocol import score_samples
from vqvae.runs import load_prior, load_vqvae, read_metrics
from vqvae.training.prior_stage import cached_codes, heldout_bits

from result_file import print_and_write

HERE = Path(__file__).resolve().parent
COMMON = ["train.progress=false", "prior_train.progress=false", "train.device=cpu", "prior_train.device=cpu"]
DEFAULT_TEST = HERE.parent.parent / "shared" / "data" / "mnist"
SEED_REFERENCE = HERE.parent.parent / "shared" / "bench" / "seed_reference.py"

# (name, overrides over the mnist preset's prior settings), each spelled out in full so a row means
# the same when the preset changes.
PIXELCNN_8X64 = ["prior.kind=pixelcnn", "prior.num_layers=8", "prior.hidden_channels=64", "prior.train_shifts=1"]
ABLATION = [
    ("pixelcnn 8x64 k7 dropout 0.1, 4 epochs (previous default)",
     PIXELCNN_8X64 + ["prior.first_kernel_size=7", "prior_train.dropout=0.1", "prior_train.epochs=4"]),
    ("pixelcnn 8x64 k3, 3 epochs", PIXELCNN_8X64 + ["prior.first_kernel_size=3", "prior_train.dropout=0",
                                                    "prior_train.epochs=3"]),
    ("pixelcnn 8x64 k3, 3 epochs, conditional", PIXELCNN_8X64 + ["prior.first_kernel_size=3", "prior_train.dropout=0",
                                                                 "prior_train.epochs=3", "prior.conditional=true",
                                                                 "prior.label_dropout=0.1"]),
    ("pixelcnn 8x64 k3, 2 epochs, conditional", PIXELCNN_8X64 + ["prior.first_kernel_size=3", "prior_train.dropout=0",
                                                                 "prior_train.epochs=2", "prior.conditional=true",
                                                                 "prior.label_dropout=0.1"]),
    ("transformer 4x128, 3 epochs, conditional", ["prior.kind=transformer", "prior.num_layers=4",
                                                  "prior.hidden_channels=128", "prior.train_shifts=1",
                                                  "prior_train.dropout=0", "prior_train.epochs=3",
                                                  "prior.conditional=true", "prior.label_dropout=0.1"]),
    ("pixelcnn 8x64 k3, 2 epochs, conditional, no shifted codes (18 epochs of unshifted maps)", PIXELCNN_8X64[:-1] + [
        "prior.train_shifts=0", "prior.first_kernel_size=3", "prior_train.dropout=0", "prior_train.epochs=18",
        "prior.conditional=true", "prior.label_dropout=0.1"]),
    ("pixelcnn 8x64 k3, 2 epochs, conditional, lr 4e-3", PIXELCNN_8X64 + [
        "prior.first_kernel_size=3", "prior_train.dropout=0", "prior_train.epochs=2", "prior.conditional=true",
        "prior.label_dropout=0.1", "prior_train.lr=0.004"]),
    ("pixelcnn 8x64 k3, 2 epochs, conditional, batch 64", PIXELCNN_8X64 + [
        "prior.first_kernel_size=3", "prior_train.dropout=0", "prior_train.epochs=2", "prior.conditional=true",
        "prior.label_dropout=0.1", "prior_train.batch_size=64"]),
    ("pixelcnn 8x64 k3, 2 epochs, conditional, dropout 0.1", PIXELCNN_8X64 + [
        "prior.first_kernel_size=3", "prior_train.dropout=0.1", "prior_train.epochs=2", "prior.conditional=true",
        "prior.label_dropout=0.1"]),
]


def mnist_test(cfg: RunConfig, test_dir: Path):
    """The 10,000 MNIST test images: read only for final figures."""
    return load_dataset(str(test_dir), cfg.data)


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


def trained_prior(vqvae_run: Path, run: Path, overrides: list[str], preset: str = "mnist") -> dict:
    """A prior (`preset` with `overrides`) on `vqvae_run`'s codes in `run`, reused when one was
    trained there with the same preset and overrides."""
    marker = run / "bench-overrides.json"
    # The marker of a run trained before the preset was recorded holds the overrides alone (mnist).
    recorded = overrides if preset == "mnist" else None
    if (run / "checkpoints" / "prior-best.pt").is_file() and marker.is_file() \
            and json.loads(marker.read_text()) in ({"preset": preset, "overrides": overrides}, recorded):
        return {"reused": True, **read_metrics(run)["prior"]}
    prior_on_codes_of(vqvae_run, run)
    cfg = load_config(preset, COMMON + overrides)
    t0 = time.perf_counter()
    metrics = api.train_prior(cfg, run).metrics
    marker.write_text(json.dumps({"preset": preset, "overrides": overrides}))
    return {"reused": False, "wall_s": round(time.perf_counter() - t0, 1), **metrics}


def validation_score(run: Path, splits, draws: int = 4, **sampling) -> dict:
    """The calibrated score on validation data only: half the validation split is the reference,
    the other half the real row (n = half of it). The samples' Fréchet distance is the mean over
    `draws` disjoint sets of n samples (n is small, so one draw is noisy); `sampling` are
    `api.sample` options (temperature, top_p, guidance)."""
    n = len(splits.val) // 2
    folder = run / "validation-samples"
    api.sample(run, folder, num_samples=draws * n, device="cpu", **sampling)
    images = torch.from_numpy(np.load(folder / "samples.npy")).float() / 255
    vqvae, _ = load_vqvae(run, torch.device("cpu"))
    rows = [score_samples(vqvae, images[d * n:(d + 1) * n], splits.val, splits.train, splits.val, torch.device("cpu"))
            for d in range(draws)]
    first = score_row(rows[0])
    frechet = [r["rows"]["samples"]["frechet_distance"] for r in rows]
    mean = sum(frechet) / draws
    return {**first, "sampling": sampling, "draws": draws, "frechet_samples_draws": frechet,
            "frechet_samples": round(mean, 3),
            "samples_vs_reconstructions": round(mean / first["frechet_reconstructions"], 3)}


def ablation(args, common: list[str]) -> dict:
    splits = load_splits(load_config("mnist", common).data)
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
        m = result.metrics
        row = {"name": name, "overrides": overrides + args.set,
               "parameters": sum(p.numel() for p in result.model.parameters()),
               "best_val_bits_per_code": m["best_val_bits_per_code"], "train_s": round(train_s, 1),
               "epochs": m["epochs"], "val_bits_history": [h["val_bits"] for h in m["history"]],
               "epoch_seconds": [h["seconds"] for h in m["history"]]}
        row["scores"] = [validation_score(run, splits, **sampling) for sampling in sampling_settings(result.model)]
        rows.append(row)
        print(f"# {json.dumps(row)}", file=sys.stderr, flush=True)
    return {"vqvae_run": str(args.vqvae),
            "tuning_heldout": "the carved validation split of mnist-5k (450 images): 225 the reference, 225 the "
                              "real row; samples: the mean over 4 draws of 225",
            "settings": rows}


def sampling_settings(prior) -> list[dict]:
    """Sampling settings scored for each prior: the preset's own, a cooler temperature, and for a
    conditional prior with a null class, unconditional sampling and classifier-free guidance."""
    settings = [{}, {"temperature": 0.9}]
    if prior.conditional and getattr(prior, "null_class", None) is not None:
        settings += [{"guidance": 0.0}, {"guidance": 1.5}, {"guidance": 2.0}]
    return settings


def score(args, common: list[str]) -> dict:
    """Validation scores of an already trained run (its own config), for each sampling setting."""
    prior, cfg, _ = load_prior(args.run, torch.device("cpu"))
    splits = load_splits(cfg.data)
    metrics = read_metrics(args.run).get("prior", {})
    return {"run": str(args.run), "best_val_bits_per_code": metrics.get("best_val_bits_per_code"),
            "epochs": metrics.get("epochs"), "prior_train_seconds": metrics.get("train_seconds"),
            "scores": [validation_score(args.run, splits, **sampling) for sampling in sampling_settings(prior)]}


def unconditional_bits(run: Path) -> float | None:
    """A conditional prior trained with label dropout, read as an unconditional one (every label the
    null class): its bits per code on the validation codes, comparable with an unconditional prior's."""
    prior, _, _ = load_prior(run, torch.device("cpu"))
    if not prior.conditional or prior.null_class is None:
        return None
    codes = torch.from_numpy(np.load(run / "codes" / "val.npy")).long()
    null = torch.full((len(codes),), prior.null_class, dtype=torch.long)
    return round(heldout_bits(prior, TensorBatches((codes, null), 500, torch.device("cpu"), shuffle=False)), 5)


def demo_against_seed(seed_reference: Path, test: Path, cfg: RunConfig, run: Path) -> tuple[dict, dict]:
    """seed_reference.py (60 epochs) and then the pipeline on `cfg` into `run`, in one process's turn, so
    their wall times are taken side by side. Returns (figures, the run's metrics.json)."""
    out: dict = {}
    for path in (seed_reference, test / "t10k-images-idx3-ubyte.gz"):
        if not path.is_file():  # before anything runs: a missing file would cost the whole demo's time
            raise SystemExit(f"{path} not found (--seed-reference, --test)")
    t0 = time.perf_counter()
    seed = subprocess.run([sys.executable, str(seed_reference), "--epochs", "60", "--test",
                           str(test / "t10k-images-idx3-ubyte.gz")], capture_output=True, text=True)
    out["seed_reference_wall_s"] = round(time.perf_counter() - t0, 1)
    if seed.returncode != 0 or not seed.stdout.strip():
        raise SystemExit(f"seed_reference.py failed (exit {seed.returncode}): {seed.stderr[-500:]}")
    out["seed_reference"] = json.loads(seed.stdout.strip().splitlines()[-1])
    if run.exists():
        shutil.rmtree(run)
    t0 = time.perf_counter()
    api.run_pipeline(cfg, run, progress=False)
    out["demo_wall_s"] = round(time.perf_counter() - t0, 1)
    out["demo_vs_seed_reference_wall"] = round(out["demo_wall_s"] / out["seed_reference_wall_s"], 3)
    metrics = read_metrics(run)
    out["demo_timings"] = metrics["pipeline"]["timings"]
    return out, metrics


def demo(args, common: list[str]) -> dict:
    cfg = load_config("mnist", common + args.set)
    run = args.out / "demo"
    out, metrics = demo_against_seed(args.seed_reference, args.test, cfg, run)
    out["demo_prior"] = {k: metrics["prior"][k] for k in ("best_val_bits_per_code", "test_bits_per_code", "epochs",
                                                          "conditional")}
    out["demo_prior"]["val_bits_per_code_unconditional_mode"] = unconditional_bits(run)
    out["demo_report_score"] = score_row(metrics["evaluation"]["samples"])
    splits = load_splits(cfg.data)
    out["final_score_mnist_test"] = score_row(api.sample_quality(run, mnist_test(cfg, args.test), splits.train,
                                                                  splits.val, device="cpu"))
    out["demo_run"] = str(run)
    return out

# `kinds`: each kind's usual shape at similar parameter counts (PixelCNN 8x64 with the cifar10 preset's
# 7x7 first kernel; transformers 4 blocks of width 128), small enough to train on one CPU thread.
KIND_NETWORKS = {
    "pixelcnn": ["prior.kind=pixelcnn", "prior.num_layers=8", "prior.hidden_channels=64", "prior.first_kernel_size=7"],
    "transformer": ["prior.kind=transformer", "prior.num_layers=4", "prior.hidden_channels=128", "prior.num_heads=4"],
    "maskgit": ["prior.kind=maskgit", "prior.num_layers=4", "prior.hidden_channels=128", "prior.num_heads=4"],
}
# The budget, the same for every kind: 4 epochs over the same code maps, the cifar10 preset's recipe
# (Adam 1e-3, cosine, batch 128) but a 50-step warmup (its 200 would be most of the run) and no
# dropout (priors this short underfit; the mnist preset drops it for the same reason).
KIND_BUDGET = ["prior_train.epochs=4", "prior_train.warmup_steps=50", "prior_train.dropout=0", "prior.train_shifts=0"]
# (overrides, tune-sampling candidates) per conditioning.
CONDITIONING = {
    "unconditional": (["prior.conditional=false"], {"temperature": [1.0, 0.9]}),
    "conditional": (["prior.conditional=true", "prior.label_dropout=0.1"], {"guidance": [1.0, 1.5, 2.0]}),
    # No label read: conditioned on 30 k-means clusters of the code maps (the mnist preset's unlabelled
    # default), so guidance has classes to sharpen. Only with --only (not part of the first table).
    "pseudo30": (["prior.conditional=false", "prior.pseudo_classes=30", "prior.label_dropout=0.1"],
                 {"guidance": [1.0, 1.5, 2.0, 3.0]}),
}
OPT_IN = {"pseudo30"}  # conditionings run only when --only names them
GRID_SAMPLES = 40  # 4 rows of 10: a conditional prior's samples cycle through the classes, one column each


def labelled_subset(source: Path, dest: Path, per_class: int, seed: int) -> dict:
    """`per_class` images of each class subfolder of `source`, chosen with `seed`, linked into
    dest/<class>/ (the folder loader reads the classes from the subfolders)."""
    classes = sorted(d for d in source.iterdir() if d.is_dir())
    if len(classes) < 2:
        raise SystemExit(f"{source} has {len(classes)} class subfolders; expected one per class")
    if dest.exists():
        shutil.rmtree(dest)
    gen = torch.Generator().manual_seed(seed)
    counts = {}
    for folder in classes:
        files = sorted(f for f in folder.iterdir() if f.is_file())
        if len(files) < per_class:
            raise SystemExit(f"{folder} has {len(files)} images; --per-class asks for {per_class}")
        (dest / folder.name).mkdir(parents=True)
        for i in torch.randperm(len(files), generator=gen)[:per_class].tolist():
            (dest / folder.name / files[i].name).symlink_to(files[i].resolve())
        counts[folder.name] = per_class
    return {"source": str(source), "per_class": per_class, "seed": seed, "classes": list(counts)}


def row_figures(scores: dict, row: str) -> dict:
    r = scores["rows"][row]
    return {k: r[k] for k in ("frechet_distance", "precision", "recall", "classes_present", "class_coverage")}


def kinds(args, common: list[str]) -> dict:
    cpu = torch.device("cpu")
    data_dir = args.out / "data"
    subsets = {"train": labelled_subset(args.train_folder, data_dir / "train", args.per_class, args.seed),
               "test": labelled_subset(args.test_folder, data_dir / "test", args.test_per_class, args.seed)}
    data = [f"data.dataset={data_dir / 'train'}", f"data.test_dataset={data_dir / 'test'}", "data.val_fraction=0.1",
            "data.num_workers=0", "data.image_size=32", "data.channels=3"]
    splits = load_splits(load_config("cifar10", common + data).data)
    # One copy of the VQ-VAE whose codes of these images every prior shares (--vqvae is only read).
    base = args.out / "vqvae"
    prior_on_codes_of(args.vqvae, base)
    vqvae, vq_cfg = load_vqvae(base, cpu)
    for split, images in zip(("train", "val", "test"), splits):
        cached_codes(vqvae, images, split, base, cpu)
    grids = {"real and reconstructions": str(api.reconstruct(base, args.grids / "cpu-cifar10-prior-kinds-reconstructions.png",
                                                             data=str(data_dir / "test"), num_images=20, device="cpu"))}
    rows = []
    for kind, network in KIND_NETWORKS.items():
        for conditioning, (conditioning_overrides, candidates) in CONDITIONING.items():
            name = f"{kind}-{conditioning}"
            if name not in args.only and (args.only or conditioning in OPT_IN):
                continue
            run = args.out / name
            overrides = data + network + KIND_BUDGET + conditioning_overrides + args.set
            prior = trained_prior(base, run, overrides, preset="cifar10")
            tuning = api.tune_sampling(run, draws=args.draws, num_images=args.tune_images, device="cpu", **candidates)
            t0 = time.perf_counter()
            scores = api.sample_quality(run, splits.test, splits.train, splits.val, device="cpu")
            score_s = time.perf_counter() - t0
            samples = torch.from_numpy(np.load(run / "samples.npy")[:GRID_SAMPLES]).float() / 255
            grid = save_grid(samples, args.grids / f"cpu-cifar10-prior-kinds-{name}.png", nrow=10)
            figure = "masked_nats" if kind == "maskgit" else "bits_per_code"
            model, _, _ = load_prior(run, cpu)
            row = {"name": name, "kind": kind, "conditioning": conditioning, "overrides": overrides,
                   "parameters": sum(p.numel() for p in model.parameters()),
                   "prior": {k: prior.get(k) for k in ("reused", "wall_s", "train_seconds", f"best_val_{figure}",
                                                       f"test_{figure}", "epochs", "masked_nats_meaning")
                             if k in prior},
                   "validation": {k: tuning[k] for k in ("chosen", "reason", "n", "draws", "reconstructions",
                                                         "settings")},
                   "test": {"setting": tuning["chosen"], **row_figures(scores, "samples"),
                            "samples_vs_reconstructions": scores["samples_vs_reconstructions"],
                            "confidence": scores["rows"]["samples"]["confidence"]},
                   "sample_and_score_wall_s": round(score_s, 1), "grid": str(grid), "run": str(run)}
            rows.append((row, scores))
            print(f"# {json.dumps({'name': name, 'chosen': tuning['chosen'], 'test': row['test']})}", file=sys.stderr,
                  flush=True)
    first = rows[0][1] if rows else None
    heldout = {name: row_figures(first, name) for name in ("real", "reconstructions", "noise")} if first else {}
    trained = read_metrics(args.vqvae).get("vqvae", {})
    return {"machine": args.machine, "vqvae_run": str(args.vqvae), "vqvae_preset": vq_cfg.preset,
            "vqvae": {k: trained.get(k) for k in ("train_dataset", "train_images", "epochs", "train_seconds", "test")}, "data": subsets,
            "splits": {"train": len(splits.train), "validation": len(splits.val), "test": len(splits.test)},
            "class_names": list(splits.train.class_names),
            "budget": {"same": "epochs: every prior trains the same epochs over the same code maps",
                       "overrides": KIND_BUDGET + args.set, "networks": KIND_NETWORKS},
            "protocol": f"sampling chosen by tune-sampling on the validation split ({len(splits.val)} images; "
                        f"n = {args.tune_images} per set, {args.draws} draws per setting); final figures: the "
                        f"calibrated score on the test images, n = {first['n'] if first else None}, the "
                        f"run's sample seed, the chosen setting",
            "classifier": first["classifier"] if first else None,
            "heldout_rows": heldout,
            "heldout_rows_same_for_every_prior": all(
                {n: row_figures(s, n) for n in ("real", "reconstructions", "noise")} == heldout for _, s in rows),
            "priors": [r for r, _ in rows], "grids": grids}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("part", choices=["ablation", "demo", "score", "kinds"])
    ap.add_argument("run", type=Path, nargs="?", help="score: a run folder with a trained prior")
    ap.add_argument("--vqvae", type=Path, help="ablation: a run folder holding the mnist preset's VQ-VAE; kinds: "
                                                "the cifar10 preset's")
    ap.add_argument("--train-folder", type=Path, help="kinds: training images, one subfolder per class")
    ap.add_argument("--test-folder", type=Path, help="kinds: held-out images, one subfolder per class")
    ap.add_argument("--per-class", type=int, default=1000, help="kinds: training images per class")
    ap.add_argument("--test-per-class", type=int, default=200, help="kinds: test images per class")
    ap.add_argument("--seed", type=int, default=0, help="kinds: which images the subsets take")
    ap.add_argument("--draws", type=int, default=5, help="kinds: draws per setting in tune-sampling")
    ap.add_argument("--tune-images", type=int, default=250, help="kinds: n per set in tune-sampling")
    ap.add_argument("--grids", type=Path, default=HERE / "results", help="kinds: where the sample grids go")
    ap.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default")
    ap.add_argument("--machine", default="", help="kinds: the machine, in words, for the results file")
    ap.add_argument("--test", type=Path, default=DEFAULT_TEST, help="MNIST IDX folder with the 10k test images")
    ap.add_argument("--seed-reference", type=Path, default=SEED_REFERENCE, help="demo: the seed_reference.py script")
    ap.add_argument("--out", type=Path, default=Path("runs/bench-prior"))
    ap.add_argument("--only", nargs="*", default=[], help="ablation, kinds: only the settings of these names "
                                                          "(kinds: e.g. maskgit-conditional)")
    ap.add_argument("--set", nargs="*", default=[], help="extra overrides for every run, e.g. prior_train.epochs=1")
    ap.add_argument("--json", type=Path, help="also write the result here")
    args = ap.parse_args()
    common = list(COMMON)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.part == "ablation" and args.vqvae is None:
        ap.error("ablation needs --vqvae RUN (train one with `vqvae train --preset mnist --out RUN`)")
    if args.part == "kinds" and None in (args.vqvae, args.train_folder, args.test_folder):
        ap.error("kinds needs --vqvae RUN (the cifar10 preset's VQ-VAE), --train-folder and --test-folder")
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    if args.part == "score" and args.run is None:
        ap.error("score needs RUN, a run folder with a trained prior")
    result = {"ablation": ablation, "demo": demo, "score": score, "kinds": kinds}[args.part](args, common)
    result = {"part": args.part, "started": started, "torch_threads": torch.get_num_threads(), **result}
    print_and_write(result, args.json)


if __name__ == "__main__":
    main()
