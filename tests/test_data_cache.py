"""A user's own images: preset choice, the decode-once cache, NumPy files, the cifar10 preset."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import vqvae.data.cache as cache_module
from vqvae.config import DataConfig, get_preset, load_config
from vqvae.data import Batches, check_data_channels, choose_preset, load_dataset
from vqvae.data.datasets import _torchvision
from vqvae.errors import ConfigError, DataError
from vqvae.models import VQVAE


def random_images(n, size, channels, seed=0):
    rng = np.random.default_rng(seed)
    shape = (n, size, size, channels) if channels == 3 else (n, size, size)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def write_folder(root, images, labels=None, suffix=".png"):
    """Images (N, H, W[, C]) as files in class subfolders c<label>/ (or flat)."""
    for i, image in enumerate(images):
        folder = root / f"c{labels[i]}" if labels is not None else root
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:05d}{suffix}")
    return root


@pytest.fixture
def colour_folder(tmp_path):
    return write_folder(tmp_path / "colour", random_images(12, 32, 3), labels=np.arange(12) % 3)


@pytest.fixture
def count_decodes(monkeypatch):
    calls = []
    real = cache_module.decode_file

    def counting(path, size, channels):
        calls.append(path)
        return real(path, size, channels)

    monkeypatch.setattr(cache_module, "decode_file", counting)
    return calls


def folder_config(folder, **kw):
    return DataConfig(dataset=str(folder), image_size=kw.pop("image_size", 32), channels=kw.pop("channels", 3),
                      num_workers=0, **kw)


# --------------------------------------------------------------------------- preset choice

def test_colour_folder_gets_a_colour_preset_and_keeps_3_channels(colour_folder):
    choice = choose_preset(None, [f"data.dataset={colour_folder}"])
    assert choice.preset == "cifar10" and choice.overrides == []
    assert "12 images in 3 class folders" in choice.message and "RGB" in choice.message
    assert "--preset" in choice.message and "--set" in choice.message
    cfg = load_config(choice.preset, choice.overrides + [f"data.dataset={colour_folder}", "data.num_workers=0"])
    data = load_dataset(str(colour_folder), cfg.data)
    assert data.tensor().shape == (12, 3, 32, 32)
    assert cfg.model.in_channels == 3


@pytest.mark.parametrize("side,mode,preset,channels", [
    (28, "L", "mnist", 1), (30, "L", "mnist", 1), (28, "RGB", "cifar10", 3), (60, "RGB", "celeba-hq-64", 3),
    (1024, "RGB", "celeba-hq-128", 3), (128, "L", "celeba-hq-128", 1)])
def test_preset_is_nearest_in_size_and_keeps_the_datas_channels(tmp_path, side, mode, preset, channels):
    for i in range(3):
        Image.new(mode, (side, side + 7 * i)).save(tmp_path / f"{i}.png")
    choice = choose_preset(None, [f"data.dataset={tmp_path}"])
    cfg = load_config(choice.preset, choice.overrides)
    assert choice.preset == preset and cfg.data.channels == channels == cfg.model.in_channels


def test_unlabelled_data_gets_an_unconditional_prior_and_says_so(tmp_path, bar_folder):
    """The mnist preset's prior is class-conditional; images without labels (no class folders)
    get an unconditional one, chosen or named, in one printed line; labelled data keeps it."""
    for i in range(3):
        Image.new("L", (28, 28)).save(tmp_path / f"{i}.png")
    for preset in (None, "mnist"):
        choice = choose_preset(preset, [f"data.dataset={tmp_path}"])
        assert "prior.conditional=false" in choice.overrides and "no class labels" in choice.message
        assert load_config(choice.preset, choice.overrides).prior.conditional is False
    assert get_preset("mnist").prior.conditional is True
    labelled = choose_preset("mnist", [f"data.dataset={bar_folder}"])
    assert "prior.conditional=false" not in labelled.overrides and labelled.message == ""
    assert "prior.conditional=false" not in choose_preset(None, []).overrides  # mnist-5k has labels
    # Asked for explicitly, it is kept (and training the prior says what is missing).
    asked = choose_preset("mnist", [f"data.dataset={tmp_path}", "prior.conditional=true"])
    assert "prior.conditional=false" not in asked.overrides


def test_named_datasets_map_to_their_preset():
    assert choose_preset(None, []).preset == "mnist"  # the default data, mnist-5k
    assert choose_preset(None, ["data.dataset=fashion-mnist"]).preset == "mnist"
    assert choose_preset(None, ["data.dataset=cifar10"]).preset == "cifar10"


def test_explicit_preset_of_the_wrong_channels_is_an_error_naming_both(colour_folder):
    with pytest.raises(ConfigError, match=r"preset 'mnist' is for grey \(1 channel\) images, but .*colour holds "
                                          r"colour \(3 channels\) images .*--preset cifar10"):
        choose_preset("mnist", [f"data.dataset={colour_folder}"])
    # Unless the user set the channels: then the colour images are converted, as asked.
    assert choose_preset("mnist", [f"data.dataset={colour_folder}", "data.channels=1"]).preset == "mnist"
    assert choose_preset("cifar10", [f"data.dataset={colour_folder}"]).preset == "cifar10"
    r = subprocess.run([sys.executable, "-m", "vqvae.cli", "train", "--preset", "mnist", "--data", str(colour_folder)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "preset 'mnist' is for grey" in r.stderr and "Traceback" not in r.stderr


def test_run_commands_check_the_datas_channels(colour_folder, tmp_path):
    grey_run = DataConfig(dataset="mnist-5k", image_size=28, channels=1)
    with pytest.raises(DataError, match="takes 1-channel images, but .* holds 3-channel ones"):
        check_data_channels(str(colour_folder), grey_run)
    check_data_channels("mnist-5k", grey_run)
    check_data_channels(str(colour_folder), DataConfig(dataset=str(colour_folder), channels=1))  # its own data


# --------------------------------------------------------------------------- the cache

def test_cache_is_built_once_reused_and_equals_a_fresh_decode(colour_folder, count_decodes, tmp_path):
    cfg = folder_config(colour_folder, cache_dir=str(tmp_path / "cache"))
    first = load_dataset(str(colour_folder), cfg)
    assert len(count_decodes) == 12 and first.source.startswith(str(tmp_path / "cache"))
    again = load_dataset(str(colour_folder), cfg)
    assert len(count_decodes) == 12  # read from the cache: no image file decoded
    assert torch.equal(first.tensor(), again.tensor()) and torch.equal(first.labels, again.labels)
    fresh = load_dataset(str(colour_folder), folder_config(colour_folder, cache=False))
    assert torch.equal(first.tensor(), fresh.tensor()) and torch.equal(first.labels, fresh.labels)
    assert first.class_names == fresh.class_names == ("c0", "c1", "c2")
    # Another size is another cache.
    small = load_dataset(str(colour_folder), folder_config(colour_folder, image_size=16, cache_dir=str(tmp_path / "cache")))
    assert small.tensor().shape == (12, 3, 16, 16) and len(count_decodes) == 24


def test_changed_folder_rebuilds_the_cache(colour_folder, count_decodes, tmp_path):
    cfg = folder_config(colour_folder, cache_dir=str(tmp_path / "cache"))
    load_dataset(str(colour_folder), cfg)
    n = len(count_decodes)

    def reload():
        before = len(count_decodes)
        data = load_dataset(str(colour_folder), cfg)
        return data, len(count_decodes) - before

    victim = colour_folder / "c0" / "00000.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(victim)  # modified
    os.utime(victim, ns=(1, 1))
    data, decoded = reload()
    assert decoded == n and data.tensor()[0].sum() == 0
    write_folder(colour_folder, random_images(1, 32, 3, seed=5), labels=[1])  # added (c1/00000.png)
    data, decoded = reload()
    assert decoded == n + 1 and len(data) == 13
    (colour_folder / "c1" / "00000.png").unlink()  # removed
    data, decoded = reload()
    assert decoded == n and len(data) == 12
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1  # stale caches of the folder are deleted


def test_corrupt_and_truncated_images_are_skipped_and_named(tmp_path, count_decodes, capsys):
    folder = write_folder(tmp_path / "f", random_images(4, 64, 3), suffix=".jpg")
    (folder / "broken.png").write_bytes(b"not an image")
    whole = (folder / "00001.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(whole[: len(whole) * 2 // 3])  # a valid header, 2/3 of the data
    with Image.open(folder / "truncated.jpg") as img:
        img.verify()  # passes: only a full decode finds it
    for _ in range(2):  # building the cache, then reading it: both warn
        data = load_dataset(str(folder), folder_config(folder, image_size=16))
        message = capsys.readouterr().err  # one line, not Python's "file.py:LINE: UserWarning"
        assert message.count("\nwarning: skipped") + message.startswith("warning: skipped") == 1
        assert "UserWarning" not in message
        assert "skipped 2 unreadable" in message and "broken.png" in message and "truncated.jpg" in message
        assert data.tensor().shape == (4, 3, 16, 16)
    assert len(count_decodes) == 6


def test_mixed_sizes_and_modes_give_the_configured_shape(tmp_path):
    Image.new("RGB", (40, 30), (255, 0, 0)).save(tmp_path / "red.jpg")
    Image.new("L", (16, 16), 128).save(tmp_path / "gray.png")
    Image.new("RGBA", (20, 50), (0, 255, 0, 128)).save(tmp_path / "alpha.png")
    Image.new("P", (33, 33)).save(tmp_path / "palette.gif")
    choice = choose_preset(None, [f"data.dataset={tmp_path}"])
    assert choice.preset == "cifar10"  # colour wins; ~30-pixel images
    data = load_dataset(str(tmp_path), folder_config(tmp_path, image_size=24))
    assert data.tensor().shape == (4, 3, 24, 24) and data.tensor().dtype == torch.uint8
    assert data.labels is None
    grey = load_dataset(str(tmp_path), folder_config(tmp_path, image_size=8, channels=1))
    assert grey.tensor().shape == (4, 1, 8, 8)


def test_streamed_batches_equal_device_resident_batches(colour_folder):
    data = load_dataset(str(colour_folder), folder_config(colour_folder))
    train = data.subset(torch.arange(1, 12), "train")  # a memory-mapped subset: rows, not a copy
    assert train.images is data.images and len(train) == 11
    kwargs = dict(batch_size=4, device=torch.device("cpu"), shuffle=True, seed=3)
    resident = Batches(train, **kwargs)
    streamed = Batches(train, **kwargs, max_resident_bytes=0)
    assert resident.resident and not streamed.resident
    for (a, la), (b, lb) in zip(resident.epoch(1), streamed.epoch(1), strict=True):
        assert torch.equal(a, b) and torch.equal(la, lb)


# --------------------------------------------------------------------------- NumPy files

@pytest.mark.parametrize("layout", ["NHW", "NHWC", "NCHW", "float", "npz"])
def test_numpy_files_in_each_layout(tmp_path, layout):
    grey = layout == "NHW"
    images = random_images(6, 16, 1 if grey else 3)  # (N, H, W) or (N, H, W, C)
    labels = np.arange(6) % 2
    path = tmp_path / ("data.npz" if layout == "npz" else "data.npy")
    if layout == "NCHW":
        np.save(path, images.transpose(0, 3, 1, 2))
    elif layout == "float":
        np.save(path, images.astype(np.float32) / 255)
    elif layout == "npz":
        np.savez(path, x=images, labels=labels)
    else:
        np.save(path, images)
    cfg = DataConfig(dataset=str(path), image_size=16, channels=1 if grey else 3)
    data = load_dataset(str(path), cfg)
    expected = torch.from_numpy(images[:, None] if grey else images.transpose(0, 3, 1, 2))
    assert torch.equal(data.tensor(), expected)
    if layout == "npz":
        assert data.labels.tolist() == labels.tolist()
    assert choose_preset(None, [f"data.dataset={path}"]).preset == ("mnist" if grey else "cifar10")
    # Another size or channels: converted like an image folder.
    assert load_dataset(str(path), DataConfig(image_size=8, channels=3)).tensor().shape == (6, 3, 8, 8)


def test_bad_numpy_files_give_clear_errors(tmp_path):
    np.save(tmp_path / "big.npy", np.full((2, 8, 8), 2.0, np.float32))
    with pytest.raises(DataError, match=r"values in \[2, 2\]; float images must lie in \[0, 1\]"):
        load_dataset(str(tmp_path / "big.npy"), DataConfig(image_size=8))
    np.save(tmp_path / "flat.npy", np.zeros((5, 64), np.uint8))
    with pytest.raises(DataError, match=r"shape \(5, 64\)"):
        load_dataset(str(tmp_path / "flat.npy"), DataConfig(image_size=8))
    np.savez(tmp_path / "two.npz", a=np.zeros((2, 8, 8), np.uint8), b=np.zeros(2))
    with pytest.raises(DataError, match="name the images one of images"):
        load_dataset(str(tmp_path / "two.npz"), DataConfig(image_size=8))


# --------------------------------------------------------------------------- cifar10

def test_cifar10_preset_is_the_papers_setting():
    cfg = get_preset("cifar10")
    model = VQVAE(cfg.model, cfg.quantizer)
    assert model.latent_size == 8 and model.codebook_size == 512
    out = model(torch.rand(2, 3, 32, 32))
    assert out.indices.shape == (2, 8, 8) and out.reconstruction.shape == (2, 3, 32, 32)
    block = model.encoder.layers[5]  # conv, relu, conv, relu, conv, then the residual blocks
    assert (block.conv1.in_channels, block.conv1.out_channels, block.conv2.out_channels) == (128, 32, 128)
    assert model.quantizer.codebook.shape == (512, 64)
    # Other presets keep full-width residual blocks (num_residual_hiddens=0): the same weights,
    # from the same seed, as before the option existed (golden values measured then).
    torch.manual_seed(0)
    mnist = VQVAE(get_preset("mnist").model, get_preset("mnist").quantizer)
    assert mnist.encoder.layers[5].conv1.out_channels == 32
    assert sum(p.numel() for p in mnist.parameters() if p.requires_grad) == 93_601
    total = sum(t.double().sum() for t in mnist.state_dict().values() if t.is_floating_point())
    assert float(total) == pytest.approx(31.540794357396067, abs=1e-9)


def test_named_cifar10_and_its_image_folder_give_the_same_set(tmp_path, monkeypatch):
    """torchvision's CIFAR-10 pickles and a PNG folder of the same images: identical tensors and labels."""
    import torchvision.datasets as tvd

    # Our tiny batches have other checksums than the real files.
    monkeypatch.setattr(tvd.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(tvd.cifar, "check_integrity", lambda *args, **kwargs: True)
    names = ["airplane", "automobile", "bird"]
    base = tmp_path / "root" / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = rng.integers(0, 3, 4).tolist()
        data = rng.integers(0, 256, (4, 3 * 32 * 32), dtype=np.uint8)  # CIFAR rows: R plane, G plane, B plane
        batches[name] = (data, labels)
        with open(base / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels}, f)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names}, f)
    cfg = DataConfig(dataset="cifar10", root=str(tmp_path / "root"), download=False, image_size=32, channels=3,
                     num_workers=0)
    named = _torchvision("cifar10", True, cfg)
    images = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)]).reshape(-1, 3, 32, 32)
    labels = np.concatenate([batches[f"data_batch_{i}"][1] for i in range(1, 6)])
    folder = tmp_path / "train"
    for i, (image, label) in enumerate(zip(images, labels)):
        (folder / names[label]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.transpose(1, 2, 0)).save(folder / names[label] / f"{i:04d}.png")
    from_folder = load_dataset(str(folder), DataConfig(dataset=str(folder), image_size=32, channels=3, num_workers=0))
    order = np.argsort(labels, kind="stable")  # the folder lists class by class, then by file name
    assert torch.equal(named.tensor()[order], from_folder.tensor())
    assert named.labels[order].tolist() == from_folder.labels.tolist()
    assert named.class_names[:3] == tuple(names) and from_folder.class_names == tuple(names)


def test_cli_without_preset_says_what_it_found_and_chose(bar_folder, tmp_path, capsys):
    from conftest import tiny_overrides

    from vqvae.cli import main

    run = tmp_path / "run"
    assert main(["train", "--data", str(bar_folder), "--out", str(run), "--set", *tiny_overrides(bar_folder),
                 "train.epochs=1", "model.hidden_channels=8"]) == 0
    out = capsys.readouterr().out
    assert "240 images in 2 class folders, sizes 16x16 (240), modes L (240)" in out
    assert "chose preset 'mnist'" in out and "--preset NAME" in out
    saved = json.loads((run / "config.json").read_text())
    assert saved["preset"] == "mnist" and saved["data"]["channels"] == 1
