"""MaskGIT: sampling speed against the cached autoregressive transformer, and inpainting on held-out MNIST.

    python benchmarks/bench_maskgit.py speed --json benchmarks/results/cpu-maskgit-sampling-speed.json
    python benchmarks/bench_maskgit.py speed --device cuda --batch 64 --json benchmarks/results/h200-maskgit-sampling-speed-b64.json
    python benchmarks/bench_maskgit.py inpaint --run runs/maskgit-mnist \\
        --json benchmarks/results/cpu-maskgit-inpainting.json --png benchmarks/results/cpu-maskgit-inpainting.png

1. `speed`: 32x32 code maps, 512 codes, both priors 4 blocks of width 128 with 4 heads (the same
   blocks; MaskGIT without the causal mask), untrained (the time of a draw does not depend on the
   weights): seconds per batch of MaskGIT with 8 steps and of the transformer's KV-cached sampler,
   the best of a few repeats, and their ratio. --device cuda: on a GPU (each draw timed between
   device synchronisations; the first draw of each is an untimed warm-up).
2. `inpaint`: trains (unless --run holds one) an mnist-preset VQ-VAE at a small CPU budget and a
   class-conditional MaskGIT prior with label dropout on its codes, through `api.train_vqvae` and
   `api.train_prior`, then inpaints the lower half (rows 14-27, blanked) of --num held-out digits
   from the 10,000 MNIST test images (a fixed random subset) with `inpainting.inpaint_images`, the
   function `vqvae inpaint` runs, in four modes: no class in the prior's unconditional mode
   (`--class none`), no class with the class inferred from the kept codes (`inpainting.infer_classes`,
   what `vqvae inpaint` does without --class; --class-choice argmax or sample), the digit's own class,
   and another class c = (class + 1 + k) mod 10, k random. --modes runs some of them; --run may also
   hold an autoregressive prior (pixelcnn, transformer; --steps and --choice-temperature unused).
   Figures: the fraction of re-drawn code positions whose code differs from the original (unblanked) digit's; the
   fraction classified as the original class (as c for the edit) by the calibrated score's
   classifier (trained on the run's training split, as `evaluate` trains it); the seam, the mean
   absolute difference between pixel rows 13 and 14 (across the mask's edge) against the same
   statistic of the real digits; and, for the code-mask rule, how often blanking the lower half
   changes the codes of each code row (rows the rule keeps vs rows it re-draws). For the edit, a
   reference: the lower half of the training digit of class c whose upper half is nearest (L2 in
   pixels), pasted under the kept half, and how often the scorer calls that c. --margin sets the
   code-mask rule's margin (pixels) for the whole run.
The machine may be shared and loaded: timings are only comparable within one run.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from vqvae import api
from vqvae.config import PriorConfig, load_config
from vqvae.data import load_dataset, load_splits
from vqvae.figures import save_grid
from vqvae.inpainting import code_mask, inpaint_images, receptive_field
from vqvae.metrics.sample_quality import load_or_train_classifier, predict
from vqvae.models import MaskGITPrior, PriorSpec, TransformerPrior
from vqvae.runs import load_prior, load_vqvae, read_metrics

from result_file import print_and_write

HERE = Path(__file__).resolve().parent
# The 10,000 MNIST test images as IDX files: beside the checkout (../shared), or the workspace's.
MNIST_TEST = next((p for p in (HERE.parent.parent / "shared" / "data" / "mnist", Path("/work/shared/data/mnist"))
                   if p.is_dir()), HERE.parent.parent / "shared" / "data" / "mnist")


def speed(args) -> dict:
    torch.manual_seed(0)
    spec = PriorSpec(codebook_size=512, latent_size=32)
    width = dict(num_layers=4, hidden_channels=128, num_heads=4)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    maskgit = MaskGITPrior(PriorConfig(kind="maskgit", **width), spec).eval().to(device)
    transformer = TransformerPrior(PriorConfig(kind="transformer", **width), spec).eval().to(device)
    cuda = device.type == "cuda"

    def best_time(fn, repeats):
        if cuda:  # kernels' first launches and the allocator's warm-up stay out of the times
            fn()
            torch.cuda.synchronize(device)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            if cuda:
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t0)
        return min(times), times

    g = torch.Generator(device=device).manual_seed(0)
    mg, mg_all = best_time(lambda: maskgit.sample(args.batch, steps=8, generator=g), args.repeats)
    ar, ar_all = best_time(lambda: transformer.sample(args.batch, generator=g), args.repeats)
    return {"what": "seconds to draw one batch of 32x32 code maps (512 codes); best of repeats",
            "model": {**width, "codebook_size": 512, "latent_size": 32,
                      "parameters_maskgit": sum(p.numel() for p in maskgit.parameters()),
                      "parameters_transformer": sum(p.numel() for p in transformer.parameters())},
            "batch": args.batch, "torch_threads": torch.get_num_threads(), "device": args.device,
            **({"gpu": torch.cuda.get_device_name(device), "torch": torch.__version__} if cuda else {}),
            "maskgit_8_steps_s": round(mg, 3), "transformer_kv_cached_s": round(ar, 3),
            "speedup_maskgit_over_transformer": round(ar / mg, 2),
            "all_times_s": {"maskgit": [round(t, 3) for t in mg_all], "transformer": [round(t, 3) for t in ar_all]}}


def train_run(run: Path, args) -> dict:
    cfg = load_config("mnist", [f"train.epochs={args.vqvae_epochs}", "train.progress=false",
                                "prior.kind=maskgit", f"prior.num_layers={args.layers}",
                                f"prior.hidden_channels={args.width}", "prior.num_heads=4",
                                "prior.conditional=true", "prior.label_dropout=0.1", "prior.train_shifts=1",
                                f"prior_train.epochs={args.prior_epochs}", "prior_train.lr=2e-3",
                                "prior_train.warmup_steps=50", "prior_train.progress=false",
                                "prior_train.dropout=0.0", "train.device=cpu", "prior_train.device=cpu"])
    if not (run / "checkpoints" / "vqvae-best.pt").is_file():
        api.train_vqvae(cfg, run)
    t1 = time.perf_counter()
    api.train_prior(cfg, run)
    t2 = time.perf_counter()
    return {"prior_train_s": round(t2 - t1, 1),
            "settings": "mnist preset, train.epochs=%d; maskgit %dx%d, 4 heads, conditional, label dropout 0.1, "
                        "train_shifts 1, %d epochs at lr 2e-3 (cosine), batch 128" % (
                            args.vqvae_epochs, args.layers, args.width, args.prior_epochs)}


def seam(images: torch.Tensor, row: int) -> float:
    """Mean |x[row - 1] - x[row]| over columns and images, in [0, 1] units."""
    x = images.float() / 255
    return (x[:, :, row - 1] - x[:, :, row]).abs().mean().item()


def nearest_real_completion(images: torch.Tensor, classes: torch.Tensor, train_images: torch.Tensor,
                            train_labels: torch.Tensor, row: int) -> torch.Tensor:
    """A reference for editing: each image's rows from `row` on replaced by those of the training digit
    of the wanted class whose kept rows (above `row`) are nearest in pixels (L2). How often the scorer
    calls these class c says how far real digits of class c can continue the kept half."""
    top = images[:, :, :row].flatten(1).float()
    train_top = train_images[:, :, :row].flatten(1).float()
    distance = torch.cdist(top, train_top)  # (N, N_train)
    distance[train_labels[None] != classes[:, None]] = float("inf")
    nearest = distance.argmin(1)
    out = images.clone()
    out[:, :, row:] = train_images[nearest, :, row:]
    return out


def inpaint(args) -> dict:
    run = Path(args.run)
    out: dict = {"run": str(run)}
    if not (run / "checkpoints" / "prior-best.pt").is_file():
        out["training"] = train_run(run, args)
    metrics = read_metrics(run)
    out["vqvae_test"] = {**{k: metrics["vqvae"]["test"].get(k) for k in ("mse_clipped", "codes_used")},
                         "epochs": metrics["vqvae"]["epochs"], "train_seconds": metrics["vqvae"]["train_seconds"]}
    out["prior"] = {k: metrics["prior"].get(k) for k in ("kind", "best_val_masked_nats", "test_masked_nats",
                                                         "masked_nats_meaning", "epochs", "train_seconds")}
    vqvae, config = load_vqvae(run, "cpu")
    prior, prior_config, _ = load_prior(run, "cpu")
    out["prior"]["size"] = {k: getattr(prior_config.prior, k) for k in ("num_layers", "hidden_channels", "num_heads")}
    out["prior"]["kind"] = prior.config.kind
    train_set, val_set, _ = load_splits(config.data)
    # --heldout val: the run's validation split, for choosing sampling settings without the test digits.
    test = val_set if args.heldout == "val" else load_dataset(str(args.test_data), config.data)
    out["heldout"] = test.name
    order = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:args.num]
    images = torch.stack([test[int(i)][0] for i in order])  # uint8 (N, 1, 28, 28)
    labels = test.labels[order]
    classifier, info = load_or_train_classifier(train_set.tensor(), train_set.labels, val_set.tensor(),
                                                val_set.labels)
    out["classifier"] = {"heldout_accuracy": info.get("heldout_accuracy"), "trained_on": train_set.name}
    real_pred = predict(classifier, images.float() / 255).argmax(1)
    out["classifier"]["accuracy_on_these_real_digits"] = round((real_pred == labels).float().mean().item(), 4)

    mask = torch.zeros(28, 28, dtype=torch.bool)
    mask[14:] = True
    codes_mask = code_mask(mask, vqvae.latent_size, args.margin)
    original_codes = vqvae.codes(images.float() / 255)
    blanked_codes = vqvae.codes(images.masked_fill(mask, 0).float() / 255)
    changed_by_blanking = (original_codes != blanked_codes).float().mean((0, 2))  # per code row
    field = receptive_field(vqvae)
    out["code_mask"] = {
        "rule": "code re-drawn when a masked pixel lies in its 4x4 cell grown by %s pixels (%s)" % (
            2 if args.margin is None else args.margin, "default margin" if args.margin is None else "--margin"),
        "rows_redrawn": [int(r) for r in torch.nonzero(codes_mask.any(1)).flatten()],
        "codes_redrawn": int(codes_mask.sum()),
        "fraction_changed_by_blanking_per_code_row": [round(v, 4) for v in changed_by_blanking.tolist()],
        "encoder_receptive_field": {"size": field.size, "start": field.start, "stride": field.stride,
                                    "codes_it_would_redraw": int(code_mask(mask, vqvae.latent_size,
                                                                           field=field).sum())}}
    g = torch.Generator().manual_seed(1)
    other = (labels + 1 + torch.randint(0, 9, labels.shape, generator=g)) % 10
    modes = {"no_class": (None, 0.0), "inferred_class": (None, args.guidance), "own_class": (labels, args.guidance),
             "other_class": (other, args.guidance)}
    unknown = sorted(set(args.modes.split(",")) - set(modes))
    if unknown:
        raise SystemExit(f"--modes: unknown {', '.join(unknown)}; choose from {', '.join(modes)}")
    modes = {name: modes[name] for name in args.modes.split(",")}
    masked_prior = prior.config.kind == "maskgit"
    decoding = {"steps": args.steps, "choice_temperature": args.choice_temperature} if masked_prior else {}
    out["sampling"] = {**decoding, "temperature": 1.0, "guidance_with_a_class": args.guidance,
                       "class_choice_when_inferred": args.class_choice}
    out["seam_real_digits"] = round(seam(images, 14), 4)
    shown = [images[:10], images.masked_fill(mask, 0)[:10]]
    for name, (mode_labels, guidance) in modes.items():
        t0 = time.perf_counter()
        inferred = name == "inferred_class"
        given = mode_labels if mode_labels is not None or inferred else torch.zeros_like(labels)
        if name == "no_class" and prior.null_class is None:
            out[name] = "skipped: the prior has no unconditional mode (no label dropout)"
            continue
        if prior.null_class is None:
            guidance = 1.0  # no unconditional mode: no guidance
        result = inpaint_images(vqvae, prior, images, mask, given, args.margin,
                                generator=torch.Generator().manual_seed(2), guidance=guidance,
                                class_choice=args.class_choice if inferred else None, **decoding)
        seconds = time.perf_counter() - t0
        assert torch.equal(result.images[:, :, :14], images[:, :, :14])  # kept pixels, bit for bit
        predicted = predict(classifier, result.images.float() / 255).argmax(1)
        target = other if name == "other_class" else labels
        differs = (result.codes != original_codes)[:, codes_mask].float().mean().item()
        out[name] = {"classified_as_" + ("c" if name == "other_class" else "original_class"):
                     round((predicted == target).float().mean().item(), 4),
                     "redrawn_codes_differing_from_original": round(differs, 4),
                     "seam": round(seam(result.images, 14), 4), "seconds": round(seconds, 2)}
        if name == "other_class":
            out[name]["classified_as_original_class"] = round((predicted == labels).float().mean().item(), 4)
            pasted = nearest_real_completion(images, other, train_set.tensor(), train_set.labels, 14)
            pasted_as_c = (predict(classifier, pasted.float() / 255).argmax(1) == other).float().mean().item()
            out[name]["real_completion_classified_as_c"] = round(pasted_as_c, 4)
        if inferred:
            out[name]["inferred_class_equals_label"] = round((result.classes == labels).float().mean().item(), 4)
            out[name]["mean_posterior_of_inferred_class"] = round(result.class_probability.mean().item(), 4)
            out[name]["classified_as_inferred_class"] = round((predicted == result.classes).float().mean().item(), 4)
            out[name]["guidance"] = guidance
        shown.append(result.images[:10])
    if args.png:
        save_grid(torch.cat(shown).float() / 255, Path(args.png), nrow=10)
        out["png"] = "rows: original, blanked lower half, then one row per mode: " + ", ".join(modes)
    out["num_digits"] = len(images)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="part", required=True)
    p = sub.add_parser("speed")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--json")
    p = sub.add_parser("inpaint")
    p.add_argument("--run", required=True)
    p.add_argument("--num", type=int, default=500)
    p.add_argument("--heldout", choices=("test", "val"), default="test")
    p.add_argument("--test-data", default=str(MNIST_TEST), help="held-out digits (default: the MNIST test split)")
    p.add_argument("--vqvae-epochs", type=int, default=8)
    p.add_argument("--prior-epochs", type=int, default=2)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--choice-temperature", type=float, default=4.5)
    p.add_argument("--guidance", type=float, default=2.0, help="with a class given or inferred")
    p.add_argument("--class-choice", default="argmax", help="inferred_class mode: argmax or sample")
    p.add_argument("--margin", type=int, help="pixels of the code-mask rule (default: half a code cell)")
    p.add_argument("--modes", default="no_class,inferred_class,own_class,other_class",
                   help="comma-separated, from no_class, inferred_class, own_class, other_class")
    p.add_argument("--png")
    p.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    result = speed(args) if args.part == "speed" else inpaint(args)
    on_gpu = args.part == "speed" and args.device != "cpu"
    result["machine"] = (f"one {torch.cuda.get_device_name(torch.device(args.device))} GPU; fp32" if on_gpu else
                         "a shared 2-core CPU machine loaded by other jobs; torch threads 1; "
                         "timings compare only within this run")
    print_and_write(result, args.json)


if __name__ == "__main__":
    sys.exit(main())
