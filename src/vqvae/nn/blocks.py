import torch
from torch import nn


class ResidualBlock(nn.Module):
    """The seed's residual block: x + conv1x1(relu(conv3x3(relu(x)))).

    `hidden_channels` is the width between the two convs (0 = `channels`, the seed); the
    VQ-VAE paper's CIFAR-10 model narrows it to 32 of 128.
    """

    def __init__(self, channels: int, hidden_channels: int = 0):
        super().__init__()
        hidden = hidden_channels or channels
        self.conv1 = nn.Conv2d(channels, hidden, 3, 1, 1)
        self.conv2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(torch.relu(self.conv1(torch.relu(x))))
