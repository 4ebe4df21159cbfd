"""Inpainting and editing: re-draw a region of images with a run's prior, keep the rest.

The steps, for images x and a pixel mask M (True = re-draw):
1. Blank: the masked pixels are set to 0 before encoding, so the encoder never sees them and
   no code can carry anything of the original region.
2. Code mask: a code is re-drawn when a masked pixel lies in its reach (`code_mask`): its own
   cell of S x S pixels (S = image size / code map size), grown by `margin` pixels on each side
   (default S // 2: the encoder's first layer, a 4x4 stride-2 conv, already reads half a cell
   across each edge), or, with margin "rf", its whole receptive field (`receptive_field`: exact
   for the encoder's convolutions; on small images it covers most of the map, so the re-drawn
   region is nearly everything). The codes kept are the blanked image's codes; a kept code can
   still have seen the blank at its edge, which is why the margin exists: a larger one re-draws
   more of what saw the blank, at the cost of context.
3. Re-draw: MaskGIT re-draws exactly the masked codes given all others, in `steps` steps whose
   schedule runs over the number of masked codes. The autoregressive priors cannot condition on
   later codes, so they keep each map's codes before its first masked position (raster order)
   and re-draw everything from there on (`AutoregressivePrior.complete`).
4. Decode and paste: the decoded images fill the masked pixels only; every other pixel is the
   original's, bit for bit (uint8 in, uint8 out).
`class_` re-draws the region as that class (conditional priors). Without it, a conditional prior
first infers the class from the kept codes (`class_posterior`, `infer_classes`) and re-draws with
that class and the run's guidance; `class_="none"` keeps the older unconditional mode (the null
class, guidance 0; priors trained with label dropout only).

Inferring the class (Bayes): p(c | kept codes) is proportional to p(kept codes | c) p(c), with
p(c) the class frequencies the prior records (`spec.class_weights`: pseudo-classes carry their
clusters' training frequencies), else uniform (named classes record none). p(kept codes | c):
- autoregressive priors: exact, the log-likelihood of the codes before the first masked position
  in raster order (the codes `complete` keeps), from one forward pass of each map under each class;
- MaskGIT, which has no exact likelihood: the chain rule over groups. The kept codes are split
  into `LIKELIHOOD_GROUPS` disjoint groups of about equal size in a random order; group g is
  predicted given the class, the groups before it and nothing else (the later groups and the
  re-drawn region are [MASK]), its codes scored independently given that context (the
  factorisation MaskGIT's own parallel steps assume), and the log-probabilities are summed
  over the groups. The estimate is averaged (in log space) over `LIKELIHOOD_ORDERS` orders drawn
  from a fixed seed, so it does not depend on the caller's random state. One forward pass of each
  map per later group, order and class; the first group sees no code, so one all-[MASK] pass per
  class serves every map and order. Chosen on validation digits over a pseudo-likelihood (each group
  given all other kept codes), which found the class less often: given most of the map, the
  codes predict each other and the class token barely matters (docs/benchmarks-maskgit.md).
The class is then the posterior's argmax, or a draw from the posterior (`class_choice`).
Every class is scored in the same forward passes: the (map, class) pairs run as one batch, cut into
passes bounded by `LIKELIHOOD_BATCH_ELEMENTS` (`likelihood_rows_per_pass`).
"""
from __future__ import annotations

import copy
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from .config import apply_overrides
from .data import load_dataset
from .data.cache import WIDE_MODES, fit_image
from .errors import ConfigError, DataError
from .figures import image_format, save_grid
from .files import atomic_save_npy, atomic_write_bytes, atomic_write_text
from .models import VQVAE
from .runs import OUTPUT_IMAGE_SUFFIXES, check_output_path, check_prior_matches, load_prior, load_vqvae
from .sampling import check_class_word, check_guidance, class_labels, effective_guidance
from .training.distributed import resolve_device

