"""Lookup-free quantization (Yu et al., "Language Model Beats Diffusion: Tokenizer is Key to
Visual Generation", 2023 (MAGVIT-v2), section 3.1).

The encoder output is mapped (a 1x1 convolution) to b = log2(K) channels and each channel is
quantized to its sign, -1 or +1 (straight-through): the code is the b bits, its index
sum_i [z_i > 0] 2^i. No codebook is looked up or stored. Training adds the commitment loss
MSE(z, sg[q]) and the paper's entropy penalty

    E_z[ H(p(c | z)) ] - diversity * H( E_z[p(c | z)] )

over the soft assignment p(c | z) = softmax_c(-||z - c||^2 / tau): each position is pushed to
a confident code and the batch as a whole to use all codes. Because ||c||^2 = b for every code,
p(c | z) factorises over bits, p(bit_i = +1 | z) = sigmoid(4 z_i / tau), which makes the
per-sample entropy a sum of b binary entropies; the codebook entropy is exact over all K codes.

Defaults: temperature 1.0 and commitment weight 0.02 (`lfq_commitment_weight`). With a sharp
temperature (e.g. tau = 0.01) every |z| beyond tau saturates the sigmoids and the entropy gradients
vanish, and a VQ-sized commitment weight (0.25) pulling z onto +-1 then collapses the codes
(measured: docs/presets.md).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from ..config import QuantizerConfig
from .quantizer import QuantizerOutput, count_codes, straight_through


def binary_entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of Bernoulli(sigmoid(logits)), elementwise, stable for large |logits|."""
    p = torch.sigmoid(logits)
    return -(p * F.logsigmoid(logits) + (1 - p) * F.logsigmoid(-logits))


def _probability_sum(base: torch.Tensor, logits: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """sum_n p(c | z_n) over a chunk's rows, (K,): log p(c | z) = sum_i logsigmoid(-l_i) + bits(c) . l
    (each bit contributes l_i when it is +1)."""
    return (base + logits @ bits.t()).exp().sum(0)  # (n, K) -> (K,)


def _global_sum(t: torch.Tensor) -> torch.Tensor:
    """`t` summed over the processes of a distributed run, with the gradient flowing back to each
    process's own part (torch.distributed.nn's all_reduce); `t` itself on one process."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return t
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(t)


def lfq_entropies(z: torch.Tensor, temperature: float, chunk_elements: int = 2 ** 24
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean per-sample entropy, entropy of the mean assignment), in nats, of p(c | z) for
    z (N, b) over the 2^b codes of {-1, +1}^b (bit i of code k is (k >> i) & 1).

    The mean assignment needs every code's probability at every position (N x K): it is summed
    chunk by chunk (at most `chunk_elements` probabilities at once), and in training each chunk's
    probabilities are recomputed in the backward pass instead of kept (activation checkpointing),
    so memory stays one chunk, not N x K (2^16 codes at 262,144 positions would be 68 GB). Under
    torch.distributed the mean is over the global batch (all processes' positions), as on one
    process: the codebook entropy is a property of the batch, not of each process's share."""
    logits = 4 * z / temperature  # (N, b): log p(bit=+1) - log p(bit=-1)
    per_sample = binary_entropy_from_logits(logits).sum(1).mean()
    b = z.shape[1]
    codes = torch.arange(2 ** b, device=z.device)
    bits = ((codes[:, None] >> torch.arange(b, device=z.device)) & 1).to(z.dtype)  # (K, b)
    base = F.logsigmoid(-logits).sum(1, keepdim=True)  # (N, 1)
    recompute = torch.is_grad_enabled() and logits.requires_grad
    probability_sum = torch.zeros(2 ** b, device=z.device, dtype=z.dtype)
    chunk_size = max(1, chunk_elements // 2 ** b)
    for start in range(0, z.shape[0], chunk_size):
        chunk = (base[start:start + chunk_size], logits[start:start + chunk_size], bits)
        if recompute:
            part = torch.utils.checkpoint.checkpoint(_probability_sum, *chunk, use_reentrant=False)
        else:
            part = _probability_sum(*chunk)
        probability_sum = probability_sum + part
    count = _global_sum(torch.tensor(float(z.shape[0]), device=z.device, dtype=z.dtype))
    mean_probs = _global_sum(probability_sum) / count
    codebook = -(mean_probs * mean_probs.clamp_min(1e-12).log()).sum()
    return per_sample, codebook


class LookupFreeQuantizer(nn.Module):
    loss_names = ("commitment", "entropy")

    def __init__(self, code_dim: int, config: QuantizerConfig):
        super().__init__()
        self.config = config
        self.bits = config.codebook_size.bit_length() - 1
        self.register_buffer("powers", 2 ** torch.arange(self.bits), persistent=False)  # constants
        self.project_in = nn.Conv2d(code_dim, self.bits, 1) if self.bits != code_dim else None
        self.project_out = nn.Conv2d(self.bits, code_dim, 1) if self.bits != code_dim else None

    @property
    def codebook_size(self) -> int:
        return 2 ** self.bits

    @property
    def usage_size(self) -> int:
        return self.codebook_size

    def usage_counts(self, indices: torch.Tensor) -> torch.Tensor:
        return count_codes(indices, self.codebook_size)

    def codes_to_indices(self, codes: torch.Tensor) -> torch.Tensor:
        """Sign codes (B, b, H, W) -> indices (B, H, W): bit i set where channel i is +1."""
        return ((codes > 0).long() * self.powers.view(1, -1, 1, 1)).sum(1)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices (B, H, W) -> sign codes (B, b, H, W) in {-1, +1}."""
        bits = (indices.unsqueeze(1) // self.powers.view(1, -1, 1, 1)) % 2
        return bits.float() * 2 - 1

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        codes = self.indices_to_codes(indices)
        return self.project_out(codes) if self.project_out is not None else codes

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        with torch.autocast(z.device.type, enabled=False):  # entropies and signs in fp32
            z = z.float()
            if self.project_in is not None:
                z = self.project_in(z)  # (B, b, H, W)
            codes = torch.where(z > 0, 1.0, -1.0)
            indices = self.codes_to_indices(codes)
            commitment = F.mse_loss(z, codes)
            if self.training:
                # The penalty needs every code's probability per position (N x K): training only.
                flat = z.permute(0, 2, 3, 1).reshape(-1, self.bits)
                per_sample, codebook = lfq_entropies(flat, self.config.entropy_temperature)
                entropy = per_sample - self.config.entropy_diversity * codebook
            else:
                entropy = torch.zeros((), device=z.device)
            out = straight_through(z, codes)
            if self.project_out is not None:
                out = self.project_out(out)
            return QuantizerOutput(out, indices, {"commitment": commitment, "entropy": entropy})
