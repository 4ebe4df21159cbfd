"""MaskGIT: a bidirectional transformer prior over code maps, sampled in a few parallel steps
(Chang et al., "MaskGIT: Masked Generative Image Transformer", CVPR 2022).

Training (section 3.2): each code map gets a random number of its codes replaced by a [MASK]
token (index `codebook_size` of the input embedding): a fraction r = cos(pi/2 * u), u ~ U(0, 1)
(the cosine schedule, section 3.3), at least one code; the network sees the rest of the map
and is scored by cross-entropy on the masked positions only.

Sampling (section 3.2, "iterative decoding"; google-research/maskgit `parallel_decode.py`):
start from a map of [MASK]s (or, for inpainting, from the known codes with the rest masked),
and in each of T steps predict every masked code at once, draw one code per position, keep
the most confident draws and mask the others again. After step t, floor(N * cos(pi/2 * t/T))
codes stay masked, N being the number masked at the start, and at least one is re-drawn per
step; the last step keeps every draw. Confidence is the drawn code's probability in log space
plus Gumbel noise scaled by `choice_temperature * (1 - t/T)`: random early, greedy late, as
the reference code does. Known codes are never re-masked or changed.

The class of a conditional prior is one extra token in front of the map (the "null" class
under label dropout); classifier-free guidance mixes the logits of every step as the
autoregressive priors do (prior_common.mix_guidance).

MaskGIT has no exact likelihood: its held-out figure is the masked cross-entropy at fixed mask
ratios (`masked_validation_loss`), in nats per masked code, never a bits-per-code figure.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import PriorConfig, SampleConfig
from .prior_common import (ConditionalPrior, PriorSpec, check_labels, check_sampling, class_table_size, guided_batch,
                           mix_guidance, truncated_probs)
from .transformer_prior import Block, gpt2_init

# The held-out figure checkpoints are chosen on: mean masked cross-entropy over these mask ratios,
# with the masked positions drawn once from this seed, so every epoch scores the same positions.
VALIDATION_MASK_RATIOS = (0.25, 0.5, 0.75)
VALIDATION_MASK_SEED = 0
DEFAULT_STEPS = SampleConfig.steps  # 12, the reference's num_iter
DEFAULT_CHOICE_TEMPERATURE = SampleConfig.choice_temperature  # 4.5, the reference's choice_temperature


def cosine_mask_ratio(progress: torch.Tensor | float) -> torch.Tensor | float:
    """The fraction of codes still masked at `progress` in [0, 1] (training: progress ~ U(0, 1))."""
    if isinstance(progress, torch.Tensor):
        return torch.cos(math.pi / 2 * progress)
    return math.cos(math.pi / 2 * progress)


def training_mask_counts(progress: torch.Tensor, length: int) -> torch.Tensor:
    """(B,) progress u in [0, 1) -> (B,) number of codes to mask: ceil(L * cos(pi/2 * u)), 1..L, as the
    MaskGIT paper (sec. 3.2) states; so a fully masked map, the first sampling step's input and the
    first pass of inpainting's class inference, is trained on (about 1 map in 8 at L = 49)."""
    return torch.ceil(length * cosine_mask_ratio(progress)).long().clamp(1, length)


def random_positions(counts: torch.Tensor, length: int, generator: torch.Generator | None = None,
                     device=None) -> torch.Tensor:
    """(B,) counts -> (B, L) bool: exactly counts[b] positions of row b, uniformly at random."""
    scores = torch.rand(len(counts), length, generator=generator, device=device)
    rank = scores.argsort(1).argsort(1)  # (B, L): each position's rank in a random order
    return rank < counts.to(rank.device)[:, None]


def training_mask(codes: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, H, W) codes -> (B, H, W) bool: the positions to mask, at a cosine-scheduled ratio per map."""
    B, H, W = codes.shape
    u = torch.rand(B, generator=generator, device=codes.device)
    return random_positions(training_mask_counts(u, H * W), H * W, generator, codes.device).view(B, H, W)


def validation_masks(shape: tuple[int, int, int], device) -> list[torch.Tensor]:
    """One (B, H, W) mask per ratio of VALIDATION_MASK_RATIOS, round(r * L) codes each (at least 1),
    from a fixed seed: the same positions for the same batch shape every time."""
    B, H, W = shape
    generator = torch.Generator().manual_seed(VALIDATION_MASK_SEED)
    counts = [max(1, round(r * H * W)) for r in VALIDATION_MASK_RATIOS]
    return [random_positions(torch.full((B,), n), H * W, generator).view(B, H, W).to(device) for n in counts]


def masked_cross_entropy(network, codes: torch.Tensor, labels: torch.Tensor | None, masked: torch.Tensor,
                         mask_token: int, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy (nats) of the true codes at the masked positions, given the rest of the map.
    `network` is the prior or a wrapper of it (DDP, torch.compile)."""
    logits = network(codes.masked_fill(masked, mask_token), labels)  # (B, K, H, W)
    return F.cross_entropy(logits.permute(0, 2, 3, 1)[masked].float(), codes[masked], reduction=reduction)


