"""Prior sampling speed: the incremental sampler against one full network pass per position
(the seed's way), same model, same batch, same process.

    python benchmarks/bench_sampling.py            # about 5 minutes on 2 CPU cores

Cases: the `mnist` preset's prior (8 layers x 64 channels) and the seed's (15 x 128) over 7x7
maps of 32 codes, and the `celeba-hq-128` preset's (15 x 128) over 32x32 maps of 64 codes.
Weights are random: speed does not depend on them. Prints one JSON line per case.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from vqvae.config import get_preset
from vqvae.models import GatedPixelCNN, PriorSpec


def timed(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads; 0 keeps torch's default")
    ap.add_argument("--quick", action="store_true", help="smaller batches, for a smoke run")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = [("mnist prior 8x64, 7x7 codes", "mnist", 32, 7, 100),
             ("seed prior 15x128, 7x7 codes", "seed-mnist", 32, 7, 100),
             ("celeba-hq-128 prior 15x128, 32x32 codes", "celeba-hq-128", 64, 32, 16)]
    for name, preset, codes, size, batch in cases:
        if args.quick:
            batch = max(2, batch // 8)
        torch.manual_seed(0)
        model = GatedPixelCNN(get_preset(preset).prior, PriorSpec(codes, size)).to(args.device).eval()
        gen = lambda: torch.Generator(device=args.device).manual_seed(0)  # noqa: E731
        fast_s = timed(lambda: model.sample(batch, generator=gen()), 2)
        # Every full pass does the same work, so at 32x32 (1,024 passes, about half an hour on 2
        # CPU cores) the first `timed_positions` passes are timed and scaled to the whole map.
        positions = size * size
        timed_positions = positions if positions <= 64 else 64
        full_s = timed(lambda: model.sample_full_pass(batch, generator=gen(), max_positions=timed_positions), 1)
        full_s *= positions / timed_positions
        print(json.dumps({"case": name, "device": args.device, "batch": batch,
                          "full_pass_positions_timed": f"{timed_positions} of {positions}",
                          "incremental_samples_per_s": round(batch / fast_s, 2),
                          "full_pass_samples_per_s": round(batch / full_s, 2),
                          "speedup": round(full_s / fast_s, 1),
                          "incremental_s": round(fast_s, 3), "full_pass_s": round(full_s, 3)}), flush=True)


if __name__ == "__main__":
    main()
