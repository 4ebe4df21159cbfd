"""Vector quantizer: nearest-code search, straight-through gradients, and codebook learning.

Codebook learning is either the seed's pair of losses (codebook + commitment) or the
exponential moving averages of the VQ-VAE paper's appendix A.1. All codebook state
(EMA sums, cluster sizes, steps since each code was last used, an "initialised" flag)
lives in registered buffers, so it survives `state_dict` and an exact resume.

Under torch.distributed the batch statistics are summed over processes before any
update, and restarts are broadcast from rank 0, so every replica keeps the same codebook.

Options (QuantizerConfig): cosine-similarity codes (codes and encoder outputs l2-normalised
before the search; ViT-VQGAN, Yu et al. 2022, section 3.2), a low-dimensional code space
(a linear map down for the search, back up after; same paper: factorised codes), and the
rotation trick instead of the straight-through estimator (Fifty et al., ICLR 2025). With
none of them set, the computation is the seed's, operation for operation.

The other kinds (FSQ, LFQ, residual VQ) live in fsq.py, lfq.py, rvq.py and share this
module's output type and estimators; `build_quantizer` picks one from the config.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..config import QuantizerConfig
from ..parallel import is_distributed


def straight_through(inputs: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:
    """Forward: the quantized value. Backward: the gradient passes to `inputs` unchanged."""
    return inputs + (quantized - inputs).detach()


def rotation_trick(inputs: torch.Tensor, quantized: torch.Tensor, dim: int = 1, eps: float = 1e-6) -> torch.Tensor:
    """The rotation trick (Fifty et al., ICLR 2025, section 4): q~ = sg[ s R ] e, with R the rotation
    taking e's direction to q's and s = ||q|| / ||e||, both treated as constants.

    Forward: exactly `quantized`. Backward: dL/de = s R^T dL/dq, so the angle between the gradient
    and the code is carried back to the encoder output. R e is computed without forming R
    (section 4.2): R = I - 2 r r^T + 2 q^ e^T with e^ = e/||e||, q^ = q/||q||, r = (e^ + q^)/||e^ + q^||.
    Vectors run along `dim`.
    """
    e = inputs
    e_norm = e.norm(dim=dim, keepdim=True).clamp_min(eps).detach()
    q_norm = quantized.norm(dim=dim, keepdim=True).detach()
    e_hat, q_hat = e.detach() / e_norm, quantized.detach() / q_norm.clamp_min(eps)
    r = F.normalize(e_hat + q_hat, dim=dim, eps=eps)
    rotated = e - 2 * r * (r * e).sum(dim, keepdim=True) + 2 * q_hat * (e_hat * e).sum(dim, keepdim=True)
    transformed = (q_norm / e_norm) * rotated  # equals `quantized` up to rounding
    # Forward value exactly `quantized` (x - x == 0), gradient that of `transformed`.
    return quantized.detach() + (transformed - transformed.detach())


def apply_estimator(name: str, inputs: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:
    """The decoder's input: `quantized` in value, with the gradient estimator `name` backwards."""
    return rotation_trick(inputs, quantized) if name == "rotation" else straight_through(inputs, quantized)


