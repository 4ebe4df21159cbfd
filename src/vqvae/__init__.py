"""VQ-VAE toolkit: train a VQ-VAE, learn a prior over its codes, generate and measure images.

The public API lives in `vqvae.api` and is re-exported here.
"""
from ._version import __version__

from .api import (decode, encode, evaluate, inpaint, load_config, load_prior, load_vqvae, reconstruct, run_pipeline,
                  sample, train_prior, train_vqvae, tune_sampling, write_report)
from .config import RunConfig, get_preset
from .errors import CheckpointError, ConfigError, DataError, ExportError, TrainingError, VQVAEError
from .export import export_diffusers, export_folder, export_onnx, import_diffusers
from .models import VQVAE, GatedPixelCNN, MaskGITPrior, TransformerPrior

__all__ = ["train_vqvae", "train_prior", "reconstruct", "encode", "decode", "evaluate", "sample", "inpaint", "tune_sampling",
           "run_pipeline", "load_vqvae", "load_prior", "load_config", "write_report", "RunConfig", "get_preset",
           "VQVAE", "GatedPixelCNN", "TransformerPrior", "MaskGITPrior", "VQVAEError", "ConfigError", "DataError",
           "CheckpointError", "TrainingError", "export_folder", "export_onnx", "export_diffusers", "import_diffusers",
           "ExportError"]
