"""Nearest-code search at large codebooks: exact fp32 against TF32/bf16 shortlists re-checked in fp32.

    python benchmarks/bench_codebook_search.py --device cuda          # about 30 s on an H100/H200
    python benchmarks/bench_codebook_search.py --device cpu --quick   # a smoke run

For K = 8,192 and 16,384 codes of 256 dims and 128 x 32 x 32 = 131,072 vectors, times (CUDA
events, median of --reps after warm-up):

- `fp32`: today's search, `addmm` + argmin in full fp32 (TF32 off), in 65,536-row chunks;
- `tf32+recheck`, `bf16+recheck`: the low-precision distance matmul, the best 4 candidates per
  vector, and their exact fp32 distances (`vqvae.models.codebook_search`);
- `matmul_tf32`, `matmul_bf16`: the bare (N, 256) x (256, K) matmul in that precision, the bound
  any search built on it has on this card.

Then the whole quantizer step a training run takes (`VectorQuantizer` in training mode, EMA
updates: search, statistics, lookup) on (128, 256, 32, 32) encoder outputs with each
`quantizer.search_precision`.

And agreement with the fp32 search: the fraction of vectors given the same code, and whether every
disagreement is a near-tie (the two codes' float64 distances within 1e-5 of ||z||^2 + ||e||^2, the
size of fp32 rounding in ||e||^2 - 2 z.e). Two kinds of vectors: `gaussian` (z ~ N(0, 1), codes
~ N(0, 1): many codes at similar distances) and `clustered` (z = a random code + N(0, 0.3^2)).
Prints one JSON document (and writes it to --out).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from vqvae.config import QuantizerConfig
from vqvae.models.codebook_search import _tf32_matmul, nearest_codes_fast
from vqvae.models.quantizer import VectorQuantizer, nearest_codes


def timed(fn, device: torch.device, reps: int) -> float:
    """Median milliseconds of `fn()` after two warm-up calls."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t = time.perf_counter()
            fn()
            times.append(1000 * (time.perf_counter() - t))
    return round(statistics.median(times), 3)


def agreement(flat, codebook, chosen, reference) -> dict:
    differ = (chosen != reference).nonzero().flatten()
    out = {"agree_fraction": round(1 - len(differ) / len(reference), 6), "disagreements": len(differ)}
    if len(differ):
        z = flat[differ].double()
        d_new = ((z - codebook[chosen[differ]].double()) ** 2).sum(1)
        d_ref = ((z - codebook[reference[differ]].double()) ** 2).sum(1)
        tolerance = 1e-5 * (z.pow(2).sum(1) + codebook.double().pow(2).sum(1).max())
        gap = (d_new - d_ref).abs()
        out.update(all_near_ties=bool((gap <= tolerance).all()), max_gap=float(gap.max()),
                   max_gap_over_tolerance=round(float((gap / tolerance).max()), 4))
    else:
        out["all_near_ties"] = True
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="small sizes (CPU smoke run)")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()
    device = torch.device(args.device)
    n, dim, sizes = (4096, 64, [512, 1024]) if args.quick else (128 * 32 * 32, 256, [8192, 16384])
    g = torch.Generator(device=device).manual_seed(0)
    results = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "torch": torch.__version__, "vectors": n, "dim": dim, "candidates": args.candidates, "runs": []}
    for K in sizes:
        codebook = torch.randn(K, dim, device=device, generator=g)
        data = {"gaussian": torch.randn(n, dim, device=device, generator=g),
                "clustered": codebook[torch.randint(0, K, (n,), device=device, generator=g)]
                + 0.3 * torch.randn(n, dim, device=device, generator=g)}
        row = {"codes": K, "ms": {}, "agreement": {}}
        flat = data["gaussian"]
        row["ms"]["fp32"] = timed(lambda: nearest_codes(flat, codebook), device, args.reps)
        for precision in ("tf32", "bf16"):
            row["ms"][f"{precision}+recheck"] = timed(
                lambda: nearest_codes_fast(flat, codebook, precision, args.candidates), device, args.reps)
        with _tf32_matmul(device.type == "cuda"):
            row["ms"]["matmul_tf32"] = timed(lambda: flat @ codebook.t(), device, args.reps)
        low, low_codes = flat.bfloat16(), codebook.bfloat16()
        row["ms"]["matmul_bf16"] = timed(lambda: low @ low_codes.t(), device, args.reps)
        for name, vectors in data.items():
            reference = nearest_codes(vectors, codebook)
            for precision in ("tf32", "bf16"):
                chosen = nearest_codes_fast(vectors, codebook, precision, args.candidates)
                row["agreement"][f"{name}/{precision}"] = agreement(vectors, codebook, chosen, reference)
        batch = flat.view(-1, 32 * 32 if not args.quick else 64, dim).transpose(1, 2)  # (B, C, h*w)
        batch = batch.reshape(batch.shape[0], dim, *((32, 32) if not args.quick else (8, 8))).contiguous()
        for precision in ("fp32", "tf32", "bf16"):
            quantizer = VectorQuantizer(dim, QuantizerConfig(codebook_size=K, update="ema", init="uniform",
                                                             search_precision=precision)).to(device).train()
            quantizer.codebook.data.copy_(codebook)
            quantizer.ema_embed_sum.copy_(codebook)
            row["ms"][f"quantizer_step_{precision}"] = timed(lambda: quantizer(batch), device, args.reps)
        results["runs"].append(row)
        print(json.dumps(row), flush=True)
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
