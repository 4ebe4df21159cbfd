"""VQ-VAE toolkit: train a VQ-VAE, learn a prior over its codes, generate and measure images.

The public API lives in `vqvae.api` and is re-exported here.
"""
__version__ = "0.1.0"

from .api import (decode, encode, evaluate, load_config, load_prior, load_vqvae, reconstruct, run_pipeline, sample,
                  train_prior, train_vqvae, tune_sampling, write_report)
from .config import RunConfig, get_preset
from .errors import CheckpointError, ConfigError, DataError, ExportError, TrainingError, VQVAEError
from .export import export_folder, export_onnx
from .models import VQVAE, GatedPixelCNN, TransformerPrior

__all__ = ["train_vqvae", "train_prior", "reconstruct", "encode", "decode", "evaluate", "sample", "run_pipeline",
           "tune_sampling", "load_vqvae", "load_prior", "load_config", "write_report", "RunConfig", "get_preset", "VQVAE",
           "GatedPixelCNN", "TransformerPrior", "VQVAEError", "ConfigError", "DataError", "CheckpointError",
           "TrainingError", "export_folder", "export_onnx", "ExportError"]
