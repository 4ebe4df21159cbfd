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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError


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


@dataclass
class ModelConfig:
    """The encoder/decoder of the seed, generalised."""

    image_size: int = 28
    in_channels: int = 1
    hidden_channels: int = 32
    num_downsamples: int = 2  # each a stride-2 4x4 conv; latents are image_size / 2**num_downsamples
    num_residual_blocks: int = 2
    code_dim: int = 0  # 0 = hidden_channels (the seed); otherwise 1x1 projections in and out


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


@dataclass
class SampleConfig:
    num_samples: int = 1000
    batch_size: int = 500
    temperature: float = 1.0
    top_k: int = 0  # 0 = sample from the whole distribution
    top_p: float = 1.0  # nucleus: the smallest set of likeliest codes with this much mass; 1 = off
    # Classifier-free guidance of conditional priors: 0 = unconditional, 1 = conditional, > 1 sharper
    # classes (needs a prior trained with prior.label_dropout > 0).
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
        return from_dict(cls, d)

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


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
    # A smaller, regularised prior than the seed's: 5,000 images overfit 15x128 within a few epochs.
    # Codes of 1-pixel-shifted copies (9 maps per image) are the biggest win: classifier Fréchet
    # distance of samples 30.8 -> 10.8 (real held-out: 10.1), held-out bits 2.28 -> 2.02.
    # Still the Gated PixelCNN: the transformer (prior.kind=transformer) has not yet been compared at
    # this budget (benchmarks/bench_prior.py ablation). Label dropout 0.1 only acts when the prior is
    # trained --conditional: it lets `sample --guidance` use the same network unconditionally.
    cfg.prior = PriorConfig(kind="pixelcnn", num_layers=8, hidden_channels=64, train_shifts=1, label_dropout=0.1)
    cfg.prior_train = TrainConfig(epochs=4, batch_size=128, lr=2e-3, lr_schedule="cosine", warmup_steps=50,
                                  lr_min_ratio=0.02, dropout=0.1, weight_decay=0.0, amp="auto")
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


PRESETS = {
    "mnist": _mnist,
    "seed-mnist": _seed_mnist,
    "mnist-gpu": _mnist_gpu,
    "celeba-hq-64": lambda: _celeba(64),
    "celeba-hq-128": lambda: _celeba(128),
    "tiny": _tiny,
}


def get_preset(name: str) -> RunConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}")
    return PRESETS[name]()


# --------------------------------------------------------------------------- overrides

def _field_names(obj, prefix="") -> list[str]:
    names = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            names += _field_names(value, f"{prefix}{f.name}.")
        else:
            names.append(prefix + f.name)
    return names


def _parse_value(text: str, current: Any, key: str):
    kind = type(current)
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
    except ValueError:
        raise ConfigError(f"{key}={text!r}: expected a {kind.__name__}") from None
    return text


def apply_overrides(cfg: RunConfig, overrides: list[str] | dict) -> RunConfig:
    """Return a copy of `cfg` with `section.field=value` overrides applied.

    An unknown field is an error that lists the valid ones; values are parsed by the
    field's type. Keeping model.image_size/in_channels in step with data.* is done here
    so a user changing one does not get a shape error later.
    """
    cfg = copy.deepcopy(cfg)
    items = overrides.items() if isinstance(overrides, dict) else [_split(o) for o in overrides]
    valid = _field_names(cfg)
    for key, text in items:
        if key not in valid:
            raise ConfigError(f"unknown config field {key!r}; valid fields: {', '.join(valid)}")
        *path, name = key.split(".")
        target = cfg
        for part in path:
            target = getattr(target, part)
        current = getattr(target, name)
        value = _parse_value(text, current, key) if isinstance(text, str) else text
        setattr(target, name, value)
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


def _choice(value, name, allowed):
    if value not in allowed:
        raise ConfigError(f"{name}={value!r}; valid: {', '.join(map(str, allowed))}")


