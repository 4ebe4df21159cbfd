"""Finite scalar quantization (Mentzer et al., "Finite Scalar Quantization: VQ-VAE Made Simple",
ICLR 2024).

The encoder output is mapped (a 1x1 convolution) to d = len(levels) channels; channel i is
bounded to L_i values and rounded to the nearest integer (straight-through), then scaled into
[-1, 1]. The codebook is implicit: the product of the per-channel grids, prod(L_i) codes, each
an integer by mixed-radix enumeration. Nothing is learned in the quantizer itself, so there is
no codebook loss, no commitment loss and no codebook state.

What can starve the implicit codebook is the scale of the bound's input. tanh's rounding cells
for L levels end at z = atanh((k + 1/2) / ((L-1)/2)): for L = 5 at |z| = 0.26 and 0.97. With
PyTorch's init the encoder and project_in shrink activations far below that, so at step 0 every
channel sits in its centre cell; and training can drive a channel to |z| >> 1, where tanh's
gradient vanishes: it then stays in one outer level for good. (benchmarks/diagnose_fsq.py measures
both; docs/benchmarks.md, "FSQ's input scale", has the figures.)
`fsq_normalise` (under `quantizer.`):
- "batch" (default): each channel is standardised like batch normalisation without the affine
  part: batch mean and variance in training (differentiated through, as in BN), running averages
  (all-reduced under torchrun, so replicas agree) in evaluation. A channel then always has mean 0
  and std 1 over a batch, where a Gaussian channel uses L = 5..8 levels at 98-99% of their
  maximum entropy (log2 L); it cannot leave tanh's useful range.
- "init": project_in is rescaled once, on the first training batch, to mean 0 and std 1 per
  channel (the data-dependent init of weight normalisation, Salimans & Kingma 2016; VQ's k-means
  init is the same idea). It fixes the start, not a drift during training.
- "none": PyTorch's init, as the paper's code and lucidrains' FSQ (no normalisation there).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..config import QuantizerConfig, fsq_levels
from ..parallel import is_distributed
from .quantizer import QuantizerOutput, _global_rows, count_codes, straight_through

# The pre-bound standard deviation fsq_normalise sets: a Gaussian channel then uses its levels at
# 98.4-99.3% of the maximum entropy for L = 5..8 (0.79-0.85 at std 0.5, 0.91-0.93 at std 2).
INIT_STD = 1.0
RUNNING_MOMENTUM = 0.1  # weight of a new batch in the running statistics (BatchNorm's default)
NORM_EPS = 1e-5


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
        # Saved with the weights, so a resumed run does not rescale project_in a second time.
        needs_init = self.project_in is not None and config.fsq_normalise == "init"
        self.register_buffer("initialised", torch.tensor(not needs_init))
        self._ready: bool | None = None  # host-side mirror of `initialised`: no device sync per step
        # fsq_normalise="batch": running statistics of the bound's input, for evaluation.
        self.register_buffer("running_mean", torch.zeros(d))
        self.register_buffer("running_var", torch.ones(d))

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._ready = None

    def standardise(self, z: torch.Tensor) -> torch.Tensor:
        """fsq_normalise="batch": (B, d, H, W) -> per channel mean 0, std INIT_STD."""
        if self.training:
            mean, var = z.mean((0, 2, 3)), z.var((0, 2, 3), unbiased=False)  # (d,), differentiated through
            with torch.no_grad():
                stats = torch.stack([mean, var + mean ** 2]) * z[:, 0].numel()  # sums over positions
                count = torch.tensor(float(z[:, 0].numel()), device=z.device)
                if is_distributed():  # running statistics over the global batch: identical replicas
                    torch.distributed.all_reduce(stats)
                    torch.distributed.all_reduce(count)
                global_mean = stats[0] / count
                global_var = stats[1] / count - global_mean ** 2
                self.running_mean.lerp_(global_mean, RUNNING_MOMENTUM)
                self.running_var.lerp_(global_var, RUNNING_MOMENTUM)
        else:
            mean, var = self.running_mean, self.running_var
        return (z - self._per_channel(mean)) * (INIT_STD / self._per_channel(var + NORM_EPS).sqrt())

    @torch.no_grad()
    def _standardise_projection(self, x: torch.Tensor) -> None:
        """Rescale project_in so that its output on `x` (the first global training batch) has
        mean 0 and std INIT_STD per channel: (Wx + b - mean) / std = (W / std) x + (b - mean) / std."""
        z = self.project_in(x)  # (B, d, H, W)
        flat = _global_rows(z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]))  # (positions, d)
        mean, std = flat.mean(0), flat.std(0).clamp_min(1e-12) / INIT_STD
        self.project_in.weight.div_(std.view(-1, 1, 1, 1))
        self.project_in.bias.sub_(mean).div_(std)
        if is_distributed():  # every replica starts from rank 0's numbers, bit for bit
            torch.distributed.broadcast(self.project_in.weight, 0)
            torch.distributed.broadcast(self.project_in.bias, 0)
        self.initialised.fill_(True)

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
            if self.training and not self._ready:
                self._ready = bool(self.initialised)
                if not self._ready:
                    self._standardise_projection(z)
                    self._ready = True
            if self.project_in is not None:
                z = self.project_in(z)
            if self.config.fsq_normalise == "batch":
                z = self.standardise(z)
            codes = self.quantize_latent(z)
            indices = self.codes_to_indices(codes.detach())
            out = self.project_out(codes) if self.project_out is not None else codes
            return QuantizerOutput(out, indices, {})
