"""Decode-once cache of an image folder: one uint8 (N, C, H, W) .npy file, memory-mapped.

Decoding, converting and resizing JPEGs is the whole cost of training from a folder on a
small machine (283 images/s from the CIFAR-10 folder against 4,400 from memory), so it is
done once, in parallel, and every later epoch and command reads the cache. A dataset
larger than memory still streams: the file is memory-mapped, never read whole.

The cache is keyed by the folder's file list with each file's stat data as git's index keeps it
(size, modification time, change time, inode: a file replaced by another of the same size with
its mtime set back, as `cp -p`, `rsync -t` and `tar` do, still gets a new ctime and usually a new
inode, which no user can set back), or with data.cache_check=content by a hash of each file's
bytes (for file systems whose ctime or inode numbers change spuriously, e.g. some network
mounts, where stat keys would rebuild needlessly), and by the target size and channels: adding,
removing or changing a file, or asking for another size, builds a new cache (the stale one of
the same folder is deleted). Files are decoded fully at build time, so a truncated JPEG with a
valid header is skipped (and named) here instead of failing mid-training. Only regular files
are read: a FIFO, a socket, a dangling link or a symlink loop named like an image is skipped
and named. Files are written to a temporary name unique to the writer (host, process, random)
and renamed, so an interrupted build never leaves a cache that looks complete, and temporaries
whose writer is dead are deleted by the next build. The side files (the metadata beside each
cache, the folder scan) carry a checksum of their content: one edited or damaged by hand (a
reordered file list would flip labels) is rebuilt, saying so in one line.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import socket
import stat
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..config import DataConfig
from ..errors import DataError
from ..files import atomic_write_json, commit_file, process_alive

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
CACHE_VERSION = 2  # part of every key: bump when decoding (resize, crop, conversion) changes


def warn(message: str) -> None:
    """A warning as one line on stderr (not Python's 'file.py:LINE: UserWarning' with source)."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def printable(path) -> str:
    """A path as text any terminal and log can take: bytes that are not UTF-8 (kept by Python as
    surrogates) are shown as \\xNN."""
    return os.fsencode(str(path)).decode("utf-8", "backslashreplace")


@dataclass
class FolderListing:
    """The image files of a folder (recursive, sorted) with the stat data that keys caches."""

    folder: Path
    files: list[Path]
    stats: list[tuple]  # (path relative to folder, size, mtime ns, ctime ns, inode): git's index keys
    ignored: int  # files without an image extension
    unusable: list[str] = field(default_factory=list)  # image-named entries that are not readable regular files

    def content_digests(self) -> list[str]:
        """sha256 of each file's bytes (data.cache_check=content), computed once."""
        if not hasattr(self, "_digests"):
            digests = []
            for path in self.files:
                h = hashlib.sha256()
                try:
                    with open(path, "rb") as f:
                        for block in iter(lambda: f.read(1 << 20), b""):
                            h.update(block)
                except OSError as e:
                    raise DataError(f"cannot read {printable(path)} to hash it (data.cache_check=content): "
                                    f"{e.strerror or e}") from None
                digests.append(h.hexdigest())
            self._digests = digests
        return self._digests

    def key(self, check: str = "stat", **extra) -> str:
        """The cache key: file list with stat data (check="stat") or content hashes ("content")."""
        files = self.stats if check == "stat" else [(s[0], d) for s, d in zip(self.stats, self.content_digests())]
        payload = {"version": CACHE_VERSION, "folder": str(self.folder.resolve()), "files": files, "check": check,
                   **extra}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def list_folder(folder: Path) -> FolderListing:
    """Image files under `folder`, recursively, in path order (hidden files and folders skipped).
    Entries named like images that are not regular files (FIFOs, sockets, folders, dangling
    links, symlink loops) are left out and named in `unusable`: reading a FIFO would hang."""
    found, ignored, unusable = [], 0, []  # (relative parts, absolute path)
    for parent, dirs, names in os.walk(folder):  # scandir underneath: no stat call to tell files from folders
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
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
        try:
            st = os.stat(path)  # follows links: a link to an image is that image
        except OSError as e:  # ENOENT: a dangling link; ELOOP: a symlink loop
            unusable.append(f"{printable(path)} ({'a symlink loop' if e.errno == 40 else 'a dangling link'}"
                            f"{'' if e.errno in (2, 40) else ': ' + (e.strerror or str(e))})")
            continue
        if not stat.S_ISREG(st.st_mode):
            unusable.append(f"{printable(path)} (not a regular file)")
            continue
        files.append(Path(path))
        stats.append(("/".join(parts), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))
    return FolderListing(folder, files, stats, ignored, unusable)


# --------------------------------------------------------------------------- side files and temporaries

def _host() -> str:
    """This machine's name as it appears in temporary names (letters, digits and _)."""
    return re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname())[:40] or "host"


