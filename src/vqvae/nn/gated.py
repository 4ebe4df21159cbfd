"""One layer of a Gated PixelCNN (van den Oord et al. 2016, "Conditional Image Generation
with PixelCNN Decoders", section 2.2), written so that the receptive fields are exact
by construction rather than by masking:

- the vertical stack at (i, j) sees only rows strictly above i (all columns within reach);
- the horizontal stack at (i, j) sees row i strictly left of j, plus the vertical stack at (i, j).

Together they cover every earlier position in raster order: no blind spot.

The first layer ("type A") reads the code embeddings and shifts both stacks by one so
the current position is excluded; later layers ("type B") read the previous layer's
stacks, which already exclude it. Each layer offers a full pass over a map and the two
incremental pieces the fast sampler needs: one row of the vertical stack, and the weights of
one position of the horizontal stack as plain matrices.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def gate(x: torch.Tensor) -> torch.Tensor:
    """tanh(a) * sigmoid(b) over the two halves of the channel dimension."""
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class GatedLayer(nn.Module):
    def __init__(self, channels: int, kernel_size: int, first: bool, num_classes: int = 0,
                 dropout: float = 0.0):
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.first = first
        self.kernel_size = kernel_size
        self.v_height = kernel_size // 2 + 1  # rows the vertical kernel spans
        self.h_width = kernel_size // 2 + 1  # columns the horizontal kernel spans
        self.v_conv = nn.Conv2d(channels, 2 * channels, (self.v_height, kernel_size))
        self.h_conv = nn.Conv2d(channels, 2 * channels, (1, self.h_width))
        self.v_to_h = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.h_out = nn.Conv2d(channels, channels, 1)
        self.dropout = nn.Dropout(dropout)
        self.class_v = nn.Embedding(num_classes, 2 * channels) if num_classes else None
        self.class_h = nn.Embedding(num_classes, 2 * channels) if num_classes else None

    # ------------------------------------------------------------------ helpers
    def _cond(self, table: nn.Embedding | None, labels: torch.Tensor | None):
        if table is None:
            return 0.0
        return table(labels)[:, :, None, None]  # (B, 2C, 1, 1)

    def _horizontal(self, h_in_window, h_in_here, v_pre, labels):
        h_pre = self.h_conv(h_in_window) + self.v_to_h(v_pre) + self._cond(self.class_h, labels)
        h = self.h_out(self.dropout(gate(h_pre)))
        # No residual on the first layer: its input at (i, j) is the current code itself.
        return h if self.first else h + h_in_here

    # ------------------------------------------------------------------ full pass
    def forward(self, v_in: torch.Tensor, h_in: torch.Tensor, labels: torch.Tensor | None = None):
        """v_in, h_in: (B, C, H, W) -> v_out, h_out: (B, C, H, W)."""
        H, W = v_in.shape[-2:]
        pad = self.kernel_size // 2
        if self.first:
            # Pad kh rows on top and drop the last output row: row i sees rows i-kh .. i-1.
            v_pre = self.v_conv(F.pad(v_in, (pad, pad, self.v_height, 0)))[:, :, :H]
            # Pad kw columns on the left and drop the last: column j sees j-kw .. j-1.
            h_window = F.pad(h_in, (self.h_width, 0, 0, 0))[..., :W + self.h_width - 1]
        else:
            # Inputs already exclude the current row / position: row i sees rows i-kh+1 .. i.
            v_pre = self.v_conv(F.pad(v_in, (pad, pad, self.v_height - 1, 0)))
            h_window = F.pad(h_in, (self.h_width - 1, 0, 0, 0))
        v_pre = v_pre + self._cond(self.class_v, labels)
        return gate(v_pre), self._horizontal(h_window, h_in, v_pre, labels)

    # ------------------------------------------------------------------ incremental pieces
    def vertical_row(self, v_in: torch.Tensor, row: int, labels: torch.Tensor | None = None):
        """Vertical stack at one row. v_in: (B, C, H, W), filled at least up to the rows read.

        Returns (v_pre, v_out) for that row: (B, 2C, 1, W) and (B, C, 1, W).
        """
        pad = self.kernel_size // 2
        last = row - 1 if self.first else row  # last input row this row may see
        first = last - self.v_height + 1
        window = v_in[:, :, max(first, 0): last + 1]
        window = F.pad(window, (pad, pad, max(-first, 0), 0))  # zero rows above the map
        v_pre = self.v_conv(window) + self._cond(self.class_v, labels)
        return v_pre, gate(v_pre)

    def position_weights(self, labels: torch.Tensor | None = None):
        """The horizontal stack at one position as two matrix products, for the fast sampler.

        Returns (w_in (kw*C + 2C, 2C), b_in (B or 1, 2C), w_out (C, C), b_out (C,)), where the
        input row is [the kw-wide window of the previous stack, flattened column-major by
        position then channel | the vertical pre-activation (2C)]."""
        two_c, c = self.h_conv.weight.shape[:2]
        window = self.h_conv.weight[:, :, 0, :].permute(0, 2, 1).reshape(two_c, self.h_width * c)  # (2C, kw*C)
        link = self.v_to_h.weight[:, :, 0, 0]  # (2C, 2C)
        w_in = torch.cat([window, link], 1).t().contiguous()
        b_in = (self.h_conv.bias + self.v_to_h.bias)[None]
        if self.class_h is not None:
            b_in = b_in + self.class_h(labels)
        return w_in, b_in, self.h_out.weight[:, :, 0, 0].t().contiguous(), self.h_out.bias
