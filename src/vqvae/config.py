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


@dataclass
class ModelConfig:
    """The encoder/decoder of the seed, generalised."""

    image_size: int = 28
    in_channels: int = 1
    hidden_channels: int = 32
    num_downsamples: int = 2  # each a stride-2 4x4 conv; latents are image_size / 2**num_downsamples
    num_residual_blocks: int = 2
    code_dim: int = 0  # 0 = hidden_channels (the seed); otherwise 1x1 projections in and out
    num_residual_hiddens: int = 0  # width inside each residual block; 0 = hidden_channels (the seed)


@dataclass
class QuantizerConfig:
    codebook_size: int = 32
    update: str = "loss"  # "loss": codebook + commitment losses (the seed); "ema": moving averages (paper appendix)
    codebook_weight: float = 1.0  # weight of MSE(sg[ze], zq); unused with EMA updates
    commitment_weight: float = 0.25
    ema_decay: float = 0.99
    ema_epsilon: float = 1e-5  # Laplace smoothing of EMA cluster sizes, so empty codes never divide by zero
    init: str = "uniform"  # "uniform" in [-1/K, 1/K] (the seed), "kmeans" or "samples" from the first batch
    kmeans_iters: int = 10
    restart_after_steps: int = 0  # re-seed a code unused for this many steps from encoder outputs; 0 = never
    # The quantizer family. update/init/restarts above apply to the codebooks of "vq" and "rvq".
    kind: str = "vq"  # "vq" nearest code, "fsq" finite scalar, "lfq" lookup-free (binary), "rvq" residual VQ
    distance: str = "l2"  # vq: or "cosine": codes and encoder outputs l2-normalised (ViT-VQGAN)
    lookup_dim: int = 0  # vq: search codes in this many dims (linear down, back up after; ViT-VQGAN); 0 = code_dim
    gradient: str = "straight_through"  # vq/rvq: or "rotation", the rotation trick (Fifty et al., ICLR 2025)
    # vq/rvq nearest-code search. "fast": on CUDA with Triton, for searches of at least 2^35 multiply-adds
    # (vectors x codes x dims), fp16 tensor-core distances with a proven error bound and fp32 for the vectors
    # it cannot decide: fp32's codes except at fp32's own near-ties, 3.8x faster at 131,072 x 8,192 x 256 on
    # an H100; elsewhere the fp32 search. "fp32": always the fp32 search.
    # (fsq and lfq have no codebook to search and ignore it.)
    search_precision: str = "fast"
    fsq_levels: list = field(default_factory=list)  # fsq: values per channel; [] = FSQ paper's for codebook_size
    # fsq: how project_in's output is scaled into tanh's range. "batch": each channel standardised (mean 0, std 1)
    # with batch statistics in training, running averages in eval, so no channel can drift into tanh's flat
    # tails (on CIFAR-10, 3 of 5 channels did in epoch 1: 18 of 4,375 codes used); "init": project_in rescaled
    # once, on the first training batch; "none": PyTorch's init only (the paper's and the reference code's)
    fsq_normalise: str = "batch"
    entropy_weight: float = 0.1  # lfq: weight of the entropy penalty (per-sample entropy - diversity * codebook's)
    entropy_diversity: float = 1.0  # lfq: weight of the codebook entropy inside the penalty
    # lfq: temperature of the soft assignment p(c|z) the entropies are taken of. 0.01 (sharp: gradients vanish
    # once |z| >> 0.01) and the VQ commitment weight 0.25 collapsed LFQ to 1-2 codes in our MNIST/CIFAR runs.
    entropy_temperature: float = 1.0
    lfq_commitment_weight: float = 0.02  # lfq: weight of MSE(z, sg[sign(z)]) (commitment_weight is VQ's)
    rvq_depth: int = 4  # rvq: residual levels, each a codebook of codebook_size codes
    rvq_dropout: float = 0.0  # rvq: fraction of training images decoded from only a random first 1..depth levels


