"""VQ-VAE toolkit: train a VQ-VAE, learn a prior over its codes, generate images."""
__version__ = "0.1.0"
