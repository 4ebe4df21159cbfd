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
from torch import nn

from ..config import PriorConfig
from ..nn import GatedLayer
from .prior_common import AutoregressivePrior, PriorSpec, check_labels, class_table_size, sample_logits

__all__ = ["GatedPixelCNN", "PriorSpec", "sample_logits"]  # PriorSpec and sample_logits: also imported from here


class GatedPixelCNN(AutoregressivePrior):
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

    def forward(self, codes: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """codes: (B, H, W) int64 -> logits (B, K, H, W); logits at (i, j) see only earlier codes."""
        labels = check_labels(self, labels)
        x = self.embedding(codes).permute(0, 3, 1, 2)  # (B, C, H, W)
        v, h = x, x
        for layer in self.layers:
            v, h = layer(v, h, labels)
        return self.head(h)

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
