"""Will it fit? Memory and disk checked before a large allocation, with what would fit instead.

A setting that cannot fit (`quantizer.codebook_size=1000000000`, `sample -n 1000000000`) would
otherwise fail deep inside PyTorch's allocator, be killed by the kernel's OOM killer, or run for
days before it fails; here it is one line that says how much is needed, how much there is, and
what would fit. The estimates are lower bounds (weights, gradients and optimizer state, or the
output arrays; not activations), so passing the check does not promise the run fits.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .errors import ConfigError

# Bytes per parameter while training with Adam: the weight, its gradient and two moments.
TRAINING_COPIES = 4


def available_memory(device: torch.device | str) -> int | None:
    """Bytes that can still be allocated on `device` (None when unknown): the CUDA device's free
    memory, or for the CPU the smaller of MemAvailable and the cgroup's remaining limit."""
    device = torch.device(device)
    if device.type == "cuda":
        try:
            return torch.cuda.mem_get_info(device)[0]
        except (RuntimeError, AssertionError):
            return None
    if device.type != "cpu":
        return None
    limits = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                limits.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:  # a container's memory limit (cgroup v2)
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            limits.append(int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return min(limits) if limits else None


def free_disk(folder: str | Path) -> int | None:
    """Free bytes on the file system that holds `folder` (or the nearest existing parent)."""
    path = Path(folder).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def gigabytes(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def model_bytes(build: Callable[[], nn.Module]) -> tuple[int, int]:
    """(bytes of parameters, bytes of buffers) of the module `build()` makes, measured on the
    meta device: nothing is allocated."""
    with torch.device("meta"):
        module = build()
    params = sum(p.numel() * p.element_size() for p in module.parameters())
    buffers = sum(b.numel() * b.element_size() for b in module.buffers())
    return params, buffers


def check_model_fits(build: Callable[[], nn.Module], device: torch.device | str, what: str, advice: str,
                     training: bool = True) -> None:
    """Refuse a model whose weights (and, for training, gradients and Adam state) alone exceed
    the memory available on `device`."""
    available = available_memory(device)
    if available is None:
        return
    params, buffers = model_bytes(build)
    need = params * (TRAINING_COPIES if training else 1) + buffers
    if need > available:
        purpose, extra = ("to train", ", plus gradients and optimizer state") if training else ("to load", "")
        raise ConfigError(f"{what} needs at least {gigabytes(need)} of memory {purpose} ({gigabytes(params + buffers)} "
                          f"of weights and state{extra}) but {gigabytes(available)} is available on "
                          f"{torch.device(device)}: {advice}")


def check_output_fits(what: str, count: int, memory_per_item: int, disk_per_item: int, device: torch.device | str,
                      folder: str | Path, option: str) -> None:
    """Refuse `count` items (samples, images) whose arrays cannot fit in memory or on disk,
    saying how many would."""
    for where, per_item, available in (("memory", memory_per_item, available_memory(device)),
                                       ("disk space", disk_per_item, free_disk(folder))):
        if available is None or per_item <= 0 or count * per_item <= available:
            continue
        fits = max(0, available // per_item)
        raise ConfigError(f"{option} {count}: {count:,} {what} need about {gigabytes(count * per_item)} of {where}, "
                          f"and {gigabytes(available)} is available"
                          f"{'' if where == 'memory' else ' in ' + str(folder)}; at most about {fits:,} fit")
