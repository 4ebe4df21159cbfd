"""Building blocks of the VQGAN-class encoder/decoder (taming-transformers, diffusers' VQModel).

The maths is diffusers' operation for operation (GroupNorm eps 1e-6, SiLU, single-head attention
with a residual, downsampling by a (0, 1, 0, 1) zero pad then a stride-2 3x3 conv, upsampling by
nearest-neighbour doubling then a 3x3 conv), and every parameter carries diffusers' name
(`norm1`, `conv1`, `to_q`, `to_out.0`, `downsamplers.0.conv`, ...), so a state dict maps onto a
diffusers `Encoder`/`Decoder` one to one (models/vqgan.py holds the few renames outside them).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NORM_EPS = 1e-6  # taming-transformers' and diffusers' GroupNorm epsilon


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=NORM_EPS, affine=True)


class ResnetBlock(nn.Module):
    """x + conv2(silu(norm2(conv1(silu(norm1(x)))))), with a 1x1 `conv_shortcut` when the width changes
    (diffusers' ResnetBlock2D without a time embedding)."""

    def __init__(self, in_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.norm1 = group_norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels, groups)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Without autograd the activations and the sum are taken in place: the same values, with no
        # new tensor for each (SiLU's backward needs its input, so training keeps them apart).
        inplace = not torch.is_grad_enabled()
        h = self.conv1(F.silu(self.norm1(x), inplace=inplace))
        h = self.conv2(F.silu(self.norm2(h), inplace=inplace))
        shortcut = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return h.add_(shortcut) if inplace else shortcut + h


class SelfAttention(nn.Module):
    """Single-head self-attention over all positions, with a residual: x + out(attn(norm(x)))
    (diffusers' Attention with `_from_deprecated_attn_block`: heads = 1, head dim = channels).
    Linear layers, not 1x1 convs, so the weights are diffusers' as they are."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.group_norm = group_norm(channels, groups)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])  # diffusers' name: to_out.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        # (B, C, H, W) -> (B, HW, C): a view, no copy, when x is channels-last
        h = self.group_norm(x).flatten(2).transpose(1, 2)
        if self.training:
            q, k, v = self.to_q(h), self.to_k(h), self.to_v(h)
        else:  # one matmul for the three projections: the same sums, a third of the launches
            weight = torch.cat([self.to_q.weight, self.to_k.weight, self.to_v.weight])
            bias = torch.cat([self.to_q.bias, self.to_k.bias, self.to_v.bias])
            q, k, v = F.linear(h, weight, bias).unflatten(-1, (3, C)).unbind(-2)
        out = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]  # (B, HW, C)
        out = self.to_out[0](out)
        return x + out.transpose(1, 2).reshape(B, C, H, W)


class Downsample(nn.Module):
    """Halve the side: zero-pad right and bottom by one, then a stride-2 3x3 conv (taming's
    asymmetric padding, diffusers' Downsample2D with padding=0)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Double the side: nearest-neighbour, then a 3x3 conv (diffusers' Upsample2D with use_conv)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class ResolutionBlock(nn.Module):
    """The residual blocks of one resolution, each followed by self-attention if `attention`, then
    an optional down- or upsampling: diffusers' (Attn)DownEncoderBlock2D / (Attn)UpDecoderBlock2D."""

    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int, attention: bool,
                 resample: str | None):
        super().__init__()
        self.resnets = nn.ModuleList(ResnetBlock(in_channels if i == 0 else out_channels, out_channels, groups)
                                     for i in range(num_layers))
        self.attentions = (nn.ModuleList(SelfAttention(out_channels, groups) for _ in range(num_layers))
                           if attention else None)
        resampler = {"down": Downsample, "up": Upsample, None: None}[resample]
        name = {"down": "downsamplers", "up": "upsamplers"}.get(resample)
        if name:
            setattr(self, name, nn.ModuleList([resampler(out_channels)]))
        self.resample = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, resnet in enumerate(self.resnets):
            x = resnet(x)
            if self.attentions is not None:
                x = self.attentions[i](x)
        if self.resample:
            x = getattr(self, self.resample)[0](x)
        return x


class MidBlock(nn.Module):
    """resnet, attention, resnet at the lowest resolution (diffusers' UNetMidBlock2D, one layer)."""

    def __init__(self, channels: int, groups: int, attention: bool):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(channels, channels, groups), ResnetBlock(channels, channels, groups)])
        self.attentions = nn.ModuleList([SelfAttention(channels, groups)]) if attention else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x)
        if self.attentions is not None:
            x = self.attentions[0](x)
        return self.resnets[1](x)