# How the inferred class is chosen from its posterior: its argmax, or a draw from it (keeps diversity
# where the kept region is ambiguous). The default was chosen on validation digits
# (docs/benchmarks-maskgit.md).
CLASS_CHOICES = ("argmax", "sample")
DEFAULT_CLASS_CHOICE = "argmax"
# MaskGIT's likelihood estimate: the chain rule over this many groups of the kept codes, averaged
# over this many random orders (module docstring; chosen on validation digits).
LIKELIHOOD_GROUPS = 4
LIKELIHOOD_ORDERS = 4
LIKELIHOOD_SEED = 0
# Scoring kept codes runs every class in the same forward passes, each holding as many code maps as
# keep its largest float tensor under this many elements (8 MiB): on a CPU larger passes were slower
# per map (docs/benchmarks-maskgit.md); an accelerator also takes at least the caller's batch per pass.
LIKELIHOOD_BATCH_ELEMENTS = 2 ** 21
INPUT_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")  # image modes with an alpha channel


@dataclass
class ReceptiveField:
    """The input rows (and columns) code i reads: [stride * i + start, stride * i + start + size)."""

    size: int
    start: int
    stride: int


def receptive_field(model: VQVAE, probes: int = 4) -> ReceptiveField:
    """The encoder's receptive field, measured on a float64 copy: the pixels with a nonzero gradient
    of one code position's latent (a random projection of its channels), unioned over random inputs
    (a ReLU that is off for one input is on for another). The probe image is 4x the model's size, so
    image borders do not clip the field of its centre code; a field wider than that (attention)
    covers any image anyway."""
    encoder = copy.deepcopy(model.encoder).cpu().double().eval()
    S = 2 ** model.model_config.num_downsamples
    side = 4 * model.model_config.image_size
    centre = side // S // 2
    generator = torch.Generator().manual_seed(0)
    reached = torch.zeros(side, side, dtype=torch.bool)
    for _ in range(probes):
        x = torch.randn(1, model.model_config.in_channels, side, side, generator=generator, dtype=torch.float64)
        x.requires_grad_(True)
        with torch.enable_grad():  # callers (inpaint_images) run under no_grad
            z = encoder(x)  # (1, D, h, w)
            weights = torch.randn(z.shape[1], generator=generator, dtype=torch.float64)
            (grad,) = torch.autograd.grad((z[0, :, centre, centre] * weights).sum(), x)
        reached |= grad[0].abs().sum(0) > 0
    rows = torch.nonzero(reached.any(1)).flatten()
    cols = torch.nonzero(reached.any(0)).flatten()
    size = int(max(rows.max() - rows.min(), cols.max() - cols.min())) + 1
    return ReceptiveField(size=size, start=int(min(rows.min(), cols.min())) - S * centre, stride=S)


def code_mask(pixel_mask: torch.Tensor, latent_size: int, margin: int | None = None,
              field: ReceptiveField | None = None) -> torch.Tensor:
    """(H, W) bool pixel mask -> (h, w) bool code mask: code (i, j) is re-drawn when a masked pixel
    lies in its cell grown by `margin` pixels (default: half a cell), or, given `field`, in its
    receptive field."""
    H, W = pixel_mask.shape
    S = H // latent_size
    if field is not None:
        start, size = field.start, field.size
    else:
        margin = S // 2 if margin is None else margin
        if margin < 0:
            raise ConfigError(f"--margin {margin}: must be >= 0 pixels, or 'rf'")
        start, size = -margin, S + 2 * margin
    # Summed-area table: the number of masked pixels in any window, in one lookup per code.
    table = torch.zeros(H + 1, W + 1, dtype=torch.long)
    table[1:, 1:] = pixel_mask.long().cumsum(0).cumsum(1)
    lo = (torch.arange(latent_size) * S + start).clamp(0, H)
    hi = (torch.arange(latent_size) * S + start + size).clamp(0, H)
    count = table[hi][:, hi] - table[lo][:, hi] - table[hi][:, lo] + table[lo][:, lo]
    return count > 0


