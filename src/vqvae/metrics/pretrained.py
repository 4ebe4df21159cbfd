"""Metrics that need pretrained networks: rFID (Inception-v3 features) and LPIPS (VGG16 features).

Computed with the maintained libraries only, never re-implemented: torchmetrics'
`FrechetInceptionDistance` over torch-fidelity's Inception-v3 (the TensorFlow FID network ported
to PyTorch, with its TensorFlow-style resize: the figures papers quote), and the `lpips` package
(its linear heads ship inside the package; its VGG16 trunk is torchvision's ImageNet VGG16).

Nothing is downloaded unless the user asks. Each network's weights come from, in this order:
an explicit file (`--inception-weights`, `--lpips-vgg-weights`), the file the library itself
would have downloaded earlier (in torch.hub's checkpoint folder, $TORCH_HOME/hub/checkpoints),
or, with `--allow-download`, the library's own download into that folder. Otherwise the metric is
skipped and `skipped_line` says how to enable it. A file that is not the expected network's weights
is a ConfigError naming the file and the expected one.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ConfigError
from ..nn.perceptual import VGG16_FILE, load_vgg16_trunk, lpips_with_random_trunk

# The files the libraries download, by the names they give them in torch.hub's checkpoint folder.
INCEPTION_FILES = ("weights-inception-2015-12-05-6726825d.pth",  # torch-fidelity (torchmetrics)
                   "pt_inception-2015-12-05-6726825d.pth")  # pytorch-fid: the same network
INCEPTION_FEATURES = 2048  # the pool features FID is defined on
INSTALL_HINT = "pip install 'vqvae[metrics]' (torchmetrics, torch-fidelity, lpips)"


@dataclass(frozen=True)
class PretrainedWeights:
    """Where the pretrained networks' weights come from (see the module docstring)."""
    inception: Path | None = None  # torch-fidelity's weights-inception-2015-12-05-6726825d.pth
    lpips_vgg: Path | None = None  # torchvision's vgg16-397923af.pth (its features.* entries are used)
    allow_download: bool = False

    def __post_init__(self):
        for flag, path in (("--inception-weights", self.inception), ("--lpips-vgg-weights", self.lpips_vgg)):
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"{flag} {path}: no such file")


def hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _cached(names) -> Path | None:
    return next((hub_checkpoints() / name for name in names if (hub_checkpoints() / name).is_file()), None)


