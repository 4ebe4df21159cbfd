"""What every prior over code maps shares: its spec, how logits become codes, guidance.

Every prior kind (`GatedPixelCNN`, `TransformerPrior`, and MaskGIT's `MaskGITPrior`) offers the
same small interface, so the API and the benchmarks rarely ask which one they hold:

    forward(codes (B, h, w), labels (B,) | None) -> logits (B, K, h, w)   # causal in raster order
                                                                          # (MaskGIT: bidirectional)
    sample(batch, labels, temperature, top_k, top_p, guidance, generator) -> codes (B, h, w)
    complete(codes, masked, labels, ...) -> codes   # inpainting: re-draw the masked positions
    spec, config, conditional, null_class

The autoregressive ones also have `teacher_forced_logits(codes, labels)`, the incremental
sampler's path, for tests.

Classifier-free guidance (Ho & Salimans 2022) mixes the conditional and unconditional logits
of one network: logits = uncond + guidance * (cond - uncond), so guidance 0 is the
unconditional prior, 1 the plain conditional one, and > 1 sharpens towards the class. The
unconditional logits come from an extra "null" class index (`spec.num_classes`), which the
prior learns when its labels are dropped during training (`prior.label_dropout`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError


@dataclass
class PriorSpec:
    """What the prior is trained on; stored with it so a mismatched VQ-VAE is caught."""

    codebook_size: int
    latent_size: int
    num_classes: int = 0
    class_names: tuple[str, ...] = ()
    # How often to draw each class when sampling without a chosen class: () = uniformly; pseudo-classes
    # (clusters of unlabelled images, prior.pseudo_classes) carry their training frequencies.
    class_weights: tuple[float, ...] = ()


def class_table_size(num_classes: int, conditional: bool, label_dropout: float) -> int:
    """Rows of a class-embedding table: one per class, plus the null class when labels are dropped
    in training (0 = an unconditional prior has no table)."""
    if not conditional:
        return 0
    return num_classes + (1 if label_dropout > 0 else 0)


def check_labels(prior, labels: torch.Tensor | None, batch: int | None = None) -> torch.Tensor | None:
    """The labels a prior's forward pass reads: None for an unconditional prior; for a conditional one,
    (batch,) class indices in 0..num_classes-1 (or its null class). The range is checked when sampling
    (`batch` given), not in training's forward passes, where it would cost a device sync per step."""
    if not prior.conditional:
        return None
    classes = prior.spec.num_classes
    example = f"labels=torch.arange({batch or 'B'}) % {classes}"
    if labels is None:
        raise ConfigError(f"this prior is class-conditional ({classes} classes): pass labels, a tensor of one class "
                          f"index per code map in 0..{classes - 1}, e.g. {example}")
    if not isinstance(labels, torch.Tensor) or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ConfigError(f"labels must be an integer tensor of class indices, e.g. {example}; got "
                          f"{getattr(labels, 'dtype', type(labels).__name__)}")
    if labels.dim() != 1 or (batch is not None and len(labels) != batch):
        raise ConfigError(f"labels must hold one class index per code map: shape ({batch or 'B'},), got "
                          f"{tuple(labels.shape)}")
    highest = classes if prior.null_class is not None else classes - 1
    if batch is not None and len(labels) and (int(labels.min()) < 0 or int(labels.max()) > highest):
        raise ConfigError(f"labels must be class indices in 0..{classes - 1}"
                          f"{f' (or {classes}, the null class)' if highest == classes else ''}; got "
                          f"{int(labels.min())}..{int(labels.max())}")
    return labels


def guided_batch(prior, labels: torch.Tensor | None, guidance: float,
                 batch: int | None = None) -> tuple[torch.Tensor | None, bool]:
    """Labels for one sampling pass, and whether they are doubled: with guidance other than 1, the
    batch runs twice in one pass, first with the classes, then with the null class."""
    if guidance == 1.0 or not prior.conditional:
        return check_labels(prior, labels, batch), False
    if prior.null_class is None:
        raise ConfigError("guidance needs a prior trained with label dropout (prior.label_dropout > 0); this one "
                         "was trained without it, so it has no unconditional mode")
    labels = check_labels(prior, labels, batch)
    return torch.cat([labels, torch.full_like(labels, prior.null_class)]), True


def mix_guidance(logits: torch.Tensor, guidance: float, doubled: bool) -> torch.Tensor:
    """(2B, ...) logits of a doubled batch -> (B, ...) guided logits; a plain batch passes through."""
    if not doubled:
        return logits
    cond, uncond = logits.float().chunk(2)
    return uncond + guidance * (cond - uncond)


def filter_top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep, per row, the smallest set of likeliest codes whose probability reaches `top_p`
    (nucleus sampling, Holtzman et al. 2020); the others get -inf. The likeliest code always stays."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=1, descending=True)
    probs = torch.softmax(sorted_logits, dim=1)
    mass_before = probs.cumsum(1) - probs  # mass of the strictly likelier codes
    drop_sorted = mass_before >= top_p
    drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def check_sampling(temperature: float, top_k: int, top_p: float) -> None:
    if temperature <= 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    if top_k < 0:
        raise ConfigError(f"top_k must be >= 0 (0 = off), got {top_k}")
    if not 0 < top_p <= 1:
        raise ConfigError(f"top_p must be in (0, 1] (1 = off), got {top_p}")


