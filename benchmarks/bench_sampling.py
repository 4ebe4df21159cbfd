"""Prior sampling speed: each prior's incremental sampler (the transformer's KV cache, the Gated
PixelCNN's row/position updates) against one full network pass per position (the seed's way),
same model, same batch, same process.

    python benchmarks/bench_sampling.py                      # a few minutes on 2 CPU cores
    python benchmarks/bench_sampling.py --device cuda --only celeba --full-positions 0
        # on a GPU: the CelebA-HQ-size priors (32x32 codes) drawing 64 maps; seconds

Cases: the priors of the `mnist` preset (7x7 maps of 32 codes) and of the `celeba-hq-128`
preset (32x32 maps of 64 codes), each of both kinds. Weights are random: speed does not depend
on them. The full pass is timed on its first `--full-positions` positions and scaled to the
map (every pass does the same work). Prints one JSON line per case.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from vqvae.config import PriorConfig, get_preset
from vqvae.models import PriorSpec, build_prior, sample_full_pass


def timed(fn, repeats: int, device: str) -> float:
    best = float("inf")
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def prior_of(preset: str, kind: str) -> PriorConfig:
    """The preset's prior if it is of this kind, else the other kind's settings used for the comparison."""
    cfg = get_preset(preset).prior
    if cfg.kind == kind:
        return cfg
    if kind == "pixelcnn":  # the Gated PixelCNN sizes the presets used before the transformer
        return PriorConfig(kind="pixelcnn", num_layers=8 if preset == "mnist" else 15,
                           hidden_channels=64 if preset == "mnist" else 128)
    return PriorConfig(kind="transformer", num_layers=4 if preset == "mnist" else 8,
                       hidden_channels=128 if preset == "mnist" else 256, num_heads=4 if preset == "mnist" else 8)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads; 0 keeps torch's default")
    ap.add_argument("--only", default="", help="run the cases whose name contains this")
    ap.add_argument("--batch", type=int, default=0, help="maps per batch (default: 100 at 7x7, 16 at 32x32 on a "
                                                         "CPU, 64 on a GPU)")
    ap.add_argument("--full-positions", type=int, default=8,
                    help="full passes timed at 32x32 (0 = skip the full-pass baseline)")
    ap.add_argument("--bf16", action="store_true", help="sample under bf16 autocast")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    gpu = args.device.startswith("cuda")
    kinds = ("transformer", "pixelcnn")
    cases = ([(f"mnist {kind}, 7x7 codes", "mnist", kind, 32, 7) for kind in kinds]
             + [(f"celeba-hq-128 {kind}, 32x32 codes", "celeba-hq-128", kind, 64, 32) for kind in kinds])
    for name, preset, kind, codes, size in cases:
        if args.only and args.only not in name:
            continue
        batch = args.batch or (64 if gpu else 100 if size <= 8 else 16)
        torch.manual_seed(0)
        config = prior_of(preset, kind)
        model = build_prior(config, PriorSpec(codes, size)).to(args.device).eval()
        gen = lambda: torch.Generator(device=args.device).manual_seed(0)  # noqa: E731
        autocast = torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16, enabled=args.bf16)
        with autocast:
            model.sample(2, generator=gen())  # warm-up: allocations, kernel choice
            fast_s = timed(lambda: model.sample(batch, generator=gen()), 2, args.device)
        row = {"case": name, "kind": kind, "size": f"{config.num_layers}x{config.hidden_channels}",
               "parameters": sum(p.numel() for p in model.parameters()), "device": args.device,
               "device_name": torch.cuda.get_device_name() if gpu else "cpu", "threads": torch.get_num_threads(),
               "batch": batch, "bf16": args.bf16, "incremental_s": round(fast_s, 3),
               "incremental_maps_per_s": round(batch / fast_s, 2)}
        positions = size * size
        timed_positions = positions if positions <= 64 else args.full_positions
        if timed_positions:
            with autocast:
                full_s = timed(lambda: sample_full_pass(model, batch, generator=gen(), max_positions=timed_positions),
                               1, args.device) * positions / timed_positions
            row.update({"full_pass_positions_timed": f"{timed_positions} of {positions}",
                        "full_pass_s": round(full_s, 3), "full_pass_maps_per_s": round(batch / full_s, 3),
                        "speedup": round(full_s / fast_s, 1)})
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