def temporary_name(path: Path) -> Path:
    """A temporary name beside `path`, unique to this writer: two processes building the same
    cache never share one, and `remove_dead_temporaries` can tell whether its writer is alive."""
    return path.with_name(f"{path.name}.tmp-{_host()}-{os.getpid()}-{secrets.token_hex(4)}")


TEMPORARY = re.compile(r"\.tmp-(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)-[0-9a-f]+$")
OLD_TEMPORARY = re.compile(r"\.tmp(?P<pid>\d*)b?$")  # names of earlier versions: X.npy.tmp123, X.json.tmp
FOREIGN_TEMPORARY_AGE = 24 * 3600  # seconds: a temporary of another host's process is stale after a day


def remove_dead_temporaries(root: Path) -> list[str]:
    """Delete temporaries in the cache folder whose writer is dead (a killed build can leave a
    full-size .npy); a live writer's, even another process's of this same build, are kept."""
    host = _host()
    removed = []
    try:
        entries = list(os.scandir(root))
    except OSError:
        return removed
    for entry in entries:
        match = TEMPORARY.search(entry.name)
        old = None if match else OLD_TEMPORARY.search(entry.name)
        if not (match or old) or not entry.is_file(follow_symlinks=False):
            continue
        try:
            age = time.time() - entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        if match:
            dead = not process_alive(int(match["pid"])) if match["host"] == host else age > FOREIGN_TEMPORARY_AGE
        else:  # no host recorded: its pid is only trusted to be dead once it is an hour old
            dead = age > 3600 and (not old["pid"] or not process_alive(int(old["pid"])))
        if dead:
            try:
                os.unlink(entry.path)
                removed.append(entry.name)
            except OSError:
                pass
    if removed:
        print(f"image cache: removed {len(removed)} temporary file(s) left by interrupted builds in {printable(root)}",
              flush=True)
    return removed


def _checksum(data: dict) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def write_side_file(path: Path, data: dict) -> None:
    """A cache side file (metadata, scan) as JSON with a checksum of its content, atomically."""
    atomic_write_json(path, {**data, "checksum": _checksum(data)}, indent=None)


def read_side_file(path: Path, shape: dict[str, type]) -> dict | None:
    """A side file written by `write_side_file`, or None when there is none; one that is damaged,
    of the wrong shape (each key of `shape` with its type) or edited (checksum) is deleted, with
    one line saying so, and None returned: the caller rebuilds it."""
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        return _discard(path, f"unreadable ({e})")
    try:
        data = json.loads(text)
    except ValueError:
        return _discard(path, "not valid JSON")
    if not isinstance(data, dict) or not all(isinstance(data.get(k), t) for k, t in shape.items()):
        return _discard(path, "not the JSON object expected")
    checksum = data.pop("checksum", None)
    if checksum != _checksum(data):
        return _discard(path, "its content does not match its checksum (edited or damaged)")
    return data


def _discard(path: Path, why: str) -> None:
    warn(f"image cache: {printable(path)}: {why}; rebuilding it")
    try:
        path.unlink()
    except OSError:
        pass
    return None


