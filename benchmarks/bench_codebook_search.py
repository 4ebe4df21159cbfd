"""Nearest-code search at large codebooks: the fp32 search against the checked fp16 search.

    python benchmarks/bench_codebook_search.py --device cuda          # about 40 s on an H100
    python benchmarks/bench_codebook_search.py --device cpu --quick   # a smoke run (no timings worth quoting)
    python benchmarks/bench_codebook_search.py --device cuda --crossover   # where `fast` starts to pay (1 minute)

For 128 x 32 x 32 = 131,072 vectors of 256 dims and K = 1,024 to 16,384 codes (and 64 dims at
8,192), times in milliseconds (CUDA events, median of --reps after warm-up; the first call of the
Triton kernel at each size also picks its tile shape):

- `fp32`: `addmm` + argmin in full fp32 (TF32 off), in 65,536-row chunks (`search_precision=fp32`);
- `checked_triton`, `checked_torch`: the checked search (`vqvae.models.codebook_search`) with the
  fused Triton kernel, or with a cuBLAS fp16 matmul (fp32 out) and three reductions; both include
  the fp32 work on the vectors the margin leaves open. `checked_triton` is what `search_precision=fast`
  (the default) runs;
- `best_three_triton`, `best_three_torch`: the distance pass alone (the three smallest per vector);
- `to_half_triton`, `to_half_torch`: scaling and rounding the vectors, with the norms the bound needs;
- `matmul_fp16`: the bare (N, C) x (C, K) fp16 matmul with an fp32 output: the bound any search
  built on it has on this card; `matmul_fp32`: the same in fp32;
- `triton_tiles`: every tile shape the kernel's autotuner tries, timed one by one.

Then the quantizer step a training run takes (`VectorQuantizer`, training mode, EMA updates:
search, statistics, lookup) on (128, C, 32, 32) encoder outputs with each `search_precision`, and a
whole training step (bf16 forward, backward, Adam) of the celeba-hq-128 preset's model (32 x 32
latents of 128 dims, batch 64) at 8,192 and 16,384 codes with each.

Correctness, on two kinds of vectors: `gaussian` (z ~ N(0, 1), codes ~ N(0, 1): many codes at
similar distances: the hard case) and `clustered` (z = a random code + N(0, 0.3^2), what a
trained VQ-VAE's encoder gives):
- `bound`: on the card's own fp16 matmul, the largest |d~ - d| over the margin (must be <= 1),
  with d in float64, over the first 4,096 vectors and every code;
- `two_candidates`: the fraction of vectors the margin left to two codes (compared in fp32), and
  `fp32_search`: the fraction searched again with the full fp32 search;
- `agree_fraction` with the fp32 search, and whether every disagreement is a near-tie (the two
  codes' float64 distances within 1e-5 of ||z||^2 + max ||e||^2, the size of fp32 rounding in
  ||e||^2 - 2 z.e, and tighter than the search's own fp32 slack); `decided_exact`: whether every
  vector not sent to the fp32 search got its float64 nearest code.
- `accumulation_error_over_term` (CUDA): how much of the bound's allowance for fp32 sums the card's
  tensor cores use, on inputs exact in fp16 (must be <= 1; round-to-nearest would use ~0.01).
Prints one JSON document (and writes it to --out).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch

from vqvae.config import QuantizerConfig
from vqvae.models.codebook_search import (BY_FP32_SEARCH, BY_TWO_CANDIDATES, best_three_torch, checked_search,
                                          fp16_distances, largest_entry, margins, power_of_two_scale, to_half,
                                          triton_available)
from vqvae.models.quantizer import VectorQuantizer, nearest_codes

from result_file import print_and_write


def triton_version() -> str:
    import triton

    return triton.__version__


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


def half(x: torch.Tensor):
    """x scaled and rounded as the checked search does."""
    return to_half(x, power_of_two_scale(largest_entry(x)))


def attempt(fn):
    """fn(), or the error it raised as text: one failing variant must not lose the other figures."""
    try:
        return fn()
    except Exception as error:  # noqa: BLE001 - reported in the JSON
        return {"error": f"{type(error).__name__}: {error}"[:500]}


def exact_nearest(flat: torch.Tensor, codebook: torch.Tensor, rows: int = 8192) -> torch.Tensor:
    """float64 nearest codes, in chunks (the full (N, K) float64 matrix would not fit)."""
    codebook = codebook.double()
    out = []
    for start in range(0, len(flat), rows):
        out.append(torch.cdist(flat[start:start + rows].double(), codebook).argmin(1))
    return torch.cat(out)


def agreement(flat, codebook, chosen, reference, how) -> dict:
    differ = (chosen != reference).nonzero().flatten()
    decided = (how != BY_FP32_SEARCH).nonzero().flatten()
    exact = exact_nearest(flat[decided], codebook)
    out = {"two_candidates": round(float((how == BY_TWO_CANDIDATES).float().mean()), 5),
           "fp32_search": round(float((how == BY_FP32_SEARCH).float().mean()), 5),
           "agree_fraction": round(1 - len(differ) / len(reference), 6), "disagreements": len(differ),
           "decided_exact": bool(torch.equal(exact, chosen[decided]))}
    if len(differ):
        z = flat[differ].double()
        d_new = ((z - codebook[chosen[differ]].double()) ** 2).sum(1)
        d_ref = ((z - codebook[reference[differ]].double()) ** 2).sum(1)
        tolerance = 1e-5 * (z.pow(2).sum(1) + codebook.double().pow(2).sum(1).max())
        gap = (d_new - d_ref).abs()
        out.update(all_near_ties=bool((gap <= tolerance).all()), max_gap_over_tolerance=round(float((gap / tolerance).max()), 4))
    else:
        out["all_near_ties"] = True
    return out


def bound_check(flat, codebook, rows: int = 4096) -> float:
    """max |d~ - d| / margin over `rows` vectors and every code, d~ from this device's fp16 matmul."""
    z, codes = half(flat[:rows]), half(codebook)
    code_norms = (codebook * codebook).sum(1)
    alpha = -2.0 / (z.scale * codes.scale)
    low = fp16_distances(z, codes, code_norms, alpha)
    exact = (codebook.double() ** 2).sum(1) - 2 * flat[:rows].double() @ codebook.double().t()
    return round(float(((low.double() - exact).abs() / margins(z, codes, code_norms, alpha).double()[:, None]).max()), 4)


