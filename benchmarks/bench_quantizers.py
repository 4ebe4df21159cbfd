"""The quantizer family side by side: each kind at matched code bits, one table per dataset.

    python benchmarks/bench_quantizers.py --dataset mnist     # 30-40 minutes on one shared CPU core
    python benchmarks/bench_quantizers.py --dataset cifar10   # 30-40 minutes on one shared CPU core
    # codebook usage at 2^12 with an honest budget, and a small prior per row (~25 minutes each):
    python benchmarks/bench_quantizers.py --dataset mnist --bits 12 --epochs 20 --prior-epochs 3
    python benchmarks/bench_quantizers.py --dataset cifar10 --bits 12 --epochs 20 --prior-epochs 3 --cifar-test 10000
    # and each prior's samples scored as `vqvae evaluate` scores them (n = 1,000 test images):
    python benchmarks/bench_quantizers.py --dataset mnist --bits 12 --epochs 15 --prior-epochs 2 --sample-score

Every row trains the same encoder/decoder (the `mnist` preset's recipe: EMA codebooks seeded by
k-means, dead-code restarts (after 20 unused steps instead of 100: a run here is ~70 steps), Adam 2e-3 with cosine decay, batch 128) with one quantizer, at about
2^5, 2^9 and 2^12 codes per position:

- `vq`: nearest-neighbour VQ (the preset's own);
- `vq+rotation`: the same with the rotation trick instead of the straight-through estimator;
- `vq+cosine+lowdim`: l2-normalised codes searched in an 8-dim projection (ViT-VQGAN's recipe);
- `fsq`: the FSQ paper's levels for the size ([6,5], [8,8,8], [7,5,5,5,5]: 30, 512, 4375 codes),
  each channel standardised over the batch before the bound (fsq_normalise=batch, see models/fsq.py);
- `fsq+init-only`: project_in standardised once, on the first batch (fsq_normalise=init);
- `fsq+no-norm`: PyTorch's init and no normalisation (fsq_normalise=none: the reference code's);
- `lfq`: 5, 9, 12 sign bits with the entropy penalty;
- `rvq`: 3 residual levels of 8 or 16 codes (9 and 12 bits; no 5-bit row: 5 does not split in 3).

Data: MNIST is `mnist-5k` (5,000 images, 10% of them the validation split) tested on the 10,000
MNIST test images; CIFAR-10 is a class-balanced subset of its JPEG folders (--cifar-train images
of train/, --cifar-test of test/), decoded once into memory with PIL, 32x32x3 at the same widths.
Figures: validation MSE (what a default is chosen on), test MSE on outputs clipped to [0, 1] and
PSNR, codes used and perplexity on the test split (all levels' codes for rvq) and on the validation
split (what settings are tuned on; with 24,500 MNIST validation positions over 4,096 codes a skewed
code distribution cannot show every code, so compare rows, not the absolute figure), training
images/s (training steps only), and with --prior-epochs the best validation bits per code of a
small Gated PixelCNN (PRIOR, the same budget for every row; rvq rows have none: train-prior
needs one index per position); with --sample-score, the calibrated sample score of that prior's
samples (`sample_score`: the same call as `vqvae evaluate`, on the test split; the samples' Fréchet
distance beside the reconstructions' and real images' on the same reference). Torch runs on one thread (--threads): on a shared 2-core machine two
threads contend and run several times slower. Prints one JSON document (and writes --out).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from result_file import print_and_write

HERE = Path(__file__).resolve().parent
DEFAULT_MNIST_TEST = HERE.parent.parent / "shared" / "data" / "mnist"  # ../shared beside the checkout
ROTATION = ["quantizer.gradient=rotation"]
COSINE_LOWDIM = ["quantizer.distance=cosine", "quantizer.lookup_dim=8"]
# The preset restarts codes unused for 100 steps; a 2-epoch run has about 70 steps, so here 20.
RESTARTS = "quantizer.restart_after_steps=20"


def variants(bits: int) -> dict[str, list[str]]:
    """Quantizer settings for about 2^bits codes per position."""
    K = 2 ** bits
    rows = {"vq": [f"quantizer.codebook_size={K}"],
            "vq+rotation": [f"quantizer.codebook_size={K}", *ROTATION],
            "vq+cosine+lowdim": [f"quantizer.codebook_size={K}", *COSINE_LOWDIM],
            "fsq": ["quantizer.kind=fsq", f"quantizer.codebook_size={K}"],
            "fsq+init-only": ["quantizer.kind=fsq", f"quantizer.codebook_size={K}", "quantizer.fsq_normalise=init"],
            "fsq+no-norm": ["quantizer.kind=fsq", f"quantizer.codebook_size={K}", "quantizer.fsq_normalise=none"],
            "lfq": ["quantizer.kind=lfq", f"quantizer.codebook_size={K}"]}
    if bits % 3 == 0:
        rows["rvq"] = ["quantizer.kind=rvq", "quantizer.rvq_depth=3", f"quantizer.codebook_size={2 ** (bits // 3)}"]
    return rows


def load_cifar_subset(root: Path, per_class: int):
    """The first `per_class` JPEGs of every class folder, decoded once: ImageSet (N, 3, 32, 32) uint8."""
    from PIL import Image

    from vqvae.data import ImageSet

    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    images, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((root / name).glob("*.jpg"))[:per_class]:
            images.append(np.asarray(Image.open(path).convert("RGB"), dtype=np.uint8).transpose(2, 0, 1))
            labels.append(label)
    return ImageSet(f"cifar10-{root.name}-{len(images)}", 32, 3, images=torch.from_numpy(np.stack(images)),
                    labels=torch.tensor(labels), class_names=tuple(classes))


def load_data(dataset: str, mnist_test: str, cifar_root: str, cifar_train: int, cifar_test: int):
    """(config overrides for the images, data for train_vqvae, a description of the data)."""
    from vqvae.config import load_config
    from vqvae.data import load_splits

    if dataset == "mnist":
        cfg = load_config("mnist", [f"data.test_dataset={mnist_test}", "data.num_workers=0"])
        data = load_splits(cfg.data)
        return [], data, (f"mnist-5k ({len(data.train)} training, {len(data.val)} validation), "
                          f"{len(data.test)} MNIST test images")
    root = Path(cifar_root)
    train = load_cifar_subset(root / "train", cifar_train // 10)
    test = load_cifar_subset(root / "test", cifar_test // 10)
    return (["data.image_size=32", "data.channels=3"], (train, test),
            f"CIFAR-10 JPEG folders: first {cifar_train // 10} of each class in train/ "
            f"(10% of them validation), first {cifar_test // 10} of each class in test/")


# The prior trained on every row's codes (--prior-epochs): the mnist preset's Gated PixelCNN at a
# quarter of its width and half its depth, without shifted copies, the same budget for every row.
PRIOR = ["prior.kind=pixelcnn", "prior.num_layers=4", "prior.hidden_channels=32", "prior.train_shifts=0",
         "prior_train.amp=off", "prior_train.progress=false", "prior_train.device=cpu"]


def prior_recipe(prior_epochs: int) -> dict:
    """PRIOR over the `mnist` preset, resolved: the preset's prior settings that PRIOR leaves alone
    (conditioning, learning rate, sampling guidance) change with the preset, so the file records them
    (before --set, which applies per row and is recorded beside them)."""
    import dataclasses

    from vqvae.config import load_config

    cfg = load_config("mnist", [*PRIOR, f"prior_train.epochs={prior_epochs}"])
    return {"epochs": prior_epochs, "overrides": PRIOR, "resolved_prior": dataclasses.asdict(cfg.prior),
            "resolved_prior_train": dataclasses.asdict(cfg.prior_train), "resolved_sample": dataclasses.asdict(cfg.sample)}


def sample_score(run: Path, splits, num_images: int) -> dict:
    """The run's calibrated sample score, as `vqvae evaluate` computes it (`api.sample_quality` on the
    test split, the classifier trained on the training split and checked on validation), reduced to
    its headline figures: the Fréchet distance of each row (real, reconstructions, samples, noise)
    to the same reference of n held-out images, and the samples' over the reconstructions'."""
    from vqvae import api

    t0 = time.perf_counter()
    scores = api.sample_quality(run, splits.test, splits.train, splits.val, num_images, device="cpu")
    if "rows" not in scores:
        return {"sample_score": scores}  # e.g. {"skipped": "... needs a labelled dataset ..."}
    rows = scores["rows"]
    drawn = json.loads((run / "samples.json").read_text())  # the settings the samples were drawn with
    return {"sample_score": {
        "heldout": scores["heldout"], "n": scores["n"],
        **{f"frechet_{k}": r["frechet_distance"] for k, r in rows.items()},
        "samples_vs_reconstructions": scores["samples_vs_reconstructions"],
        "precision_samples": rows["samples"]["precision"], "recall_samples": rows["samples"]["recall"],
        "classes_present_samples": rows["samples"]["classes_present"],
        "classifier_val_accuracy": scores["classifier"].get("heldout_accuracy"),
        "sampling": {k: drawn[k] for k in ("temperature", "top_k", "top_p", "guidance", "seed")},
        "wall_s": round(time.perf_counter() - t0, 1)}}


SAMPLE_SCORE = ("vqvae evaluate's calibrated score (api.sample_quality): the test split in a fixed random order, "
                "{n} images the reference and {n} others the real row and the reconstructions' inputs; {n} samples of "
                "the row's prior drawn with the preset's sample settings (each row's sample_score.sampling; a "
                "class-conditional prior gets the classes in turn); features of the project's small classifier trained on the training split")


def run_one(name: str, overrides: list[str], base: list[str], epochs: int, data, prior_epochs: int = 0,
            score_images: int = 0) -> dict:
    from vqvae import api
    from vqvae.config import load_config
    from vqvae.data import Batches, as_splits
    from vqvae.metrics.reconstruction import evaluate_reconstruction

    codebook = not {"quantizer.kind=fsq", "quantizer.kind=lfq"} & set(overrides)  # restarts are vq/rvq options
    cfg = load_config("mnist", [*base, *([RESTARTS] if codebook else []), f"train.epochs={epochs}", "train.progress=false", "train.device=cpu",
                                "train.amp=off", "data.num_workers=0", *PRIOR, f"prior_train.epochs={prior_epochs}",
                                *overrides])
    load_before = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result = api.train_vqvae(cfg, Path(tmp) / "run", data=data)
        wall = time.perf_counter() - t0
        model = result.model  # the best checkpoint's weights (chosen on validation MSE)
        # Usage on the validation split too: what settings are tuned on (the test figure is final).
        splits = as_splits(data, cfg.data)
        val = evaluate_reconstruction(model, Batches(splits.val, 500, torch.device("cpu"), shuffle=False).epoch(0))
        prior = {}
        if prior_epochs and model.indices_per_position > 1:
            prior = {"prior": "not trained: train-prior needs one index per position (kinds vq, fsq, lfq); "
                              f"{cfg.quantizer.kind} gives {model.indices_per_position}"}
        elif prior_epochs:
            t1 = time.perf_counter()
            pm = api.train_prior(cfg, Path(tmp) / "run", data=data).metrics
            prior = {"prior_best_val_bits_per_code": round(pm["best_val_bits_per_code"], 4),
                     "prior_test_bits_per_code": round(pm["test_bits_per_code"], 4),
                     "prior_epochs": prior_epochs, "prior_wall_s": round(time.perf_counter() - t1, 1)}
            if score_images:
                prior.update(sample_score(Path(tmp) / "run", splits, score_images))
    m, test = result.metrics, result.metrics["test"]
    slots = model.quantizer.usage_size
    codes = model.codebook_size ** model.indices_per_position  # distinct code tuples a position can take
    positions = model.latent_size ** 2
    return {"quantizer": name, "kind": cfg.quantizer.kind, "overrides": overrides,
            "codes_per_position": codes, "bits": round(math.log2(codes), 2),
            "val_mse": round(m["best_val_mse"], 6) if m["best_val_mse"] is not None else None,
            "test_mse_clipped": round(test["mse_clipped"], 6), "psnr_db": round(test["psnr_db"], 2),
            "codes_used": test["codes_used"], "code_slots": slots, "usage": round(test["codes_used"] / slots, 4),
            "perplexity": test["perplexity"], "test_positions": len(splits.test) * positions,
            "val_codes_used": val["codes_used"], "val_usage": round(val["codes_used"] / slots, 4),
            "val_perplexity": val["perplexity"], "val_positions": len(splits.val) * positions,
            **prior, "train_images_per_s": m["images_per_s"],
            "epochs": m["epochs"], "train_images": m["train_images"], "wall_s": round(wall, 1),
            "load_avg_1min_before_after": [load_before, round(os.getloadavg()[0], 2)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=["mnist", "cifar10"], required=True)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--bits", type=int, nargs="+", default=[5, 9, 12])
    parser.add_argument("--only", nargs="*", help="quantizer names to run, in this order (default: all)")
    parser.add_argument("--mnist-test", default=str(DEFAULT_MNIST_TEST), help="folder of the MNIST test IDX files")
    parser.add_argument("--cifar-root", default="/work/data/cifar10")
    parser.add_argument("--cifar-train", type=int, default=5000, help="training images (class-balanced)")
    parser.add_argument("--cifar-test", type=int, default=2000, help="test images (class-balanced)")
    parser.add_argument("--prior-epochs", type=int, default=0,
                        help="also train the small prior (PRIOR) this many epochs on each row's codes; 0 = no prior")
    parser.add_argument("--sample-score", type=int, nargs="?", const=1000, default=0, metavar="N",
                        help="with --prior-epochs: score N samples of each row's prior (default 1000) with the "
                             "calibrated sample score of `vqvae evaluate`, on the test split")
    parser.add_argument("--set", nargs="*", default=[], help="config overrides for every row (after the recipe's)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()
    if args.sample_score and not args.prior_epochs:
        parser.error("--sample-score scores the prior's samples: it needs --prior-epochs N (N >= 1)")
    torch.set_num_threads(args.threads)

    base, data, described = load_data(args.dataset, args.mnist_test, args.cifar_root, args.cifar_train, args.cifar_test)
    results = {"dataset": described, "epochs": args.epochs, "threads": args.threads,
               "recipe": "mnist preset (EMA decay 0.95, k-means init, Adam 2e-3 cosine, batch 128), "
                         "restarts after 20 unused steps, amp off", "extra_overrides": args.set,
               "prior": prior_recipe(args.prior_epochs) if args.prior_epochs else None,
               "sample_score": SAMPLE_SCORE.format(n=args.sample_score) if args.sample_score else None,
               "cpu_count": os.cpu_count(), "load_avg_1min_at_start": round(os.getloadavg()[0], 2),
               "started_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "rows": []}
    print(described, flush=True)
    for bits in args.bits:
        rows = variants(bits)
        for name in args.only or rows:  # in the order asked for
            if name not in rows:
                continue
            overrides = rows[name]
            row = run_one(name, [*overrides, *args.set], base, args.epochs, data, args.prior_epochs,
                          args.sample_score)
            row["target_bits"] = bits
            results["rows"].append(row)
            print(json.dumps(row), flush=True)
    print_and_write(results, args.out)


if __name__ == "__main__":
    main()
