"""MSE-only against the VQGAN losses (L1 + PatchGAN hinge with taming's adaptive weight, and
LPIPS when its VGG16 weights are on disk), at the same architecture, on CIFAR-10.

    python benchmarks/bench_gan_losses.py --out benchmarks/results/cpu-gan-losses-cifar10.json \
        --grid benchmarks/results/cpu-gan-losses-cifar10-grid.png

Both models are the `cifar10` preset's VQ-VAE (32x32x3 -> 8x8 codes of 512); they differ only in
`loss.*` and Adam's betas (taming's 0.5, 0.9 for the GAN). The GAN run gets as many epochs as fit
in the MSE run's measured training time (its steps cost more: a discriminator forward and
backward, and the adaptive weight's two extra gradients), so both train for the same time.
Training images: a class-balanced subset of CIFAR-10's train folder; the best checkpoint is
chosen on a validation split carved from it; figures are on CIFAR-10's test folder.

Figures: PSNR (of the dataset's MSE on clipped outputs, and the mean of per-image PSNR on 8-bit
images), SSIM (Gaussian 11x11, sigma 1.5, as torchmetrics and the SSIM paper), codebook usage, and
a texture measure an MSE-trained model cannot game: the ratio of the reconstructions' to the
originals' high-frequency power (the finest level of a Laplacian pyramid; 1 = as much fine detail
as the originals, below 1 = blurred), plus the metrics module's calibrated texture distance when
the installed toolkit has one. A grid shows test images, the MSE model's and the GAN's
reconstructions. Prints and writes one JSON document.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vqvae import api
from vqvae.config import load_config
from vqvae.data import ImageSet
from vqvae.figures import save_grid
from vqvae.metrics.codebook import codebook_stats


def load_folder(root: Path, per_class: int, seed: int) -> ImageSet:
    """`per_class` images of each class subfolder (a seeded choice), as one uint8 tensor."""
    rng = np.random.default_rng(seed)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    images, labels = [], []
    for c, name in enumerate(classes):
        files = sorted((root / name).glob("*.jpg"))
        for i in sorted(rng.choice(len(files), min(per_class, len(files)), replace=False)):
            images.append(np.asarray(Image.open(files[i]).convert("RGB")))
            labels.append(c)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return ImageSet(f"cifar10-{root.name}-{len(x)}", 32, 3, images=x, labels=torch.tensor(labels),
                    class_names=tuple(classes))


def laplacian(x: torch.Tensor) -> torch.Tensor:
    """The finest Laplacian-pyramid level: x minus its 5-tap binomial blur."""
    k1 = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16
    k = (k1[:, None] * k1[None, :]).expand(x.shape[1], 1, 5, 5)
    return x - F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), k, groups=x.shape[1])


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    from torchmetrics.functional.image import structural_similarity_index_measure

    return structural_similarity_index_measure(y, x, data_range=1.0, reduction="none")


@torch.no_grad()
def measure(model, test: ImageSet, batch: int = 500) -> tuple[dict, torch.Tensor]:
    model.eval()
    xs, ys, counts = [], [], torch.zeros(model.quantizer.usage_size, dtype=torch.long)
    for start in range(0, len(test), batch):
        x = test.images[start:start + batch].float() / 255
        out = model(x)
        xs.append(x)
        ys.append(out.reconstruction.float().clamp(0, 1))
        counts += model.quantizer.usage_counts(out.indices)
    x, y = torch.cat(xs), torch.cat(ys)
    x8, y8 = (x * 255).round(), (y * 255).round()
    per_image_mse = ((x8 - y8) / 255).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    figures = {"psnr_dataset_mse_db": 10 * torch.log10(1 / F.mse_loss(y, x)).item(),
               "psnr_mean_per_image_8bit_db": (10 * torch.log10(1 / per_image_mse)).mean().item(),
               "ssim_gaussian11": ssim(x, y).mean().item(),
               "high_frequency_power_ratio": (laplacian(y).pow(2).mean() / laplacian(x).pow(2).mean()).item(),
               **codebook_stats(counts)}
    try:  # the metrics helper's calibrated texture distance, when this toolkit has it
        from vqvae.metrics import texture
        figures["texture_module"] = {k: v for k, v in texture.calibrated_texture(x[: len(x) // 2], x[len(x) // 2:],
                                                                              y[len(x) // 2:]).items()}
    except (ImportError, AttributeError, TypeError) as e:
        figures["texture_module"] = f"unavailable: {type(e).__name__}"
    return figures, y


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="/work/data/cifar10")
    p.add_argument("--train-per-class", type=int, default=1000)
    p.add_argument("--test-per-class", type=int, default=200)
    p.add_argument("--epochs", type=int, default=4, help="epochs of the MSE model (the GAN gets the same time)")
    p.add_argument("--disc-start-fraction", type=float, default=0.25,
                   help="the discriminator starts after this fraction of the GAN run's steps")
    p.add_argument("--warmup-steps", type=int, default=20,
                   help="both runs' learning-rate warmup (the preset's 200 is most of a short run)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--grid", type=Path, required=True)
    p.add_argument("--runs", type=Path, default=Path("/tmp/bench-gan-losses"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    train = load_folder(Path(args.data) / "train", args.train_per_class, 0)
    test = load_folder(Path(args.data) / "test", args.test_per_class, 1)
    base = ["train.device=cpu", "train.progress=false", "data.num_workers=0", "train.amp=off",
            "train.channels_last=false", f"train.warmup_steps={args.warmup_steps}"]
    results, recons = {}, {}

    # MSE-only: the cifar10 preset as it is.
    mse_cfg = load_config("cifar10", base + [f"train.epochs={args.epochs}"])
    t0 = time.perf_counter()
    mse = api.train_vqvae(mse_cfg, args.runs / "mse", data=(train, test))
    mse_seconds = time.perf_counter() - t0
    steps_per_epoch = mse.metrics["steps"] // max(1, mse.metrics["epochs"])

    # The GAN's cost per step, measured on one epoch, gives its epochs for the same time.
    gan_overrides = ["loss.reconstruction=l1", "loss.perceptual=auto", "loss.adversarial=hinge", "loss.disc_layers=2",
                     "loss.disc_weight=0.6", "train.adam_betas=0.5,0.9"]
    probe = api.train_vqvae(load_config("cifar10", base + gan_overrides + ["train.epochs=1", "loss.disc_start=0"]),
                            args.runs / "gan-probe", data=(train, test))
    gan_epoch_seconds = probe.history[0]["seconds"]
    mse_epoch_seconds = mse.metrics["train_seconds"] / mse.metrics["epochs"]
    gan_epochs = max(1, round(args.epochs * mse_epoch_seconds / gan_epoch_seconds))
    disc_start = int(args.disc_start_fraction * gan_epochs * steps_per_epoch)
    gan_cfg = load_config("cifar10", base + gan_overrides + [f"train.epochs={gan_epochs}", f"loss.disc_start={disc_start}"])
    t0 = time.perf_counter()
    gan = api.train_vqvae(gan_cfg, args.runs / "gan", data=(train, test))
    gan_seconds = time.perf_counter() - t0

    for name, run, seconds, cfg in (("mse", mse, mse_seconds, mse_cfg), ("vqgan_losses", gan, gan_seconds, gan_cfg)):
        figures, recons[name] = measure(run.model, test)
        results[name] = {"test": figures, "epochs": run.metrics["epochs"], "steps": run.metrics["steps"],
                         "train_seconds": run.metrics["train_seconds"], "call_seconds": round(seconds, 1),
                         "objective": run.metrics["objective"], "loss": cfg.to_dict()["loss"],
                         "adam_betas": cfg.train.adam_betas, "last_epoch": run.history[-1]}
    a, b = results["mse"]["test"], results["vqgan_losses"]["test"]
    # Texture: distance of the high-frequency power ratio from 1 (the originals'), lower is better.
    gap_mse, gap_gan = abs(1 - a["high_frequency_power_ratio"]), abs(1 - b["high_frequency_power_ratio"])
    summary = {"high_frequency_gap_mse": gap_mse, "high_frequency_gap_vqgan_losses": gap_gan,
               "texture_improvement": 1 - gap_gan / gap_mse if gap_mse else None,
               "psnr_change_db": b["psnr_dataset_mse_db"] - a["psnr_dataset_mse_db"],
               "ssim_change": b["ssim_gaussian11"] - a["ssim_gaussian11"]}
    show = torch.linspace(0, len(test) - 1, 8).long()
    save_grid(torch.cat([test.images[show].float() / 255, recons["mse"][show], recons["vqgan_losses"][show]]),
              args.grid, nrow=8)
    doc = {"benchmark": "bench_gan_losses", "machine": "shared 2-core CPU, loaded by other jobs; torch threads "
           f"{args.threads}", "command": " ".join(sys.argv), "train_images": len(train), "test_images": len(test),
           "data": args.data, "grid": str(args.grid), "grid_rows": "test images / MSE-only / VQGAN losses",
           "mse_epoch_seconds": mse_epoch_seconds, "gan_epoch_seconds_probe": gan_epoch_seconds,
           "results": results, "summary": summary}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
