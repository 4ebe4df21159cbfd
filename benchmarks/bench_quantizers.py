"""The quantizer family side by side: each kind at matched code bits, one table per dataset.

    python benchmarks/bench_quantizers.py --dataset mnist     # 30-40 minutes on one shared CPU core
    python benchmarks/bench_quantizers.py --dataset cifar10   # 30-40 minutes on one shared CPU core

Every row trains the same encoder/decoder (the `mnist` preset's recipe: EMA codebooks seeded by
k-means, dead-code restarts (after 20 unused steps instead of 100: a run here is ~70 steps), Adam 2e-3 with cosine decay, batch 128) with one quantizer, at about
2^5, 2^9 and 2^12 codes per position:

- `vq`: nearest-neighbour VQ (the preset's own);
- `vq+rotation`: the same with the rotation trick instead of the straight-through estimator;
- `vq+cosine+lowdim`: l2-normalised codes searched in an 8-dim projection (ViT-VQGAN's recipe);
- `fsq`: the FSQ paper's levels for the size ([6,5], [8,8,8], [7,5,5,5,5]: 30, 512, 4375 codes);
- `lfq`: 5, 9, 12 sign bits with the entropy penalty;
- `rvq`: 3 residual levels of 8 or 16 codes (9 and 12 bits; no 5-bit row: 5 does not split in 3).

Data: MNIST is `mnist-5k` (5,000 images, 10% of them the validation split) tested on the 10,000
MNIST test images; CIFAR-10 is a class-balanced subset of its JPEG folders (--cifar-train images
of train/, --cifar-test of test/), decoded once into memory with PIL, 32x32x3 at the same widths.
Figures: validation MSE (what a default is chosen on), test MSE on outputs clipped to [0, 1] and
PSNR, codes used on the test split (all levels' codes for rvq) and perplexity, training images/s
(training steps only). Torch runs on one thread (--threads): on a shared 2-core machine two
threads contend and run several times slower. Prints one JSON document (and writes --out).
"""
from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
DEFAULT_MNIST_TEST = HERE.parent.parent.parent / "shared" / "data" / "mnist"  # ../shared from the checkout
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


def run_one(name: str, overrides: list[str], base: list[str], epochs: int, data) -> dict:
    from vqvae import api
    from vqvae.config import load_config
    from vqvae.models import VQVAE

    cfg = load_config("mnist", [*base, RESTARTS, f"train.epochs={epochs}", "train.progress=false", "train.device=cpu",
                                "train.amp=off", "data.num_workers=0", *overrides])
    model = VQVAE(cfg.model, cfg.quantizer)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result = api.train_vqvae(cfg, Path(tmp) / "run", data=data)
        wall = time.perf_counter() - t0
    m, test = result.metrics, result.metrics["test"]
    slots = model.quantizer.usage_size
    codes = model.codebook_size ** model.indices_per_position  # distinct code tuples a position can take
    return {"quantizer": name, "kind": cfg.quantizer.kind, "overrides": overrides,
            "codes_per_position": codes, "bits": round(math.log2(codes), 2),
            "val_mse": round(m["best_val_mse"], 6) if m["best_val_mse"] is not None else None,
            "test_mse_clipped": round(test["mse_clipped"], 6), "psnr_db": round(test["psnr_db"], 2),
            "codes_used": test["codes_used"], "code_slots": slots, "usage": round(test["codes_used"] / slots, 4),
            "perplexity": test["perplexity"], "train_images_per_s": m["images_per_s"],
            "epochs": m["epochs"], "train_images": m["train_images"], "wall_s": round(wall, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=["mnist", "cifar10"], required=True)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--bits", type=int, nargs="+", default=[5, 9, 12])
    parser.add_argument("--only", nargs="*", help="quantizer names to run (default: all)")
    parser.add_argument("--mnist-test", default=str(DEFAULT_MNIST_TEST), help="folder of the MNIST test IDX files")
    parser.add_argument("--cifar-root", default="/work/data/cifar10")
    parser.add_argument("--cifar-train", type=int, default=5000, help="training images (class-balanced)")
    parser.add_argument("--cifar-test", type=int, default=2000, help="test images (class-balanced)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from vqvae.config import load_config
    from vqvae.data import load_splits

    if args.dataset == "mnist":
        base = []
        cfg = load_config("mnist", [f"data.test_dataset={args.mnist_test}", "data.num_workers=0"])
        data = load_splits(cfg.data)
        described = (f"mnist-5k ({len(data.train)} training, {len(data.val)} validation), "
                     f"{len(data.test)} MNIST test images")
    else:
        base = ["data.image_size=32", "data.channels=3"]
        cfg = load_config("mnist", base + ["data.num_workers=0"])
        root = Path(args.cifar_root)
        train = load_cifar_subset(root / "train", args.cifar_train // 10)
        test = load_cifar_subset(root / "test", args.cifar_test // 10)
        data = (train, test)
        described = (f"CIFAR-10 JPEG folders: first {args.cifar_train // 10} of each class in train/ "
                     f"(10% of them validation), first {args.cifar_test // 10} of each class in test/")
    results = {"dataset": described, "epochs": args.epochs, "threads": args.threads,
               "recipe": "mnist preset (EMA decay 0.95, k-means init, Adam 2e-3 cosine, batch 128), "
                         "restarts after 20 unused steps, amp off", "rows": []}
    print(described, flush=True)
    for bits in args.bits:
        for name, overrides in variants(bits).items():
            if args.only and name not in args.only:
                continue
            row = run_one(name, overrides, base, args.epochs, data)
            row["target_bits"] = bits
            results["rows"].append(row)
            print(json.dumps(row), flush=True)
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
