"""Good samples without labels: an ablation of the unconditional prior, chosen on validation data.

    python benchmarks/bench_unlabelled.py ablation --vqvae RUN --runs DIR   # priors on one VQ-VAE's codes
    python benchmarks/bench_unlabelled.py demo --set prior.conditional=false prior.pseudo_classes=30 ...
                                             # `vqvae pipeline --preset mnist` (with --set) vs seed_reference.py
    python benchmarks/bench_unlabelled.py purity --vqvae RUN   # which code-map features cluster into digits

1. `ablation`: every variant below trains a prior on the cached codes of the same VQ-VAE (a run
   folder of the mnist preset, `--vqvae`); no prior reads a label, except the labelled reference
   row. Each is tuned by `vqvae tune-sampling` on the validation split of mnist-5k (n = half of it
   per set, 5 draws per setting; the rule: lowest mean Fréchet distance among the settings whose
   mean recall is within 0.1 of the reconstructions'). Labels are used by the scorer only. Then,
   for the final figures only, the chosen setting (and the variant's untuned setting) is scored on
   the 10,000 MNIST test images at n = 1,000. Trained priors are cached in --runs and reused.
2. `demo`: `seed_reference.py --epochs 60`, then the pipeline as `make demo` runs it with the given
   overrides, one after the other in this process, so their wall times compare as a ratio on the
   same machine at the same time; and the demo run's final score on the MNIST test images.

3. `purity`: how well k-means clusters of the training images' code maps (the features
   prior.pseudo_classes could use) agree with the digit labels the prior never reads: purity = the
   share of images whose cluster's most common digit is their own.

The machine may be shared and loaded: only ratios measured in the same run mean anything. Prints
one JSON document and writes it to --json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from vqvae import api
from vqvae.config import load_config
from vqvae.data import load_dataset, load_splits
from vqvae.metrics.protocol import score_samples, scored_images
from vqvae.runs import load_vqvae

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_prior import COMMON, demo_against_seed, score_row, trained_prior  # noqa: E402  (one copy of the shared helpers)
from result_file import print_and_write  # noqa: E402

# /work/shared beside the checkout (/work/main) or beside the folder of worktrees (/work/wt/BRANCH).
SHARED = next((p / "shared" for p in HERE.parents[1:3] if (p / "shared").is_dir()), HERE.parents[1] / "shared")
DEFAULT_TEST = SHARED / "data" / "mnist"
SEED_REFERENCE = SHARED / "bench" / "seed_reference.py"

# (name, prior overrides over the mnist preset, tune-sampling candidates). The preset's prior network
# (Gated PixelCNN 8x64, 3x3 first kernel, shifted codes, Adam 4e-3) in every row, so the rows differ only
# in what the row names. The first four rows train 2 epochs (the preset's budget when they were run;
# it is 3 now), the rest the epochs they name.
PSEUDO = ["prior.conditional=false", "prior.label_dropout=0.1"]
TWO_EPOCHS = ["prior_train.epochs=2"]
VARIANTS = [  # (run folder under --runs, name, overrides, candidates)
    ("uncond", "unconditional (the preset's prior network, no labels)", ["prior.conditional=false"] + TWO_EPOCHS,
     {"temperature": [1.0, 0.9, 0.8]}),
    ("pseudo10", "10 pseudo-classes (k-means on code maps), label dropout 0.1, guidance",
     PSEUDO + ["prior.pseudo_classes=10"] + TWO_EPOCHS, {"guidance": [0.0, 1.0, 1.5, 2.0, 3.0]}),
    ("pseudo30", "30 pseudo-classes (k-means on code maps), label dropout 0.1, guidance",
     PSEUDO + ["prior.pseudo_classes=30"] + TWO_EPOCHS, {"guidance": [0.0, 1.0, 1.5, 2.0, 3.0]}),
    ("cond", "labelled reference: class-conditional on the digit labels (the preset's prior, 2 epochs)", TWO_EPOCHS,
     {"guidance": [0.0, 1.0, 1.5, 2.0]}),
    # The same two priors trained longer (the demo's budget leaves room: docs/benchmarks-unlabelled.md).
    ("cond-e3", "labelled, 3 epochs", ["prior_train.epochs=3"], {"guidance": [1.0, 1.5, 2.0]}),
    ("cond-e4", "labelled, 4 epochs", ["prior_train.epochs=4"], {"guidance": [1.0, 1.5, 2.0]}),
    ("pseudo30-e3", "30 pseudo-classes, 3 epochs", PSEUDO + ["prior.pseudo_classes=30", "prior_train.epochs=3"],
     {"guidance": [1.0, 1.5, 2.0, 3.0]}),
    ("pseudo30-e4", "30 pseudo-classes, 4 epochs", PSEUDO + ["prior.pseudo_classes=30", "prior_train.epochs=4"],
     {"guidance": [1.0, 1.5, 2.0, 3.0]}),
]
UNTUNED = {"temperature": 1.0, "top_p": 1.0}  # each variant's plain setting: guidance 1 or none, full temperature


def test_score(run: Path, setting: dict, test_set, splits, n: int = 1000) -> dict:
    """Final figures: n samples drawn with `setting`, scored against the MNIST test images."""
    folder = run / "test-samples"
    api.sample(run, folder, num_samples=n, device="cpu", seed=0, **setting)
    images = torch.from_numpy(np.load(folder / "samples.npy")).float() / 255
    vqvae, _ = load_vqvae(run, torch.device("cpu"))
    return {"setting": setting, **score_row(score_samples(vqvae, images, test_set, splits.train, splits.val,
                                                          torch.device("cpu")))}


def ablation(args) -> dict:
    cfg = load_config("mnist", COMMON)
    splits = load_splits(cfg.data)
    test_set = load_dataset(str(args.test), cfg.data)
    rows = []
    for folder, name, overrides, candidates in VARIANTS:
        if args.only and folder not in args.only:
            continue
        run = args.runs / folder
        prior = trained_prior(args.vqvae, run, overrides)
        tuning = api.tune_sampling(run, draws=args.draws, device="cpu", **candidates)
        untuned = dict(UNTUNED, guidance=1.0) if prior.get("conditional") else dict(UNTUNED)
        chosen = tuning["chosen"]
        finals = [test_score(run, chosen, test_set, splits)]
        if {k: chosen.get(k) for k in untuned} != untuned:
            finals.append(test_score(run, untuned, test_set, splits))
        api.sample(run, run / "grid-chosen", num_samples=100, device="cpu", seed=0, **chosen)
        row = {"name": name, "overrides": overrides,
               "prior": {k: prior.get(k) for k in ("reused", "wall_s", "train_seconds", "best_val_bits_per_code",
                                                    "test_bits_per_code", "epochs", "pseudo_classes")},
               "validation": {k: tuning[k] for k in ("chosen", "reason", "rule", "n", "draws", "heldout",
                                                     "reconstructions", "settings")},
               "test": finals, "run": str(run)}
        rows.append(row)
        print(f"# {json.dumps({'name': name, 'chosen': chosen, 'test': finals})}", file=sys.stderr, flush=True)
    return {"vqvae_run": str(args.vqvae), "variants": rows,
            "protocol": f"tuned on the validation split of mnist-5k ({len(splits.val)} images: n = "
                        f"{scored_images(splits.val)} the reference, n others reconstructed; {args.draws} draws of n "
                        f"samples per setting); final figures on the 10,000 MNIST test images, n = 1,000, the same "
                        f"seed for every row"}


def demo(args) -> dict:
    cfg = load_config("mnist", COMMON + args.set)
    run = args.runs / "demo"
    figures, metrics = demo_against_seed(args.seed_reference, args.test, cfg, run)
    out: dict = {"overrides": args.set, **figures}
    out["demo_sampling"] = metrics["pipeline"]["sampling"]
    out["demo_report_score"] = score_row(metrics["evaluation"]["samples"])
    splits = load_splits(cfg.data)
    test_set = load_dataset(str(args.test), cfg.data)
    out["final_score_mnist_test"] = score_row(api.sample_quality(run, test_set, splits.train, splits.val,
                                                                  device="cpu"))
    out["demo_run"] = str(run)
    return out


def purity(args) -> dict:
    import torch.nn.functional as F

    from vqvae.models import kmeans
    from vqvae.models.quantizer import nearest_codes
    from vqvae.training.prior_stage import cached_codes

    vqvae, cfg = load_vqvae(args.vqvae, torch.device("cpu"))
    splits = load_splits(cfg.data)
    codes = cached_codes(vqvae, splits.train, "train", args.vqvae, torch.device("cpu")).long()
    labels = splits.train.labels
    with torch.no_grad():
        vectors = vqvae.quantizer.lookup(codes).float()  # (N, D, h, w)
        decoded = torch.cat([vqvae.decode_indices(codes[i:i + 500]).clamp(0, 1) for i in range(0, len(codes), 500)])
    features = {"code vectors, whole map (what pseudo_classes uses)": vectors.flatten(1),
                "code vectors pooled to 4x4": F.adaptive_avg_pool2d(vectors, 4).flatten(1),
                "one-hot codes": F.one_hot(codes, vqvae.codebook_size).float().flatten(1),
                "decoded pixels": decoded.flatten(1)}
    rows = []
    for name, f in features.items():
        for standardised in (False, True):
            x = (f - f.mean(0)) / (f.std(0) + 1e-6) if standardised else f
            for k in (10, 30):
                assign = nearest_codes(x, kmeans(x, k, 25, torch.Generator().manual_seed(0)))
                majority = sum(int(torch.bincount(labels[assign == c], minlength=10).max()) for c in range(k)
                               if (assign == c).any())
                rows.append({"features": name, "standardised": standardised, "clusters": k,
                             "purity": round(majority / len(labels), 3)})
                print(f"# {json.dumps(rows[-1])}", file=sys.stderr, flush=True)
    return {"vqvae_run": str(args.vqvae), "train_images": len(labels), "rows": rows}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("part", choices=["ablation", "demo", "purity"])
    ap.add_argument("--vqvae", type=Path, help="ablation: a run folder holding the mnist preset's VQ-VAE")
    ap.add_argument("--runs", type=Path, default=Path("runs/bench-unlabelled"), help="where priors are trained/cached")
    ap.add_argument("--test", type=Path, default=DEFAULT_TEST, help="MNIST IDX folder with the 10k test images")
    ap.add_argument("--seed-reference", type=Path, default=SEED_REFERENCE)
    ap.add_argument("--draws", type=int, default=5, help="ablation: draws per setting in tune-sampling")
    ap.add_argument("--only", nargs="*", default=[], help="ablation: only these variants (run folder names)")
    ap.add_argument("--set", nargs="*", default=[], help="demo: overrides of the mnist preset")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the machine may be shared)")
    ap.add_argument("--json", type=Path, help="also write the result here")
    args = ap.parse_args()
    if args.part in ("ablation", "purity") and args.vqvae is None:
        ap.error(f"{args.part} needs --vqvae RUN (train one with `vqvae train --preset mnist --out RUN`)")
    torch.set_num_threads(args.threads)
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    result = {"ablation": ablation, "demo": demo, "purity": purity}[args.part](args)
    result = {"part": args.part, "started": started, "torch_threads": torch.get_num_threads(),
              "machine": "2-core CPU shared with other jobs (loaded); only ratios within one run compare", **result}
    print_and_write(result, args.json)


if __name__ == "__main__":
    main()