def parse_mask(spec: str, size: int) -> torch.Tensor:
    """A box "x0,y0,x1,y1" (pixels; x1, y1 exclusive) or a mask image (nonzero = re-draw) ->
    (size, size) bool. An empty mask, one of another size, or one with transparent pixels (is the
    hole the transparent part or the painted one?) is an error."""
    text = str(spec).strip()
    parts = text.split(",")
    if len(parts) == 4 and not Path(text).exists():
        try:
            x0, y0, x1, y1 = (int(p) for p in parts)
        except ValueError:
            raise ConfigError(f"--mask {spec!r}: a box is four whole numbers x0,y0,x1,y1 in pixels") from None
        if not (0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size):
            raise ConfigError(f"--mask {spec!r}: a box needs 0 <= x0 < x1 <= {size} and 0 <= y0 < y1 <= {size} "
                              f"(pixels of the {size}x{size} images; x1 and y1 exclusive)")
        mask = torch.zeros(size, size, dtype=torch.bool)
        mask[y0:y1, x0:x1] = True
        return mask
    path = Path(text)
    if not path.is_file():
        raise ConfigError(f"--mask {spec!r} is neither a box x0,y0,x1,y1 nor an existing mask image")
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ALPHA_MODES or "transparency" in img.info:
                if np.asarray(img.convert("RGBA"))[:, :, 3].min() < 255:
                    raise ConfigError(f"--mask {path} has transparent pixels, and whether the transparent or the "
                                      f"painted part is the region to re-draw cannot be told: save the mask without "
                                      f"transparency (nonzero = re-draw)")
                img = img.convert("RGB")
            # Nonzero in the file's own values: a 16-bit or float mask of 1s (or 0.5s) is not rounded
            # to 0 by a conversion to 8 bits; a colour mask counts any channel.
            array = np.asarray(img) if img.mode in WIDE_MODES + ("1", "L") else np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"--mask {path} is not a readable image: {e}") from None
    if array.shape[:2] != (size, size):
        raise ConfigError(f"--mask {path} is {array.shape[1]}x{array.shape[0]} pixels; the images are "
                          f"{size}x{size}")
    mask = torch.from_numpy(array != 0 if array.ndim == 2 else (array != 0).any(2))
    if not mask.any():
        raise ConfigError(f"--mask {path} selects no pixel (all zero): nothing to re-draw")
    return mask


def read_images(spec: str | Path, config) -> tuple[torch.Tensor, tuple[str, ...]]:
    """uint8 (N, C, H, W) at the model's size: one image file (it must have that size), or a folder
    or .npy/.npz of images (converted and resized as for training); and the name of each image's
    file (relative to the folder), or () for an array file."""
    path = Path(spec)
    size, channels = config.model.image_size, config.model.in_channels
    if path.is_file() and path.suffix.lower() in INPUT_IMAGE_SUFFIXES:
        try:
            with Image.open(path) as img:
                if img.size != (size, size):
                    raise DataError(f"--image {path} is {img.size[0]}x{img.size[1]} pixels; this model's images are "
                                    f"{size}x{size} (a folder or .npy of images is resized; a single image is not)")
                img.load()
                # The conversion training used (16-bit and float images scaled, not clipped, to 8 bits);
                # at the model's size nothing is resized or cropped.
                return torch.from_numpy(fit_image(img, size, channels))[None], (path.name,)
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise DataError(f"--image {path} is not a readable image: {e}") from None
    if not path.exists():
        raise DataError(f"--image {path} does not exist")
    data_cfg = apply_overrides(config, {"data.num_workers": 0}).data
    images = load_dataset(str(path), data_cfg)
    return torch.stack([images[i][0] for i in range(len(images))]), images.names


