"""The VQ-VAE: encoder, quantizer, decoder.

model.arch "vqvae" (the default) is the seed's: defaults reproduce it exactly (two stride-2 4x4
convs with ReLU, a 3x3 conv, two residual blocks; mirrored decoder ending in two stride-2
transposed convs); depth, widths, code dimension and number of downsamplings are configurable.
model.arch "vqgan" swaps in the VQGAN-class encoder/decoder of models/vqgan.py. Either works with
every quantizer kind.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig, QuantizerConfig, RunConfig, validate
from ..errors import CheckpointError, ConfigError
from ..nn import ResidualBlock
from .diffusers_format import WEIGHTS_NAME as DIFFUSERS_WEIGHTS
from .diffusers_format import from_diffusers as diffusers_from_config
from .diffusers_format import our_state as diffusers_state
from .diffusers_format import read_diffusers_folder
from .fsq import FiniteScalarQuantizer
from .lfq import LookupFreeQuantizer
from .pretrained import load_weights, read_model_folder, weights_file, write_model_folder
from .quantizer import QuantizerOutput, VectorQuantizer
from .rvq import ResidualVectorQuantizer
from .vqgan import VQGANDecoder, VQGANEncoder

QUANTIZERS = {"vq": VectorQuantizer, "fsq": FiniteScalarQuantizer, "lfq": LookupFreeQuantizer,
              "rvq": ResidualVectorQuantizer}


def build_quantizer(code_dim: int, config: QuantizerConfig) -> nn.Module:
    """The quantizer of `config.kind`. Every kind returns a QuantizerOutput, has `loss_names`,
    `codebook_size` (codes an index ranges over), `usage_size`/`usage_counts` (codebook health)
    and `lookup(indices)` (the decoder's input for a code map)."""
    if config.kind not in QUANTIZERS:
        raise ConfigError(f"quantizer.kind={config.kind!r}; valid: {', '.join(QUANTIZERS)}")
    return QUANTIZERS[config.kind](code_dim, config)


def quantizer_info(quantizer: nn.Module) -> dict:
    """The kind and the parameters that give its codes their meaning: written to code files
    (codes.json) and checked when codes are decoded."""
    cfg = quantizer.config
    info = {"kind": cfg.kind, "codebook_size": quantizer.codebook_size}
    if cfg.kind in ("vq", "rvq"):
        info.update(distance=cfg.distance, lookup_dim=cfg.lookup_dim, gradient=cfg.gradient)
    if cfg.kind == "fsq":
        info["fsq_levels"] = list(quantizer.levels_list)
    if cfg.kind == "lfq":
        info["bits"] = quantizer.bits
    if cfg.kind == "rvq":
        info.update(depth=quantizer.depth, codes_per_level=quantizer.codebook_size)
    return info


@dataclass
class VQVAEOutput:
    reconstruction: torch.Tensor  # (B, C_img, H, W)
    indices: torch.Tensor  # (B, h, w); residual VQ (B, depth, h, w)
    reconstruction_loss: torch.Tensor
    losses: dict  # the quantizer's named loss terms, unweighted
    loss: torch.Tensor  # the weighted sum that training minimises

    @property
    def codebook_loss(self) -> torch.Tensor:
        return self.losses.get("codebook", torch.zeros_like(self.loss))

    @property
    def commitment_loss(self) -> torch.Tensor:
        return self.losses.get("commitment", torch.zeros_like(self.loss))


def num_downsamplings(cfg: ModelConfig) -> int:
    """Stride-2 steps from image to latents: num_downsamples (vqvae), len(channel_mult) - 1 (vqgan)."""
    return len(cfg.channel_mult) - 1 if cfg.arch == "vqgan" else cfg.num_downsamples


def check_model_config(cfg: ModelConfig) -> None:
    steps = num_downsamplings(cfg)
    factor = 2 ** steps
    if cfg.image_size % factor != 0 or cfg.image_size < factor:
        sizes = [factor * k for k in range(max(1, cfg.image_size // factor - 1), cfg.image_size // factor + 3)]
        fix = "model.channel_mult" if cfg.arch == "vqgan" else "model.num_downsamples"
        raise ConfigError(
            f"image_size={cfg.image_size} cannot round-trip through {steps} stride-2 "
            f"downsamplings: it must be a multiple of {factor} (e.g. {', '.join(map(str, sizes))}), "
            f"or change {fix}")
    if cfg.in_channels not in (1, 3):
        raise ConfigError(f"in_channels={cfg.in_channels}; images must have 1 or 3 channels")
    if cfg.hidden_channels < 1 or cfg.num_residual_blocks < 0 or cfg.code_dim < 0 or cfg.num_residual_hiddens < 0:
        raise ConfigError("hidden_channels must be >= 1, num_residual_blocks, num_residual_hiddens and code_dim >= 0")


class Encoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        ch = cfg.hidden_channels
        layers: list[nn.Module] = []
        in_ch = cfg.in_channels
        for _ in range(cfg.num_downsamples):
            layers += [nn.Conv2d(in_ch, ch, 4, 2, 1), nn.ReLU()]
            in_ch = ch
        layers.append(nn.Conv2d(ch, ch, 3, 1, 1))
        layers += [ResidualBlock(ch, cfg.num_residual_hiddens) for _ in range(cfg.num_residual_blocks)]
        if cfg.code_dim and cfg.code_dim != ch:
            layers.append(nn.Conv2d(ch, cfg.code_dim, 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(x)


class Decoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        ch = cfg.hidden_channels
        code_dim = cfg.code_dim or ch
        layers: list[nn.Module] = [nn.Conv2d(code_dim, ch, 3, 1, 1)]
        layers += [ResidualBlock(ch, cfg.num_residual_hiddens) for _ in range(cfg.num_residual_blocks)]
        for i in range(cfg.num_downsamples):
            last = i == cfg.num_downsamples - 1
            layers.append(nn.ConvTranspose2d(ch, cfg.in_channels if last else ch, 4, 2, 1))
            if not last:
                layers.append(nn.ReLU())
        self.layers = nn.Sequential(*layers)

    def forward(self, z):
        return self.layers(z)


class VQVAE(nn.Module):
    def __init__(self, model: ModelConfig, quantizer: QuantizerConfig):
        super().__init__()
        check_model_config(model)
        self.model_config = model
        self.quantizer_config = quantizer
        vqgan = getattr(model, "arch", "vqvae") == "vqgan"
        self.encoder = VQGANEncoder(model) if vqgan else Encoder(model)
        self.quantizer = build_quantizer(model.code_dim or model.hidden_channels, quantizer)
        self.decoder = VQGANDecoder(model) if vqgan else Decoder(model)

    @property
    def latent_size(self) -> int:
        return self.model_config.image_size // 2 ** num_downsamplings(self.model_config)

    @property
    def codebook_size(self) -> int:
        """Codes one index ranges over: the codebook, FSQ's/LFQ's implicit one, one RVQ level's."""
        return self.quantizer.codebook_size

    @property
    def indices_per_position(self) -> int:
        """1, or the depth of a residual quantizer: the prior models one index per position."""
        return self.quantizer_config.indices_per_position

    @property
    def loss_names(self) -> tuple:
        return tuple(self.quantizer.loss_names)

    def loss_weight(self, name: str) -> float:
        qc = self.quantizer_config
        commitment = qc.lfq_commitment_weight if qc.kind == "lfq" else qc.commitment_weight
        return {"codebook": qc.codebook_weight, "commitment": commitment, "entropy": qc.entropy_weight}[name]

    def check_images(self, x: torch.Tensor) -> None:
        """Images (B, C, H, W) must have this model's channels and size (inpainting checks a user's images)."""
        cfg = self.model_config
        expected = (cfg.in_channels, cfg.image_size, cfg.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ConfigError(f"images of shape {tuple(x.shape[1:])} do not fit this model, which expects "
                              f"(channels, height, width) = {expected}")

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) in [0, 1] -> continuous latents ze (B, D, h, w)."""
        return self.encoder(x)

    def quantize(self, z: torch.Tensor) -> QuantizerOutput:
        return self.quantizer(z)

    def decode(self, zq: torch.Tensor) -> torch.Tensor:
        return self.decoder(zq)

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Code maps (B, h, w) int -> images (B, C, H, W); residual VQ: (B, d, h, w), the first
        d <= depth levels."""
        expected = 4 if self.indices_per_position > 1 else 3
        if indices.dim() != expected or (expected == 4 and not 1 <= indices.shape[1] <= self.indices_per_position):
            shape = f"(N, d, h, w) with 1 <= d <= {self.indices_per_position}" if expected == 4 else "(N, h, w)"
            raise ConfigError(f"code maps of shape {tuple(indices.shape)} do not fit this "
                              f"{self.quantizer_config.kind} model, which decodes {shape}")
        return self.decode(self.quantizer.lookup(indices))

    @torch.no_grad()
    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> code maps (B, h, w) (residual VQ: (B, depth, h, w)), without touching codebook state."""
        was_training = self.training
        self.eval()
        try:
            return self.quantizer(self.encode(x)).indices
        finally:
            self.train(was_training)

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "VQVAE":
        """Rebuild from a model folder (`save_pretrained`, `vqvae export --format folder`), in eval
        mode on the CPU. Reads JSON and safetensors only; no run folder or checkpoint needed."""
        payload = read_model_folder(folder, "vqvae")
        config = RunConfig.from_dict(payload["config"])
        model = cls(config.model, config.quantizer)
        load_weights(model, payload["model_state"], weights_file(folder, "vqvae"))
        return model.eval()

    @classmethod
    def from_diffusers(cls, folder: str | Path, image_size: int | None = None) -> "VQVAE":
        """Rebuild a diffusers `VQModel` folder (config.json + diffusion_pytorch_model.safetensors) as a
        model.arch=vqgan VQ-VAE, in eval mode on the CPU: the same codes and, on our [0, 1] image scale,
        the same decoded images. `image_size`: the images' side (default: the VQModel's sample_size).
        Reads JSON and safetensors only; diffusers need not be installed."""
        config, state = read_diffusers_folder(folder)
        model_config, quantizer_config = diffusers_from_config(config, image_size)
        try:
            validate(RunConfig(model=model_config, quantizer=quantizer_config))  # every field's checks
        except ConfigError as e:
            raise CheckpointError(f"{folder}: this VQModel does not fit here: {e}") from None
        model = cls(model_config, quantizer_config)
        load_weights(model, diffusers_state(model, state), Path(folder) / DIFFUSERS_WEIGHTS)
        return model.eval()

    def save_pretrained(self, folder: str | Path, config: RunConfig | None = None) -> Path:
        """Write a model folder: config.json + vqvae.safetensors. `config`, the run's full config,
        is stored when given (its data section tells commands which images the model was made
        for); otherwise the model's own sections, with the data section sized to fit."""
        if config is None:
            config = RunConfig(model=self.model_config, quantizer=self.quantizer_config, preset="")
            config.data.dataset = ""  # unknown: the model alone does not say what it was trained on
            config.data.image_size, config.data.channels = self.model_config.image_size, self.model_config.in_channels
        elif (config.model, config.quantizer) != (self.model_config, self.quantizer_config):
            raise ConfigError("save_pretrained: `config` describes another model (its model/quantizer sections "
                              "differ from this VQ-VAE's)")
        return write_model_folder(folder, {"vqvae": {"config": config.to_dict(), "model_state": self.state_dict()}})

    def forward(self, x: torch.Tensor) -> VQVAEOutput:
        z = self.encode(x)
        q = self.quantize(z)
        x_hat = self.decode(q.quantized)
        recon = F.mse_loss(x_hat.float(), x.float())
        loss = recon
        for name in self.loss_names:  # for vq: recon + 1.0 * codebook + 0.25 * commitment, as the seed
            loss = loss + self.loss_weight(name) * q.losses[name]
        return VQVAEOutput(x_hat, q.indices, recon, q.losses, loss)
