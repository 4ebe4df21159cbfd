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
# lpips' vgg16 wrapper splits torchvision's `features` into five slices at these indices.
SLICE_STARTS = (0, 4, 9, 16, 23, 30)


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


class LPIPS(nn.Module):
    """Frozen LPIPS distance between images in [0, 1]: (B, C, H, W) x 2 -> (B,)."""

    def __init__(self, vgg_weights: str | Path):
        super().__init__()
        import lpips

        path = Path(vgg_weights)
        if not path.is_file():
            raise ConfigError(missing_weights_advice(path))
        with warnings.catch_warnings():  # lpips passes torchvision's deprecated `pretrained=False`
            warnings.simplefilter("ignore")
            self.net = lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False)  # heads loaded from the package
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:
            raise ConfigError(f"{path} is not a torchvision vgg16 state_dict (it could not be loaded safely); "
                              f"{missing_weights_advice(path)}") from None
        self.load_vgg16(state, path)
        self.net.eval()
        self.requires_grad_(False)

    def load_vgg16(self, state: dict, path: Path) -> None:
        """torchvision's `features.N.*` keys into lpips' `sliceK.N.*` modules."""
        backbone = self.net.net
        renamed = {}
        for k, (start, stop) in enumerate(zip(SLICE_STARTS, SLICE_STARTS[1:]), start=1):
            for index in range(start, stop):
                for name in ("weight", "bias"):
                    key = f"features.{index}.{name}"
                    if key in state:
                        renamed[f"slice{k}.{index}.{name}"] = state[key]
        expected = backbone.state_dict()
        wrong = [k for k in expected if k not in renamed or renamed[k].shape != expected[k].shape]
        if wrong:
            raise ConfigError(f"{path} is not a torchvision vgg16 state_dict: {len(wrong)} of {len(expected)} "
                              f"backbone tensors are missing or of another shape (first: {wrong[0]})")
        backbone.load_state_dict(renamed)

    def train(self, mode: bool = True) -> "LPIPS":
        return super().train(False)  # always in eval mode: the heads' dropout must never be on

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:  # grey images: VGG16 reads three equal channels
            x, y = x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1)
        return self.net(x.float(), y.float(), normalize=True).flatten()
