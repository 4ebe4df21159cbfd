"""Gated PixelCNN prior over code maps, with a fast incremental sampler.

The seed's source samples by running the whole network once per code position:
H*W full passes. Here `sample` computes per step only what the new code changes:
at the start of each row, one row of every layer's vertical stack (it depends only on
rows above); at each position, one position of every layer's horizontal stack. Every
activation is computed once, so a map costs about as much as one full pass plus Python
overhead. `teacher_forced_logits` runs the same incremental path on given codes, which
is how the tests prove it equals the full pass.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..config import PriorConfig
from ..nn import GatedLayer
from .prior_common import (PriorSpec, check_labels, check_sampling, class_table_size, guided_batch, mix_guidance,
                           sample_logits)

__all__ = ["GatedPixelCNN", "PriorSpec", "sample_logits"]  # PriorSpec and sample_logits: also imported from here


class GatedPixelCNN(nn.Module):
    def __init__(self, config: PriorConfig, spec: PriorSpec, dropout: float = 0.0):
        super().__init__()
        self.config = config
        self.spec = spec
        K, C = spec.codebook_size, config.hidden_channels
        classes = class_table_size(spec.num_classes, config.conditional, config.label_dropout)
        self.embedding = nn.Embedding(K, C)
        self.layers = nn.ModuleList(
            [GatedLayer(C, config.first_kernel_size, first=True, num_classes=classes, dropout=dropout)]
            + [GatedLayer(C, config.kernel_size, first=False, num_classes=classes, dropout=dropout)
               for _ in range(config.num_layers - 1)])
        head = config.head_channels or C
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(C, head, 1), nn.ReLU(), nn.Conv2d(head, K, 1))

    @property
    def conditional(self) -> bool:
        return self.config.conditional

    @property
    def null_class(self) -> int | None:
        """The label index meaning "no class" (learned with label dropout), or None."""
        return self.spec.num_classes if self.conditional and self.config.label_dropout > 0 else None

    def forward(self, codes: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """codes: (B, H, W) int64 -> logits (B, K, H, W); logits at (i, j) see only earlier codes."""
        labels = check_labels(self, labels)
        x = self.embedding(codes).permute(0, 3, 1, 2)  # (B, C, H, W)
        v, h = x, x
        for layer in self.layers:
            v, h = layer(v, h, labels)
        return self.head(h)

    def loss(self, codes: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Mean cross-entropy in nats per code."""
        return F.cross_entropy(self(codes, labels).float(), codes)

    # ------------------------------------------------------------------ incremental path
    @torch.no_grad()
    def _autoregress(self, batch: int, height: int, width: int, labels: torch.Tensor | None,
                     choose: Callable[[torch.Tensor, int, int], torch.Tensor]) -> torch.Tensor:
        """Walk the map in raster order computing each activation once.

        choose(logits (B, K), i, j) returns the codes (B,) placed at (i, j). Returns the codes (B, H, W).

        Vertical stacks are kept channels-first (B, C, H, W) and advanced a row at a time with
        the layers' own convolutions. Horizontal stacks are kept channels-last with `pad`
        zero columns on the left, (B, H, pad + W, C), so the window a position reads is one
        slice, and each layer's step at a position is two small matrix products.
        """
        C = self.config.hidden_channels
        device, dtype = self.embedding.weight.device, self.embedding.weight.dtype
        pad = max(layer.h_width for layer in self.layers)
        codes = torch.zeros(batch, height, width, dtype=torch.long, device=device)
        embedded = torch.zeros(batch, height, pad + width, C, device=device, dtype=dtype)  # channels-last
        embedded_cf = embedded.permute(0, 3, 1, 2)[..., pad:]  # (B, C, H, W) view for the vertical stack
        v_maps = [torch.zeros(batch, C, height, width, device=device, dtype=dtype) for _ in self.layers]
        h_maps = [torch.zeros(batch, height, pad + width, C, device=device, dtype=dtype) for _ in self.layers]
        weights = [layer.position_weights(labels) for layer in self.layers]
        head = [m for m in self.head if isinstance(m, nn.Conv2d)]
        head_w = [(conv.weight[:, :, 0, 0].t().contiguous(), conv.bias) for conv in head]
        for i in range(height):
            v_pre_rows = []
            v_in = embedded_cf
            for layer, v_map in zip(self.layers, v_maps):
                v_pre, v_out = layer.vertical_row(v_in, i, labels)  # (B, 2C, 1, W), (B, C, 1, W)
                v_map[:, :, i] = v_out[:, :, 0]
                v_pre_rows.append(v_pre[:, :, 0].transpose(1, 2).contiguous())  # (B, W, 2C)
                v_in = v_map
            for j in range(width):
                col = pad + j
                h_in = embedded
                for layer, h_map, v_pre, (w_in, b_in, w_out, b_out) in zip(self.layers, h_maps, v_pre_rows, weights):
                    last = col - 1 if layer.first else col  # type A excludes the current position
                    window = h_in[:, i, last - layer.h_width + 1: last + 1].reshape(batch, -1)  # (B, kw*C)
                    pre = torch.addmm(b_in, torch.cat([window, v_pre[:, j]], 1), w_in)  # (B, 2C)
                    h = torch.addmm(b_out, torch.tanh(pre[:, :C]) * torch.sigmoid(pre[:, C:]), w_out)
                    if not layer.first:
                        h = h + h_in[:, i, col]
                    h_map[:, i, col] = h
                    h_in = h_map
                x = torch.relu(h)
                x = torch.relu(torch.addmm(head_w[0][1], x, head_w[0][0]))
                logits = torch.addmm(head_w[1][1], x, head_w[1][0])  # (B, K)
                codes[:, i, j] = choose(logits, i, j)
                embedded[:, i, col] = self.embedding(codes[:, i, j])
        return codes

    @torch.no_grad()
    def teacher_forced_logits(self, codes: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The incremental path fed the given codes; equals forward(codes) up to float error."""
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
        """Draw code maps (B, H, W) from the prior, incrementally. With `guidance` other than 1
        (conditional priors trained with label dropout), the batch runs doubled: classes, then null."""
        check_sampling(temperature, top_k, top_p)
        size = self.spec.latent_size
        run_labels, doubled = guided_batch(self, labels, guidance)

        def choose(logits, i, j):
            codes = sample_logits(mix_guidance(logits, guidance, doubled), temperature, top_k, generator, top_p)
            return torch.cat([codes, codes]) if doubled else codes

        return self._autoregress(2 * batch if doubled else batch, size, size, run_labels, choose)[:batch]