@dataclass
class TrainConfig:
    epochs: int = 20
    batch_size: int = 256  # global: split across processes under torchrun
    lr: float = 2e-4
    lr_schedule: str = "constant"  # "constant" or "cosine" (to lr_min_ratio * lr, after warmup)
    warmup_steps: int = 0
    lr_min_ratio: float = 0.0
    weight_decay: float = 0.0
    grad_clip: float = 0.0  # max gradient norm; 0 = off
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
class PriorConfig:
    """Autoregressive prior over code maps: a Gated PixelCNN or a decoder-only transformer."""

    kind: str = "pixelcnn"  # "pixelcnn" (Gated PixelCNN) or "transformer" (raster-order, KV-cached sampling)
    num_layers: int = 15  # gated layers, or transformer blocks
    hidden_channels: int = 128  # PixelCNN channels, or the transformer's embedding width
    num_heads: int = 4  # transformer only: attention heads (must divide hidden_channels)
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


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
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
        quantizer = d.get("quantizer") if isinstance(d, dict) else None
        if isinstance(quantizer, dict) and quantizer.get("search_precision") in ("tf32", "bf16"):
            # Runs saved before the checked search: their TF32/bf16 shortlists are now the "fast" search.
            d = {**d, "quantizer": {**quantizer, "search_precision": "fast"}}
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


def _check_quantizer(q: QuantizerConfig) -> None:
    """Checks across quantizer fields (each field's own range is in RULES)."""
    # Options of one kind set on another are mistakes: say so instead of ignoring them. (search_precision is
    # not among them: both its values are harmless everywhere, and runs saved before "fast" became the
    # default carry "fp32" on every kind.)
    vq_only = {"distance": "l2", "lookup_dim": 0}
    codebook_only = {"gradient": "straight_through"}
    unused = {**vq_only, **codebook_only} if q.kind in ("fsq", "lfq") else vq_only if q.kind == "rvq" else {}
    for name, default in unused.items():
        if getattr(q, name) != default:
            raise ConfigError(f"quantizer.{name}={getattr(q, name)!r} does not apply to quantizer.kind={q.kind}; "
                              f"it is an option of kind vq{' and rvq' if name in codebook_only else ''}")
    if q.kind != "fsq" and q.fsq_normalise != "batch":
        raise ConfigError(f"quantizer.fsq_normalise={q.fsq_normalise!r} does not apply to quantizer.kind={q.kind}; "
                          f"it is an option of kind fsq")
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


def _seed_mnist() -> RunConfig:
    # The seed exactly: 28x28x1, 32 channels, 32 codes, 7x7 codes, batch 256, Adam 2e-4,
    # codebook/commitment losses 1.0/0.25, uniform codebook init, no EMA, 20 epochs.
    # Its prior: Gated PixelCNN, 15 blocks, 128 channels, Adam 1e-3, 50 epochs.
    return RunConfig(preset="seed-mnist")