def truncated_probs(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0,
                    top_p: float = 1.0) -> torch.Tensor:
    """(B, K) logits -> (B, K) the probabilities codes are drawn from: temperature, then top-k,
    then top-p truncation."""
    logits = logits.float() / temperature
    if top_k and top_k < logits.shape[1]:
        kth = logits.topk(top_k, dim=1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.softmax(filter_top_p(logits, top_p), dim=1)


def sample_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0,
                  generator: torch.Generator | None = None, top_p: float = 1.0) -> torch.Tensor:
    """(B, K) logits -> (B,) sampled indices, with temperature, then top-k, then top-p truncation."""
    probs = truncated_probs(logits, temperature, top_k, top_p)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


@torch.no_grad()
def sample_full_pass(prior, batch: int, labels: torch.Tensor | None = None, temperature: float = 1.0,
                     top_k: int = 0, generator: torch.Generator | None = None, max_positions: int | None = None,
                     top_p: float = 1.0, guidance: float = 1.0) -> torch.Tensor:
    """The seed's way to sample: one full network pass per position. Kept as the benchmark
    baseline and as a reference the incremental samplers must match; `max_positions` stops early
    (every pass costs the same, so a benchmark can time a few)."""
    check_sampling(temperature, top_k, top_p)
    size = prior.spec.latent_size
    device = next(prior.parameters()).device
    run_labels, doubled = guided_batch(prior, labels, guidance)
    codes = torch.zeros(batch, size, size, dtype=torch.long, device=device)
    for position in range(size * size if max_positions is None else min(max_positions, size * size)):
        i, j = divmod(position, size)
        logits = prior(torch.cat([codes, codes]) if doubled else codes, run_labels)[:, :, i, j]
        codes[:, i, j] = sample_logits(mix_guidance(logits, guidance, doubled), temperature, top_k, generator, top_p)
    return codes


class ConditionalPrior(nn.Module):
    """What every prior shares: a subclass sets `config` (PriorConfig) and `spec` (PriorSpec)."""

    @property
    def conditional(self) -> bool:
        return self.config.conditional

    @property
    def null_class(self) -> int | None:
        """The label index meaning "no class" (learned with label dropout), or None."""
        return self.spec.num_classes if self.conditional and self.config.label_dropout > 0 else None


class AutoregressivePrior(ConditionalPrior):
    """What the autoregressive priors share. A subclass implements `forward(codes, labels) -> logits
    (B, K, H, W)` (each position sees only earlier codes) and `_autoregress(batch, height, width,
    labels, choose)`, which walks the positions in raster order and asks `choose(logits (B, K), i, j)`
    for the code at each."""

    def loss(self, codes: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Mean cross-entropy in nats per code."""
        return F.cross_entropy(self(codes, labels).float(), codes)

    @torch.no_grad()
    def teacher_forced_logits(self, codes: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The incremental (cached) path fed the given codes; equals forward(codes) up to float error."""
        B, H, W = codes.shape
        out = torch.zeros(B, self.spec.codebook_size, H, W, device=codes.device)

        def choose(logits, i, j):
            out[:, :, i, j] = logits.float()
            return codes[:, i, j]

        self._autoregress(B, H, W, check_labels(self, labels), choose)
        return out

    @torch.no_grad()
    def sample(self, batch: int, labels: torch.Tensor | None = None, temperature: float = 1.0, top_k: int = 0,
               generator: torch.Generator | None = None, top_p: float = 1.0, guidance: float = 1.0) -> torch.Tensor:
        """Draw code maps (B, H, W) from the prior, one position at a time. With `guidance` other than 1
        (conditional priors trained with label dropout), the batch runs doubled: classes, then null."""
        check_sampling(temperature, top_k, top_p)
        size = self.spec.latent_size
        run_labels, doubled = guided_batch(self, labels, guidance, batch)

        def choose(logits, i, j):
            codes = sample_logits(mix_guidance(logits, guidance, doubled), temperature, top_k, generator, top_p)
            return torch.cat([codes, codes]) if doubled else codes

        return self._autoregress(2 * batch if doubled else batch, size, size, run_labels, choose)[:batch]

    @torch.no_grad()
    def complete(self, codes: torch.Tensor, masked: torch.Tensor, labels: torch.Tensor | None = None,
                 temperature: float = 1.0, top_k: int = 0, generator: torch.Generator | None = None,
                 top_p: float = 1.0, guidance: float = 1.0) -> torch.Tensor:
        """Inpainting with a raster-order prior: each map keeps its codes before its first `masked`
        (B, H, W) position and re-draws every position from there on, masked or not, since a
        code's distribution here cannot depend on later codes (MaskGIT's `complete` re-draws the
        masked positions only)."""
        check_sampling(temperature, top_k, top_p)
        B, H, W = codes.shape
        flat = masked.reshape(B, H * W)
        first = torch.where(flat.any(1), flat.float().argmax(1), torch.full((B,), H * W, device=codes.device))
        run_labels, doubled = guided_batch(self, labels, guidance)

        def choose(logits, i, j):
            drawn = sample_logits(mix_guidance(logits, guidance, doubled), temperature, top_k, generator, top_p)
            kept = torch.where(i * W + j < first, codes[:, i, j], drawn)
            return torch.cat([kept, kept]) if doubled else kept

        return self._autoregress(2 * B if doubled else B, H, W, run_labels, choose)[:B]