def _load_state_dict(path: Path, flag: str, expected: str) -> dict:
    """A file of tensors, loaded without pickle's code execution; a ConfigError for anything else."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConfigError(f"{flag} {path} is not a PyTorch weights file ({type(e).__name__}); expected {expected}") \
            from None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ConfigError(f"{flag} {path} does not hold a state dict of tensors; expected {expected}")
    return state


def _missing_library(names: str) -> str | None:
    try:
        for name in names.split():
            __import__(name)
    except ImportError as e:
        return f"{e.name} is not installed ({INSTALL_HINT})"
    return None


def inception_fid_metric(weights: PretrainedWeights, device="cpu"):
    """(torchmetrics FrechetInceptionDistance on `device` taking uint8 images, the weights' source)
    or (None, why it is unavailable)."""
    missing = _missing_library("torchmetrics torch_fidelity")
    if missing:
        return None, missing
    expected = f"torch-fidelity's Inception-v3 FID weights ({INCEPTION_FILES[0]})"
    path = weights.inception or _cached(INCEPTION_FILES)
    if path is None and not weights.allow_download:
        return None, "no Inception-v3 weights on disk"
    from torchmetrics.image.fid import FrechetInceptionDistance

    if path is not None:
        _load_state_dict(Path(path), "--inception-weights", expected)  # a safe load first: torch-fidelity unpickles
    try:
        # antialias=False: torch-fidelity's TensorFlow-style bilinear resize to 299 px, as the FID papers quote.
        metric = FrechetInceptionDistance(feature=INCEPTION_FEATURES, feature_extractor_weights_path=str(path) if path else None,
                                          antialias=False)
    except RuntimeError as e:  # load_state_dict: missing or unexpected keys, wrong shapes
        detail = " ".join(str(e).split())  # torch lists the missing and unexpected keys over many lines
        raise ConfigError(f"--inception-weights {path} does not hold {expected}: {detail[:240]}") from None
    except OSError as e:  # the download failed
        return None, f"downloading the Inception-v3 weights failed ({type(e).__name__})"
    return metric.to(device), str(path or hub_checkpoints() / INCEPTION_FILES[0])


def lpips_vgg_network(weights: PretrainedWeights, device="cpu"):
    """(lpips.LPIPS with VGG16 features, in eval mode on `device`, the trunk's source) or (None, why not)."""
    missing = _missing_library("lpips")
    if missing:
        return None, missing
    import lpips

    path = weights.lpips_vgg or _cached((VGG16_FILE,))
    if path is None and not weights.allow_download:
        return None, "no VGG16 weights on disk"
    if path is None:
        with warnings.catch_warnings():  # lpips passes torchvision's deprecated `pretrained=`
            warnings.simplefilter("ignore")
            try:  # torchvision downloads the trunk into torch.hub's checkpoint folder
                network = lpips.LPIPS(net="vgg", verbose=False)
            except OSError as e:
                return None, f"downloading the VGG16 weights failed ({type(e).__name__})"
        return network.eval().to(device), str(hub_checkpoints() / VGG16_FILE)
    network = lpips_with_random_trunk()
    state = _load_state_dict(Path(path), "--lpips-vgg-weights", f"torchvision's ImageNet VGG16 weights ({VGG16_FILE})")
    load_vgg16_trunk(network, state, f"--lpips-vgg-weights {path}")
    return network.eval().to(device), str(path)


ENABLE = {"rFID": f"--inception-weights FILE ({INCEPTION_FILES[0]})",
          "LPIPS": f"--lpips-vgg-weights FILE ({VGG16_FILE})"}


def skipped_line(skipped: dict) -> str:
    """One line: which metrics were skipped, why, and how to enable them ("" when none were)."""
    if not skipped:
        return ""
    reasons = "; ".join(f"{name}: {why}" for name, why in skipped.items())
    line = f"skipped {' and '.join(skipped)} ({reasons})"
    hints = [ENABLE[name] for name, why in skipped.items() if why.startswith("no ")]
    if hints:
        line += (f". To enable: {' and '.join(hints)}, or those files in {hub_checkpoints()}, or --allow-download "
                 f"to let the libraries fetch them there")
    return line


@torch.no_grad()
def reconstruction_perceptual(pairs, channels: int, weights: PretrainedWeights, device="cpu") -> dict:
    """rFID (originals against reconstructions) and mean LPIPS-VGG per image over `pairs`, an
    iterable of (originals, reconstructions), float (B, C, H, W) in [0, 1], both quantised to 8 bits
    first. Metrics without weights are left out and named under "skipped", with "skipped_line"."""
    skipped = {}
    if channels != 3:
        skipped = {name: "the images are grayscale; Inception-v3 and VGG16 see colour images" for name in ENABLE}
        return {"skipped": skipped, "skipped_line": skipped_line(skipped)}
    fid, fid_source = inception_fid_metric(weights, device)
    network, lpips_source = lpips_vgg_network(weights, device)
    if fid is None:
        skipped["rFID"] = fid_source
    if network is None:
        skipped["LPIPS"] = lpips_source
    result: dict = {}
    if fid is not None or network is not None:
        lpips_sum, n = 0.0, 0
        for x, x_hat in pairs:
            x8, x_hat8 = ((t.float().clamp(0, 1) * 255).round() for t in (x, x_hat))
            if fid is not None:
                fid.update(x8.to(torch.uint8), real=True)
                fid.update(x_hat8.to(torch.uint8), real=False)
            if network is not None:  # normalize=True: lpips takes [0, 1] and rescales to its [-1, 1]
                lpips_sum += network(x8 / 255, x_hat8 / 255, normalize=True).sum().item()
            n += len(x)
        result["num_images"] = n
        if fid is not None and n < 2:
            skipped["rFID"] = f"the Fréchet distance needs at least 2 images, got {n}"
        elif fid is not None:
            result.update(rfid=round(float(fid.compute()), 4), inception_weights=fid_source)
        if network is not None:
            result.update(lpips_vgg=round(lpips_sum / max(n, 1), 5), lpips_vgg_weights=lpips_source)
    if skipped:
        result.update(skipped=skipped, skipped_line=skipped_line(skipped))
    return result