@dataclass
class InpaintResult:
    images: torch.Tensor  # uint8 (N, C, H, W): the originals with the masked pixels re-drawn
    blanked: torch.Tensor  # uint8 (N, C, H, W): what the encoder was given
    codes: torch.Tensor  # (N, h, w): the code maps decoded
    code_mask: torch.Tensor  # (h, w) bool: the codes re-drawn (MaskGIT; AR priors re-draw more, see module doc)
    classes: torch.Tensor | None = None  # (N,) the inferred classes (class_choice given), else None
    class_probability: torch.Tensor | None = None  # (N,) each inferred class's posterior probability


def check_class_choice(choice: str) -> str:
    """A user's --class-choice / class_choice: `inpaint_images` checks it, once for every inpainting
    job (CLI, API and benchmarks all pass it there), before any image is encoded."""
    if choice not in CLASS_CHOICES:
        raise ConfigError(f"--class-choice {choice!r}: one of {', '.join(CLASS_CHOICES)} (how the class inferred "
                          f"from the kept region is taken from its posterior)")
    return choice


def kept_positions(prior, masked: torch.Tensor) -> torch.Tensor:
    """(B, H, W) bool: the codes a prior keeps when it re-draws `masked`: the unmasked ones for MaskGIT,
    those before each map's first masked position (raster order) for the autoregressive priors."""
    if prior.config.kind == "maskgit":
        return ~masked
    B, H, W = masked.shape
    flat = masked.reshape(B, H * W)
    first = torch.where(flat.any(1), flat.float().argmax(1), torch.full((B,), H * W, device=masked.device))
    return (torch.arange(H * W, device=masked.device)[None] < first[:, None]).view(B, H, W)


def likelihood_rows_per_pass(prior, batch: int, positions: int, device) -> int:
    """Code maps per forward pass when scoring kept codes: as many as keep one pass's largest float
    tensor under LIKELIHOOD_BATCH_ELEMENTS (per map and position: the logits' K, the MLP's 4 x width,
    or a head's attention row of `positions`), at least one; on an accelerator at least `batch`, the
    caller's batch of maps (the re-draw runs twice that at once), as the passes before batching were."""
    per_row = positions * max(prior.spec.codebook_size, 4 * prior.config.hidden_channels, positions)
    rows = LIKELIHOOD_BATCH_ELEMENTS // per_row
    return max(1, rows if torch.device(device).type == "cpu" else max(rows, batch))


