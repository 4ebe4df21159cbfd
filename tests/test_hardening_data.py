"""Issue 16, the data side: wide image modes, cache keys and side files, labels, hostile files."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vqvae.config import DataConfig
from vqvae.data import load_dataset


def folder_config(folder, **kw) -> DataConfig:
    return DataConfig(dataset=str(folder), **{"image_size": 16, "channels": 1, "num_workers": 0, **kw})


# --------------------------------------------------------------------------- item 2: wide modes

RAMP = np.linspace(0, 1, 64)[None].repeat(64, 0)  # (64, 64): black on the left to white on the right


@pytest.mark.parametrize("kind", ["png16", "tif32", "tiff-float", "png16-rgb-target"])
def test_wide_grey_images_are_scaled_to_8_bits_not_clipped(tmp_path, kind):
    if kind.startswith("png16"):
        Image.fromarray(np.rint(RAMP * 65535).astype(np.uint16)).save(tmp_path / "ramp.png")
    elif kind == "tif32":
        Image.fromarray(np.rint(RAMP * 65535).astype(np.int32)).save(tmp_path / "ramp.tif")
    else:
        Image.fromarray(RAMP.astype(np.float32)).save(tmp_path / "ramp.tif")
    channels = 3 if kind.endswith("rgb-target") else 1
    image = load_dataset(str(tmp_path), folder_config(tmp_path, image_size=64, channels=channels)).tensor()[0]
    row = image[0, 32].float()
    want = torch.from_numpy(RAMP[0] * 255).float()
    assert (row - want).abs().max() <= 2  # clipped, the row is 255 from its second pixel on
    assert abs(image.float().mean().item() - 127.5) < 2


def test_wide_images_of_other_ranges_are_stretched(tmp_path):
    Image.fromarray(np.array([[-5, 0], [5, 10]] * 4, dtype=np.int32).repeat(4, 1)).save(tmp_path / "signed.tif")
    image = load_dataset(str(tmp_path), folder_config(tmp_path, image_size=8)).tensor()[0]
    assert image.min() == 0 and image.max() == 255


# --------------------------------------------------------------------------- item 13: encode --out

def test_encode_into_an_earlier_encoding_leaves_no_stale_labels(trained_run, tmp_path):
    from vqvae import api

    out = tmp_path / "codes"
    api.encode(trained_run, out, device="cpu")  # the run's labelled test split
    assert (out / "labels.npy").is_file()
    flat = tmp_path / "flat"  # no class subfolders: no labels
    flat.mkdir()
    for i in range(3):
        Image.fromarray(np.full((16, 16), 40 * i, np.uint8)).save(flat / f"{i}.png")
    meta = api.encode(trained_run, out, data=str(flat), device="cpu")
    assert meta["shape"][0] == 3 and np.load(out / "codes.npy").shape[0] == 3
    assert not (out / "labels.npy").exists()  # the 48 old labels would sit beside 3 new codes