def train_step_ms(device: torch.device, codes: int, precision: str, reps: int, quick: bool) -> float:
    """One training step (bf16 autocast forward, backward, Adam) of the celeba-hq-128 preset's model
    (32 x 32 latents of 128 dims, batch 64) with `codes` codes and this search precision."""
    from vqvae.config import load_config
    from vqvae.models import VQVAE

    cfg = load_config("celeba-hq-128" if not quick else "tiny",
                      [f"quantizer.codebook_size={codes}", f"quantizer.search_precision={precision}",
                       "quantizer.init=uniform"])
    torch.manual_seed(0)
    model = VQVAE(cfg.model, cfg.quantizer).to(device).train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    x = torch.rand(64 if not quick else 8, cfg.model.in_channels, cfg.model.image_size, cfg.model.image_size,
                   device=device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out = model(x)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()

    return timed(step, device, reps)


def accumulation_check(device: torch.device) -> dict:
    """How much of the margin's accumulation term (2 C 2^-23 |z~| |e~|) the card's fp32 sums of fp16
    products use, on inputs exact in fp16 (so rounding the inputs costs nothing): one large product
    followed by many just under an ulp of it (a truncating adder drops them), and random ones.
    Largest |d~ - d| over the term, for cuBLAS and for the Triton kernel's best distance."""
    g = torch.Generator(device=device).manual_seed(2)
    cases = {}
    for dims in (256, 4096):
        adversarial = torch.full((128, dims), 2.8125, device=device)
        adversarial[:, 0] = 8192
        cases[f"truncating, {dims} dims"] = (adversarial, adversarial[:64].clone())
        cases[f"random, {dims} dims"] = tuple((torch.rand(n, dims, device=device, generator=g) * 2 - 1).mul(8192)
                                              .half().float() for n in (128, 512))
    out = {}
    for name, (z, e) in cases.items():
        zh, eh = half(z), half(e)
        sq_norms = (e * e).sum(1)
        alpha = -2.0 / (zh.scale * eh.scale)
        exact = (e.double() ** 2).sum(1) - 2 * z.double() @ e.double().t()
        term = abs(alpha) * z.shape[1] * 2 * 2.0 ** -23 * zh.norms.double()[:, None] * float(eh.norms.max())
        low = fp16_distances(zh, eh, sq_norms, alpha).double()
        row = {"cublas": round(float(((low - exact).abs() / term).max()), 4)}
        if triton_available():
            from vqvae.models.codebook_search_triton import best_three_triton

            found = best_three_triton(zh.values, eh.values.t().contiguous(), sq_norms, alpha)
            row["triton"] = round(float(((found.best.double() - exact.min(1).values).abs() / term[:, 0]).max()), 4)
        out[name] = row
    return out


def crossover(device: torch.device, reps: int, dims=(64, 256), sizes=(1024, 2048, 4096, 8192),
              counts=(8192, 32768, 131072)) -> list[dict]:
    """fp32 against the checked search over a grid of vectors x codes x dims (clustered vectors):
    where `search_precision=fast` starts to pay (codebook_search.FAST_MIN_WORK)."""
    g = torch.Generator(device=device).manual_seed(1)
    rows = []
    for dim in dims:
        for K in sizes:
            codebook = torch.randn(K, dim, device=device, generator=g)
            for n in counts:
                flat = codebook[torch.randint(0, K, (n,), device=device, generator=g)] + 0.3 * torch.randn(
                    n, dim, device=device, generator=g)
                fp32 = timed(lambda: nearest_codes(flat, codebook), device, reps)
                fast = attempt(lambda: timed(lambda: checked_search(flat, codebook), device, reps))
                rows.append({"vectors": n, "codes": K, "dim": dim, "work_log2": round(math.log2(n * K * dim), 1),
                             "fp32_ms": fp32, "checked_ms": fast,
                             "speedup": round(fp32 / fast, 2) if isinstance(fast, float) else None})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="small sizes (CPU smoke run)")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--out", help="also write the JSON here")
    parser.add_argument("--crossover", action="store_true",
                        help="only the grid of sizes that sets where the checked search starts to pay")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.crossover:
        results = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                   "torch": torch.__version__,
                   "crossover": crossover(device, args.reps) if not args.quick else crossover(device, 1, (16,), (64,), (256,))}
        if args.out:
            Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
        return
    cuda = device.type == "cuda"
    use_triton = cuda and triton_available()
    n, sizes = (4096, [(512, 64), (1024, 32)]) if args.quick else (
        128 * 32 * 32, [(1024, 256), (4096, 256), (8192, 256), (16384, 256), (8192, 64)])
    g = torch.Generator(device=device).manual_seed(0)
    results = {"device": torch.cuda.get_device_name(device) if cuda else "cpu", "torch": torch.__version__,
               "triton": triton_version() if use_triton else None, "vectors": n, "runs": []}
    if cuda:
        results["accumulation_error_over_term"] = attempt(lambda: accumulation_check(device))
        print(json.dumps(results["accumulation_error_over_term"]), flush=True)
    for K, dim in sizes:
        codebook = torch.randn(K, dim, device=device, generator=g)
        data = {"gaussian": torch.randn(n, dim, device=device, generator=g),
                "clustered": codebook[torch.randint(0, K, (n,), device=device, generator=g)]
                + 0.3 * torch.randn(n, dim, device=device, generator=g)}
        row = {"codes": K, "dim": dim, "ms": {}, "correctness": {}}
        for name, flat in data.items():
            ms = row["ms"][name] = {}
            ms["fp32"] = timed(lambda: nearest_codes(flat, codebook), device, args.reps)
            kernels = ["triton", "torch"] if use_triton else ["torch"]
            for kernel in kernels:
                ms[f"checked_{kernel}"] = attempt(lambda: timed(lambda: checked_search(flat, codebook, kernel), device,
                                                               args.reps))
            z, codes = half(flat), half(codebook)
            norms = (codebook * codebook).sum(1)
            alpha = -2.0 / (z.scale * codes.scale)
            ms["to_half_torch"] = timed(lambda: half(flat), device, args.reps)
            ms["best_three_torch"] = timed(lambda: best_three_torch(z, codes, norms, alpha), device, args.reps)
            if use_triton:
                from vqvae.models.codebook_search_triton import CONFIGS, best_three_triton, to_half_triton

                codes_t = codes.values.t().contiguous()
                ms["to_half_triton"] = attempt(lambda: timed(lambda: to_half_triton(flat, power_of_two_scale(largest_entry(flat))),
                                                             device, args.reps))
                ms["best_three_triton"] = attempt(lambda: timed(
                    lambda: best_three_triton(z.values, codes_t, norms, alpha), device, args.reps))
                if name == "gaussian":
                    ms["triton_tiles"] = {
                        "x".join(str(v) for v in c.kwargs.values()) + f"/w{c.num_warps}/s{c.num_stages}":
                            attempt(lambda: timed(lambda: best_three_triton(z.values, codes_t, norms, alpha,
                                                                          config=dict(c.kwargs)), device, args.reps))
                        for c in CONFIGS}
            if cuda and name == "gaussian":
                low, low_codes = z.values, codes.values.t()
                ms["matmul_fp16"] = timed(lambda: torch.mm(low, low_codes, out_dtype=torch.float32), device, args.reps)
                ms["matmul_fp32"] = timed(lambda: flat @ codebook.t(), device, args.reps)
            reference = nearest_codes(flat, codebook)
            for kernel in kernels:
                found = attempt(lambda: checked_search(flat, codebook, kernel))
                check = found if isinstance(found, dict) else agreement(flat, codebook, found[0], reference, found[1])
                row["correctness"][f"{name}/{kernel}"] = check
            row["correctness"][f"{name}/bound"] = attempt(lambda: bound_check(flat, codebook))
        batch = data["clustered"].view(-1, 32 * 32 if not args.quick else 64, dim).transpose(1, 2)
        batch = batch.reshape(batch.shape[0], dim, *((32, 32) if not args.quick else (8, 8))).contiguous()
        for precision in ("fp32", "fast"):
            quantizer = VectorQuantizer(dim, QuantizerConfig(codebook_size=K, update="ema", init="uniform",
                                                             search_precision=precision)).to(device).train()
            quantizer.codebook.data.copy_(codebook)
            quantizer.ema_embed_sum.copy_(codebook)
            row["ms"][f"quantizer_step_{precision}"] = attempt(lambda: timed(lambda: quantizer(batch), device, args.reps))
        results["runs"].append(row)
        print(json.dumps(row), flush=True)
    # The whole training step of a model with 32 x 32 latents: how much of it the search is.
    results["train_step_ms"] = {f"{codes} codes/{precision}": attempt(lambda: train_step_ms(device, codes, precision,
                                                                                             args.reps, args.quick))
                                for codes in ((8192, 16384) if not args.quick else (512,)) for precision in ("fp32", "fast")}
    print(json.dumps(results["train_step_ms"]), flush=True)
    print_and_write(results, args.out)


if __name__ == "__main__":
    main()
