"""Batches for training and evaluation, sharded across processes.

Each epoch's order is a permutation drawn from (seed, epoch) alone, so it is the same on
every process, after a resume, and in a single-process run: process r of W takes the r-th
slice of every global batch. With equal slices, DDP's gradient average equals the
single-process gradient of the global batch, so the two train the same model.
"""
from __future__ import annotations

import os
from typing import Iterator

import torch

from .datasets import ImageSet


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


class ShardedBatchSampler:
    """Index batches of one epoch for one process; `skip` batches already done (resume)."""

    def __init__(self, n: int, global_batch: int, rank: int = 0, world: int = 1, shuffle: bool = True,
                 seed: int = 0, epoch: int = 0, skip: int = 0):
        self.n, self.global_batch, self.rank, self.world = n, global_batch, rank, world
        self.shuffle, self.seed, self.epoch, self.skip = shuffle, seed, epoch, skip

    def __len__(self) -> int:
        return max(0, self.num_batches(self.n, self.global_batch, self.world) - self.skip)

    @staticmethod
    def num_batches(n: int, global_batch: int, world: int = 1) -> int:
        full, rest = divmod(n, global_batch)
        return full + (1 if rest >= world else 0)  # a last batch too small to split is dropped

    def __iter__(self) -> Iterator[list[int]]:
        order = epoch_permutation(self.n, self.seed, self.epoch) if self.shuffle else torch.arange(self.n)
        for b in range(self.skip, self.num_batches(self.n, self.global_batch, self.world)):
            batch = order[b * self.global_batch:(b + 1) * self.global_batch]
            yield batch.tensor_split(self.world)[self.rank].tolist()


def resident_budget(device: torch.device) -> int:
    """Bytes of uint8 images that may be copied whole onto `device`: half of the free GPU
    memory (the model and activations need the rest), or a quarter of the machine's RAM."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 2
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError, AttributeError):  # not POSIX
        return 2 << 30


class _Rows(torch.utils.data.Dataset):
    """Whole batches cut from a (memory-mapped) uint8 tensor by loader workers: item = a list of
    rows. Rows are read in file order (sequential reads of the memory map), then put back."""

    def __init__(self, data: ImageSet):
        self.images, self.labels = data.images, data.labels
        self.index = data.index if data.index is not None else torch.arange(len(data.images))

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, batch: list[int]):
        positions = torch.as_tensor(batch)
        rows, order = self.index[positions].sort()
        images = torch.empty((len(batch),) + tuple(self.images.shape[1:]), dtype=torch.uint8)
        images[order] = self.images[rows]
        labels = self.labels[positions] if self.labels is not None else torch.full((len(batch),), -1)
        return images, labels


class Batches:
    """Iterates (images float in [0, 1] on `device`, labels int64 on `device`) batches.

    A uint8 tensor set (in memory, or a cache file) that fits `resident_budget` is copied to
    the device once and batches are cut there; a larger one streams from its memory map through
    `num_workers` loader processes into pinned memory; a folder without cache is decoded by them.
    """

    def __init__(self, data: ImageSet, batch_size: int, device: torch.device, rank: int = 0, world: int = 1,
                 shuffle: bool = True, seed: int = 0, num_workers: int = 0, channels_last: bool = False,
                 max_resident_bytes: int | None = None):
        self.data, self.batch_size, self.device = data, batch_size, device
        self.rank, self.world, self.shuffle, self.seed = rank, world, shuffle, seed
        self.num_workers, self.channels_last = num_workers, channels_last
        budget = resident_budget(device) if max_resident_bytes is None else max_resident_bytes
        self.resident = data.in_memory and (not data.source or data.nbytes <= budget)
        if self.resident:
            self.in_memory = TensorBatches((data.tensor(), data.labels), batch_size, device, rank, world, shuffle,
                                           seed)

    def __len__(self) -> int:
        return ShardedBatchSampler.num_batches(len(self.data), self.batch_size, self.world)

    def epoch(self, epoch: int = 0, skip: int = 0):
        if self.resident:
            for images, labels in self.in_memory.epoch(epoch, skip):
                yield self._prepare(images), labels
            return
        sampler = ShardedBatchSampler(len(self.data), self.batch_size, self.rank, self.world,
                                      self.shuffle, self.seed, epoch, skip)
        pin = self.device.type == "cuda"
        if self.data.in_memory:  # a memory-mapped cache too large to copy: whole batches per worker item
            loader = torch.utils.data.DataLoader(_Rows(self.data), sampler=sampler, batch_size=None,
                                                 num_workers=self.num_workers, pin_memory=pin)
        else:
            loader = torch.utils.data.DataLoader(self.data, batch_sampler=sampler, num_workers=self.num_workers,
                                                 pin_memory=pin, persistent_workers=False)
        for images, labels in loader:
            labels = labels.to(self.device) if self.data.labels is not None else None
            yield self._prepare(images.to(self.device, non_blocking=True)), labels

    def _prepare(self, images_uint8: torch.Tensor) -> torch.Tensor:
        x = images_uint8.float().div_(255.0)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


class TensorBatches:
    """Batches of in-memory tensors (e.g. code maps and labels), sharded like `Batches`."""

    def __init__(self, tensors: tuple[torch.Tensor | None, ...], batch_size: int, device: torch.device,
                 rank: int = 0, world: int = 1, shuffle: bool = True, seed: int = 0):
        self.tensors = tuple(t.to(device) if t is not None else None for t in tensors)
        self.n = len(tensors[0])
        self.batch_size, self.device, self.rank, self.world = batch_size, device, rank, world
        self.shuffle, self.seed = shuffle, seed

    def __len__(self) -> int:
        return ShardedBatchSampler.num_batches(self.n, self.batch_size, self.world)

    def epoch(self, epoch: int = 0, skip: int = 0):
        sampler = ShardedBatchSampler(self.n, self.batch_size, self.rank, self.world, self.shuffle, self.seed,
                                      epoch, skip)
        for idx in sampler:
            idx_t = torch.tensor(idx, device=self.device)
            yield tuple(t[idx_t] if t is not None else None for t in self.tensors)
