"""The VQ-VAE and the priors over its codes."""
from .fsq import FiniteScalarQuantizer
from .lfq import LookupFreeQuantizer
from .pixelcnn import GatedPixelCNN, PriorSpec, sample_logits
from .quantizer import (QuantizerOutput, VectorQuantizer, code_dtype, kmeans, nearest_codes, rotation_trick,
                        straight_through)
from .rvq import ResidualVectorQuantizer
from .vqvae import VQVAE, VQVAEOutput, build_quantizer, quantizer_info

__all__ = ["VQVAE", "VQVAEOutput", "VectorQuantizer", "FiniteScalarQuantizer", "LookupFreeQuantizer",
           "ResidualVectorQuantizer", "build_quantizer", "quantizer_info", "QuantizerOutput", "nearest_codes",
           "straight_through", "rotation_trick", "code_dtype", "kmeans", "GatedPixelCNN", "PriorSpec",
           "sample_logits"]
