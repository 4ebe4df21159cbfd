"""Writing files safely: atomically, with the user's umask, and with a clear error when it fails.

A leaf module (standard library only; numpy and torch imported where a variant needs them), so
that config, run-folder, checkpoint, model-folder and data-cache code can all use it. Every file
the toolkit writes goes through `atomic_write` (bytes, text, JSON, .npy, torch and figure
variants on top): a temporary file of a unique name in the same folder, flushed to disk,
renamed over the target, the folder flushed; so a crash at any moment leaves either the old
file or the new one, never half of one.
"""
from __future__ import annotations

import errno
import io
import json
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

from .errors import OutputError

TMP_SUFFIX = ".tmp"  # temporary files are ".<name>.<random>.tmp" next to their target


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask


def default_mode(folder: bool = False) -> int:
    """The permissions a new file (0666) or folder (0777) gets under the user's umask."""
    return (0o777 if folder else 0o666) & ~_umask()


def os_error_text(e: OSError) -> str:
    """What went wrong, in words a user acts on."""
    if e.errno == errno.ENOSPC:
        return "the disk is full (no space left on device)"
    if e.errno == errno.EDQUOT:
        return "the disk quota is exceeded"
    if e.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if e.errno == errno.EROFS:
        return "the file system is read-only"
    return e.strerror or str(e)


def write_failed(path: Path, e: OSError) -> OutputError:
    """The error to raise when writing `path` failed with `e` (atomic writes keep the old file)."""
    return OutputError(f"cannot write {path}: {os_error_text(e)}; the previous version of {Path(path).name}, if any, is kept")


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """The one way the toolkit writes a file: `write(f)` fills a temporary file of a unique name
    in the target's folder, which is flushed to disk, given the permissions the umask allows (as
    any new file: 0644 under umask 022, not mkstemp's 0600), renamed over `path`, and the folder
    is flushed too, so the rename itself survives a power cut. A failure at any point leaves the
    previous file as it was and no temporary file behind."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
        os.fchmod(fd, default_mode())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        fsync_folder(path.parent)
    except OSError as e:
        _remove(tmp)
        raise write_failed(path, e) from None
    except BaseException:
        _remove(tmp)
        raise


def commit_file(tmp: Path, path: Path) -> None:
    """Move a temporary file written in place (a memory-mapped array too large to hold in memory)
    to `path` with the same guarantees as `atomic_write`: flushed, umask permissions, renamed,
    folder flushed. `tmp` must be in the same folder."""
    tmp, path = Path(tmp), Path(path)
    try:
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, default_mode())
        os.replace(tmp, path)
        fsync_folder(path.parent)
    except OSError as e:
        _remove(str(tmp))
        raise write_failed(path, e) from None


def fsync_folder(folder: Path) -> None:
    """Flush a folder's entries (a rename is durable only once its folder is); a no-op where the
    file system cannot (EINVAL: some network and FUSE file systems)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # e.g. no read permission on the folder: the file itself is written and flushed
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def file_sha256(path: Path) -> str:
    """The hex sha256 of a file's bytes, read in chunks."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write_bytes(path: Path, data: bytes | memoryview) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, data, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(data, indent=indent) + "\n")


def atomic_save_npy(path: Path, array) -> None:
    """numpy.save, atomically (no pickled objects)."""
    import numpy as np

    atomic_write(path, lambda f: np.save(f, array, allow_pickle=False))


def atomic_torch_save(obj, path: Path) -> None:
    """torch.save, atomically. Serialised in memory first, so a write error is an ordinary
    OSError that says what failed (torch wraps errors of its own file writer)."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getbuffer())


def atomic_save_figure(path: Path, save: Callable[[BinaryIO], None]) -> None:
    """An image written by a library that writes to a file object (PIL, matplotlib)."""
    buffer = io.BytesIO()
    save(buffer)
    atomic_write_bytes(path, buffer.getbuffer())


def _remove(tmp: str | None) -> None:
    if tmp is not None and os.path.exists(tmp):
        os.unlink(tmp)


def process_alive(pid: int) -> bool:
    """Whether process `pid` of this machine still runs: a temporary file or folder named with a
    writer's pid may be removed only once its writer is gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete temporary files left by a process killed while writing (".<name>.<random>.tmp")."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.iterdir() if p.is_file() and p.name.startswith(".") and p.name.endswith(TMP_SUFFIX)]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale
