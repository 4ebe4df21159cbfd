"""Writing files safely: atomically, with the user's umask, and with a clear error when it fails.

A leaf module (standard library only), so that config, run-folder and checkpoint code can all
use it. Every file of a run (config.json, metrics.json, checkpoints, the codes cache) is
written here: to a temporary file in the same folder, flushed to disk, then renamed over the
target, so a crash at any moment leaves either the old file or the new one, never half of one.
"""
from __future__ import annotations

import errno
import io
import os
import tempfile
from pathlib import Path

from .errors import OutputError

TMP_SUFFIX = ".tmp"  # temporary files are ".<name>.<random>.tmp" next to their target


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask


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


def atomic_write_bytes(path: Path, data: bytes | memoryview) -> None:
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
        # mkstemp creates 0600 files; a run's files get the permissions any other file would.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        _remove(tmp)
        raise write_failed(path, e) from None
    except BaseException:
        _remove(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_npy(path: Path, array) -> None:
    """numpy.save, atomically."""
    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    atomic_write_bytes(path, buffer.getbuffer())


def _remove(tmp: str | None) -> None:
    if tmp is not None and os.path.exists(tmp):
        os.unlink(tmp)


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete temporary files left by a process killed while writing (".<name>.<random>.tmp")."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.iterdir() if p.is_file() and p.name.startswith(".") and p.name.endswith(TMP_SUFFIX)]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale
