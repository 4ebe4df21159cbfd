"""The VQ-VAE and the priors over its codes."""
from .pixelcnn import GatedPixelCNN, PriorSpec, sample_logits
from .quantizer import QuantizerOutput, VectorQuantizer, kmeans, nearest_codes, straight_through
from .vqvae import VQVAE, VQVAEOutput

__all__ = ["VQVAE", "VQVAEOutput", "VectorQuantizer", "QuantizerOutput", "nearest_codes", "straight_through",
           "kmeans", "GatedPixelCNN", "PriorSpec", "sample_logits"]
