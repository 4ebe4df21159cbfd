"""Residual vector quantization (Zeghidour et al., "SoundStream", 2021, section 3.3).

D levels, each a `VectorQuantizer` with its own codebook of K codes (with every option of the
config's codebook learning: loss or EMA updates, k-means init, restarts). Level 1 quantizes the
encoder output, level i the residual left by levels 1..i-1; the decoder sees the sum of the D
chosen codes, so a position carries D indices (codes (B, D, h, w)) and D * log2(K) bits.

Quantizer dropout (SoundStream): during training a fraction `rvq_dropout` of the images is
decoded from only its first n ~ U{1..D} levels, so that decoding the first few levels of a code
map gives a usable coarser image. Every level still sees and learns from every residual. Under
torchrun the VQ-VAE stage seeds every process alike, so each draws the depths of the whole global
batch and keeps its own shard's: N processes train on the depths one process at the global batch
would draw, not one shard's pattern repeated N times, and their random streams stay in step.
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import QuantizerConfig
from .quantizer import QuantizerOutput, VectorQuantizer, apply_estimator, count_codes, process_sizes


class ResidualVectorQuantizer(nn.Module):
    loss_names = ("codebook", "commitment")

    def __init__(self, code_dim: int, config: QuantizerConfig):
        super().__init__()
        self.config = config
        self.levels = nn.ModuleList(VectorQuantizer(code_dim, config) for _ in range(config.rvq_depth))

    @property
    def depth(self) -> int:
        return len(self.levels)

    @property
    def codebook_size(self) -> int:
        """Codes per level: each of the D indices at a position is in [0, codebook_size)."""
        return self.config.codebook_size

    @property
    def usage_size(self) -> int:
        """Usage is counted per level: level i's code k is slot i * K + k."""
        return self.depth * self.codebook_size

    def usage_counts(self, indices: torch.Tensor) -> torch.Tensor:
        """indices (B, D, h, w) -> (D * K,) counts."""
        offsets = torch.arange(indices.shape[1], device=indices.device).view(1, -1, 1, 1) * self.codebook_size
        return count_codes(indices + offsets, self.usage_size)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, d, h, w) with d <= D: the sum of the first d levels' codes (B, C, h, w)."""
        return sum(level.lookup(indices[:, i]) for i, level in enumerate(self.levels[:indices.shape[1]]))

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        with torch.autocast(z.device.type, enabled=False):  # searches and updates in fp32
            z = z.float()
            keep = self._levels_kept(z.shape[0], z.device)  # (B, D) 0/1, or None: all levels
            spent = torch.zeros_like(z)  # the sum of the earlier levels' codes, as constants
            total = torch.zeros_like(z)
            indices, codebook_losses, commitments = [], [], []
            for i, level in enumerate(self.levels):
                # The residual carries z's gradient, so each level's commitment loss reaches the encoder.
                quantized, level_indices, losses = level.quantize_hard(z - spent)
                spent = spent + quantized.detach()
                total = total + (quantized if keep is None else quantized * keep[:, i].view(-1, 1, 1, 1))
                indices.append(level_indices)
                codebook_losses.append(losses["codebook"])
                commitments.append(losses["commitment"])
            # One estimator for the whole sum: the encoder's gradient is the decoder's, not D copies of it.
            out = apply_estimator(self.config.gradient, z, total)
            losses = {"codebook": torch.stack(codebook_losses).sum(), "commitment": torch.stack(commitments).sum()}
            return QuantizerOutput(out, torch.stack(indices, 1), losses)

    def _levels_kept(self, batch: int, device) -> torch.Tensor | None:
        """Quantizer dropout: which levels each image's decoder input uses (B, D), or None."""
        if not (self.training and self.config.rvq_dropout > 0):
            return None
        sizes, rank = process_sizes(batch, device)  # under torchrun: every shard's size (a collective)
        depth = dropout_depths(sizes, rank, self.depth, self.config.rvq_dropout, device)
        return (torch.arange(self.depth, device=device)[None, :] < depth[:, None]).float()


def dropout_depths(sizes: list[int], rank: int, depth: int, rate: float, device=None) -> torch.Tensor:
    """Quantizer dropout's depth for each image of shard `rank` (sizes[rank],): depth, or with
    probability `rate` a draw from U{1..depth}. The draw covers the global batch (sum(sizes)
    images, shards in rank order) and this shard's part is returned, so every process consumes
    the same random numbers and the shards' depths together are one process's at the global batch."""
    total = sum(sizes)
    dropped = torch.rand(total, device=device) < rate
    depths = torch.where(dropped, torch.randint(1, depth + 1, (total,), device=device), depth)
    start = sum(sizes[:rank])
    return depths[start:start + sizes[rank]]