def validate(cfg: RunConfig) -> None:
    q, m = cfg.quantizer, cfg.model
    _choice(q.update, "quantizer.update", ["loss", "ema"])
    _choice(q.init, "quantizer.init", ["uniform", "kmeans", "samples"])
    _choice(m.in_channels, "model.in_channels", [1, 3])
    if not 1 <= m.num_downsamples <= 4:
        raise ConfigError(f"model.num_downsamples={m.num_downsamples}; valid: 1 to 4")
    if q.codebook_size < 2:
        raise ConfigError(f"quantizer.codebook_size={q.codebook_size}; need at least 2")
    if not 0 < q.ema_decay < 1:
        raise ConfigError(f"quantizer.ema_decay={q.ema_decay}; must be in (0, 1)")
    for name, t in (("train", cfg.train), ("prior_train", cfg.prior_train)):
        _choice(t.lr_schedule, f"{name}.lr_schedule", ["constant", "cosine"])
        _choice(t.amp, f"{name}.amp", ["off", "bf16", "auto"])
        _choice(t.on_nonfinite, f"{name}.on_nonfinite", ["stop", "skip"])
        _choice(t.compile_mode, f"{name}.compile_mode", ["default", "reduce-overhead", "max-autotune",
                                                           "max-autotune-no-cudagraphs"])
        if t.batch_size < 1 or t.epochs < 0 or t.lr <= 0:
            raise ConfigError(f"{name}: batch_size must be >= 1, epochs >= 0 and lr > 0")
    for k in (cfg.prior.first_kernel_size, cfg.prior.kernel_size):
        if k < 1 or k % 2 == 0:
            raise ConfigError(f"prior kernel sizes must be odd and positive, got {k}")
    if cfg.prior.num_layers < 1:
        raise ConfigError("prior.num_layers must be at least 1")
    _choice(cfg.prior.kind, "prior.kind", ["pixelcnn", "transformer"])
    if cfg.prior.kind == "transformer" and (cfg.prior.num_heads < 1 or cfg.prior.hidden_channels % cfg.prior.num_heads):
        raise ConfigError(f"prior.num_heads={cfg.prior.num_heads} must divide prior.hidden_channels="
                          f"{cfg.prior.hidden_channels}")
    if not 0 <= cfg.prior.label_dropout < 1:
        raise ConfigError(f"prior.label_dropout={cfg.prior.label_dropout}; must be in [0, 1)")
    if not 0 < cfg.sample.top_p <= 1:
        raise ConfigError(f"sample.top_p={cfg.sample.top_p}; must be in (0, 1] (1 = off)")
    if cfg.sample.guidance < 0:
        raise ConfigError(f"sample.guidance={cfg.sample.guidance}; must be >= 0 (0 = unconditional, 1 = conditional)")
    if not 0 <= cfg.prior.train_shifts <= 4:
        raise ConfigError(f"prior.train_shifts={cfg.prior.train_shifts}; valid: 0 to 4")
    if not 0 <= cfg.data.test_fraction < 1:
        raise ConfigError(f"data.test_fraction={cfg.data.test_fraction}; must be in [0, 1)")
    if not 0 <= cfg.data.val_fraction < 1:
        raise ConfigError(f"data.val_fraction={cfg.data.val_fraction}; must be in [0, 1)")


def load_config(preset: str = "mnist", overrides: list[str] | dict | None = None,
                config_file: str | None = None) -> RunConfig:
    """Preset, then an optional JSON file of (partial) settings, then overrides."""
    cfg = get_preset(preset)
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"config file {path} is not valid JSON: {e}") from None
        flat = {}
        for section, values in data.items():
            if isinstance(values, dict):
                flat.update({f"{section}.{k}": v for k, v in values.items()})
            else:
                flat[section] = values
        flat.pop("preset", None)
        cfg = apply_overrides(cfg, flat)
    return apply_overrides(cfg, overrides or [])