def _mnist() -> RunConfig:
    # Seed architecture and codebook size, the project's training recipe (see README's benchmark):
    # EMA codebook (decay 0.95: the codebook follows the fast-moving encoder of a short run)
    # seeded by k-means on encoder outputs, with dead-code restarts; a 10x higher learning rate
    # with cosine decay; batch 128 (twice the seed's updates for the same images seen; measured
    # test MSE 0.0040 vs 0.0057 at 256); bf16 autocast where the CPU/GPU runs it fast.
    cfg = RunConfig(preset="mnist")
    cfg.quantizer = QuantizerConfig(codebook_size=32, update="ema", ema_decay=0.95, init="kmeans",
                                    restart_after_steps=100)
    cfg.train = TrainConfig(epochs=60, batch_size=128, lr=2e-3, lr_schedule="cosine", warmup_steps=50,
                            lr_min_ratio=0.02, amp="auto", channels_last=True)
    # The prior: chosen on validation figures (benchmarks/bench_prior.py ablation, README): a Gated
    # PixelCNN 8x64, conditioned on the digit class, trained 2 epochs on the codes of each image and
    # its 1-pixel shifts (9 maps per image) and sampled with classifier-free guidance 2 (since changed,
    # see the sample settings below). Against the
    # previous unconditional 4-epoch prior (7x7 first kernel, dropout 0.1), on validation: 0.4x the
    # training time, bits 1.739 -> 1.675 (given the class), the samples' Fréchet distance over the
    # reconstructions' 1.91 -> 0.80. Adam at 4e-3, not 2e-3: the same 2 epochs reach 1.675 bits
    # instead of 1.729 (a third epoch at 2e-3 reached 1.676 but misses the demo's time budget of 2x
    # the seed reference). A 3x3 first kernel (8 layers still see the whole 7x7 map)
    # is 0.8x the time of 7x7; dropout only slowed a prior that underfits at this budget.
    # Unlabelled data gets an unconditional prior (data/choose.py says so).
    cfg.prior = PriorConfig(kind="pixelcnn", num_layers=8, hidden_channels=64, first_kernel_size=3, train_shifts=1,
                            conditional=True, label_dropout=0.1)
    cfg.prior_train = TrainConfig(epochs=2, batch_size=128, lr=4e-3, lr_schedule="cosine", warmup_steps=50,
                                  lr_min_ratio=0.02, dropout=0.0, weight_decay=0.0, amp="auto")
    # Guidance 1 (plain conditional sampling), chosen by `vqvae tune-sampling`'s rule on validation
    # data (docs/benchmarks-unlabelled.md): guidance 1.5 and 2 come closer in the classifier's
    # features but lose more recall (variety within a class) than the rule allows.
    cfg.sample = SampleConfig(guidance=1.0)
    return cfg


def _mnist_gpu() -> RunConfig:
    # The mnist preset for a GPU, where a 95k-parameter model is bound by kernel launches, not
    # arithmetic: 8x the batch with a 3x learning rate, and the conv stacks captured as CUDA graphs.
    # Measured on an H100: 3.6x the seed reference's images/s at a lower test MSE (0.0072 vs 0.0106).
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
    # A prior sized for 8x8 maps: a 7x7 first layer and 3x3 gated layers see the whole map above
    # a position after 5 layers; 10 leave room for depth without the 15x128 seed size.
    cfg.prior = PriorConfig(num_layers=10, hidden_channels=128)
    cfg.prior_train = TrainConfig(epochs=20, batch_size=128, lr=1e-3, lr_schedule="cosine", warmup_steps=200,
                                  lr_min_ratio=0.02, dropout=0.1, amp="auto")
    cfg.sample = SampleConfig(num_samples=100, batch_size=100)
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


# What a preset with a class-conditional prior uses on images without labels (data/choose.py applies
# it, unless the user set prior.conditional or prior.pseudo_classes): chosen on validation data by
# benchmarks/bench_unlabelled.py (docs/benchmarks-unlabelled.md). mnist: the same prior network and
# budget, conditioned on 30 k-means clusters of the code maps (more clusters than digits: purer
# clusters) and sampled with the guidance tune-sampling's rule chose, which an unconditional prior
# of that size and budget does not come near.
_MNIST_UNLABELLED = ["prior.conditional=false", "prior.pseudo_classes=30", "prior.label_dropout=0.1",
                     "sample.guidance=1.5"]
UNLABELLED_PRIOR = {"mnist": _MNIST_UNLABELLED, "mnist-gpu": _MNIST_UNLABELLED}


