"""The VQGAN-class encoder and decoder (model.arch = "vqgan").

Esser et al., "Taming Transformers" (CVPR 2021), as latent diffusion and diffusers' `VQModel`
build it: a 3x3 conv in; per resolution, residual blocks of GroupNorm-SiLU-conv (self-attention
after each where asked) and a stride-2 downsampling; a middle block (resnet, attention, resnet);
GroupNorm-SiLU-conv out to `latent_channels`; a 1x1 `quant_conv` to the code dimension. The
decoder mirrors it with one more residual block per resolution and nearest-neighbour upsampling.

Names are diffusers' (`conv_in`, `down_blocks.{i}.resnets.{j}`, `mid_block`, `up_blocks.{i}`,
`conv_norm_out`, `conv_out`); the decoder's blocks are in the order they run (lowest resolution
first), as diffusers' are and taming's are not. `DIFFUSERS_RENAMES` are the only differences.

Images are in [0, 1] here and in [-1, 1] in diffusers: the encoder maps x to 2x - 1 before its
first conv and the decoder its output y to (y + 1) / 2. Folding the rescale into conv_in would not
be exact: conv_in zero-pads the borders, and a zero of [-1, 1] is mid-grey, not the padding of [0, 1].
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig, vqgan_factors
from ..nn.vqgan import MidBlock, ResolutionBlock, group_norm

# Our state-dict names -> diffusers VQModel's, by prefix; everything else under encoder./decoder. is equal.
DIFFUSERS_RENAMES = {"encoder.quant_conv.": "quant_conv.", "decoder.post_quant_conv.": "post_quant_conv.",
                     "quantizer.codebook": "quantize.embedding.weight"}


def block_widths(cfg: ModelConfig) -> list[int]:
    """Channels of each resolution's blocks, image resolution first (diffusers' block_out_channels)."""
    return [cfg.hidden_channels * m for m in cfg.channel_mult]


def latent_channels(cfg: ModelConfig) -> int:
    return cfg.latent_channels or code_dim(cfg)


def code_dim(cfg: ModelConfig) -> int:
    return cfg.code_dim or cfg.hidden_channels


class VQGANEncoder(nn.Module):
    """Images (B, C, H, W) in [0, 1] -> latents (B, code_dim, H / 2^(levels-1), W / 2^(levels-1))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        widths, factors, groups = block_widths(cfg), vqgan_factors(cfg), cfg.norm_groups
        self.conv_in = nn.Conv2d(cfg.in_channels, widths[0], 3, padding=1)
        last = len(widths) - 1
        self.down_blocks = nn.ModuleList(
            ResolutionBlock(widths[max(i - 1, 0)], widths[i], cfg.layers_per_block, groups,
                            attention=factors[i] in cfg.attention_resolutions, resample=None if i == last else "down")
            for i in range(len(widths)))
        self.mid_block = MidBlock(widths[-1], groups, cfg.mid_attention)
        self.conv_norm_out = group_norm(widths[-1], groups)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(widths[-1], latent_channels(cfg), 3, padding=1)
        self.quant_conv = nn.Conv2d(latent_channels(cfg), code_dim(cfg), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x * 2 - 1)  # [0, 1] -> diffusers' [-1, 1], outside the weights (module docstring)
        for block in self.down_blocks:
            h = block(h)
        h = self.mid_block(h)
        h = self.conv_out(self.conv_act(self.conv_norm_out(h)))
        return self.quant_conv(h)


class VQGANDecoder(nn.Module):
    """Quantized latents (B, code_dim, h, w) -> images (B, C, H, W), on the [0, 1] scale."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        widths, groups = block_widths(cfg)[::-1], cfg.norm_groups  # lowest resolution first
        factors = vqgan_factors(cfg)[::-1]
        self.post_quant_conv = nn.Conv2d(code_dim(cfg), latent_channels(cfg), 1)
        self.conv_in = nn.Conv2d(latent_channels(cfg), widths[0], 3, padding=1)
        self.mid_block = MidBlock(widths[0], groups, cfg.mid_attention)
        last = len(widths) - 1
        self.up_blocks = nn.ModuleList(
            ResolutionBlock(widths[max(i - 1, 0)], widths[i], cfg.layers_per_block + 1, groups,
                            attention=factors[i] in cfg.attention_resolutions, resample=None if i == last else "up")
            for i in range(len(widths)))
        self.conv_norm_out = group_norm(widths[-1], groups)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(widths[-1], cfg.in_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(self.post_quant_conv(z))
        h = self.mid_block(h)
        for block in self.up_blocks:
            h = block(h)
        h = self.conv_out(self.conv_act(self.conv_norm_out(h)))
        return (h + 1) / 2  # diffusers' [-1, 1] -> [0, 1]
