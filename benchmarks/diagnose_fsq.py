"""Why does FSQ use few of its codes? The pre-bound activations of FSQ's channels, measured.

    python benchmarks/diagnose_fsq.py --dataset mnist --epochs 20 --out benchmarks/results/cpu-fsq-diagnosis-mnist.json

For one FSQ model (the bench_quantizers.py recipe) this reports, on the validation split, at
initialisation and after training: per channel the mean and standard deviation of the pre-bound
activation z (project_in's output, standardised with the running statistics under
fsq_normalise=batch: what tanh squashes), the fraction of positions in each of the
channel's L levels and in its two outer levels, the distinct values per channel, and the distinct
code tuples (the codes used). Training's per-epoch codes used (training and validation) come
from the run's history.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

import bench_quantizers as bench
from result_file import print_and_write


@torch.no_grad()
def channel_report(model, images) -> dict:
    """Pre-bound statistics per FSQ channel over `images` (ImageSet), and the code tuples used."""
    q = model.quantizer
    model.eval()
    zs = []
    for start in range(0, len(images), 500):
        x = torch.stack([images[i][0] for i in range(start, min(start + 500, len(images)))]).float() / 255
        z = model.encode(x)
        z = q.project_in(z) if q.project_in is not None else z
        zs.append(q.standardise(z) if q.config.fsq_normalise == "batch" else z)  # eval: running statistics
    z = torch.cat(zs)  # (N, d, h, w) pre-bound
    digits = q.bound(z).round() + q._per_channel(q.levels // 2)  # 0..L-1 per channel (even L: offset built in)
    indices = q.codes_to_indices(q.quantize_latent(z))
    channels = []
    for c, levels in enumerate(q.levels_list):
        zc, dc = z[:, c].flatten(), digits[:, c].flatten().long()
        hist = torch.bincount(dc, minlength=levels).float() / dc.numel()
        channels.append({"levels": levels, "mean": round(zc.mean().item(), 4), "std": round(zc.std().item(), 4),
                         "abs_p99": round(zc.abs().quantile(0.99).item(), 3),
                         "level_fractions": [round(v, 4) for v in hist.tolist()],
                         "outer_fraction": round((hist[0] + hist[-1]).item(), 4),
                         "levels_used": int((hist > 0).sum())})
    flat = z.permute(1, 0, 2, 3).flatten(1)  # (d, positions): how correlated the channels are
    corr = torch.corrcoef(flat)
    off = corr[~torch.eye(len(corr), dtype=torch.bool)].abs()
    return {"channels": channels, "codes_used": int(indices.unique().numel()), "codebook_size": q.codebook_size,
            "mean_abs_channel_correlation": round(off.mean().item(), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=["mnist", "cifar10"], default="mnist")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--bits", type=int, default=12)
    parser.add_argument("--set", nargs="*", default=[], help="extra config overrides")
    parser.add_argument("--cifar-train", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from vqvae import api
    from vqvae.config import load_config
    from vqvae.data import as_splits
    from vqvae.models import VQVAE

    base, data, described = bench.load_data(args.dataset, str(bench.DEFAULT_MNIST_TEST), "/work/data/cifar10",
                                            args.cifar_train, 2000)
    overrides = bench.variants(args.bits)["fsq"] + args.set
    cfg = load_config("mnist", [*base, bench.RESTARTS, f"train.epochs={args.epochs}", "train.progress=false",
                                "train.device=cpu", "train.amp=off", "data.num_workers=0", *overrides])
    val = as_splits(data, cfg.data).val
    torch.manual_seed(cfg.train.seed)  # the same initial weights as the training run's
    report = {"dataset": described, "overrides": overrides, "fsq_normalise": cfg.quantizer.fsq_normalise, "epochs": args.epochs,
              "init": channel_report(VQVAE(cfg.model, cfg.quantizer), val)}
    print(json.dumps(report["init"]), flush=True)
    if cfg.quantizer.fsq_normalise == "init":  # what training's first step does to project_in, on its first batch
        model = VQVAE(cfg.model, cfg.quantizer)
        first = torch.stack([as_splits(data, cfg.data).train[i][0] for i in range(cfg.train.batch_size)]).float() / 255
        model.quantizer._standardise_projection(model.encode(first))
        report["after_data_init"] = channel_report(model, val)
        print(json.dumps(report["after_data_init"]), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result = api.train_vqvae(cfg, Path(tmp) / "run", data=data)
        report["wall_s"] = round(time.perf_counter() - t0, 1)
    report["trained"] = channel_report(result.model, val)
    report["history"] = [{k: h.get(k) for k in ("epoch", "codes_used", "val_codes_used", "val_mse")}
                         for h in result.history]
    print_and_write(report, args.out, indent=1)


if __name__ == "__main__":
    main()