@torch.no_grad()
def kept_log_likelihood(prior, codes: torch.Tensor, masked: torch.Tensor, labels: torch.Tensor | None,
                        groups: int = LIKELIHOOD_GROUPS, orders: int = LIKELIHOOD_ORDERS,
                        rows_per_pass: int | None = None, kept: torch.Tensor | None = None) -> torch.Tensor:
    """log p(kept codes | labels) in nats: exact for the autoregressive priors; for MaskGIT the
    chain rule over `groups` groups of the kept codes, averaged over `orders` random orders (see
    the module docstring). `labels` (B,) gives (B,); `labels` (R, B) gives (R, B), map b scored
    under labels[r, b] for every r (`class_posterior` asks for every class at once). The R x B
    (map, label) rows run through the prior in batches of `rows_per_pass` maps (default
    `likelihood_rows_per_pass`), whatever their label, so all classes share each forward pass.
    `kept`: `kept_positions(prior, masked)` when the caller has it already."""
    B, H, W = codes.shape
    single = labels is None or labels.dim() == 1
    label_rows = (labels if labels is not None else torch.zeros(B, dtype=torch.long, device=codes.device))
    label_rows = label_rows.reshape(-1, B)  # (R, B)
    flat_labels = label_rows.reshape(-1) if labels is not None else None  # (R * B,): row r * B + b is map b
    kept = kept_positions(prior, masked) if kept is None else kept
    rows = rows_per_pass or likelihood_rows_per_pass(prior, B, H * W + 1, codes.device)
    total = torch.zeros(label_rows.numel(), device=codes.device)  # float32: MPS has no float64

    def scored_sum(inputs, index, scored):  # log-probs of the true codes, summed over `scored`, per row
        logits = prior(inputs, flat_labels[index] if flat_labels is not None else None)  # (n, K, H, W)
        log_probs = -F.cross_entropy(logits.float(), codes[index % B], reduction="none")  # (n, H, W)
        return (log_probs * scored).sum((1, 2))

    if prior.config.kind != "maskgit":
        # A causal prior's logits at a kept position read only earlier (kept) codes.
        for start in range(0, len(total), rows):
            index = torch.arange(start, min(start + rows, len(total)), device=codes.device)
            total[index] = scored_sum(codes[index % B], index, kept[index % B])
        return total if single else total.view(-1, B)
    flat_kept = kept.reshape(B, H * W)
    count = flat_kept.sum(1, keepdim=True).clamp_min(1)  # (B, 1)
    generator = torch.Generator().manual_seed(LIKELIHOOD_SEED)
    group = []  # per order: (B, H, W) each code's group, 0..groups-1 on the kept codes
    for _ in range(orders):
        scores = torch.rand(H * W, generator=generator).to(codes.device).expand(B, -1)
        rank = scores.masked_fill(~flat_kept, 2.0).argsort(1).argsort(1)  # (B, L): kept codes first, in order
        group.append((rank * groups // count).view(B, H, W))
    # Group 0 is predicted from the class alone (every code hidden): one all-[MASK] pass per distinct
    # label serves every map and every order.
    distinct, which = torch.unique(label_rows, return_inverse=True)  # which: (R, B) index into distinct
    first_scored = torch.stack([kept & (g == 0) for g in group]).sum(0)  # (B, H, W): orders scoring it in group 0
    first = torch.zeros(len(distinct), B, device=codes.device)  # (D, B): group 0's log-probs, summed over orders
    positions = torch.arange(H * W, device=codes.device)
    per_label = max(1, rows // B)
    for start in range(0, len(distinct), per_label):
        part = distinct[start:start + per_label]
        blank = torch.full((len(part), H, W), prior.mask_token, dtype=torch.long, device=codes.device)
        logits = prior(blank, part if labels is not None else None)  # (d, K, H, W)
        log_probs = torch.log_softmax(logits.float().flatten(2), 1)  # (d, K, L)
        true = log_probs[:, codes.reshape(B, H * W), positions]  # (d, B, L): each map's true codes
        first[start:start + per_label] = (true * first_scored.reshape(1, B, H * W)).sum(2)
    total += first.gather(0, which).reshape(-1)
    for start in range(0, len(total), rows):
        index = torch.arange(start, min(start + rows, len(total)), device=codes.device)
        image = index % B
        for order in group:
            row_group = order[image]
            for g in range(1, groups):
                scored = kept[image] & (row_group == g)
                if not scored.any():
                    continue
                hidden = masked[image] | (kept[image] & (row_group >= g))  # group g from the groups before it only
                total[index] += scored_sum(codes[image].masked_fill(hidden, prior.mask_token), index, scored)
    total = total / orders
    return total if single else total.view(-1, B)


def class_log_prior(prior) -> torch.Tensor:
    """(C,) log p(c): the class frequencies the prior records (pseudo-classes), else uniform."""
    C = prior.spec.num_classes
    weights = torch.tensor(prior.spec.class_weights or [1.0] * C, dtype=torch.float64)
    return (weights / weights.sum()).log().float()


@torch.no_grad()
def class_posterior(prior, codes: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """(B, C) p(c | the kept codes of each map) for a class-conditional prior (Bayes, module docstring)."""
    if not prior.conditional:
        raise ConfigError("inferring the class needs a class-conditional prior; this prior is unconditional")
    B = len(codes)
    kept = kept_positions(prior, masked)
    empty = ~kept.flatten(1).any(1)
    if empty.any():
        raise ConfigError(f"inferring the class needs codes the prior keeps, and with this mask the {prior.config.kind} "
                          f"prior keeps none of {int(empty.sum())} image(s)"
                          + (" (an autoregressive prior keeps only the codes before the first masked one, in raster "
                             "order)" if prior.config.kind != "maskgit" else "")
                          + ": pass --class to name the class, or --class none for the unconditional mode")
    every_class = torch.arange(prior.spec.num_classes, device=codes.device)[:, None].expand(-1, B)  # (C, B)
    log_likelihood = kept_log_likelihood(prior, codes, masked, every_class, kept=kept).T  # (B, C)
    return torch.softmax(log_likelihood + class_log_prior(prior).to(codes.device), 1)


@torch.no_grad()
def infer_classes(prior, codes: torch.Tensor, masked: torch.Tensor, class_choice: str = DEFAULT_CLASS_CHOICE,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) classes for re-drawing the `masked` codes of `codes`, taken from p(c | kept codes) by
    `class_choice` ("argmax" or "sample"), and (B,) the posterior probability of each."""
    posterior = class_posterior(prior, codes, masked)
    if class_choice == "argmax":
        classes = posterior.argmax(1)
    elif class_choice == "sample":
        classes = torch.multinomial(posterior.float(), 1, generator=generator)[:, 0]
    else:  # a user's choice was checked by inpaint_images; this is a direct caller's slip
        raise ValueError(f"class_choice {class_choice!r}: one of {', '.join(CLASS_CHOICES)}")
    return classes, posterior.gather(1, classes[:, None])[:, 0].float()


@torch.no_grad()
def inpaint_images(vqvae: VQVAE, prior, images: torch.Tensor, pixel_mask: torch.Tensor,
                   labels: torch.Tensor | None = None, margin: int | str | None = None,
                   generator: torch.Generator | None = None, batch_size: int = 500,
                   class_choice: str | None = None, **sampling) -> InpaintResult:
    """Re-draw the `pixel_mask` (H, W) region of uint8 `images` (N, C, H, W); `sampling` holds the
    prior's options (temperature, top_k, top_p, guidance; MaskGIT's steps, choice_temperature).
    With `class_choice` ("argmax" or "sample") and no `labels`, a conditional prior infers each
    image's class from its kept codes (`infer_classes`) and re-draws with it."""
    if class_choice is not None:
        check_class_choice(class_choice)
        if labels is not None:
            raise ConfigError("give labels or class_choice (infer the class), not both")
        if not prior.conditional:
            raise ConfigError("--class-choice infers a class: it needs a class-conditional prior; this prior is "
                              "unconditional")
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise DataError(f"images must be uint8 (N, C, H, W); got {images.dtype} {tuple(images.shape)}")
    vqvae.check_images(images.float())
    if tuple(pixel_mask.shape) != tuple(images.shape[-2:]):
        raise ConfigError(f"the mask is {pixel_mask.shape[-1]}x{pixel_mask.shape[0]} pixels; the images are "
                          f"{images.shape[-1]}x{images.shape[-2]}")
    if not pixel_mask.any():
        raise ConfigError("the mask selects no pixel: nothing to re-draw")
    pixel_mask = pixel_mask.cpu().bool()
    device = next(vqvae.parameters()).device
    field = receptive_field(vqvae) if margin == "rf" else None
    codes_masked = code_mask(pixel_mask, vqvae.latent_size, None if margin == "rf" else margin, field)
    images = images.cpu()
    blanked = images.masked_fill(pixel_mask[None, None], 0)
    out_codes, out_images, out_classes, out_probability = [], [], [], []
    for start in range(0, len(images), batch_size):
        x = blanked[start:start + batch_size].to(device)
        codes = vqvae.codes(x.float() / 255)  # (b, h, w)
        masked = codes_masked.to(device).expand_as(codes)
        if class_choice is not None:
            part_labels, probability = infer_classes(prior, codes, masked, class_choice, generator)
            out_classes.append(part_labels.cpu())
            out_probability.append(probability.cpu())
        else:
            part_labels = labels[start:start + batch_size].to(device) if labels is not None else None
        codes = prior.complete(codes, masked, part_labels, generator=generator, **sampling)
        decoded = (vqvae.decode_indices(codes).float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
        out_codes.append(codes.cpu())
        out_images.append(torch.where(pixel_mask[None, None], decoded, images[start:start + batch_size]))
    inferred = (torch.cat(out_classes), torch.cat(out_probability)) if class_choice is not None else (None, None)
    return InpaintResult(torch.cat(out_images), blanked, torch.cat(out_codes), codes_masked, *inferred)


def parse_margin(text: str | int | None) -> int | str | None:
    """--margin: None (half a code cell), a whole number of pixels >= 0, or "rf"."""
    if text is None or text == "rf":
        return text
    try:
        value = int(text)
    except (TypeError, ValueError):
        value = -1
    if value < 0 or (isinstance(text, float) and text != value):
        raise ConfigError(f"--margin {text!r}: a whole number of pixels >= 0, or 'rf' (the encoder's receptive "
                          f"field)")
    return value


def inpaint(run_dir: str | Path, image: str | Path | torch.Tensor, mask: str | torch.Tensor, out: str | Path,
            class_: str | int | None = None, margin: int | str | None = None, seed: int | None = None,
            temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
            guidance: float | None = None, steps: int | None = None, choice_temperature: float | None = None,
            device: str = "auto", class_choice: str | None = None) -> dict:
    """Re-draw the `mask` region of `image` with the run's prior (see the module docstring).

    `image`: an image file at the model's size, a folder or .npy of images, or a uint8 tensor
    (N, C, H, W). `mask`: a box "x0,y0,x1,y1" in pixels (x1, y1 exclusive), a mask image (nonzero =
    re-draw), or a bool tensor (H, W); one mask for every image. `class_`: a class index or name;
    None: a conditional prior infers each image's class from its kept codes, taken by
    `class_choice` ("argmax" or "sample", default DEFAULT_CLASS_CHOICE); "none": the prior's
    unconditional mode. Writes OUT (.png or .jpg: the result, or a grid of the results), OUT.npy
    (uint8 (N, C, H, W)) and OUT.json (settings, the code mask, and the inferred class of each image
    with its posterior probability; for a folder, each result's file, as `inputs`). Unset sampling
    options come from the run's sample config."""
    # The grid's format follows OUT's extension; OUT.npy and OUT.json are written beside it, so OUT
    # itself must not end in .npy or .json (one file would overwrite the other).
    out = check_output_path(out, suffixes=OUTPUT_IMAGE_SUFFIXES)
    for path in (out.with_suffix(".npy"), out.with_suffix(".json")):
        check_output_path(path)
    margin = parse_margin(margin)
    dev = resolve_device(device)
    run_dir = Path(run_dir)
    prior, config, extra = load_prior(run_dir, dev)
    vqvae, vq_config = load_vqvae(run_dir, dev)
    check_prior_matches(prior, vqvae, extra["vqvae_fingerprint"])
    masked_prior = prior.config.kind == "maskgit"
    if not masked_prior and (steps is not None or choice_temperature is not None):
        raise ConfigError(f"--steps and --choice-temperature are for a maskgit prior; this one is {prior.config.kind}")
    asked = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "seed": seed, "steps": steps,
             "choice_temperature": choice_temperature}
    s = apply_overrides(config, {f"sample.{k}": v for k, v in asked.items() if v is not None}).sample
    size = vq_config.model.image_size
    pixel_mask = mask if isinstance(mask, torch.Tensor) else parse_mask(mask, size)
    images, names = (image, ()) if isinstance(image, torch.Tensor) else read_images(image, vq_config)
    class_ = None if class_ is None or class_ == "" else str(class_)
    infer = class_ is None and prior.conditional
    if class_choice is not None:  # inpaint_images checks its value
        if not infer:
            raise ConfigError(f"--class-choice {class_choice} chooses the class inferred from the kept region: it "
                              f"needs a class-conditional prior and no --class (here: "
                              f"{'--class ' + class_ if class_ is not None else 'an unconditional prior'})")
    check_class_word(prior, class_, "none", "the prior's unconditional mode")
    if class_ == "none":
        if not prior.conditional:
            raise ConfigError("--class none is a conditional prior's unconditional mode; this prior is "
                              "unconditional already: leave --class out")
        if prior.null_class is None:
            raise ConfigError("--class none needs a prior trained with label dropout (prior.label_dropout > 0); "
                              "this one has no unconditional mode: leave --class out to infer the class")
        if guidance not in (None, 0.0):
            raise ConfigError("--guidance needs a class: --class none inpaints in the prior's unconditional mode")
        labels = torch.zeros(len(images), dtype=torch.long, device=dev)  # any class: guidance 0 ignores it
        guidance = 0.0
    elif class_ is not None:
        if class_ == "all" and "all" not in prior.spec.class_names:
            raise ConfigError("--class all is for sampling; inpainting takes one class index or name, or 'none'")
        labels, _ = class_labels(prior, class_, len(images), dev, every_class=False)
        if guidance is None:
            guidance = effective_guidance(prior, s.guidance)
    elif infer:
        labels = None
        class_choice = DEFAULT_CLASS_CHOICE if class_choice is None else class_choice  # '' is refused, not defaulted
        if guidance is None:
            guidance = effective_guidance(prior, s.guidance)
    else:
        labels = None
        guidance = 1.0 if guidance is None else guidance
    check_guidance(prior, guidance)
    sampling = {"temperature": s.temperature, "top_k": s.top_k, "top_p": s.top_p, "guidance": guidance}
    if masked_prior:
        sampling.update(steps=s.steps, choice_temperature=s.choice_temperature)
    generator = torch.Generator(device=dev).manual_seed(s.seed)
    result = inpaint_images(vqvae, prior, images, pixel_mask, labels, margin, generator,
                            class_choice=class_choice if infer else None, **sampling)
    atomic_save_npy(out.with_suffix(".npy"), result.images.numpy())
    if len(images) == 1:  # one image: the result itself, at its own size
        buffer = io.BytesIO()
        array = result.images[0].permute(1, 2, 0).numpy()
        Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array).save(
            buffer, format=image_format(out))
        atomic_write_bytes(out, buffer.getvalue())
        grid = out
    else:
        grid = save_grid(result.images.float() / 255, out, nrow=min(10, len(images)))
    cell = size // vqvae.latent_size
    settings = {"images": len(images), "mask_pixels": int(pixel_mask.sum()),
                "margin": margin if margin is not None else cell // 2,
                "codes_redrawn": int(result.code_mask.sum()), "code_mask": result.code_mask.int().tolist(),
                "prior_kind": prior.config.kind, "class": "inferred" if infer else class_, **sampling,
                "seed": s.seed}
    if names:  # which file each result comes from (a folder's unreadable files are skipped)
        settings["inputs"] = list(names)
    if infer:
        class_names = prior.spec.class_names
        classes = result.classes.tolist()
        settings.update(class_choice=class_choice,
                        class_prior="the prior's recorded class frequencies" if prior.spec.class_weights
                        else "uniform",
                        inferred_class=classes,
                        inferred_class_name=[class_names[c] for c in classes] if class_names else None,
                        inferred_class_posterior=[round(p, 6) for p in result.class_probability.tolist()])
    atomic_write_text(out.with_suffix(".json"), json.dumps(settings, indent=2) + "\n")
    return {**settings, "out": str(grid)}