def parallel_map(function, items: list, workers: int):
    """`map`, in order, in `workers` processes when it pays (a pool costs a fraction of a second)."""
    if workers <= 1 or len(items) <= 256:
        return map(function, items), None
    import multiprocessing

    pool = multiprocessing.get_context().Pool(workers)
    return pool.imap(function, items, chunksize=64), pool


def cache_root(cfg: DataConfig, create: bool = False) -> Path:
    """data.cache_dir, else $VQVAE_CACHE/images, else ~/.cache/vqvae/images; with `create`, made
    if missing (a DataError naming the setting if it cannot be)."""
    if cfg.cache_dir:
        root = Path(cfg.cache_dir).expanduser()
    else:
        root = Path(os.environ.get("VQVAE_CACHE", "~/.cache/vqvae")).expanduser() / "images"
    if create:
        try:
            root.mkdir(parents=True, exist_ok=True)
            if not os.access(root, os.W_OK | os.X_OK):
                raise PermissionError(13, "permission denied")
        except OSError as e:
            setting = "data.cache_dir" if cfg.cache_dir else "$VQVAE_CACHE (or data.cache_dir)"
            raise DataError(f"cannot write the image cache in {printable(root)}: {(e.strerror or str(e)).lower()}; "
                            f"set {setting} to a writable folder") from None
    return root


def cache_stem(listing: FolderListing, what: str) -> str:
    """'<folder name>-<folder hash>-<what>': one folder's caches share this prefix."""
    folder_hash = hashlib.sha256(os.fsencode(listing.folder.resolve())).hexdigest()[:8]
    name = "".join(c if c.isalnum() or c in "-_" else "_" for c in listing.folder.name) or "folder"
    return f"{name}-{folder_hash}-{what}"


WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")  # single-channel modes wider than 8 bits