def nearest_codes(flat: torch.Tensor, codebook: torch.Tensor, chunk_size: int = 65536,
                  precision: str = "fp32") -> torch.Tensor:
    """Index of the nearest codebook row for each row of `flat` (squared L2).

    Uses ||z||^2 - 2 z.e + ||e||^2 as one matmul; ||z||^2 is the same for every code and is
    dropped. Memory is O(chunk * K), never the O(N * K * C) of broadcasting differences.
    precision "fast": on CUDA at large codebooks, fp16 distances with a proven error bound and
    fp32 where that bound cannot decide (`codebook_search`): the same codes as fp32 except at
    fp32's own near-ties. flat: (N, C), codebook: (K, C) -> (N,) int64.
    """
    if precision == "fast" and not torch.onnx.is_in_onnx_export():
        from .codebook_search import nearest_codes_fast

        return nearest_codes_fast(flat, codebook, chunk_size)
    flat = flat.float()
    codebook = codebook.float()
    code_norms = (codebook * codebook).sum(1)  # (K,)
    if torch.onnx.is_in_onnx_export():
        # An exported graph must serve any batch size: the traced chunk loop below would be
        # unrolled for the example batch and silently leave rows past the first chunk unsearched.
        return torch.addmm(code_norms, flat, codebook.t(), beta=1.0, alpha=-2.0).argmin(1)
    out = torch.empty(flat.shape[0], dtype=torch.long, device=flat.device)
    for start in range(0, flat.shape[0], chunk_size):
        z = flat[start:start + chunk_size]
        # addmm computes code_norms - 2 * z @ codebook.T in one kernel: (n, K)
        distances = torch.addmm(code_norms, z, codebook.t(), beta=1.0, alpha=-2.0)
        out[start:start + chunk_size] = distances.argmin(1)
    return out


