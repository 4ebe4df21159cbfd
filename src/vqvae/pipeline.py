"""`vqvae run`: the whole job in one folder, each step the same function its own command calls."""
from __future__ import annotations

import time
from pathlib import Path

from .config import RunConfig
from .data import describe_data
from .errors import DataError
from .models.vqvae import check_model_config
from .evaluation import evaluate
from .report import summary_text
from .runlock import locks_run
from .runs import read_metrics, update_metrics
from .sampling import sample
from .training.distributed import is_main_process
from .training.prior_stage import check_one_index_per_position, train_prior
from .training.vqvae_stage import train_vqvae


@locks_run("pipeline", lambda a: a["run_dir"])
def run_pipeline(config: RunConfig, run_dir: str | Path, progress: bool = True) -> dict:
    """The whole job: VQ-VAE, cached codes, prior, samples, evaluation and report, in one folder."""
    run_dir = Path(run_dir)
    check_model_config(config.model)  # before any data is read or cached, or a folder made
    # The prior's turn comes after the VQ-VAE has trained: a VQ-VAE it cannot model is said now.
    check_one_index_per_position(config.quantizer)
    # Said before the VQ-VAE trains, not after; the data is described only when it matters (a
    # .npy file is read whole to describe it).
    needs_labels = config.prior.conditional and not config.prior.pseudo_classes  # pseudo-classes read no labels
    summary = describe_data(config.data.dataset, config.data) if needs_labels else None
    if summary is not None and not summary.labelled:
        raise DataError(f"prior.conditional=true needs class labels, and {summary.spec} has none ({summary.detail}); "
                        f"set prior.conditional=false, or put the images in one subfolder per class")
    timings = {}
    t = time.perf_counter()
    train_vqvae(config, run_dir)
    timings["vqvae_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    train_prior(config, run_dir)
    timings["prior_s"] = round(time.perf_counter() - t, 1)
    if not is_main_process():
        return {}  # under torchrun, sampling and evaluation are rank 0's
    t = time.perf_counter()
    sampled = sample(run_dir, device=config.train.device)
    timings["sample_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    evaluate(run_dir, device=config.train.device)
    timings["evaluate_s"] = round(time.perf_counter() - t, 1)
    update_metrics(run_dir, "pipeline", {"timings": timings, "sampling": sampled})
    if progress:
        print(summary_text(run_dir), flush=True)
    return read_metrics(run_dir)