def to_8bit(img: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit integer or float grey image as 8-bit "L", scaled, not clipped: PIL's own
    convert("L") clips at 255, so a 16-bit black-to-white ramp would come out almost all white.

    16-bit samples (I;16*, and "I" images within 0..65535, which is how PIL reads some 16-bit
    files) are divided by 257 (65535 -> 255); float images in [0, 1] are multiplied by 255; any
    other range (negative or wider integers, floats beyond [0, 1]) is stretched from the image's
    own minimum to its maximum."""
    if img.mode not in WIDE_MODES:
        return img
    array = np.asarray(img).astype(np.float64)
    low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
    if not (np.isfinite(low) and np.isfinite(high)):
        raise ValueError(f"{img.mode} image holds non-finite values")
    if img.mode.startswith("I;16") or (img.mode == "I" and low >= 0 and high <= 65535):
        scaled = array / 257.0
    elif img.mode == "F" and low >= 0 and high <= 1:
        scaled = array * 255.0
    else:
        scaled = (array - low) * (255.0 / (high - low)) if high > low else np.zeros_like(array)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))


def fit_image(img: Image.Image, size: int, channels: int) -> np.ndarray:
    """A PIL image -> uint8 (channels, size, size): convert mode (wide grey modes scaled to 8
    bits, see `to_8bit`), resize the shorter side to `size` (bicubic), centre-crop."""
    img = to_8bit(img).convert("L" if channels == 1 else "RGB")
    w, h = img.size
    scale = size / min(w, h)
    if scale != 1:
        img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    # A copy: np.asarray of a PIL image is read-only, and torch warns when it wraps one.
    array = np.array(img.crop((left, top, left + size, top + size)), dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def decode_file(path: Path, size: int, channels: int) -> np.ndarray:
    """Decode one image file fully to uint8 (channels, size, size); DataError if unreadable."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would block the read forever
            raise OSError(f"{printable(path)} is not a regular file")
        with Image.open(path) as img:
            img.load()  # every pixel: a truncated file fails here, not in the middle of training
            return fit_image(img, size, channels)
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        raise DataError(f"cannot decode image {printable(path)}: {e}") from None


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
    unusable = f", {len(listing.unusable)} not regular files" if listing.unusable else ""
    return DataError(f"no readable images in {printable(listing.folder)} (searched recursively for "
                     f"{', '.join(sorted(IMAGE_EXTENSIONS))}; {unreadable} unreadable{unusable}, {listing.ignored} "
                     f"other files)")


def _open(path: Path) -> np.ndarray:
    # Copy-on-write: torch can wrap it without a read-only warning; pages stay shared with the
    # page cache until written, which training never does.
    return np.load(path, mmap_mode="c")


META_SHAPE = {"key": str, "files": list, "skipped": list}


def _in_listing_order(files: list, listing: FolderListing) -> bool:
    """The kept files are some of the listing's, in its order (a reordered list would flip labels)."""
    order = iter(rel for rel, *_ in listing.stats)
    return all(isinstance(f, str) for f in files) and all(f in order for f in files)


def cached_folder(listing: FolderListing, cfg: DataConfig, progress: bool = True) -> CachedFolder:
    """The folder's images at cfg.image_size x cfg.channels, from the cache, built if needed."""
    size, channels = cfg.image_size, cfg.channels
    root = cache_root(cfg, create=True)
    remove_dead_temporaries(root)
    key = listing.key(cfg.cache_check, size=size, channels=channels)
    prefix = cache_stem(listing, f"{size}x{size}x{channels}-")
    npy_path, meta_path = root / f"{prefix}{key[:16]}.npy", root / f"{prefix}{key[:16]}.json"
    meta = read_side_file(meta_path, META_SHAPE)
    if meta is not None and npy_path.is_file():
        try:
            images = _open(npy_path)
        except (OSError, ValueError, EOFError):
            images = None  # unreadable or partial: rebuilt below
        if (images is not None and meta["key"] == key and images.shape == (len(meta["files"]), channels, size, size)
                and _in_listing_order(meta["files"], listing)):
            print(f"image cache: {printable(listing.folder)} read from {printable(npy_path)}", flush=True)
            return CachedFolder(images, meta["files"], [str(s) for s in meta["skipped"]], npy_path)
        warn(f"image cache: {printable(meta_path)} does not describe {printable(npy_path)}: rebuilding it")
    for stale in root.glob(f"{prefix}*"):  # this folder at this size under an older key (not a build in progress)
        if stale.suffix in (".npy", ".json") and stale.stem != npy_path.stem:
            stale.unlink(missing_ok=True)
    kept, skipped = _build(listing, cfg, npy_path, progress)
    write_side_file(meta_path, {"key": key, "folder": printable(listing.folder), "files": kept, "skipped": skipped,
                                "image_size": size, "channels": channels})
    return CachedFolder(_open(npy_path), kept, skipped, npy_path)


def _build(listing: FolderListing, cfg: DataConfig, npy_path: Path, progress: bool) -> tuple[list[str], list[str]]:
    """Decode every file into npy_path (atomically); returns (kept relative paths, skip reasons)."""
    from tqdm.auto import tqdm

    size, channels, n = cfg.image_size, cfg.channels, len(listing.files)
    workers = max(1, cfg.num_workers)
    print(f"image cache: decoding {n} files of {printable(listing.folder)} to {size}x{size}x{channels} with {workers} "
          f"process(es) into {printable(npy_path)} (once; set data.cache=false to decode on every access)", flush=True)
    start = time.perf_counter()
    tmp = temporary_name(npy_path)
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, channels, size, size))
    tasks = [(path, size, channels) for path in listing.files]
    kept: list[str] = []
    skipped: list[str] = []
    results, pool = parallel_map(_decode_task, tasks, workers)
    try:
        for (rel, *_), result in tqdm(zip(listing.stats, results), total=n, desc=f"caching {printable(listing.folder.name)}",
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
        tmp2 = temporary_name(npy_path)
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
