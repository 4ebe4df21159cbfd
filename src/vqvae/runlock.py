"""One writer per run folder: RUN/.lock, held with flock while a command writes to the run.

Two commands training, evaluating or sampling into one run at once would interleave their
config, checkpoints and metrics (both exit 0, and the files disagree). The lock is `flock` on
RUN/.lock: the kernel releases it when its holder exits in any way, SIGKILL included, so no
stale lock is ever left to clean up; the file itself stays (it records the last holder, and
deleting a lock file while another process opens it is a race). A second writer fails at once
with the holder's pid and command.

Under torchrun only rank 0 (RANK unset or 0) takes the lock: rank 0 is the one process that
writes run files, and it holds the lock for the whole command, so the group is covered without
any collective step. A second torchrun group on the same run fails on its rank 0, and torchrun
then stops that group's other ranks. The lock is re-entrant within a process (the pipeline
calls train, train-prior, sample and evaluate, each of which also takes it).
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import inspect
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable

from .errors import OutputError

LOCK_NAME = ".lock"
_held: dict[str, list] = {}  # resolved run folder -> [open lock file, depth]


def _command() -> str:
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300] if sys.argv else "python"


@contextlib.contextmanager
def run_lock(run_dir: str | Path, what: str):
    """Hold RUN/.lock while the body writes to the run folder (created if new); a run folder
    another process holds is an OutputError naming it."""
    run_dir = Path(run_dir)
    if os.environ.get("RANK", "0") != "0":
        yield  # torchrun: rank 0 holds it for the group (module docstring)
        return
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    key = str(run_dir.resolve())
    if key in _held:
        _held[key][1] += 1
        try:
            yield
        finally:
            _held[key][1] -= 1
        return
    path = run_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_holder(fd)
        os.close(fd)
        raise OutputError(f"{run_dir} is in use: {holder} is writing to it; wait for it to finish (or stop it), "
                          f"then run `{what}` again") from None
    except OSError:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps({"pid": os.getpid(), "command": _command(), "what": what,
                               "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")}) + "\n").encode(), 0)
    _held[key] = [fd, 1]
    try:
        yield
    finally:
        del _held[key]
        # A folder this call created and that holds nothing else (the command failed before
        # writing anything) is removed, not left behind as an empty run.
        if created and [p.name for p in run_dir.iterdir()] == [LOCK_NAME]:
            path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                run_dir.rmdir()
        os.close(fd)  # releases the lock


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode())
        return f"process {info['pid']} ({info['command']}, since {info['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def locks_run(what: str, folder: Callable[[dict], str | Path | None], only_run_folders: bool = False):
    """Decorator: the function holds the lock of `folder(arguments)` (None: no lock) while it runs.
    `only_run_folders`: lock only a folder that already is a run folder (has config.json and is
    not an exported model folder), for commands that may also write elsewhere."""
    def decorate(fn):
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            target = folder(bound.arguments)
            if target is not None and only_run_folders and not _is_run_folder(Path(target)):
                target = None
            with run_lock(target, what) if target is not None else contextlib.nullcontext():
                return fn(*args, **kwargs)

        return wrapper

    return decorate


def _is_run_folder(path: Path) -> bool:
    config = path / "config.json"
    if not config.is_file():
        return False
    try:
        return "format" not in json.loads(config.read_text())  # a model folder's config.json has a format marker
    except (OSError, ValueError, AttributeError, TypeError):
        return True  # a damaged run config: the command will say so; lock it meanwhile
