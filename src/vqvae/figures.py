"""Pictures a person looks at: image grids, training curves, codebook usage."""
from __future__ import annotations

from pathlib import Path

import torch

from .files import atomic_save_figure


def spread_indices(n: int, count: int, labels: torch.Tensor | None = None) -> list[int]:
    """`count` of `n` images chosen across the whole set, for a figure: with labels, each class
    in turn (its images in dataset order), so every class shows; without, evenly spaced."""
    count = min(count, n)
    if labels is None:
        return torch.linspace(0, n - 1, count).round().long().unique().tolist() if count else []
    per_class = [torch.nonzero(labels == c).flatten().tolist() for c in torch.unique(labels).tolist()]
    picked, depth = [], 0
    while len(picked) < count:
        picked += [members[depth] for members in per_class if depth < len(members)][: count - len(picked)]
        depth += 1
    return picked


def image_format(path: Path) -> str:
    """The format an image file is written in, by its name's extension: JPEG or PNG (callers check
    the extension against runs.OUTPUT_IMAGE_SUFFIXES before any work)."""
    return "JPEG" if Path(path).suffix.lower() in (".jpg", ".jpeg") else "PNG"


def save_grid(images: torch.Tensor, path: Path, nrow: int = 8, padding: int = 2) -> Path:
    """images: (N, C, H, W) float; clipped to [0, 1] and written as one PNG or JPEG (by the name)."""
    from torchvision.utils import save_image

    path = Path(path)
    atomic_save_figure(path, lambda f: save_image(images.detach().float().clamp(0, 1).cpu(), f, nrow=nrow,
                                                  padding=padding, pad_value=1.0, format=image_format(path)))
    return path


def save_reconstruction_grid(originals: torch.Tensor, reconstructions: torch.Tensor, path: Path,
                             per_row: int = 8) -> Path:
    """Rows alternate: `per_row` originals, then their reconstructions directly below."""
    n = originals.shape[0] - originals.shape[0] % per_row or originals.shape[0]
    rows = []
    for start in range(0, n, per_row):
        rows += [originals[start:start + per_row], reconstructions[start:start + per_row]]
    return save_grid(torch.cat(rows), path, nrow=min(per_row, n))


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_history(history: list[dict], path: Path, panels: list[tuple[str, list[str]]], title: str = "") -> Path:
    """One panel per (title, [history keys]), epochs on the x axis."""
    plt = _plt()
    fig = history_figure(history, panels, title)
    path = Path(path)
    atomic_save_figure(path, lambda f: fig.savefig(f, dpi=100, format="png"))
    plt.close(fig)
    return path


def history_figure(history: list[dict], panels: list[tuple[str, list[str]]], title: str = ""):
    """The figure `plot_history` saves. Epochs are whole numbers, so the x axis ticks only those; a log
    axis is labelled with plain numbers (0.01, 0.05), not 5x10^-2."""
    plt = _plt()
    from matplotlib.ticker import FuncFormatter, LogFormatter, MaxNLocator
    # Series that are absent or identically zero (the codebook loss under EMA updates) are left out.
    panels = [(t, [k for k in keys if any(h.get(k) for h in history)]) for t, keys in panels]
    panels = [(t, keys) for t, keys in panels if keys]
    # At most 4 panels a row: a GAN run's 7 stay readable.
    cols = min(4, max(1, len(panels)))
    rows = -(-max(1, len(panels)) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (panel_title, keys) in zip(axes.flat, panels):
        for key in keys:
            xs = [h["epoch"] for h in history if key in h and h[key] is not None]
            ys = [h[key] for h in history if key in h and h[key] is not None]
            ax.plot(xs, ys, marker="." if len(xs) < 30 else None, label=key)
        ax.set_title(panel_title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        values = [h[k] for h in history for k in keys if h.get(k) is not None]
        # A log axis for losses that fall by a decade or more; a narrower range reads better linear.
        if panel_title.lower().startswith("loss") and min(values) > 0 and max(values) >= 10 * min(values):
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
            ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_usage_histogram(counts: torch.Tensor, path: Path, title: str = "codebook usage") -> Path:
    plt = _plt()
    counts = counts.detach().cpu().double()
    fig, ax = plt.subplots(figsize=(7, 3))
    order = counts.argsort(descending=True)
    ax.bar(range(len(counts)), (counts[order] / counts.sum().clamp_min(1)).numpy(), width=1.0)
    ax.set_xlabel("code (sorted by use)")
    ax.set_ylabel("fraction of positions")
    ax.set_title(f"{title}: {(counts > 0).sum().item()} of {len(counts)} codes used")
    fig.tight_layout()
    atomic_save_figure(Path(path), lambda f: fig.savefig(f, dpi=100, format="png"))
    plt.close(fig)
    return Path(path)