class MaskGITPrior(ConditionalPrior):
    def __init__(self, config: PriorConfig, spec: PriorSpec, dropout: float = 0.0):
        super().__init__()
        if config.hidden_channels % config.num_heads:
            raise ValueError(f"num_heads={config.num_heads} must divide hidden_channels={config.hidden_channels}")
        self.config = config
        self.spec = spec
        K, C, size = spec.codebook_size, config.hidden_channels, spec.latent_size
        self.mask_token = K
        self.code_embedding = nn.Embedding(K + 1, C)  # the codes and [MASK]
        classes = class_table_size(spec.num_classes, config.conditional, config.label_dropout)
        # One token in front of the map: the class (or null class) of a conditional prior, else a learned vector.
        self.class_token = nn.Embedding(classes or 1, C)
        self.row_embedding = nn.Embedding(size, C)
        self.col_embedding = nn.Embedding(size, C)
        self.embed_dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(C, config.num_heads, dropout, causal=False)
                                    for _ in range(config.num_layers))
        self.norm = nn.LayerNorm(C)
        self.head = nn.Linear(C, K)
        self.apply(gpt2_init)

    def forward(self, codes: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """codes (B, H, W) in 0..K, K = [MASK] -> logits (B, K, H, W); every position sees the whole map."""
        labels = check_labels(self, labels)
        B, H, W = codes.shape
        index = labels if labels is not None else torch.zeros(B, dtype=torch.long, device=codes.device)
        positions = (self.row_embedding.weight[:H, None] + self.col_embedding.weight[None, :W]).reshape(H * W, -1)
        x = self.code_embedding(codes.reshape(B, H * W)) + positions  # (B, L, C)
        x = self.embed_dropout(torch.cat([self.class_token(index)[:, None], x], 1))  # (B, 1 + L, C)
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.norm(x[:, 1:]))  # (B, L, K)
        return logits.transpose(1, 2).reshape(B, -1, H, W)

    def loss(self, codes: torch.Tensor, labels: torch.Tensor | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """Mean cross-entropy (nats) on a cosine-scheduled random mask, the training objective."""
        return masked_cross_entropy(self, codes, check_labels(self, labels), training_mask(codes, generator),
                                    self.mask_token)

    # ------------------------------------------------------------------ iterative decoding
    @torch.no_grad()
    def sample(self, batch: int, labels: torch.Tensor | None = None, temperature: float = 1.0, top_k: int = 0,
               generator: torch.Generator | None = None, top_p: float = 1.0, guidance: float = 1.0,
               steps: int = DEFAULT_STEPS, choice_temperature: float = DEFAULT_CHOICE_TEMPERATURE) -> torch.Tensor:
        """Draw code maps (B, H, W) in `steps` parallel steps from an all-[MASK] map."""
        size = self.spec.latent_size
        device = self.head.weight.device
        codes = torch.zeros(batch, size, size, dtype=torch.long, device=device)
        return self.complete(codes, torch.ones_like(codes, dtype=torch.bool), labels, temperature, top_k, generator,
                             top_p, guidance, steps, choice_temperature)

    @torch.no_grad()
    def complete(self, codes: torch.Tensor, masked: torch.Tensor, labels: torch.Tensor | None = None,
                 temperature: float = 1.0, top_k: int = 0, generator: torch.Generator | None = None,
                 top_p: float = 1.0, guidance: float = 1.0, steps: int = DEFAULT_STEPS,
                 choice_temperature: float = DEFAULT_CHOICE_TEMPERATURE) -> torch.Tensor:
        """Re-draw the `masked` (B, H, W) positions of `codes` given the others (inpainting; `sample`
        masks everything). The schedule runs over each map's own number of masked codes.
        temperature, top_k and top_p shape each step's draw of a code per position, as in the
        autoregressive priors; the confidence that decides which draws stay is that draw's probability."""
        check_sampling(temperature, top_k, top_p)
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if choice_temperature < 0:
            raise ValueError(f"choice_temperature must be >= 0, got {choice_temperature}")
        B, H, W = codes.shape
        L, K = H * W, self.spec.codebook_size
        run_labels, doubled = guided_batch(self, labels, guidance)
        ids = codes.reshape(B, L).masked_fill(masked.reshape(B, L), self.mask_token)  # (B, L)
        masked_at_start = (ids == self.mask_token).sum(1, keepdim=True)  # (B, 1)
        for step in range(steps):
            unknown = ids == self.mask_token
            if not unknown.any():
                break
            inputs = torch.cat([ids, ids]) if doubled else ids
            logits = self(inputs.view(-1, H, W), run_labels).flatten(2).transpose(1, 2)  # (B', L, K)
            logits = mix_guidance(logits, guidance, doubled)  # (B, L, K)
            probs = truncated_probs(logits.reshape(B * L, K), temperature, top_k, top_p)
            drawn = torch.multinomial(probs, 1, generator=generator)  # (B*L, 1)
            chosen_prob = probs.gather(1, drawn).view(B, L)
            drawn = torch.where(unknown, drawn.view(B, L), ids)  # known codes stay as they are
            if step == steps - 1:
                ids = drawn
                break
            progress = (step + 1) / steps
            # How many stay masked after this step: at least 1 re-drawn now, at least 1 left for later.
            still_masked = torch.floor(masked_at_start * cosine_mask_ratio(progress)).long()
            still_masked = torch.maximum(torch.ones_like(still_masked),
                                         torch.minimum(unknown.sum(1, keepdim=True) - 1, still_masked))
            noise = -torch.log(-torch.log(torch.rand(B, L, generator=generator, device=ids.device).clamp(1e-20, 1)))
            confidence = chosen_prob.log() + choice_temperature * (1 - progress) * noise
            confidence = confidence.masked_fill(~unknown, math.inf)  # known codes are never re-masked
            cut_off = confidence.sort(1).values.gather(1, still_masked)  # (B, 1)
            ids = torch.where(confidence < cut_off, self.mask_token, drawn)
        return ids.view(B, H, W)
