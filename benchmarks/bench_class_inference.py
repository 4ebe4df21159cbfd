"""Time of inferring the class for inpainting (`inpainting.class_posterior`) on held-out MNIST digits.

    python benchmarks/bench_class_inference.py --run RUN --threads 1 \\
        --json benchmarks/results/cpu-class-inference-speed.json --posterior posterior.npy

RUN: the run `bench_maskgit.py inpaint` trains (or any run with a class-conditional prior over
the mnist preset's codes). Digits: the same fixed subset of --num MNIST test digits as
`bench_maskgit.py inpaint`, lower half (pixel rows 14-27) blanked before encoding, the default
code mask. Times `class_posterior` on the whole batch (what `vqvae inpaint` runs for a folder of
--num images) and on one image (what it runs for a single image), best of --repeats, and writes
the posterior to --posterior (.npy) so that two versions of the code can be compared: run the
script once per version (PYTHONPATH) and compare the two files (`--compare OTHER.npy`).
--pass-sizes N,M,...: also time the batch with N (M, ...) code maps per forward pass
(`kept_log_likelihood(..., rows_per_pass=N)`; the default comes from `likelihood_rows_per_pass`).
The machine may be shared and loaded: timings compare only within one series of runs.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

import vqvae
from vqvae.data import load_dataset
from vqvae.inpainting import class_posterior, code_mask
from vqvae.runs import load_prior, load_vqvae

from result_file import print_and_write

HERE = Path(__file__).resolve().parent
MNIST_TEST = next((p for p in (HERE.parent.parent / "shared" / "data" / "mnist", Path("/work/shared/data/mnist"))
                   if p.is_dir()), HERE.parent.parent / "shared" / "data" / "mnist")


def best_seconds(fn, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(round(time.perf_counter() - t0, 3))
    return min(times), times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True)
    parser.add_argument("--num", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--single-repeats", type=int, default=10, help="repeats of the one-image case")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--test-data", default=str(MNIST_TEST))
    parser.add_argument("--posterior", help="write the batch's posterior (B, C) here (.npy)")
    parser.add_argument("--compare", help="a --posterior file of another version: report the largest difference")
    parser.add_argument("--pass-sizes", default="", help="comma-separated maps per forward pass to time as well")
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run = Path(args.run)
    vqvae_model, config = load_vqvae(run, "cpu")
    prior, _, _ = load_prior(run, "cpu")
    test = load_dataset(str(args.test_data), config.data)
    order = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:args.num]  # bench_maskgit's subset
    images = torch.stack([test[int(i)][0] for i in order])
    mask = torch.zeros(28, 28, dtype=torch.bool)
    mask[14:] = True
    codes = vqvae_model.codes(images.masked_fill(mask, 0).float() / 255)
    masked = code_mask(mask, vqvae_model.latent_size).expand_as(codes)
    posterior = class_posterior(prior, codes, masked)
    batch_s, batch_all = best_seconds(lambda: class_posterior(prior, codes, masked), args.repeats)
    one_s, one_all = best_seconds(lambda: class_posterior(prior, codes[:1], masked[:1]), args.single_repeats)
    source = Path(vqvae.__file__).resolve().parent
    commit = subprocess.run(["git", "-C", str(source), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    out = {"what": "seconds of inpainting.class_posterior (class inference for inpainting), best of repeats",
           "run": str(run), "prior_kind": prior.config.kind, "classes": prior.spec.num_classes,
           "code_map": list(codes.shape[1:]), "codes_kept_per_map": int((~masked[0]).sum()),
           "code": {"source": str(source), "commit": commit},
           "batch": {"images": len(codes), "seconds": batch_s, "all_repeats": batch_all},
           "one_image": {"seconds": one_s, "all_repeats": one_all},
           "argmax_is_label": round((posterior.argmax(1) == test.labels[order]).float().mean().item(), 4),
           "torch_threads": torch.get_num_threads(),
           "machine": "a shared, loaded 2-core CPU machine (other benchmarks running); nice 10; timings compare "
                      "only within one series of runs"}
    if args.pass_sizes:  # imported here: the per-class code this is compared with has neither
        from vqvae.inpainting import kept_log_likelihood, likelihood_rows_per_pass
        every_class = torch.arange(prior.spec.num_classes)[:, None].expand(-1, len(codes))
        out["batch_by_maps_per_pass"] = {
            n: best_seconds(lambda: kept_log_likelihood(prior, codes, masked, every_class, rows_per_pass=n),
                            args.repeats)[0] for n in (int(v) for v in args.pass_sizes.split(","))}
        out["default_maps_per_pass"] = likelihood_rows_per_pass(prior, len(codes), codes[0].numel() + 1, "cpu")
    if args.posterior:
        np.save(args.posterior, posterior.numpy())
    if args.compare:
        other = torch.from_numpy(np.load(args.compare))
        out["compared_with"] = {"file": args.compare, "max_abs_posterior_difference": float((posterior - other).abs().max()),
                                "same_argmax": bool(torch.equal(posterior.argmax(1), other.argmax(1)))}
    print_and_write(out, args.json)


if __name__ == "__main__":
    sys.exit(main())
