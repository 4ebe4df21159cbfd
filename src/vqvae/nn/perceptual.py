"""LPIPS (Zhang et al., CVPR 2018) with VGG16 features, built without any download.

The `lpips` package ships its calibrated linear heads (lpips/weights/v0.1/vgg.pth) but takes
the VGG16 backbone from torchvision's ImageNet weights, which it would download. Here the
backbone is built randomly initialised and then loaded from a torchvision `vgg16` state_dict
file the user gives (or torchvision's own download cache), so nothing is fetched at run time.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError

# torchvision's file name for its ImageNet VGG16 weights (torchvision.models.VGG16_Weights.IMAGENET1K_V1).
VGG16_FILE = "vgg16-397923af.pth"
def default_vgg16_path() -> Path:
    """Where torchvision keeps its downloaded VGG16 weights (TORCH_HOME/hub/checkpoints)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILE


def vgg16_weights_path(setting: str) -> Path:
    """The file `loss.lpips_vgg_weights` names ("" = torchvision's cache)."""
    return Path(setting).expanduser() if setting else default_vgg16_path()


def missing_weights_advice(path: Path) -> str:
    where = "there" if Path(path) == default_vgg16_path() else f"to {default_vgg16_path()}"
    return (f"the VGG16 weights LPIPS needs are not at {path}: set loss.lpips_vgg_weights=FILE (a torchvision "
            f"vgg16 state_dict), or download them once with python -c \"import torchvision; "
            f"torchvision.models.vgg16(weights='IMAGENET1K_V1')\" (saved {where})")


def lpips_with_random_trunk():
    """`lpips.LPIPS` with VGG16 features: the package's calibrated linear heads, a randomly initialised
    trunk (nothing downloaded); `load_vgg16_trunk` fills the trunk."""
    import lpips

    with warnings.catch_warnings():  # lpips passes torchvision's deprecated `pretrained=False`
        warnings.simplefilter("ignore")
        return lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False)


def load_vgg16_trunk(network, state: dict, source: str) -> None:
    """Load a torchvision vgg16 state_dict into an `lpips.LPIPS`'s VGG16 trunk. lpips splits
    torchvision's `features` into slices that keep the layer numbers: its `slice2.5.weight` is
    torchvision's `features.5.weight`. `source` names the file in the error for anything else."""
    trunk = network.net.state_dict()
    loaded = {}
    for key, value in trunk.items():
        name = "features." + key.split(".", 1)[1]
        if name not in state or not torch.is_tensor(state[name]) or state[name].shape != value.shape:
            found = "missing" if name not in state else f"of shape {tuple(getattr(state[name], 'shape', ()))}"
            raise ConfigError(f"{source} does not hold torchvision's ImageNet VGG16 weights ({VGG16_FILE}): {name} is "
                              f"{found}, expected {tuple(value.shape)}")
        loaded[key] = state[name]
    network.net.load_state_dict(loaded)


class LPIPS(nn.Module):
    """Frozen LPIPS distance between images in [0, 1]: (B, C, H, W) x 2 -> (B,)."""

    def __init__(self, vgg_weights: str | Path):
        super().__init__()
        path = Path(vgg_weights)
        if not path.is_file():
            raise ConfigError(missing_weights_advice(path))
        self.net = lpips_with_random_trunk()
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:
            raise ConfigError(f"{path} is not a torchvision vgg16 state_dict (it could not be loaded safely); "
                              f"{missing_weights_advice(path)}") from None
        load_vgg16_trunk(self.net, state, str(path))
        self.net.eval()
        self.requires_grad_(False)

    def train(self, mode: bool = True) -> "LPIPS":
        return super().train(False)  # always in eval mode: the heads' dropout must never be on

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:  # grey images: VGG16 reads three equal channels
            x, y = x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1)
        return self.net(x.float(), y.float(), normalize=True).flatten()
