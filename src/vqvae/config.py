"""Run configuration: typed dataclasses, named presets, and command-line overrides.

A run is fully described by one `RunConfig`. Presets are ready-made RunConfigs;
`--set section.field=value` overrides any field; the resolved config is saved in
the run folder as `config.json` and travels inside every checkpoint, so a model
is always rebuilt from its own config, never from flags.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .errors import ConfigError
from .files import atomic_write_text


@dataclass
class DataConfig:
    dataset: str = "mnist-5k"  # a name (mnist-5k, mnist, fashion-mnist, cifar10) or a folder path
    test_dataset: str = ""  # "" = the dataset's own test split, or a held-out fraction if it has none
    test_fraction: float = 0.1  # held out for testing when the dataset has no test split of its own
    # Carved from the training split (fixed seed): chooses the best checkpoint and every tuned setting,
    # so the test split is read only for final figures. 0 = no validation (the last checkpoint is kept).
    val_fraction: float = 0.1
    image_size: int = 28
    channels: int = 1
    root: str = "~/.cache/vqvae/data"  # where named datasets are downloaded to / looked for
    download: bool = True
    num_workers: int = 2  # loader processes for folder datasets; in-memory datasets use none
    # Image folders are decoded once into a uint8 .npy cache (memory-mapped) that every later
    # epoch and command reads; false decodes files on every access (slow: the loader is the cost).
    cache: bool = True
    cache_dir: str = ""  # "" = $VQVAE_CACHE/images, else ~/.cache/vqvae/images
    # How the cache knows a file changed: "stat" (size, mtime, ctime, inode, as git's index) or
    # "content" (hash every file's bytes on each load: slower; for file systems whose ctime or
    # inode numbers change spuriously, where stat keys would rebuild the cache needlessly).
    cache_check: str = "stat"


@dataclass
class ModelConfig:
    """The encoder/decoder: the seed's VQ-VAE, generalised ("vqvae"), or a VQGAN-class one ("vqgan").

    Every field here fixes the architecture: none may change on `train --resume` (checked against
    the checkpoint, see training/loop.py `check_resume_config`); only train.*, prior_train.* and
    sample.* may. Options of the other architecture are errors (`_check_model`).
    """

    image_size: int = 28
    in_channels: int = 1
    hidden_channels: int = 32  # vqgan: the base width, multiplied by channel_mult per resolution
    # vqvae: the seed's stride-2 convs and ReLU residual blocks. vqgan: taming-transformers' / diffusers'
    # VQModel encoder-decoder (GroupNorm residual blocks, self-attention), laid out so its weights map
    # onto a diffusers VQModel by name (models/vqgan.py).
    arch: str = "vqvae"
    num_downsamples: int = 2  # vqvae: each a stride-2 4x4 conv; latents are image_size / 2**num_downsamples
    num_residual_blocks: int = 2  # vqvae
    code_dim: int = 0  # 0 = hidden_channels; otherwise 1x1 projections in and out
    num_residual_hiddens: int = 0  # vqvae: width inside each residual block; 0 = hidden_channels
    # vqgan: block widths hidden_channels * m, one block per resolution, each but the last followed by a
    # stride-2 downsampling: [1, 2, 2, 4] is 8x (latent-diffusion's vq-f8). Required for vqgan.
    channel_mult: list = field(default_factory=list)
    layers_per_block: int = 2  # vqgan: residual blocks per encoder block (the decoder has one more, as diffusers)
    # vqgan: blocks with self-attention, by downsampling factor: 8 = the blocks at 1/8 of the image side
    # (the lowest resolution of an 8x model); [] = the middle block's only. Factors, not taming's
    # feature-map sides, so a preset keeps its attention when data.image_size changes (taming's [16]
    # at 256 pixels is [16] here).
    attention_resolutions: list = field(default_factory=list)
    mid_attention: bool = True  # vqgan: self-attention in the middle blocks (diffusers' mid_block_add_attention)
    norm_groups: int = 32  # vqgan: GroupNorm groups; must divide every block width
    latent_channels: int = 0  # vqgan: encoder output before the 1x1 quant_conv to code_dim; 0 = code_dim


@dataclass
class QuantizerConfig:
    codebook_size: int = 32
    update: str = "loss"  # "loss": codebook + commitment losses; "ema": moving averages (VQ-VAE paper, appendix)
    codebook_weight: float = 1.0  # weight of MSE(sg[ze], zq); unused with EMA updates
    commitment_weight: float = 0.25
    ema_decay: float = 0.99
    ema_epsilon: float = 1e-5  # Laplace smoothing of EMA cluster sizes, so empty codes never divide by zero
    init: str = "uniform"  # "uniform" in [-1/K, 1/K], "kmeans" or "samples" from the first batch
    kmeans_iters: int = 10
    restart_after_steps: int = 0  # re-seed a code unused for this many steps from encoder outputs; 0 = never
    # The quantizer family. update/init/restarts above apply to the codebooks of "vq" and "rvq".
    kind: str = "vq"  # "vq" nearest code, "fsq" finite scalar, "lfq" lookup-free (binary), "rvq" residual VQ
    distance: str = "l2"  # vq: or "cosine": codes and encoder outputs l2-normalised (ViT-VQGAN)
    lookup_dim: int = 0  # vq: search codes in this many dims (linear down, back up after; ViT-VQGAN); 0 = code_dim
    gradient: str = "straight_through"  # vq/rvq: or "rotation", the rotation trick (Fifty et al., ICLR 2025)
    # vq/rvq nearest-code search. "fast": on CUDA with Triton, for searches of at least 2^35 multiply-adds
    # (vectors x codes x dims), fp16 tensor-core distances with a proven error bound and fp32 for the vectors
    # it cannot decide: fp32's codes except at fp32's own near-ties; elsewhere the fp32 search.
    # "fp32": always the fp32 search. (fsq and lfq have no codebook to search and ignore it.)
    search_precision: str = "fast"
    fsq_levels: list = field(default_factory=list)  # fsq: values per channel; [] = FSQ paper's for codebook_size
    # fsq: how project_in's output is scaled into tanh's range. "batch": each channel standardised (mean 0, std 1)
    # with batch statistics in training, running averages in eval, so no channel can drift into tanh's flat
    # tails, where its gradient vanishes; "init": project_in rescaled once, on the first training batch;
    # "none": PyTorch's init only (the paper's and the reference code's)
    fsq_normalise: str = "batch"
    entropy_weight: float = 0.1  # lfq: weight of the entropy penalty (per-sample entropy - diversity * codebook's)
    entropy_diversity: float = 1.0  # lfq: weight of the codebook entropy inside the penalty
    # lfq: temperature of the soft assignment p(c|z) the entropies are taken of. A sharp one (e.g. 0.01)
    # leaves no entropy gradient once |z| >> temperature, and the codes collapse.
    entropy_temperature: float = 1.0
    lfq_commitment_weight: float = 0.02  # lfq: weight of MSE(z, sg[sign(z)]) (commitment_weight is VQ's)
    rvq_depth: int = 4  # rvq: residual levels, each a codebook of codebook_size codes
    rvq_dropout: float = 0.0  # rvq: fraction of training images decoded from only a random first 1..depth levels

    @property
    def indices_per_position(self) -> int:
        """Code indices per position of the map: rvq_depth for a residual quantizer, else 1."""
        return self.rvq_depth if self.kind == "rvq" else 1


class FloatList(list):
    """The type of a list field whose default holds floats (Adam's betas): --set parses "0.5,0.9"
    as numbers; other list fields hold whole numbers (FSQ levels). Values are plain lists."""


@dataclass
class TrainConfig:
    epochs: int = 20
    batch_size: int = 256  # global: split across processes under torchrun
    lr: float = 2e-4
    lr_schedule: str = "constant"  # "constant" or "cosine" (to lr_min_ratio * lr, after warmup)
    warmup_steps: int = 0
    lr_min_ratio: float = 0.0
    weight_decay: float = 0.0
    adam_betas: list = field(default_factory=lambda: [0.9, 0.999])  # taming's GAN training: 0.5, 0.9
    grad_clip: float = 0.0  # max gradient norm; 0 = off
    # Exponential moving average of the trained weights: checkpoints' model_state, validation, the
    # final figures and exports use the average (the raw weights are kept for resuming). 0 = off.
    ema_decay: float = 0.0
    dropout: float = 0.0  # used by the prior only
    seed: int = 0
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    amp: str = "off"  # "off", "bf16", or "auto" (bf16 where the device runs it fast)
    channels_last: bool = False
    compile: bool = False  # torch.compile the networks (the quantizer stays eager: data-dependent)
    compile_mode: str = "default"  # torch.compile mode: "default", "reduce-overhead" (CUDA graphs), "max-autotune"
    checkpoint_every_steps: int = 0  # also checkpoint mid-epoch; 0 = at epoch ends only
    keep_last: bool = True
    keep_best: bool = True
    on_nonfinite: str = "stop"  # "stop" the run, or "skip" the batch
    eval_batches: int = 0  # held-out batches evaluated each epoch; 0 = all
    progress: bool = True


@dataclass
class LossConfig:
    """What the VQ-VAE stage minimises besides its quantizer's terms. The defaults are the seed's
    (MSE only); taming-transformers' VQGAN adds a perceptual term (LPIPS) and a patch
    discriminator (Esser et al., CVPR 2021, section 3.1). The discriminator has its own Adam
    (train.adam_betas, its own learning rate) and is saved in the same checkpoints."""

    reconstruction: str = "l2"  # "l2" (MSE on [0, 1], the seed) or "l1" (taming's, on [-1, 1])
    # "none"; "lpips": LPIPS with VGG16 features (an error before training when the VGG16 weights are
    # missing); "auto": lpips when the weights are found, else none, said in one line.
    perceptual: str = "none"
    perceptual_weight: float = 1.0
    # A torchvision vgg16 state_dict file (the linear heads ship inside the lpips package);
    # "" = torchvision's own download cache, TORCH_HOME/hub/checkpoints/vgg16-397923af.pth.
    lpips_vgg_weights: str = ""
    adversarial: str = "none"  # "none", "hinge" or "non_saturating"
    disc_weight: float = 0.8  # times the adaptive weight (or alone when adaptive_weight is false)
    # taming's adaptive weight: |grad of reconstruction+perceptual| / |grad of adversarial| at the
    # decoder's last layer, so the adversarial term can never dominate the reconstruction's gradient.
    adaptive_weight: bool = True
    disc_start: int = 0  # optimiser steps before the discriminator's term is added to the model's loss
    # The discriminator trains alone for this many steps before disc_start (so at most disc_start:
    # raise that too; the vqgan presets start at 1), so the decoder's first adversarial gradients come
    # from one that already tells reconstructions from real images, not from a random network; 0 = it
    # starts with its term, as taming's does. (Not train.warmup_steps, the learning rate's warm-up.)
    disc_warmup_steps: int = 0
    disc_ramp_steps: int = 0  # then its weight rises linearly from 0 over this many steps; 0 = at once
    disc_layers: int = 3  # PatchGAN depth (taming's n_layers): patches of 70 pixels at 3
    disc_channels: int = 64  # width of its first layer (doubled per layer up to 8x)
    disc_lr: float = 0.0  # the discriminator's learning rate; 0 = train.lr (taming uses one rate)
    # R1 penalty on real images (Mescheder et al., 2018), on the [-1, 1] input the discriminator reads; 0 = off
    r1_weight: float = 0.0
    # A collapse: the discriminator tells real from reconstructed in at least this fraction of
    # patches for collapse_steps steps in a row (then its gradient no longer guides the decoder).
    collapse_accuracy: float = 0.99
    collapse_steps: int = 200
    # A stall: the discriminator's accuracy, averaged over about the last collapse_steps steps, is
    # below this after its term has been on for 2 x collapse_steps steps (a loss stuck near its
    # chance value, 1.0 for hinge, ln 2 for non_saturating): it tells reconstructions from real
    # images no better than chance, so its gradient carries little signal. 0 = never a stall.
    stall_accuracy: float = 0.55
    collapse_action: str = "warn"  # on a collapse or a stall: "warn" (once each), "stop" the run, or "off"


@dataclass
class PriorConfig:
    """Prior over code maps: a Gated PixelCNN or a decoder-only transformer (autoregressive), or
    MaskGIT (a bidirectional transformer sampled in a few parallel steps)."""

    # "pixelcnn" (Gated PixelCNN), "transformer" (raster-order, KV-cached sampling) or "maskgit"
    # (masked-code prediction, sample.steps parallel steps; no exact likelihood)
    kind: str = "pixelcnn"
    num_layers: int = 15  # gated layers, or transformer blocks
    hidden_channels: int = 128  # PixelCNN channels, or the transformer's embedding width
    num_heads: int = 4  # transformer and maskgit: attention heads (must divide hidden_channels)
    first_kernel_size: int = 7  # PixelCNN only
    kernel_size: int = 3  # PixelCNN only
    head_channels: int = 0  # PixelCNN only; 0 = hidden_channels
    conditional: bool = False
    # Conditional priors: replace the label by a "null" class with this probability in training, so
    # one network also learns the unconditional prior that classifier-free guidance needs (sample.guidance).
    label_dropout: float = 0.0
    # Also train on the codes of each training image shifted by up to this many pixels (zero
    # fill): (2s+1)^2 code maps per image. Small datasets overfit the prior less.
    train_shifts: int = 0
    # Images without labels: condition the prior on this many clusters of the training images'
    # code maps (k-means on their pooled code vectors; no label is read), so that classifier-free
    # guidance has classes to sharpen. The prior is then conditional on the clusters (with a null
    # class when label_dropout > 0) and samples clusters in their training frequencies. 0 = off.
    pseudo_classes: int = 0


@dataclass
class SampleConfig:
    num_samples: int = 1000
    batch_size: int = 500
    temperature: float = 1.0
    top_k: int = 0  # 0 = sample from the whole distribution
    top_p: float = 1.0  # nucleus: the smallest set of likeliest codes with this much mass; 1 = off
    # Classifier-free guidance of conditional priors: 0 = unconditional, 1 = conditional, > 1 sharper
    # classes (needs a prior trained with prior.label_dropout > 0). Priors without a class and null
    # class sample without it (a preset's value); asking for it by --guidance there is an error.
    guidance: float = 1.0
    seed: int = 0
    # prior.kind=maskgit only (an error on the autoregressive priors at other values): decoding steps,
    # and the Gumbel noise on the confidence that picks which draws stay, annealed to 0 over the steps
    # (the defaults are the MaskGIT reference code's)
    steps: int = 12
    choice_temperature: float = 4.5


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)
    prior_train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=50, lr=1e-3))
    sample: SampleConfig = field(default_factory=SampleConfig)
    preset: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        """Rebuild a saved config (config.json, a checkpoint's), checked like any other."""
        cfg = from_dict(cls, d)
        validate(cfg)
        return cfg

    def save(self, path: Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")


def from_dict(cls, d: dict):
    """Rebuild a (nested) config dataclass from a dict, rejecting unknown keys."""
    if not isinstance(d, dict):
        raise ConfigError(f"expected a mapping for {cls.__name__}, got {type(d).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise ConfigError(f"unknown field(s) {unknown} for {cls.__name__}; valid: {sorted(fields)}")
    defaults = cls()  # every config dataclass has defaults for all its fields
    kwargs = {}
    for name, value in d.items():
        default = getattr(defaults, name)
        kwargs[name] = from_dict(type(default), value) if dataclasses.is_dataclass(default) else value
    return cls(**kwargs)


# --------------------------------------------------------------------------- presets

# FSQ levels per target codebook size: Mentzer et al. (ICLR 2024), section 4.1, for 2^8..2^16. The
# 2^5, 2^6 and 2^9 rows are this project's (balanced levels of 5 to 8, the paper's rule of thumb).
FSQ_LEVELS = {2 ** 5: [6, 5], 2 ** 6: [8, 8], 2 ** 8: [8, 6, 5], 2 ** 9: [8, 8, 8], 2 ** 10: [8, 5, 5, 5],
              2 ** 12: [7, 5, 5, 5, 5], 2 ** 14: [8, 8, 8, 6, 5], 2 ** 16: [8, 8, 8, 5, 5, 5]}
QUANTIZER_KINDS = ("vq", "fsq", "lfq", "rvq")


def fsq_levels(q: QuantizerConfig) -> list[int]:
    """The FSQ levels of a config: its own, or the paper's for its (target) codebook size."""
    if q.fsq_levels:
        return [int(v) for v in q.fsq_levels]
    if q.codebook_size not in FSQ_LEVELS:
        raise ConfigError(f"quantizer.kind=fsq: no recommended levels for codebook_size={q.codebook_size}; use one of "
                          f"{', '.join(map(str, FSQ_LEVELS))} or set quantizer.fsq_levels (e.g. 8,5,5,5)")
    return FSQ_LEVELS[q.codebook_size]


# Options that only one quantizer kind reads (the vq-only and codebook-only ones are in _check_quantizer).
KIND_ONLY_OPTIONS = {"fsq_levels": "fsq", "fsq_normalise": "fsq", "entropy_weight": "lfq",
                     "entropy_diversity": "lfq", "entropy_temperature": "lfq", "lfq_commitment_weight": "lfq",
                     "rvq_depth": "rvq", "rvq_dropout": "rvq"}
# Codebook options (vq and rvq) that presets set and fsq/lfq never read: on fsq/lfq they are an error
# when a --set or --config changes them (a preset's own value is no mistake of the user's; see
# apply_overrides). (lfq's commitment weight is lfq_commitment_weight.)
CODEBOOK_CHOICES = ("update", "init", "codebook_weight", "commitment_weight", "ema_decay", "ema_epsilon",
                    "kmeans_iters", "restart_after_steps")


def _shown(value) -> str:
    return json.dumps(value) if isinstance(value, list) else repr(value)


def _check_quantizer(q: QuantizerConfig) -> None:
    """Checks across quantizer fields (each field's own range is in RULES)."""
    # Options of one kind set on another are mistakes: say so instead of ignoring them. (search_precision is
    # not among them: both its values are harmless everywhere, and saved runs may carry "fp32" on any kind.)
    vq_only = {"distance": "l2", "lookup_dim": 0}
    codebook_only = {"gradient": "straight_through"}
    unused = {**vq_only, **codebook_only} if q.kind in ("fsq", "lfq") else vq_only if q.kind == "rvq" else {}
    for name, default in unused.items():
        if getattr(q, name) != default:
            raise ConfigError(f"quantizer.{name}={getattr(q, name)!r} does not apply to quantizer.kind={q.kind}; "
                              f"it is an option of kind vq{' and rvq' if name in codebook_only else ''}")
    # Options of one kind only, compared with the dataclass default (no preset sets them).
    defaults = QuantizerConfig()
    for name, kind in KIND_ONLY_OPTIONS.items():
        if q.kind != kind and getattr(q, name) != getattr(defaults, name):
            raise ConfigError(f"quantizer.{name}={_shown(getattr(q, name))} does not apply to quantizer.kind={q.kind}; "
                              f"it is an option of kind {kind}")
    if q.kind == "fsq":
        levels = fsq_levels(q)
        if any(level < 2 for level in levels):
            raise ConfigError(f"quantizer.fsq_levels={levels}: every level must be at least 2")
        size = math.prod(levels)
        if q.fsq_levels and size != q.codebook_size:
            raise ConfigError(f"quantizer.fsq_levels={levels} make {size} codes but quantizer.codebook_size="
                              f"{q.codebook_size}: set quantizer.codebook_size={size}")
    if q.kind == "lfq" and (q.codebook_size & (q.codebook_size - 1) or q.codebook_size > 2 ** 16):
        raise ConfigError(f"quantizer.kind=lfq needs codebook_size = 2^bits (one binary channel per bit), at most "
                          f"2^16; got {q.codebook_size}")


def _check_loss(loss: LossConfig, image_size: int) -> None:
    """Checks across loss fields: the patch discriminator must leave at least one patch."""
    if loss.adversarial == "none":
        return
    if loss.disc_warmup_steps > loss.disc_start:
        raise ConfigError(f"loss.disc_warmup_steps={loss.disc_warmup_steps}: the discriminator's warm-up runs before "
                          f"loss.disc_start={loss.disc_start}, so it can be at most {loss.disc_start}; raise "
                          f"loss.disc_start or lower the warm-up")
    if loss.stall_accuracy >= loss.collapse_accuracy:
        raise ConfigError(f"loss.stall_accuracy={loss.stall_accuracy:g} must be below "
                          f"loss.collapse_accuracy={loss.collapse_accuracy:g} (a stall is at chance, a collapse near 1)")
    # Each of disc_layers stride-2 4x4 convs halves the side, the two 4x4 stride-1 convs after
    # them take one pixel each (taming's NLayerDiscriminator).
    patches = image_size // 2 ** loss.disc_layers - 2
    if patches < 1:
        fits = max(1, (image_size // 3).bit_length() - 1)
        raise ConfigError(f"loss.disc_layers={loss.disc_layers} leaves no patch of a {image_size}-pixel image for "
                          f"the discriminator to judge: use loss.disc_layers={fits} or fewer")


ARCHS = ("vqvae", "vqgan")
# Fields of one architecture, with the defaults they must keep under the other.
VQVAE_ONLY = {"num_downsamples": 2, "num_residual_blocks": 2, "num_residual_hiddens": 0}
VQGAN_ONLY = {"channel_mult": [], "layers_per_block": 2, "attention_resolutions": [], "mid_attention": True,
              "norm_groups": 32, "latent_channels": 0}


def vqgan_factors(m: ModelConfig) -> list[int]:
    """The downsampling factor of each vqgan block (1, 2, 4, ...), from the image's resolution down."""
    return [2 ** i for i in range(len(m.channel_mult))]


def _check_model(m: ModelConfig) -> None:
    """Checks across model fields (each field's own range is in RULES)."""
    other = VQGAN_ONLY if m.arch == "vqvae" else VQVAE_ONLY
    for name, default in other.items():
        if getattr(m, name) != default:
            raise ConfigError(f"model.{name}={getattr(m, name)!r} does not apply to model.arch={m.arch}; it is an "
                              f"option of arch {'vqgan' if m.arch == 'vqvae' else 'vqvae'}")
    if m.arch != "vqgan":
        return
    mult = list(m.channel_mult)
    if not 2 <= len(mult) <= 5 or any(v < 1 for v in mult):
        raise ConfigError(f"model.channel_mult={mult}: model.arch=vqgan needs 2 to 5 multipliers >= 1, one per "
                          f"resolution (len - 1 downsamplings), e.g. 1,2,2,4 for 8x")
    factor = 2 ** (len(mult) - 1)
    if m.image_size % factor:
        raise ConfigError(f"image_size={m.image_size} cannot round-trip through {len(mult) - 1} stride-2 "
                          f"downsamplings (model.channel_mult={mult}): it must be a multiple of {factor}")
    widths = [m.hidden_channels * v for v in mult]
    if any(w % m.norm_groups for w in widths):
        raise ConfigError(f"model.norm_groups={m.norm_groups} must divide every block width (model.hidden_channels "
                          f"x channel_mult = {widths})")
    factors = vqgan_factors(m)
    wrong = [f for f in m.attention_resolutions if f not in factors]
    if wrong:
        raise ConfigError(f"model.attention_resolutions={list(m.attention_resolutions)}: {wrong} is no block's "
                          f"downsampling factor; with model.channel_mult={mult} the blocks are at 1/{factors} of "
                          f"the image side (e.g. {factors[-1]} for the lowest resolution)")


def _seed_mnist() -> RunConfig:
    # The seed document's model and training, as RunConfig's defaults: 28x28x1, 32 channels, 32 codes,
    # 7x7 codes, batch 256, Adam 2e-4, codebook/commitment losses 1.0/0.25, uniform codebook init, no EMA,
    # 20 epochs. Its prior: Gated PixelCNN, 15 blocks, 128 channels, Adam 1e-3, 50 epochs.
    return RunConfig(preset="seed-mnist")


def _mnist() -> RunConfig:
    # seed-mnist's architecture and codebook size, trained with the project's recipe (why each
    # setting: docs/presets.md): EMA codebook (decay 0.95: the codebook follows the fast-moving
    # encoder of a short run) seeded by k-means on encoder outputs, with dead-code restarts; a 10x
    # higher learning rate with cosine decay; batch 128 (twice the updates for the same images
    # seen); bf16 autocast where the CPU/GPU runs it fast.
    cfg = RunConfig(preset="mnist")
    cfg.quantizer = QuantizerConfig(codebook_size=32, update="ema", ema_decay=0.95, init="kmeans",
                                    restart_after_steps=100)
    cfg.train = TrainConfig(epochs=60, batch_size=128, lr=2e-3, lr_schedule="cosine", warmup_steps=50,
                            lr_min_ratio=0.02, amp="auto", channels_last=True)
    # The prior, chosen on validation figures (benchmarks/bench_prior.py ablation, bench_unlabelled.py;
    # docs/presets.md): a Gated PixelCNN 8x64, conditioned on the digit class, trained 3 epochs on the
    # codes of each image and its 1-pixel shifts (9 maps per image), sampled with the guidance
    # tune-sampling's rule chose on validation (docs/benchmarks-unlabelled.md). Adam at 4e-3 because a
    # few epochs is the demo's time budget. A 3x3 first kernel suffices (8 layers still see the whole
    # 7x7 map) and is cheaper than 7x7; no dropout, as the prior underfits at this budget.
    # Unlabelled data gets the same network conditioned on pseudo-classes (UNLABELLED_PRIOR; data/choose.py).
    cfg.prior = PriorConfig(kind="pixelcnn", num_layers=8, hidden_channels=64, first_kernel_size=3, train_shifts=1,
                            conditional=True, label_dropout=0.1)
    cfg.prior_train = TrainConfig(epochs=3, batch_size=128, lr=4e-3, lr_schedule="cosine", warmup_steps=50,
                                  lr_min_ratio=0.02, dropout=0.0, weight_decay=0.0, amp="auto")
    # Guidance 1.5, chosen by `vqvae tune-sampling`'s rule on validation data
    # (docs/benchmarks-unlabelled.md): the lowest Fréchet distance whose recall (variety within a
    # class) stays within 0.1 of the reconstructions'; guidance 2 loses more recall than that.
    cfg.sample = SampleConfig(guidance=1.5)
    return cfg


def _mnist_gpu() -> RunConfig:
    # The mnist preset for a GPU, where a 95k-parameter model is bound by kernel launches, not
    # arithmetic: 8x the batch with a 3x learning rate, and the conv stacks captured as CUDA graphs
    # (figures: docs/presets.md).
    cfg = _mnist()
    cfg.preset = "mnist-gpu"
    cfg.train.batch_size, cfg.train.lr = 1024, 6e-3
    cfg.train.compile, cfg.train.compile_mode = True, "reduce-overhead"
    return cfg


def _celeba(size: int) -> RunConfig:
    # The seed source's CelebA-HQ settings: 128 channels, 64 codes, latents 1/4 of the side.
    cfg = RunConfig(preset=f"celeba-hq-{size}")
    cfg.data = DataConfig(dataset="", image_size=size, channels=3, test_fraction=0.02)
    cfg.model = ModelConfig(image_size=size, in_channels=3, hidden_channels=128)
    cfg.quantizer = QuantizerConfig(codebook_size=64, update="ema", init="kmeans", restart_after_steps=200)
    cfg.train = TrainConfig(epochs=20, batch_size=64, lr=1e-3, lr_schedule="cosine", warmup_steps=200,
                            amp="auto", channels_last=True)
    cfg.prior = PriorConfig(num_layers=15, hidden_channels=128)
    cfg.prior_train = TrainConfig(epochs=20, batch_size=64, lr=1e-3, lr_schedule="cosine", warmup_steps=200,
                                  amp="auto")
    cfg.sample = SampleConfig(num_samples=64, batch_size=64)
    return cfg


def _cifar10() -> RunConfig:
    # The VQ-VAE paper's CIFAR-10 setting as DeepMind implemented it in Sonnet's
    # examples/vqvae_example.ipynb (also followed by zalandoresearch/pytorch-vq-vae):
    # num_hiddens=128, num_residual_hiddens=32, num_residual_layers=2, embedding_dim=64,
    # num_embeddings=512, commitment_cost=0.25, EMA decay 0.99: 32x32x3 -> 8x8 codes of 512.
    # Differences from that encoder: our first stride-2 conv (and the decoder's first transposed
    # conv) is 128 wide, not 64, and there is no ReLU after the residual stack (the seed's blocks).
    # Training: the project's recipe (k-means codebook init, dead-code restarts, cosine lr) at
    # batch 128 instead of the notebook's Adam 3e-4 at batch 32 for 100k steps: more images per
    # second on a GPU for the same number of epochs.
    cfg = RunConfig(preset="cifar10")
    cfg.data = DataConfig(dataset="cifar10", image_size=32, channels=3)
    cfg.model = ModelConfig(image_size=32, in_channels=3, hidden_channels=128, num_residual_blocks=2,
                            num_residual_hiddens=32, code_dim=64)
    cfg.quantizer = QuantizerConfig(codebook_size=512, update="ema", ema_decay=0.99, commitment_weight=0.25,
                                    init="kmeans", restart_after_steps=100)
    cfg.train = TrainConfig(epochs=30, batch_size=128, lr=1e-3, lr_schedule="cosine", warmup_steps=200,
                            lr_min_ratio=0.02, amp="auto", channels_last=True)
    # The prior, chosen on validation figures (benchmarks/bench_prior.py kinds; docs/benchmarks-unlabelled.md):
    # at the same epochs and about the same size, a transformer of 4 blocks x 128 had lower bits per code
    # than a Gated PixelCNN and samples nearer the reconstructions than a PixelCNN or MaskGIT, and a
    # class-conditional one with guidance 2 (label dropout 0.1) beat an unconditional one. Data without
    # labels gets the same transformer unconditional (UNLABELLED_PRIOR; 30 pseudo-classes only tied with it).
    cfg.prior = PriorConfig(kind="transformer", num_layers=4, hidden_channels=128, num_heads=4, conditional=True,
                            label_dropout=0.1)
    cfg.prior_train = TrainConfig(epochs=20, batch_size=128, lr=1e-3, lr_schedule="cosine", warmup_steps=200,
                                  lr_min_ratio=0.02, dropout=0.1, amp="auto")
    cfg.sample = SampleConfig(num_samples=100, batch_size=100, guidance=2.0)
    return cfg


def _tiny() -> RunConfig:
    # For smoke tests and trying the CLI: seconds on a CPU.
    cfg = _mnist()
    cfg.preset = "tiny"
    cfg.model.hidden_channels = 16
    cfg.quantizer.codebook_size = 16
    cfg.train.epochs = 2
    cfg.train.progress = False
    cfg.prior = PriorConfig(num_layers=3, hidden_channels=16)
    cfg.prior_train.epochs = 2
    cfg.prior_train.progress = False
    cfg.sample = SampleConfig(num_samples=16, batch_size=16)
    return cfg


def _vqgan_losses(cfg: RunConfig, disc_channels: int = 64) -> None:
    """The losses of latent-diffusion's vq-f8 (models/first_stage_models/vq-f8/config.yaml, taming's
    VQLPIPSWithDiscriminator): L1 + LPIPS (weight 1.0) + a hinge PatchGAN of 2 layers whose term is
    0.6 x the adaptive weight, the discriminator on from step 1, codebook weight 1.0, Adam betas
    (0.5, 0.9) for both networks at one learning rate. LPIPS when its VGG16 weights are on disk
    ("auto"), else said in one line: a preset never needs weights the machine lacks."""
    cfg.loss = LossConfig(reconstruction="l1", perceptual="auto", perceptual_weight=1.0, adversarial="hinge",
                          disc_weight=0.6, disc_start=1, disc_layers=2, disc_channels=disc_channels)
    cfg.quantizer.codebook_weight = 1.0
    cfg.train.adam_betas = [0.5, 0.9]


def _vqgan_tiny() -> RunConfig:
    # For CI and smoke tests of model.arch=vqgan: the tiny preset's data and budget (seconds on a CPU),
    # with every part of the architecture present: two downsamplings (7x7 codes at 28 pixels), a width
    # change (hence a conv_shortcut), attention at the lowest resolution and in the middle blocks.
    cfg = _tiny()
    cfg.preset = "vqgan-tiny"
    cfg.model = ModelConfig(image_size=28, in_channels=1, hidden_channels=8, arch="vqgan", channel_mult=[1, 1, 2],
                            layers_per_block=1, attention_resolutions=[4], norm_groups=4, code_dim=16)
    # vq-f8's losses with a 16-wide discriminator (5x5 patches at 28 pixels), at the tiny preset's lr.
    _vqgan_losses(cfg, disc_channels=16)
    return cfg


def _vqgan_f8_64() -> RunConfig:
    # A VQGAN-class tokenizer for 64-pixel colour folders, 8x downsampling (8x8 codes). The encoder/decoder
    # is latent-diffusion's vq-f8 (models/first_stage_models/vq-f8/config.yaml): 128 base channels,
    # channel_mult [1, 2, 2, 4], 2 residual blocks per resolution, attention at the lowest resolution
    # (its attn_resolutions [32] at 256 pixels) and in the middle, 4-dimensional codes. Its codebook of
    # 16,384 codes is for millions of 256-pixel images; 1,024 here, for folders of thousands of small
    # images and priors over 8x8 maps. Codebook learning: the project's recipe (EMA, k-means init,
    # dead-code restarts); not chosen automatically (data/choose.py). Losses and optimiser: vq-f8's
    # (_vqgan_losses), its learning rate 4.5e-6 x batch size, constant.
    cfg = RunConfig(preset="vqgan-f8-64")
    cfg.data = DataConfig(dataset="", image_size=64, channels=3, test_fraction=0.02)
    cfg.model = ModelConfig(image_size=64, in_channels=3, hidden_channels=128, arch="vqgan", channel_mult=[1, 2, 2, 4],
                            layers_per_block=2, attention_resolutions=[8], norm_groups=32, code_dim=4)
    cfg.quantizer = QuantizerConfig(codebook_size=1024, update="ema", ema_decay=0.99, init="kmeans",
                                    restart_after_steps=200)
    cfg.train = TrainConfig(epochs=20, batch_size=64, lr=4.5e-6 * 64, lr_schedule="constant", lr_min_ratio=0.02,
                            amp="auto", channels_last=True)
    cfg.prior = PriorConfig(num_layers=10, hidden_channels=128)
    cfg.prior_train = TrainConfig(epochs=20, batch_size=64, lr=1e-3, lr_schedule="cosine", warmup_steps=200,
                                  lr_min_ratio=0.02, dropout=0.1, amp="auto")
    cfg.sample = SampleConfig(num_samples=64, batch_size=64)
    _vqgan_losses(cfg)
    return cfg


# What a preset with a class-conditional prior uses on images without labels (data/choose.py applies
# it, unless the user set prior.conditional or prior.pseudo_classes): chosen on validation data by
# benchmarks/bench_unlabelled.py (docs/benchmarks-unlabelled.md). mnist: the same prior network and
# budget, conditioned on 30 k-means clusters of the code maps (more clusters than digits: purer
# clusters) and sampled with the guidance tune-sampling's rule chose, which an unconditional prior
# of that size and budget does not come near.
_MNIST_UNLABELLED = ["prior.conditional=false", "prior.pseudo_classes=30", "prior.label_dropout=0.1",
                     "sample.guidance=1.5"]
# cifar10: unconditional at temperature 1 (30 pseudo-classes tied with it on validation; the simpler prior).
UNLABELLED_PRIOR = {"mnist": _MNIST_UNLABELLED, "mnist-gpu": _MNIST_UNLABELLED,
                    "cifar10": ["prior.conditional=false", "sample.guidance=1"]}


PRESETS = {
    "mnist": _mnist,
    "seed-mnist": _seed_mnist,
    "mnist-gpu": _mnist_gpu,
    "cifar10": _cifar10,
    "celeba-hq-64": lambda: _celeba(64),
    "celeba-hq-128": lambda: _celeba(128),
    "tiny": _tiny,
    "vqgan-tiny": _vqgan_tiny,
    "vqgan-f8-64": _vqgan_f8_64,
}


def get_preset(name: str) -> RunConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}")
    return PRESETS[name]()


# --------------------------------------------------------------------------- validation

@dataclass(frozen=True)
class Rule:
    """What values a field accepts: `check(value)` is True for those, `valid` says which in words."""

    check: Callable[[Any], bool]
    valid: str


def at_least(low) -> Rule:
    return Rule(lambda v: v >= low, f">= {low}")


def above(low) -> Rule:
    return Rule(lambda v: v > low, f"> {low}")


def in_range(low, high, high_open: bool = False, low_open: bool = False) -> Rule:
    def check(v):
        return (v > low if low_open else v >= low) and (v < high if high_open else v <= high)

    return Rule(check, f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}")


def one_of(*choices) -> Rule:
    return Rule(lambda v: v in choices, "one of " + ", ".join(map(str, choices)))


def _is_device(name: str) -> bool:
    if name == "auto":
        return True
    import torch

    try:
        return torch.device(name).type in ("cpu", "cuda", "mps")
    except (RuntimeError, ValueError):
        return False


ODD_POSITIVE = Rule(lambda v: v >= 1 and v % 2 == 1, "an odd number >= 1")
DEVICE = Rule(_is_device, "auto, cpu, cuda, cuda:N or mps")

# One rule per field, checked on every route a config takes (--set, --config JSON, the Python
# API, config.json and checkpoints): add a field's rule here, one line. Types are checked for
# every field from its default (an int field refuses 1.5 and true; floats must be finite).
# Fields of TrainConfig are listed once and hold for both `train` and `prior_train`.
RULES: dict[str, Rule] = {
    "data.test_fraction": in_range(0, 1, high_open=True),
    "data.val_fraction": in_range(0, 1, high_open=True),
    "data.image_size": at_least(1),
    "data.channels": one_of(1, 3),
    "data.num_workers": at_least(0),
    "data.cache_check": one_of("stat", "content"),
    "model.image_size": at_least(1),
    "model.in_channels": one_of(1, 3),
    "model.hidden_channels": at_least(1),
    "model.num_downsamples": in_range(1, 4),
    "model.num_residual_blocks": at_least(0),
    "model.code_dim": at_least(0),
    "model.num_residual_hiddens": at_least(0),
    "model.arch": one_of(*ARCHS),
    "model.layers_per_block": at_least(1),
    "model.norm_groups": at_least(1),
    "model.latent_channels": at_least(0),
    "quantizer.codebook_size": at_least(2),
    "quantizer.update": one_of("loss", "ema"),
    "quantizer.codebook_weight": at_least(0),
    "quantizer.commitment_weight": at_least(0),
    "quantizer.ema_decay": in_range(0, 1, low_open=True, high_open=True),
    "quantizer.ema_epsilon": above(0),
    "quantizer.init": one_of("uniform", "kmeans", "samples"),
    "quantizer.kmeans_iters": at_least(0),
    "quantizer.restart_after_steps": at_least(0),
    "quantizer.kind": one_of(*QUANTIZER_KINDS),
    "quantizer.distance": one_of("l2", "cosine"),
    "quantizer.gradient": one_of("straight_through", "rotation"),
    "quantizer.search_precision": one_of("fp32", "fast"),
    "quantizer.lookup_dim": at_least(0),
    "quantizer.fsq_normalise": one_of("batch", "init", "none"),
    "quantizer.entropy_weight": at_least(0),
    "quantizer.entropy_diversity": at_least(0),
    "quantizer.entropy_temperature": above(0),
    "quantizer.lfq_commitment_weight": at_least(0),
    "quantizer.rvq_depth": at_least(1),  # training needs 2 (train_vqvae); runs of depth 1 still load
    "quantizer.rvq_dropout": in_range(0, 1),
    "train.epochs": Rule(lambda v: v >= 1, ">= 1 (0 epochs would train nothing)"),
    "train.batch_size": at_least(1),
    "train.lr": above(0),
    "train.lr_schedule": one_of("constant", "cosine"),
    "train.warmup_steps": at_least(0),
    "train.lr_min_ratio": in_range(0, 1),
    "train.weight_decay": at_least(0),
    "train.grad_clip": at_least(0),
    "train.adam_betas": Rule(lambda v: len(v) == 2 and all(0 <= b < 1 for b in v), "two numbers in [0, 1), e.g. 0.5,0.9"),
    "train.ema_decay": in_range(0, 1, high_open=True),
    "train.dropout": in_range(0, 1, high_open=True),
    "train.seed": in_range(0, 2 ** 64 - 1),  # torch seeds are 64-bit
    "train.device": DEVICE,
    "train.amp": one_of("off", "bf16", "auto"),
    "train.compile_mode": one_of("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
    "train.checkpoint_every_steps": at_least(0),
    "train.on_nonfinite": one_of("stop", "skip"),
    "train.eval_batches": at_least(0),
    "loss.reconstruction": one_of("l2", "l1"),
    "loss.perceptual": one_of("none", "lpips", "auto"),
    "loss.perceptual_weight": at_least(0),
    "loss.adversarial": one_of("none", "hinge", "non_saturating"),
    "loss.disc_weight": at_least(0),
    "loss.disc_start": at_least(0),
    "loss.disc_warmup_steps": at_least(0),
    "loss.disc_ramp_steps": at_least(0),
    "loss.disc_layers": in_range(1, 6),
    "loss.disc_channels": at_least(1),
    "loss.disc_lr": at_least(0),
    "loss.r1_weight": at_least(0),
    "loss.collapse_accuracy": in_range(0.5, 1),
    "loss.stall_accuracy": in_range(0, 1, high_open=True),
    "loss.collapse_steps": at_least(1),
    "loss.collapse_action": one_of("warn", "stop", "off"),
    "prior.num_layers": at_least(1),
    "prior.hidden_channels": at_least(1),
    "prior.first_kernel_size": ODD_POSITIVE,
    "prior.kernel_size": ODD_POSITIVE,
    "prior.head_channels": at_least(0),
    "prior.train_shifts": in_range(0, 4),
    "prior.pseudo_classes": Rule(lambda v: v == 0 or 2 <= v <= 1024, "0 (off) or 2..1024 clusters"),
    "prior.kind": one_of("pixelcnn", "transformer", "maskgit"),
    "prior.num_heads": at_least(1),
    "prior.label_dropout": in_range(0, 1, high_open=True),
    "sample.top_p": in_range(0, 1, low_open=True),
    # Beyond these the scaled logits overflow float32 and the probabilities become NaN.
    "sample.guidance": in_range(0, 100),
    "sample.num_samples": at_least(1),
    "sample.batch_size": at_least(1),
    "sample.temperature": Rule(lambda v: 1e-4 <= v <= 1e4, "> 0, in [0.0001, 10000]"),
    "sample.top_k": at_least(0),
    "sample.seed": in_range(0, 2 ** 64 - 1),
    "sample.steps": in_range(1, 256),
    "sample.choice_temperature": at_least(0),
}
SAME_RULES = {"prior_train": "train"}  # sections of the same dataclass share its rules


def _fields(obj, prefix="") -> list[tuple[str, Any, Any]]:
    """(dotted name, owning dataclass, field name) for every leaf field, in declaration order."""
    out = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out += _fields(value, f"{prefix}{f.name}.")
        else:
            out.append((prefix + f.name, obj, f.name))
    return out


def _default_type(owner, name: str) -> type:
    """The type a field holds, from its default (every config field has one)."""
    default = getattr(type(owner)(), name)
    if isinstance(default, list) and default and all(isinstance(v, float) for v in default):
        return FloatList
    return type(default)


def _rule(key: str) -> Rule | None:
    section, _, name = key.rpartition(".")
    return RULES.get(key) or RULES.get(f"{SAME_RULES.get(section, section)}.{name}")


def _type_error(key: str, value, kind: type) -> str | None:
    """Why `value` cannot be a `kind` field, or None. JSON and Python values are not coerced
    silently: 1.5 is no int, true is no number, null and lists are nothing."""
    shown = json.dumps(value) if isinstance(value, (bool, type(None), list, dict)) else repr(value)
    if kind is bool:
        return None if isinstance(value, bool) else f"{key}={shown}: expected true or false"
    if kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok else f"{key}={shown}: expected a whole number"
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{key}={shown}: expected a number"
        if not math.isfinite(value):
            rule = _rule(key)
            return f"{key}={shown}: must be a finite number{' ' + rule.valid if rule else ''}"
        return None
    if kind is str:
        return None if isinstance(value, str) else f"{key}={shown}: expected a string"
    if kind is FloatList:
        ok = isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                             and math.isfinite(v) for v in value)
        return None if ok else f"{key}={shown}: expected a list of numbers, e.g. 0.5,0.9"
    if kind is list:
        ok = isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        return None if ok else f"{key}={shown}: expected a list of whole numbers"
    return None


def check_value(key: str, value, rule: Rule) -> None:
    """Raise a ConfigError naming `key` when `value` breaks `rule` (also for options that are not
    config fields, e.g. `reconstruct --num`)."""
    if not rule.check(value):
        raise ConfigError(f"{key}={value!r}: must be {rule.valid}")


def validate(cfg: RunConfig) -> None:
    """Check every field's type and range; the first wrong field is named with what is valid."""
    for key, owner, name in _fields(cfg):
        value = getattr(owner, name)
        problem = _type_error(key, value, _default_type(owner, name))
        if problem:
            raise ConfigError(problem)
        rule = _rule(key)
        if rule is not None:
            check_value(key, value, rule)
    _check_model(cfg.model)
    _check_quantizer(cfg.quantizer)
    if cfg.data.test_dataset and _same_data(cfg.data.dataset, cfg.data.test_dataset):
        raise ConfigError(f"data.test_dataset={cfg.data.test_dataset!r} is the training data "
                          f"(data.dataset={cfg.data.dataset!r}): testing on the training images measures nothing; "
                          f"leave --test-data out to hold out a test split, or name other images")
    _check_loss(cfg.loss, cfg.data.image_size)
    if cfg.prior.kind != "maskgit":
        defaults = SampleConfig()
        for name in ("steps", "choice_temperature"):
            if getattr(cfg.sample, name) != getattr(defaults, name):
                raise ConfigError(f"sample.{name}={getattr(cfg.sample, name)} is for prior.kind=maskgit; this run's "
                                  f"prior is {cfg.prior.kind}, which draws one code per position in raster order")
    if cfg.prior.pseudo_classes and cfg.prior.label_dropout == 0:
        raise ConfigError(f"prior.pseudo_classes={cfg.prior.pseudo_classes} needs prior.label_dropout > 0 (e.g. 0.1): "
                          f"the null class it trains gives guidance its direction and the prior its held-out bits")
    if cfg.prior.kind in ("transformer", "maskgit") and cfg.prior.hidden_channels % cfg.prior.num_heads:
        raise ConfigError(f"prior.num_heads={cfg.prior.num_heads} must divide prior.hidden_channels="
                          f"{cfg.prior.hidden_channels}")


def _same_data(a: str, b: str) -> bool:
    """Whether two data specs name the same images: the same name, or paths to the same file or folder."""
    if a == b:
        return True
    import os

    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    try:
        return pa.exists() and pb.exists() and os.path.samefile(pa, pb)
    except OSError:
        return False


# --------------------------------------------------------------------------- overrides

def _parse_value(text: str, kind: type, key: str):
    """A --set value (text) as the field's type."""
    try:
        if kind is bool:
            low = text.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
        if kind is FloatList:  # "0.5,0.9" or "[0.5, 0.9]"
            return [float(v) for v in text.strip("[] ").split(",") if v.strip()]
        if kind is list:  # "8,5,5,5" or "[8, 5, 5, 5]"
            return [int(v) for v in text.strip("[] ").split(",") if v.strip()]
    except ValueError:
        expected = {bool: "true or false", int: "a whole number", float: "a number",
                    list: "a comma-separated list of whole numbers, e.g. 8,5,5,5", FloatList: "numbers, e.g. 0.5,0.9"}[kind]
        raise ConfigError(f"{key}={text!r}: expected {expected}") from None
    return text


def _coerce(value, kind: type, key: str):
    """A typed value (JSON, Python) for a field: text is parsed as on the command line, a whole
    number is accepted for a float field; anything else must already have the field's type."""
    if isinstance(value, str) and kind is not str:
        return _parse_value(value, kind, key)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    problem = _type_error(key, value, kind)
    if problem:
        raise ConfigError(problem)
    return [float(v) for v in value] if kind is FloatList else value


def apply_overrides(cfg: RunConfig, overrides: list[str | tuple] | dict) -> RunConfig:
    """Return a copy of `cfg` with `section.field=value` overrides (or (key, value) pairs) applied,
    in order (a field set twice keeps the later value), then validated.

    An unknown field is an error that lists the valid ones; values are parsed by the
    field's type. Keeping model.image_size/in_channels in step with data.* is done here
    so a user changing one does not get a shape error later.
    """
    cfg = copy.deepcopy(cfg)
    before = copy.deepcopy(cfg.quantizer)
    items = overrides.items() if isinstance(overrides, dict) else [o if isinstance(o, tuple) else _split(o)
                                                                     for o in overrides]
    fields = {name: (owner, field_name) for name, owner, field_name in _fields(cfg)}
    changed = set()
    for key, value in items:
        if key == "preset":
            raise ConfigError(f"preset={value} cannot be set as a field: the preset is a whole set of settings; "
                              f"choose it with --preset {value} (or load_config({value!r}, ...))")
        if key not in fields:
            raise ConfigError(f"unknown config field {key!r}; valid fields: {', '.join(fields)}")
        owner, name = fields[key]
        value = _coerce(value, _default_type(owner, name), key)
        setattr(owner, name, value)
        changed.add(key)
        if key == "data.image_size":
            cfg.model.image_size = value
        if key == "data.channels":
            cfg.model.in_channels = value
        if key == "model.image_size":
            cfg.data.image_size = value
        if key == "model.in_channels":
            cfg.data.channels = value
    q = cfg.quantizer
    if q.kind in ("fsq", "lfq"):
        for name in CODEBOOK_CHOICES:
            if f"quantizer.{name}" in changed and getattr(q, name) != getattr(before, name):
                raise ConfigError(f"quantizer.{name}={getattr(q, name)!r} does not apply to quantizer.kind={q.kind}, "
                                  f"which has no codebook; it is an option of kinds vq and rvq")
    validate(cfg)
    return cfg


def check_sections(overrides: list[str], allowed: tuple[str, ...], command: str) -> None:
    """Refuse a --set outside `allowed` sections, e.g. a VQ-VAE or data setting given to
    `train-prior`, which would rewrite the run's config.json under its trained VQ-VAE."""
    for item in overrides:
        key = _split(item)[0]
        if key.partition(".")[0] not in allowed:
            raise ConfigError(f"{command} --set {key}: only {', '.join(s + '.*' for s in allowed)} may change here; "
                              f"{key} belongs to the run's VQ-VAE or data (start a new run with --out to change it)")


def _split(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form section.field=value")
    key, value = item.split("=", 1)
    return key.strip(), value.strip()


def read_config_file(path: str | Path, what: str = "config file") -> dict:
    """A JSON object from `path`, or a ConfigError that says what is wrong with the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{what} {path} is not valid JSON (truncated or damaged?): {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} holds a JSON {type(data).__name__}; expected an object of sections, "
                          f'e.g. {{"train": {{"epochs": 5}}}}')
    return data


def flatten_settings(data: dict, source: str) -> dict:
    """{"train": {"epochs": 5}} -> {"train.epochs": 5}; "preset" is ignored (chosen separately)."""
    flat = {}
    for section, values in data.items():
        if section == "preset":
            continue  # checked against the preset in use by load_config
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section {section!r} must be an object of fields, e.g. "
                              f'{{"{section}": {{...}}}}; got {json.dumps(values)}')
        flat.update({f"{section}.{k}": v for k, v in values.items()})
    return flat


def load_config(preset: str = "mnist", overrides: list[str] | dict | None = None,
                config_file: str | None = None) -> RunConfig:
    """Preset, then an optional JSON file of (partial) settings, then overrides."""
    cfg = get_preset(preset)
    if config_file:
        settings = read_config_file(config_file)
        named = settings.get("preset", "")
        # A config file is applied over the preset chosen by --preset; one that names another preset
        # (a run's config.json, say) would otherwise be silently applied over the wrong one.
        if named not in ("", preset):
            raise ConfigError(f"{config_file} names preset {named!r} but the preset in use is {preset!r}: pass "
                              f"--preset {named} to use it (a config file's settings apply over --preset)")
        # One pass, file first: checks that depend on what the user set (e.g. a codebook option under
        # quantizer.kind=fsq) see the file's settings and the overrides together.
        given = overrides.items() if isinstance(overrides, dict) else [_split(o) for o in overrides or []]
        return apply_overrides(cfg, [*flatten_settings(settings, str(config_file)).items(), *given])
    return apply_overrides(cfg, overrides or [])
