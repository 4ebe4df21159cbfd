"""Decode-once cache of an image folder: one uint8 (N, C, H, W) .npy file, memory-mapped.

Decoding, converting and resizing JPEGs is the whole cost of training from a folder on a
small machine (283 images/s from the CIFAR-10 folder against 4,400 from memory), so it is
done once, in parallel, and every later epoch and command reads the cache. A dataset
larger than memory still streams: the file is memory-mapped, never read whole.

The cache is keyed by the folder's file list with each file's size and modification time,
and by the target size and channels: adding, removing or touching a file, or asking for
another size, builds a new cache (the stale one of the same folder is deleted). Files are
decoded fully at build time, so a truncated JPEG with a valid header is skipped (and named)
here instead of failing mid-training. Files are written to a temporary name and renamed, so
an interrupted build never leaves a cache that looks complete.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..config import DataConfig
from ..errors import DataError
from ..files import atomic_write_json, commit_file

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
CACHE_VERSION = 1  # part of every key: bump when decoding (resize, crop, conversion) changes


@dataclass
class FolderListing:
    """The image files of a folder (recursive, sorted) with the stat data that keys caches."""

    folder: Path
    files: list[Path]
    stats: list[tuple[str, int, int]]  # (path relative to folder, size in bytes, mtime in ns)
    ignored: int  # files without an image extension

    def key(self, **extra) -> str:
        payload = {"version": CACHE_VERSION, "folder": str(self.folder.resolve()), "files": self.stats, **extra}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def list_folder(folder: Path) -> FolderListing:
    """Image files under `folder`, recursively, in path order (hidden files and folders skipped)."""
    found, ignored = [], 0  # (relative parts, absolute path)
    for parent, dirs, names in os.walk(folder):  # scandir underneath: no stat call to tell files from folders
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        prefix = Path(parent).relative_to(folder).parts
        for name in names:
            if name.startswith("."):
                continue
            if os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS:
                ignored += 1
                continue
            found.append((prefix + (name,), os.path.join(parent, name)))
    found.sort()
    files, stats = [], []
    for parts, path in found:
        st = os.stat(path)
        files.append(Path(path))
        stats.append(("/".join(parts), st.st_size, st.st_mtime_ns))
    return FolderListing(folder, files, stats, ignored)


def parallel_map(function, items: list, workers: int):
    """`map`, in order, in `workers` processes when it pays (a pool costs a fraction of a second)."""
    if workers <= 1 or len(items) <= 256:
        return map(function, items), None
    import multiprocessing

    pool = multiprocessing.get_context().Pool(workers)
    return pool.imap(function, items, chunksize=64), pool


def cache_root(cfg: DataConfig) -> Path:
    """data.cache_dir, else $VQVAE_CACHE/images, else ~/.cache/vqvae/images."""
    if cfg.cache_dir:
        return Path(cfg.cache_dir).expanduser()
    return Path(os.environ.get("VQVAE_CACHE", "~/.cache/vqvae")).expanduser() / "images"


def cache_stem(listing: FolderListing, what: str) -> str:
    """'<folder name>-<folder hash>-<what>': one folder's caches share this prefix."""
    folder_hash = hashlib.sha256(str(listing.folder.resolve()).encode()).hexdigest()[:8]
    name = "".join(c if c.isalnum() or c in "-_" else "_" for c in listing.folder.name) or "folder"
    return f"{name}-{folder_hash}-{what}"


def fit_image(img: Image.Image, size: int, channels: int) -> np.ndarray:
    """A PIL image -> uint8 (channels, size, size): convert mode, resize the shorter side to
    `size` (bicubic), centre-crop."""
    img = img.convert("L" if channels == 1 else "RGB")
    w, h = img.size
    scale = size / min(w, h)
    if scale != 1:
        img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    array = np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def decode_file(path: Path, size: int, channels: int) -> np.ndarray:
    """Decode one image file fully to uint8 (channels, size, size); DataError if unreadable."""
    try:
        with Image.open(path) as img:
            img.load()  # every pixel: a truncated file fails here, not in the middle of training
            return fit_image(img, size, channels)
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        raise DataError(f"cannot decode image {path}: {e}") from None


def _decode_task(args: tuple[Path, int, int]) -> np.ndarray | str:
    """Pool worker: the image, or the error message (exceptions do not cross processes well)."""
    try:
        return decode_file(*args)
    except DataError as e:
        return str(e)


@dataclass
class CachedFolder:
    images: np.ndarray  # (N, C, H, W) uint8, memory-mapped copy-on-write
    files: list[str]  # relative paths of the N images, in order
    skipped: list[str]  # why each unreadable file was skipped, naming it
    path: Path


