"""Which preset fits the data: scan it once, choose by channels and nearest image size.

Without --preset, a user's folder of colour 32x32 images must not be trained as grey 28x28
MNIST (the old default did exactly that, silently). The data is described (count, typical
size, colour or grey, classes: a folder's file headers are read once and the summary cached
beside the image cache), the preset whose image size is nearest on a log scale is chosen, a
channel mismatch counting as half an octave, and the channels are set to the data's. With an
explicit preset, data of the other kind of channels is an error naming both, unless the user
set the channels themselves.
"""
from __future__ import annotations

import gzip
import json
import math
import re
import statistics
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..config import UNLABELLED_PRIOR, DataConfig, get_preset
from ..errors import ConfigError, DataError
from .arrays import NUMPY_SUFFIXES, read_numpy
from .cache import (cache_root, cache_stem, list_folder, no_images_error, parallel_map, printable, read_side_file,
                    remove_dead_temporaries, write_side_file)

# Presets a user's data may be matched to (not the seed's reference, the GPU variant or tiny). No two
# share a size and channels, so no choice is a tie. The vqgan presets are asked for by name only: a
# 64-pixel colour folder gets celeba-hq-64, not vqgan-f8-64 (the same size), because an automatic choice
# must run on any machine that runs the others: vqgan-f8-64 is a 68M-parameter model (45x
# celeba-hq-64's), and the VQGAN recipe's perceptual and adversarial losses need network weights that
# are downloaded, which a machine may not have.
AUTO_PRESETS = ("mnist", "cifar10", "celeba-hq-64", "celeba-hq-128")
NAMED_DATA = {"mnist-5k": (5000, 28, 1), "mnist": (60000, 28, 1), "fashion-mnist": (60000, 28, 1),
              "cifar10": (50000, 32, 3)}
# Anything else (RGB, CMYK, a palette of colours...) is colour. A palette of greys only (pngquant's
# output of grey images, say) is grey: its pixels convert to "L" exactly.
GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F", "P (grey)", "PA (grey)"}
CHANNEL_PENALTY = 0.5  # octaves of size difference a channel mismatch is worth
CHANNEL_KEYS = ("data.channels", "model.in_channels")


@dataclass
class DataSummary:
    spec: str
    count: int
    typical_size: int  # median shorter side, pixels
    channels: int  # 3 if any image is in colour
    detail: str  # what was found, in words
    labelled: bool = False  # class labels come with the images (named datasets, class folders, label files)

    def __str__(self) -> str:
        return f"{self.spec}: {self.detail}"


@dataclass
class PresetChoice:
    preset: str
    overrides: list[str]  # applied before the user's own
    message: str  # "" when nothing needs saying


def _header(path: Path) -> tuple[str, str] | None:
    """("WxH", mode) from the file's header (no pixel is decoded), None if unreadable. A palette
    image whose palette holds greys only is mode "P (grey)" ("PA (grey)")."""
    try:
        with Image.open(path) as img:
            mode = img.mode
            if mode in ("P", "PA") and _grey_palette(img):
                mode += " (grey)"
            return f"{img.size[0]}x{img.size[1]}", mode
    except Exception:
        return None


def _grey_palette(img: Image.Image) -> bool:
    """Whether a palette image's palette (read with its header: getpalette() would decode the
    pixels) holds only greys; False when it cannot be told. Only packed RGB palettes are read (PNG,
    GIF); others, such as BMP's 4-byte BGRX entries, count as colour."""
    palette = img.palette
    raw = getattr(palette, "palette", None)
    if (getattr(palette, "mode", None) != "RGB" or getattr(palette, "rawmode", None) not in (None, "RGB")
            or not isinstance(raw, bytes) or not raw or len(raw) % 3):
        return False
    return raw[0::3] == raw[1::3] == raw[2::3]


SCAN_SHAPE = {"count": int, "unreadable": int, "sizes": dict, "modes": dict, "classes": int}
SCAN_VERSION = 2  # part of a saved scan's key: raise it when what a scan records changes


def _scan_folder(folder: Path, cfg: DataConfig) -> DataSummary:
    listing = list_folder(folder)
    if not listing.files:
        raise no_images_error(listing, 0)
    root = cache_root(cfg, create=True)
    remove_dead_temporaries(root)
    key = listing.key(cfg.cache_check, what="scan", scan_version=SCAN_VERSION)[:16]
    path = root / f"{cache_stem(listing, 'scan-')}{key}.json"
    scan = read_side_file(path, SCAN_SHAPE)
    if scan is not None and not (all(isinstance(n, int) for n in (*scan["sizes"].values(), *scan["modes"].values()))
                                 and all(re.fullmatch(r"\d+x\d+", wh) for wh in scan["sizes"])):
        scan = None  # a checksum of a well-formed scan of other values: cannot happen unless crafted
    if scan is None:
        sizes, modes, unreadable = Counter(), Counter(), 0
        headers, pool = parallel_map(_header, listing.files, cfg.num_workers)
        try:
            for header in headers:
                if header is None:
                    unreadable += 1
                    continue
                sizes[header[0]] += 1
                modes[header[1]] += 1
        finally:
            if pool is not None:
                pool.terminate()
        classes = {Path(rel).parts[0] for rel, *_ in listing.stats if len(Path(rel).parts) == 2}
        in_subfolders = all(len(Path(rel).parts) == 2 for rel, *_ in listing.stats)
        scan = {"count": len(listing.files) - unreadable, "unreadable": unreadable, "sizes": dict(sizes),
                "modes": dict(modes), "classes": len(classes) if in_subfolders and len(classes) > 1 else 0}
        write_side_file(path, scan)
    if not scan["sizes"]:
        raise no_images_error(listing, scan["unreadable"])
    short = [min(map(int, wh.split("x"))) for wh, n in scan["sizes"].items() for _ in range(n)]
    channels = 3 if any(m not in GREY_MODES for m in scan["modes"]) else 1
    common = sorted(scan["sizes"].items(), key=lambda kv: -kv[1])
    sizes = ", ".join(f"{wh} ({n})" for wh, n in common[:3]) + (" ..." if len(common) > 3 else "")
    modes = ", ".join(f"{m} ({n})" for m, n in sorted(scan["modes"].items(), key=lambda kv: -kv[1]))
    detail = (f"{scan['count']} images" + (f" in {scan['classes']} class folders" if scan["classes"] else "")
              + f", sizes {sizes}, modes {modes}" + (f", {scan['unreadable']} unreadable" if scan["unreadable"] else ""))
    return DataSummary(printable(folder), scan["count"], int(statistics.median(short)), channels, detail,
                       labelled=bool(scan["classes"]))


def _idx_shape(folder: Path) -> tuple[int, int] | None:
    """(count, side) from the header of a folder's IDX image file, if it has one."""
    for path in sorted(folder.iterdir()):
        if "-images-idx" in path.name:
            try:
                with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
                    header = f.read(16)
            except (OSError, EOFError, zlib.error) as e:  # EOFError: a truncated .gz
                raise DataError(f"cannot read IDX file {path} (truncated or damaged?): {e}") from None
            if len(header) == 16 and header[3] == 3:
                return int.from_bytes(header[4:8], "big"), int.from_bytes(header[8:12], "big")
    return None


def describe_data(spec: str, cfg: DataConfig | None = None) -> DataSummary | None:
    """What `spec` holds (None for "": no dataset given). Reads file headers, not pixels."""
    cfg = cfg or DataConfig()
    if not spec:
        return None
    if spec in NAMED_DATA:
        count, side, channels = NAMED_DATA[spec]
        return DataSummary(spec, count, side, channels,
                           f"named dataset, {count} {side}x{side} {'colour' if channels == 3 else 'grey'} images",
                           labelled=True)
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix.lower() in NUMPY_SUFFIXES:
        images, labels, described = read_numpy(path)
        n, c, h, w = images.shape
        return DataSummary(spec, n, min(h, w), c, f"{n} {h}x{w}x{c} {images.dtype} images"
                           + (", labelled" if labels is not None else ""), labelled=labels is not None)
    if path.is_dir():
        idx = _idx_shape(path)
        if idx:
            labelled = any("-labels-idx" in p.name for p in path.iterdir())
            return DataSummary(spec, idx[0], idx[1], 1, f"IDX files, {idx[0]} {idx[1]}x{idx[1]} grey images"
                               + (", labelled" if labelled else ""), labelled=labelled)
        return _scan_folder(path, cfg)
    raise DataError(f"dataset {spec!r} is neither a known name ({', '.join(NAMED_DATA)}) nor an existing path")


def nearest_preset(summary: DataSummary) -> str:
    def distance(name: str) -> float:
        data = get_preset(name).data
        return (abs(math.log2(max(summary.typical_size, 1) / data.image_size))
                + (CHANNEL_PENALTY if data.channels != summary.channels else 0.0))

    return min(AUTO_PRESETS, key=distance)


