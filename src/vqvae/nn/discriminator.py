"""A PatchGAN discriminator: one real/fake logit per overlapping image patch.

The layout is taming-transformers' `NLayerDiscriminator` (itself pix2pix's): a 4x4 stride-2
conv with LeakyReLU(0.2), then `layers - 1` more stride-2 convs doubling the width (up to 8x),
one stride-1 conv, and a stride-1 conv to a single channel. taming normalises with BatchNorm,
whose statistics depend on each process's share of the batch; GroupNorm normalises each image
alone, so a DDP run trains the same discriminator as one process at the global batch.
"""
from __future__ import annotations

import torch
from torch import nn

INPUT_SCALE = 2.0  # images in [0, 1] reach the layers as INPUT_SCALE * x - 1, in [-1, 1]


def group_count(channels: int, most: int = 32) -> int:
    """The largest divisor of `channels` up to `most`: GroupNorm's groups for any width."""
    return max(g for g in range(1, min(most, channels) + 1) if channels % g == 0)


class PatchDiscriminator(nn.Module):
    def __init__(self, in_channels: int, channels: int = 64, layers: int = 3):
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        width = channels
        for n in range(1, layers + 1):
            out = channels * min(2 ** n, 8)
            stride = 2 if n < layers else 1  # the last of these keeps the size (taming's layout)
            blocks += [nn.Conv2d(width, out, 4, stride, 1, bias=False), nn.GroupNorm(group_count(out), out),
                       nn.LeakyReLU(0.2)]
            width = out
        blocks.append(nn.Conv2d(width, 1, 4, 1, 1))
        self.layers = nn.Sequential(*blocks)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # pix2pix's / taming's initialisation: convs N(0, 0.02), norm scales N(1, 0.02).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.GroupNorm):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    @staticmethod
    def patches_per_side(image_size: int, layers: int) -> int:
        return image_size // 2 ** layers - 2

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) in [0, 1] -> logits (B, 1, h, w), h = H / 2**layers - 2."""
        return self.layers(INPUT_SCALE * images - 1)  # taming's networks see images in [-1, 1]

