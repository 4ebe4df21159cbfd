"""Finite scalar quantization (Mentzer et al., "Finite Scalar Quantization: VQ-VAE Made Simple",
ICLR 2024).

The encoder output is mapped (a 1x1 convolution) to d = len(levels) channels; channel i is
bounded to L_i values and rounded to the nearest integer (straight-through), then scaled into
[-1, 1]. The codebook is implicit: the product of the per-channel grids, prod(L_i) codes, each
an integer by mixed-radix enumeration. Nothing is learned in the quantizer itself, so there is
no codebook loss, no commitment loss and no codebook state: no collapse to guard against.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..config import QuantizerConfig, fsq_levels
from .quantizer import QuantizerOutput, count_codes, straight_through


class FiniteScalarQuantizer(nn.Module):
    loss_names: tuple = ()

    def __init__(self, code_dim: int, config: QuantizerConfig):
        super().__init__()
        self.config = config
        levels = fsq_levels(config)
        self.levels_list = levels
        d = len(levels)
        # Constants derived from the config (rebuilt from it, so not saved in checkpoints).
        self.register_buffer("levels", torch.tensor(levels, dtype=torch.long), persistent=False)
        basis = [math.prod(levels[:i]) for i in range(d)]  # mixed radix: channel 0 varies fastest
        self.register_buffer("basis", torch.tensor(basis, dtype=torch.long), persistent=False)
        self.project_in = nn.Conv2d(code_dim, d, 1) if d != code_dim else None
        self.project_out = nn.Conv2d(d, code_dim, 1) if d != code_dim else None

    @property
    def codebook_size(self) -> int:
        return math.prod(self.levels_list)

    @property
    def usage_size(self) -> int:
        return self.codebook_size

    def usage_counts(self, indices: torch.Tensor) -> torch.Tensor:
        return count_codes(indices, self.codebook_size)

    def _per_channel(self, t: torch.Tensor) -> torch.Tensor:
        return t.view(1, -1, 1, 1)

    def bound(self, z: torch.Tensor) -> torch.Tensor:
        """Squash channel i into an interval whose rounding gives exactly L_i integers
        (paper, appendix A.1): an odd L is centred on 0 (-(L-1)/2..(L-1)/2), an even L is
        shifted by half a step (-L/2..L/2-1). The (1 - eps) keeps tanh's open interval inside
        the end values' rounding cells."""
        levels = self._per_channel(self.levels).float()
        half = (levels - 1) * (1 - 1e-3) / 2
        offset = (levels % 2 == 0).float() * 0.5
        shift = torch.atanh(offset / half)  # so that z = 0 maps to 0
        return torch.tanh(z + shift) * half - offset

    def quantize_latent(self, z: torch.Tensor) -> torch.Tensor:
        """(B, d, H, W) -> grid values in [-1, 1] (straight-through rounding)."""
        bounded = self.bound(z)
        rounded = straight_through(bounded, bounded.round())
        return rounded / self._per_channel(self.levels // 2)

    def codes_to_indices(self, codes: torch.Tensor) -> torch.Tensor:
        """Grid values (B, d, H, W) -> integer indices (B, H, W)."""
        half_width = self._per_channel(self.levels // 2)
        digits = (codes * half_width + half_width).round().long()  # 0..L_i-1 per channel
        return (digits * self._per_channel(self.basis)).sum(1)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """Integer indices (B, H, W) -> grid values (B, d, H, W)."""
        digits = (indices.unsqueeze(1) // self._per_channel(self.basis)) % self._per_channel(self.levels)
        half_width = self._per_channel(self.levels // 2)
        return (digits - half_width).float() / half_width

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, H, W) int -> (B, C, H, W): the decoder's input for these codes."""
        codes = self.indices_to_codes(indices)
        return self.project_out(codes) if self.project_out is not None else codes

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        with torch.autocast(z.device.type, enabled=False):  # grid arithmetic in fp32
            z = z.float()
            if self.project_in is not None:
                z = self.project_in(z)
            codes = self.quantize_latent(z)
            indices = self.codes_to_indices(codes.detach())
            out = self.project_out(codes) if self.project_out is not None else codes
            return QuantizerOutput(out, indices, {})