PRESETS = {
    "mnist": _mnist,
    "seed-mnist": _seed_mnist,
    "mnist-gpu": _mnist_gpu,
    "cifar10": _cifar10,
    "celeba-hq-64": lambda: _celeba(64),
    "celeba-hq-128": lambda: _celeba(128),
    "tiny": _tiny,
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
    "model.image_size": at_least(1),
    "model.in_channels": one_of(1, 3),
    "model.hidden_channels": at_least(1),
    "model.num_downsamples": in_range(1, 4),
    "model.num_residual_blocks": at_least(0),
    "model.code_dim": at_least(0),
    "model.num_residual_hiddens": at_least(0),
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
    "quantizer.rvq_depth": at_least(1),
    "quantizer.rvq_dropout": in_range(0, 1),
    "train.epochs": at_least(0),
    "train.batch_size": at_least(1),
    "train.lr": above(0),
    "train.lr_schedule": one_of("constant", "cosine"),
    "train.warmup_steps": at_least(0),
    "train.lr_min_ratio": in_range(0, 1),
    "train.weight_decay": at_least(0),
    "train.grad_clip": at_least(0),
    "train.dropout": in_range(0, 1, high_open=True),
    "train.seed": at_least(0),
    "train.device": DEVICE,
    "train.amp": one_of("off", "bf16", "auto"),
    "train.compile_mode": one_of("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
    "train.checkpoint_every_steps": at_least(0),
    "train.on_nonfinite": one_of("stop", "skip"),
    "train.eval_batches": at_least(0),
    "prior.num_layers": at_least(1),
    "prior.hidden_channels": at_least(1),
    "prior.first_kernel_size": ODD_POSITIVE,
    "prior.kernel_size": ODD_POSITIVE,
    "prior.head_channels": at_least(0),
    "prior.train_shifts": in_range(0, 4),
    "prior.pseudo_classes": Rule(lambda v: v == 0 or 2 <= v <= 1024, "0 (off) or 2..1024 clusters"),
    "prior.kind": one_of("pixelcnn", "transformer"),
    "prior.num_heads": at_least(1),
    "prior.label_dropout": in_range(0, 1, high_open=True),
    "sample.top_p": in_range(0, 1, low_open=True),
    "sample.guidance": at_least(0),
    "sample.num_samples": at_least(1),
    "sample.batch_size": at_least(1),
    "sample.temperature": above(0),
    "sample.top_k": at_least(0),
    "sample.seed": at_least(0),
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


def _field_names(obj) -> list[str]:
    return [name for name, _, _ in _fields(obj)]


def _default_type(owner, name: str) -> type:
    """The type a field holds, from its default (every config field has one)."""
    return type(getattr(type(owner)(), name))


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
    _check_quantizer(cfg.quantizer)
    if cfg.prior.pseudo_classes and cfg.prior.label_dropout == 0:
        raise ConfigError(f"prior.pseudo_classes={cfg.prior.pseudo_classes} needs prior.label_dropout > 0 (e.g. 0.1): "
                          f"the null class it trains gives guidance its direction and the prior its held-out bits")
    if cfg.prior.kind == "transformer" and cfg.prior.hidden_channels % cfg.prior.num_heads:
        raise ConfigError(f"prior.num_heads={cfg.prior.num_heads} must divide prior.hidden_channels="
                          f"{cfg.prior.hidden_channels}")


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
        if kind is list:  # "8,5,5,5" or "[8, 5, 5, 5]"
            return [int(v) for v in text.strip("[] ").split(",") if v.strip()]
    except ValueError:
        expected = {bool: "true or false", int: "a whole number", float: "a number"}[kind]
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
    return value


def apply_overrides(cfg: RunConfig, overrides: list[str] | dict) -> RunConfig:
    """Return a copy of `cfg` with `section.field=value` overrides applied, in order (a field
    set twice keeps the later value), then validated.

    An unknown field is an error that lists the valid ones; values are parsed by the
    field's type. Keeping model.image_size/in_channels in step with data.* is done here
    so a user changing one does not get a shape error later.
    """
    cfg = copy.deepcopy(cfg)
    items = overrides.items() if isinstance(overrides, dict) else [_split(o) for o in overrides]
    fields = {name: (owner, field_name) for name, owner, field_name in _fields(cfg)}
    for key, value in items:
        if key not in fields:
            raise ConfigError(f"unknown config field {key!r}; valid fields: {', '.join(fields)}")
        owner, name = fields[key]
        value = _coerce(value, _default_type(owner, name), key)
        setattr(owner, name, value)
        if key == "data.image_size":
            cfg.model.image_size = value
        if key == "data.channels":
            cfg.model.in_channels = value
        if key == "model.image_size":
            cfg.data.image_size = value
        if key == "model.in_channels":
            cfg.data.channels = value
    validate(cfg)
    return cfg


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
            continue
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
        cfg = apply_overrides(cfg, flatten_settings(read_config_file(config_file), str(config_file)))
    return apply_overrides(cfg, overrides or [])