def no_images_error(listing: FolderListing, unreadable: int) -> DataError:
    return DataError(f"no readable images in {listing.folder} (searched recursively for "
                     f"{', '.join(sorted(IMAGE_EXTENSIONS))}; {unreadable} unreadable, {listing.ignored} other files)")


def _write_json(path: Path, data: dict) -> None:
    atomic_write_json(path, data, indent=None)


def _open(path: Path) -> np.ndarray:
    # Copy-on-write: torch can wrap it without a read-only warning; pages stay shared with the
    # page cache until written, which training never does.
    return np.load(path, mmap_mode="c")


def cached_folder(listing: FolderListing, cfg: DataConfig, progress: bool = True) -> CachedFolder:
    """The folder's images at cfg.image_size x cfg.channels, from the cache, built if needed."""
    size, channels = cfg.image_size, cfg.channels
    root = cache_root(cfg)
    key = listing.key(size=size, channels=channels)
    prefix = cache_stem(listing, f"{size}x{size}x{channels}-")
    npy_path, meta_path = root / f"{prefix}{key[:16]}.npy", root / f"{prefix}{key[:16]}.json"
    if meta_path.is_file() and npy_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
            images = _open(npy_path)
            if meta.get("key") == key and images.shape == (len(meta["files"]), channels, size, size):
                print(f"image cache: {listing.folder} read from {npy_path}", flush=True)
                return CachedFolder(images, meta["files"], meta["skipped"], npy_path)
        except (OSError, ValueError, KeyError):
            pass  # unreadable or partial: rebuild below
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(f"{prefix}*"):  # this folder at this size under an older key (not a build in progress)
        if stale.suffix in (".npy", ".json") and stale.stem != npy_path.stem:
            stale.unlink(missing_ok=True)
    kept, skipped = _build(listing, cfg, npy_path, progress)
    _write_json(meta_path, {"key": key, "folder": str(listing.folder), "files": kept, "skipped": skipped,
                            "image_size": size, "channels": channels})
    return CachedFolder(_open(npy_path), kept, skipped, npy_path)


def _build(listing: FolderListing, cfg: DataConfig, npy_path: Path, progress: bool) -> tuple[list[str], list[str]]:
    """Decode every file into npy_path (atomically); returns (kept relative paths, skip reasons)."""
    from tqdm.auto import tqdm

    size, channels, n = cfg.image_size, cfg.channels, len(listing.files)
    workers = max(1, cfg.num_workers)
    print(f"image cache: decoding {n} files of {listing.folder} to {size}x{size}x{channels} with {workers} "
          f"process(es) into {npy_path} (once; set data.cache=false to decode on every access)", flush=True)
    start = time.perf_counter()
    tmp = npy_path.with_name(f"{npy_path.name}.tmp{os.getpid()}")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, channels, size, size))
    tasks = [(path, size, channels) for path in listing.files]
    kept: list[str] = []
    skipped: list[str] = []
    results, pool = parallel_map(_decode_task, tasks, workers)
    try:
        for (rel, _, _), result in tqdm(zip(listing.stats, results), total=n, desc=f"caching {listing.folder.name}",
                                        unit="img", disable=not progress, mininterval=1.0):
            if isinstance(result, str):
                skipped.append(result)
                continue
            out[len(kept)] = result
            kept.append(rel)
    except BaseException:  # interrupted or failed: leave no half-written file behind
        del out
        tmp.unlink(missing_ok=True)
        raise
    finally:
        if pool is not None:
            pool.terminate()
    out.flush()
    del out
    if not kept:
        tmp.unlink()
        raise no_images_error(listing, len(skipped))
    if len(kept) < n:  # drop the rows of skipped files: copy the kept ones into a file of the right shape
        full = np.load(tmp, mmap_mode="r")
        tmp2 = npy_path.with_name(f"{npy_path.name}.tmp{os.getpid()}b")
        compact = np.lib.format.open_memmap(tmp2, mode="w+", dtype=np.uint8, shape=(len(kept), channels, size, size))
        for i in range(0, len(kept), 4096):
            j = min(i + 4096, len(kept))
            compact[i:j] = full[i:j]
        compact.flush()
        del compact, full
        os.replace(tmp2, tmp)
    commit_file(tmp, npy_path)
    print(f"image cache: {len(kept)} images in {time.perf_counter() - start:.1f} s"
          f"{f', {len(skipped)} unreadable' if skipped else ''}", flush=True)
    return kept, skipped
