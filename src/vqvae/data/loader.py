"""Batches for training and evaluation, sharded across processes.

Each epoch's order is a permutation drawn from (seed, epoch) alone, so it is the same on
every process, after a resume, and in a single-process run: process r of W takes the r-th
slice of every global batch. With equal slices, DDP's gradient average equals the
single-process gradient of the global batch, so the two train the same model.
"""
from __future__ import annotations

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


class Batches:
    """Iterates (images float in [0, 1] on `device`, labels int64 on `device`) batches.

    In-memory sets are moved to the device once and indexed there; folder sets are decoded
    by `num_workers` loader processes.
    """

    def __init__(self, data: ImageSet, batch_size: int, device: torch.device, rank: int = 0, world: int = 1,
                 shuffle: bool = True, seed: int = 0, num_workers: int = 0, channels_last: bool = False):
        self.data, self.batch_size, self.device = data, batch_size, device
        self.rank, self.world, self.shuffle, self.seed = rank, world, shuffle, seed
        self.num_workers, self.channels_last = num_workers, channels_last
        if data.in_memory:
            self.in_memory = TensorBatches((data.images, data.labels), batch_size, device, rank, world, shuffle, seed)

    def __len__(self) -> int:
        return ShardedBatchSampler.num_batches(len(self.data), self.batch_size, self.world)

    def epoch(self, epoch: int = 0, skip: int = 0):
        if self.data.in_memory:
            for images, labels in self.in_memory.epoch(epoch, skip):
                yield self._prepare(images), labels
        else:
            sampler = ShardedBatchSampler(len(self.data), self.batch_size, self.rank, self.world,
                                          self.shuffle, self.seed, epoch, skip)
            loader = torch.utils.data.DataLoader(self.data, batch_sampler=sampler, num_workers=self.num_workers,
                                                 pin_memory=self.device.type == "cuda",
                                                 persistent_workers=False)
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