def _user_settings(overrides: list[str], config_file: str | None) -> dict[str, str]:
    """The section.field=value settings the user gave (config file, then --set), unparsed."""
    settings: dict[str, str] = {}
    if config_file and Path(config_file).is_file():
        try:
            data = json.loads(Path(config_file).read_text())
        except ValueError:
            data = {}  # load_config reports the bad file
        for section, values in data.items() if isinstance(data, dict) else ():
            if isinstance(values, dict):
                settings.update({f"{section}.{k}": str(v) for k, v in values.items()})
    for item in overrides:
        key, _, value = item.partition("=")
        settings[key.strip()] = value.strip()
    return settings


def choose_preset(preset: str | None, overrides: list[str], config_file: str | None = None) -> PresetChoice:
    """The preset for a new run: `preset` checked against the data, or (None) chosen to fit it."""
    settings = _user_settings(overrides, config_file)
    scan_cfg = DataConfig(cache_dir=settings.get("data.cache_dir", ""),
                          cache_check=settings.get("data.cache_check", "stat") if settings.get("data.cache_check")
                          in ("stat", "content") else "stat")
    channels_set = any(k in settings for k in CHANNEL_KEYS)
    if preset is not None:
        spec = settings.get("data.dataset", get_preset(preset).data.dataset)
        summary = describe_data(spec, scan_cfg)
        expected = get_preset(preset).data.channels
        if summary is not None and summary.channels != expected and not channels_set:
            kind = {1: "grey (1 channel)", 3: "colour (3 channels)"}
            raise ConfigError(
                f"preset {preset!r} is for {kind[expected]} images, but {summary.spec} holds {kind[summary.channels]} "
                f"images ({summary.detail}); use --preset {nearest_preset(summary)} (or leave --preset out to choose "
                f"one), or --set data.channels={expected} to convert the images")
        unconditional, note = _unlabelled(preset, summary, settings)
        return PresetChoice(preset, unconditional, note)
    spec = settings.get("data.dataset", DataConfig().dataset)
    summary = describe_data(spec, scan_cfg)
    name = nearest_preset(summary)
    data = get_preset(name).data
    extra = [] if summary.channels == data.channels or channels_set else [f"data.channels={summary.channels}"]
    shape = f"{data.image_size}x{data.image_size}x{summary.channels}"
    message = (f"data {summary}; chose preset {name!r} ({shape}"
               + (f", channels set to {summary.channels}" if extra else "") + "); change with --preset NAME "
               "(`vqvae presets` lists them) or --set data.image_size=N data.channels=C")
    unconditional, note = _unlabelled(name, summary, settings)
    return PresetChoice(name, extra + unconditional, "\n".join(m for m in (message, note) if m))


def _unlabelled(preset: str, summary: DataSummary | None, settings: dict[str, str]) -> tuple[list[str], str]:
    """A preset whose prior is class-conditional, on data without labels: the preset's prior for
    unlabelled images (config.UNLABELLED_PRIOR: conditioned on clusters found without labels), else an
    unconditional one, said in one line (a user who set prior.conditional or prior.pseudo_classes
    themselves gets what they asked for)."""
    if (summary is None or summary.labelled or not get_preset(preset).prior.conditional
            or "prior.conditional" in settings or "prior.pseudo_classes" in settings):
        return [], ""
    # A setting the user gave (--set or the config file, which load_config applies before these) is theirs.
    overrides = [o for o in UNLABELLED_PRIOR.get(preset, ["prior.conditional=false"])
                 if o.split("=")[0] not in settings]
    kind = ("conditioned on clusters of the images found without labels" if any("pseudo_classes" in o for o in overrides)
            else "unconditional")
    return overrides, (f"{summary.spec} has no class labels (no class subfolders or label file): the prior of preset "
                       f"{preset!r} is {kind} here ({' '.join(overrides)})")


def check_data_channels(spec: str, cfg: DataConfig) -> None:
    """For commands on a trained run: `spec`'s images must have the run's channels (the run's
    own datasets pass: a user may have trained on them converted, deliberately)."""
    if not spec or spec in (cfg.dataset, cfg.test_dataset):
        return
    summary = describe_data(spec, cfg)
    if summary is not None and summary.channels != cfg.channels:
        raise DataError(f"this run's model takes {cfg.channels}-channel images, but {summary.spec} holds "
                        f"{summary.channels}-channel ones ({summary.detail}); pass data like the run's "
                        f"({cfg.dataset or 'its training data'}), or train a run for this data")
