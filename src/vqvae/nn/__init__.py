"""Building blocks with no training logic."""
from .blocks import ResidualBlock
from .gated import GatedLayer

__all__ = ["ResidualBlock", "GatedLayer"]
