"""The VQ-VAE and the priors over its codes."""
from __future__ import annotations

from ..config import PriorConfig
from .fsq import FiniteScalarQuantizer
from .lfq import LookupFreeQuantizer
from .maskgit_prior import MaskGITPrior
from .pixelcnn import GatedPixelCNN
from .prior_common import PriorSpec, sample_full_pass, sample_logits
from .quantizer import (QuantizerOutput, VectorQuantizer, code_dtype, kmeans, nearest_codes, rotation_trick,
                        straight_through)
from .rvq import ResidualVectorQuantizer
from .transformer_prior import TransformerPrior
from .vqvae import VQVAE, VQVAEOutput, build_quantizer, quantizer_info

Prior = GatedPixelCNN | TransformerPrior | MaskGITPrior
PRIOR_KINDS = {"pixelcnn": GatedPixelCNN, "transformer": TransformerPrior, "maskgit": MaskGITPrior}


def build_prior(config: PriorConfig, spec: PriorSpec, dropout: float = 0.0) -> Prior:
    """The prior `config.kind` names, built from its config and spec (how checkpoints are rebuilt)."""
    if config.kind not in PRIOR_KINDS:
        raise ValueError(f"prior.kind={config.kind!r}; valid: {', '.join(PRIOR_KINDS)}")
    return PRIOR_KINDS[config.kind](config, spec, dropout=dropout)


__all__ = ["VQVAE", "VQVAEOutput", "VectorQuantizer", "FiniteScalarQuantizer", "LookupFreeQuantizer",
           "ResidualVectorQuantizer", "build_quantizer", "quantizer_info", "QuantizerOutput", "nearest_codes",
           "straight_through", "rotation_trick", "code_dtype", "kmeans", "GatedPixelCNN", "TransformerPrior", "MaskGITPrior",
           "Prior",
           "PRIOR_KINDS", "build_prior", "PriorSpec", "sample_logits", "sample_full_pass"]