def kmeans(samples: torch.Tensor, k: int, iters: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Lloyd's k-means with k-means++ seeding (each new centre drawn with probability
    proportional to its squared distance from the centres so far); an empty cluster keeps its
    centre. samples: (N, C) -> centres: (k, C)."""
    n = samples.shape[0]
    centres = torch.empty(k, samples.shape[1], dtype=samples.dtype, device=samples.device)
    centres[0] = samples[torch.randint(0, n, (1,), device=samples.device, generator=generator)]
    closest = ((samples - centres[0]) ** 2).sum(1)
    for i in range(1, k):
        weights = closest if closest.sum() > 0 else torch.ones_like(closest)
        pick = torch.multinomial(weights, 1, generator=generator)
        centres[i] = samples[pick]
        closest = torch.minimum(closest, ((samples - centres[i]) ** 2).sum(1))
    for _ in range(iters):
        assign = nearest_codes(samples, centres)
        sums = torch.zeros_like(centres).index_add_(0, assign, samples)
        counts = torch.bincount(assign, minlength=k).to(samples.dtype)
        filled = counts > 0
        centres[filled] = sums[filled] / counts[filled, None]
    return centres


@dataclass
class QuantizerOutput:
    """What every quantizer kind returns."""

    quantized: torch.Tensor  # (B, C, H, W): the decoder's input (quantized value, estimator's gradient)
    indices: torch.Tensor  # (B, h, w) int64; residual VQ: (B, depth, h, w)
    losses: dict  # name -> scalar, unweighted; names are the quantizer's `loss_names`

    @property
    def codebook_loss(self) -> torch.Tensor:  # MSE(sg[ze], zq); zero with EMA updates
        return self.losses["codebook"]

    @property
    def commitment_loss(self) -> torch.Tensor:  # MSE(ze, sg[zq])
        return self.losses["commitment"]


def count_codes(indices: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """How often each code occurs in `indices` (any shape) -> (codebook_size,) int64."""
    return torch.bincount(indices.flatten(), minlength=codebook_size)


def code_dtype(codebook_size: int) -> torch.dtype:
    """The integer type code files store: int16 while it holds every index, else int32."""
    return torch.int16 if codebook_size <= 2 ** 15 else torch.int32


def process_sizes(n: int, device) -> tuple[list[int], int]:
    """(every process's `n`, in rank order; this process's rank): ([n], 0) in a single process.
    Under torch.distributed a collective that every process must call."""
    if not is_distributed():
        return [n], 0
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([n], device=device))
    return [int(s.item()) for s in sizes], dist.get_rank()


def _global_rows(flat: torch.Tensor) -> torch.Tensor:
    """Every process's rows, concatenated in rank order: the global batch a single process
    would see, so initialisation and restarts pick from the same vectors either way."""
    if not is_distributed():
        return flat
    sizes, _ = process_sizes(flat.shape[0], flat.device)
    padded = torch.zeros(max(sizes), flat.shape[1], dtype=flat.dtype, device=flat.device)
    padded[: flat.shape[0]] = flat
    gathered = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(gathered, padded)
    return torch.cat([g[:s] for g, s in zip(gathered, sizes)])


class VectorQuantizer(nn.Module):
    loss_names = ("codebook", "commitment")

    def __init__(self, code_dim: int, config: QuantizerConfig):
        super().__init__()
        self.config = config
        self.code_dim = code_dim
        K = config.codebook_size
        lookup_dim = config.lookup_dim or code_dim
        weight = torch.empty(K, lookup_dim).uniform_(-1.0 / K, 1.0 / K)  # the seed's initialisation
        # With EMA updates the codebook is not trained by gradients; requires_grad=False also
        # keeps DDP from expecting a gradient for it.
        self.codebook = nn.Parameter(weight, requires_grad=config.update == "loss")
        self.register_buffer("initialised", torch.tensor(config.init == "uniform"))
        self.register_buffer("ema_cluster_size", torch.ones(K))
        self.register_buffer("ema_embed_sum", weight.clone())
        self.register_buffer("steps_unused", torch.zeros(K, dtype=torch.long))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))
        # Host-side mirrors of `initialised` and `num_updates`, read from the buffers once (one
        # device sync) instead of every step; reset whenever a state dict is loaded.
        self._ready: bool | None = None
        self._updates: int | None = None
        # Factorised codes: 1x1 convolutions (per-position linear maps) down to the search space and
        # back; created after the codebook so the seed's random stream is unchanged without them.
        self.project_in = nn.Conv2d(code_dim, lookup_dim, 1) if config.lookup_dim else None
        self.project_out = nn.Conv2d(lookup_dim, code_dim, 1) if config.lookup_dim else None

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._ready, self._updates = None, None

    @property
    def restart_check_every(self) -> int:
        """Dead codes are looked for every this many steps (a host sync each time), not every step."""
        return max(1, self.config.restart_after_steps // 10)

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def usage_size(self) -> int:
        """Length of `usage_counts`: one count per code."""
        return self.codebook_size

    def usage_counts(self, indices: torch.Tensor) -> torch.Tensor:
        return count_codes(indices, self.codebook_size)

    def codes(self) -> torch.Tensor:
        """(K, D) the vectors codes stand for: the codebook, l2-normalised for cosine codes."""
        return F.normalize(self.codebook, dim=1) if self.config.distance == "cosine" else self.codebook

    def lookup_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, H, W) int -> (B, D, H, W) code vectors in the search space."""
        return F.embedding(indices, self.codes()).permute(0, 3, 1, 2)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, H, W) int -> (B, C, H, W): the decoder's input for these codes."""
        quantized = self.lookup_codes(indices)
        return self.project_out(quantized) if self.project_out is not None else quantized

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        """z: (B, C, H, W) encoder output. Distances and codebook updates run in fp32, also
        under autocast: bf16 distances pick wrong codes once codes are close together."""
        with torch.autocast(z.device.type, enabled=False):
            return self._forward(z)

    def search_space(self, z: torch.Tensor) -> torch.Tensor:
        """Encoder output (B, C, H, W) -> the vectors whose nearest `codes()` are their codes
        (B, D, H, W): projected to lookup_dim, l2-normalised for cosine codes."""
        z = z.float()
        if self.project_in is not None:
            z = self.project_in(z)  # (B, lookup_dim, H, W)
        if self.config.distance == "cosine":
            z = F.normalize(z, dim=1)
        return z

    def _forward(self, z: torch.Tensor) -> QuantizerOutput:
        z = self.search_space(z)
        quantized, indices, losses = self.quantize_hard(z)
        out = apply_estimator(self.config.gradient, z, quantized)
        if self.project_out is not None:
            out = self.project_out(out)
        return QuantizerOutput(out, indices, losses)

    def quantize_hard(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Nearest codes of z (B, D, H, W) in the search space, fp32: (codes (B, D, H, W) carrying
        the codebook's gradient, indices (B, H, W), losses). Training mode updates the codebook."""
        B, C, H, W = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, C)  # (B*H*W, C)
        if self.training and not self._ready:
            self._ready = bool(self.initialised)
            if not self._ready:
                self._initialise(flat.detach())
                self._ready = True
        indices = nearest_codes(flat.detach(), self.codes().detach(), precision=self.config.search_precision)
        if self.training:
            self._update(flat.detach(), indices)
        quantized = self.lookup_codes(indices.view(B, H, W))
        commitment = F.mse_loss(z, quantized.detach())
        if self.config.update == "loss":
            codebook_loss = F.mse_loss(z.detach(), quantized)
        else:
            codebook_loss = torch.zeros((), device=z.device)
        return quantized, indices.view(B, H, W), {"codebook": codebook_loss, "commitment": commitment}

    # ------------------------------------------------------------------ codebook learning
    @torch.no_grad()
    def _initialise(self, flat: torch.Tensor) -> None:
        """Seed the codebook from encoder outputs of the first (global) training batch."""
        K = self.codebook_size
        flat = _global_rows(flat)
        if self.config.init == "kmeans":
            centres = kmeans(flat, K, self.config.kmeans_iters)
        else:
            centres = flat[torch.randint(0, flat.shape[0], (K,), device=flat.device)]
        if is_distributed():
            dist.broadcast(centres, 0)
        self.codebook.data.copy_(centres)
        self.ema_embed_sum.copy_(centres)
        self.ema_cluster_size.fill_(1.0)
        self.initialised.fill_(True)

    @torch.no_grad()
    def _update(self, flat: torch.Tensor, indices: torch.Tensor) -> None:
        K = self.codebook_size
        counts = torch.bincount(indices, minlength=K).float()  # (K,)
        if self.config.update == "ema":
            sums = torch.zeros(K, flat.shape[1], device=flat.device).index_add_(0, indices, flat)
            if is_distributed():
                stats = torch.cat([counts[:, None], sums], 1)
                dist.all_reduce(stats)
                counts, sums = stats[:, 0].contiguous(), stats[:, 1:].contiguous()
            self.ema_update(counts, sums)
        elif is_distributed():
            dist.all_reduce(counts)
        self.steps_unused.add_(1)
        self.steps_unused.masked_fill_(counts > 0, 0)
        if self._updates is None:
            self._updates = int(self.num_updates)
        self._updates += 1
        self.num_updates.fill_(self._updates)
        if self.config.restart_after_steps > 0 and self._updates % self.restart_check_every == 0:
            self._restart_dead(flat)

    @torch.no_grad()
    def ema_update(self, counts: torch.Tensor, sums: torch.Tensor) -> None:
        """Appendix A.1: N <- d N + (1-d) n;  m <- d m + (1-d) sum z;  e = m / N (N Laplace-smoothed)."""
        d, eps, K = self.config.ema_decay, self.config.ema_epsilon, self.codebook_size
        self.ema_cluster_size.mul_(d).add_(counts, alpha=1 - d)
        self.ema_embed_sum.mul_(d).add_(sums, alpha=1 - d)
        total = self.ema_cluster_size.sum()
        smoothed = (self.ema_cluster_size + eps) / (total + K * eps) * total
        self.codebook.data.copy_(self.ema_embed_sum / smoothed[:, None])

    @torch.no_grad()
    def _restart_dead(self, flat: torch.Tensor) -> None:
        dead = self.steps_unused >= self.config.restart_after_steps
        n_dead = int(dead.sum())
        if n_dead == 0:
            return
        # Re-seed from random encoder outputs of this (global) batch; rank 0's picks are shared.
        flat = _global_rows(flat)
        picks = flat[torch.randint(0, flat.shape[0], (n_dead,), device=flat.device)]
        if is_distributed():
            dist.broadcast(picks, 0)
        self.codebook.data[dead] = picks
        self.ema_embed_sum[dead] = picks
        self.ema_cluster_size[dead] = 1.0
        self.steps_unused[dead] = 0
