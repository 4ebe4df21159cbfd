"""Image folders of random crops of the colour photographs that Python packages ship in their wheels,
for benchmarks on natural images with no download (never commit the images).

    python benchmarks/natural_crops.py /work/data/photos64 --size 64
    python benchmarks/natural_crops.py /work/data/photos128 --size 128

writes OUT/train/*.png, OUT/test/*.png (flat folders: no classes) and OUT/crops.json (which photograph
each split's crops come from, how many, the seed). Whole photographs are held out for the test split
(TEST_PHOTOS), so no test crop overlaps a training crop or shows the same scene. Crops are drawn at
uniformly random positions, the same number from each photograph of a split (by area, the 1411 px
retina image, mostly black surround, would give half the training set).
Use them as `--data OUT/train --test-data OUT/test`.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

# name -> where it comes from; all colour photographs (skimage's colorwheel and logo are drawings,
# and skimage.data.cat is chelsea again, so they are left out).
TRAIN_PHOTOS = ("astronaut", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
                "stereo_motorcycle", "china")
TEST_PHOTOS = ("coffee", "flower", "grace_hopper")


def load_photo(name: str) -> np.ndarray:
    """(H, W, 3) uint8 photograph from skimage.data, sklearn's sample images or matplotlib's sample data."""
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        return load_sample_image(f"{name}.jpg")
    if name == "grace_hopper":
        import matplotlib

        return np.asarray(Image.open(os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg"))
                          .convert("RGB"))
    import skimage.data

    image = getattr(skimage.data, name)()
    image = image[0] if isinstance(image, tuple) else image  # stereo_motorcycle: (left, right, disparity)
    return np.ascontiguousarray(image[..., :3])


def crop_split(out: Path, photos: tuple[str, ...], total: int, size: int, rng: np.random.Generator) -> dict:
    """`total` random size x size crops of `photos`, shared equally, as PNGs in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    images = {name: load_photo(name) for name in photos}
    for name, image in images.items():
        if min(image.shape[:2]) < size:
            raise SystemExit(f"{name} is {image.shape[1]}x{image.shape[0]}, smaller than a {size}-pixel crop")
    counts = np.full(len(images), total // len(images))
    counts[: total - counts.sum()] += 1  # the remainder, one each
    record = {}
    for (name, image), count in zip(images.items(), counts):
        H, W = image.shape[:2]
        for i in range(count):
            top, left = rng.integers(0, H - size + 1), rng.integers(0, W - size + 1)
            Image.fromarray(image[top:top + size, left:left + size]).save(out / f"{name}-{i:05d}.png")
        record[name] = {"crops": int(count), "photo_size": [W, H]}
    return record


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="output folder (outside the repository), e.g. /work/data/photos64")
    p.add_argument("--size", type=int, default=64, help="crop side in pixels")
    p.add_argument("--train", type=int, default=20000, help="training crops")
    p.add_argument("--test", type=int, default=2000, help="test crops")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    out = Path(args.out)
    if any(out.glob("*/*.png")):
        raise SystemExit(f"{out} already holds crops; choose another folder or remove it")
    rng = np.random.default_rng(args.seed)
    manifest = {"size": args.size, "seed": args.seed,
                "train": crop_split(out / "train", TRAIN_PHOTOS, args.train, args.size, rng),
                "test": crop_split(out / "test", TEST_PHOTOS, args.test, args.size, rng),
                "sources": "skimage.data (astronaut, chelsea, coffee, rocket, hubble_deep_field, immunohistochemistry, "
                           "retina, stereo_motorcycle left view), sklearn.datasets.load_sample_image (china, flower), "
                           "matplotlib sample_data (grace_hopper)"}
    (out / "crops.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {args.train} training crops of {len(TRAIN_PHOTOS)} photographs and {args.test} test crops of "
          f"{len(TEST_PHOTOS)} held-out ones ({', '.join(TEST_PHOTOS)}) to {out}")


if __name__ == "__main__":
    main()
