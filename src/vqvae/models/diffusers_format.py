"""diffusers' VQModel folder format, both ways, with no diffusers code needed to read or write it.

    FOLDER/config.json                          {"_class_name": "VQModel", "block_out_channels": [...], ...}
    FOLDER/diffusion_pytorch_model.safetensors  the weights under diffusers' names

A model.arch=vqgan model with a plain VQ codebook (quantizer.kind=vq, l2 distance, no lookup_dim)
is a diffusers `VQModel`: the encoder/decoder carry diffusers' names (models/vqgan.py), three
prefixes are renamed (`DIFFUSERS_RENAMES`), and the codebook becomes `quantize.embedding.weight`.
The images' scale is the one convention that differs ([0, 1] here, [-1, 1] there); our encoder
and decoder rescale outside their weights, so the weights are the same numbers.

diffusers' VectorQuantizer picks codes by `torch.cdist` (ours: one addmm of ||e||^2 - 2 z.e): the
same codes except where two are equally far, within float rounding. It trains with taming's
"legacy" loss, whose beta weights the codebook term: an imported model keeps that weighting
(codebook_weight 0.25, commitment_weight 1.0) should it be trained further here.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes

from ..config import ModelConfig, QuantizerConfig, vqgan_factors
from ..errors import CheckpointError, ExportError
from ..files import atomic_write_bytes
from .vqgan import DIFFUSERS_RENAMES, block_widths, code_dim, latent_channels

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"  # diffusers' file name for safetensors weights
CLASS_NAME = "VQModel"
DOWN_BLOCKS = {False: "DownEncoderBlock2D", True: "AttnDownEncoderBlock2D"}  # attention? -> block type
UP_BLOCKS = {False: "UpDecoderBlock2D", True: "AttnUpDecoderBlock2D"}
# taming's legacy loss, as diffusers' VectorQuantizer computes it: ||sg[zq] - z||^2 + 0.25 ||zq - sg[z]||^2
LEGACY_WEIGHTS = {"codebook_weight": 0.25, "commitment_weight": 1.0}


def unsupported(model_config: ModelConfig, quantizer_config: QuantizerConfig) -> list[str]:
    """What in a model has no diffusers VQModel equivalent (empty: it exports)."""
    m, q = model_config, quantizer_config
    problems = []
    if getattr(m, "arch", "vqvae") != "vqgan":
        problems.append(f"model.arch={getattr(m, 'arch', 'vqvae')} (the seed's VQ-VAE encoder/decoder; only "
                        f"model.arch=vqgan is a diffusers VQModel)")
    if q.kind != "vq":
        problems.append(f"quantizer.kind={q.kind} (diffusers' VQModel has a plain VQ codebook only)")
    else:
        if q.distance != "l2":
            problems.append(f"quantizer.distance={q.distance} (VQModel searches codes by l2 distance)")
        if q.lookup_dim:
            problems.append(f"quantizer.lookup_dim={q.lookup_dim} (VQModel has no low-dimensional lookup)")
    return problems


def to_diffusers(model) -> tuple[dict, dict[str, torch.Tensor]]:
    """A VQVAE -> (diffusers config.json dict, state dict under diffusers' names), or an ExportError
    naming each thing diffusers has no equivalent for."""
    m, q = model.model_config, model.quantizer_config
    problems = unsupported(m, q)
    if problems:
        raise ExportError("cannot export to diffusers: " + "; ".join(problems))
    factors = vqgan_factors(m)
    attention = [f in m.attention_resolutions for f in factors]
    config = {
        "_class_name": CLASS_NAME,
        "in_channels": m.in_channels, "out_channels": m.in_channels,
        "down_block_types": [DOWN_BLOCKS[a] for a in attention],
        "up_block_types": [UP_BLOCKS[a] for a in attention[::-1]],  # the decoder runs lowest resolution first
        "block_out_channels": block_widths(m), "layers_per_block": m.layers_per_block, "act_fn": "silu",
        "latent_channels": latent_channels(m), "sample_size": m.image_size,
        "num_vq_embeddings": q.codebook_size, "norm_num_groups": m.norm_groups, "vq_embed_dim": code_dim(m),
        # Latents go to a latent-diffusion model unscaled, as latent-diffusion's own VQ models do.
        "scaling_factor": 1.0, "norm_type": "group", "mid_block_add_attention": m.mid_attention,
        # Decoding integer codes (the reason to export a tokenizer): VQModel.decode(indices,
        # force_not_quantize=True, shape=(B, h, w, vq_embed_dim)) looks them up in the codebook.
        "lookup_from_codebook": True, "force_upcast": False,
    }
    state = {}
    for name, tensor in model.state_dict().items():
        if name.startswith("quantizer.") and name != "quantizer.codebook":
            continue  # codebook learning state (EMA sums, usage counters): diffusers has none
        state[rename(name, DIFFUSERS_RENAMES)] = tensor.detach().float().cpu().contiguous()
    return config, state


def rename(name: str, table: dict[str, str]) -> str:
    for ours, theirs in table.items():
        if name.startswith(ours):
            return theirs + name[len(ours):]
    return name


def write_diffusers_folder(folder: str | Path, config: dict, state: dict[str, torch.Tensor], note: str = "") -> Path:
    """config.json + diffusion_pytorch_model.safetensors, each written atomically, config last. The
    folder must be new, empty, or a diffusers VQModel folder already (its two files are replaced)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ExportError(f"{folder} exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()) and not is_diffusers_folder(folder):
        raise ExportError(f"{folder} is not empty and not a diffusers VQModel folder: choose a new or empty folder")
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(folder / WEIGHTS_NAME, safetensors_bytes(state, metadata={"format": "pt"}))
    meta = {**config, **({"_exported_by": note} if note else {})}
    atomic_write_bytes(folder / "config.json", (json.dumps(meta, indent=2) + "\n").encode())
    return folder


def is_diffusers_folder(folder: str | Path) -> bool:
    try:
        return json.loads((Path(folder) / "config.json").read_text()).get("_class_name") == CLASS_NAME
    except (OSError, ValueError, AttributeError):
        return False


def read_diffusers_folder(folder: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config, state dict) of a diffusers VQModel folder. Reads JSON and safetensors only."""
    folder = Path(folder)
    path = folder / "config.json"
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a folder; pass a diffusers VQModel folder (config.json + {WEIGHTS_NAME})")
    if not path.is_file():
        hint = (f" (it holds a 'vqvae' subfolder: pass {folder / 'vqvae'})" if (folder / "vqvae" / "config.json").is_file()
                else "")
        raise CheckpointError(f"{folder} is not a diffusers model folder: no config.json{hint}")
    try:
        config = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(config, dict) or config.get("_class_name") != CLASS_NAME:
        found = (f"a JSON {type(config).__name__}, not a diffusers config" if not isinstance(config, dict) else
                 "no _class_name: it is not a diffusers model folder" if "_class_name" not in config else
                 f"_class_name {config['_class_name']!r}")
        raise CheckpointError(f"{path} holds {found}; only diffusers {CLASS_NAME} folders import")
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        pickled = [p.name for p in folder.glob("*.bin")]
        raise CheckpointError(f"{folder} has no {WEIGHTS_NAME}" + (
            f"; {', '.join(pickled)} is a pickle, which is never loaded here (it could run code): convert it with "
            f"diffusers (VQModel.from_pretrained(folder).save_pretrained(new_folder, safe_serialization=True))"
            if pickled else ""))
    try:
        with safe_open(str(weights), framework="pt", device="cpu") as f:
            state = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as e:
        raise CheckpointError(f"{weights} is not a readable safetensors file: {str(e).splitlines()[0][:200]}") from None
    return config, state


def from_diffusers(config: dict, image_size: int | None = None) -> tuple[ModelConfig, QuantizerConfig]:
    """The model and quantizer sections that rebuild a diffusers VQModel config here, or a
    CheckpointError naming what this toolkit has no equivalent for."""
    def get(key, default=None):
        return config.get(key, default)

    widths = list(get("block_out_channels", [64]))
    down, up = list(get("down_block_types", [])), list(get("up_block_types", []))
    problems = []
    if get("act_fn", "silu") != "silu":
        problems.append(f"act_fn={get('act_fn')!r} (the VQGAN blocks use silu)")
    if get("norm_type", "group") != "group":
        problems.append(f"norm_type={get('norm_type')!r} (spatially conditioned norms, MoVQ's, are not built here)")
    if get("in_channels", 3) != get("out_channels", 3) or get("in_channels", 3) not in (1, 3):
        problems.append(f"in_channels={get('in_channels')}, out_channels={get('out_channels')} (images here have 1 or "
                        f"3 channels, the same in and out)")
    if not 2 <= len(widths) <= 5 or len(down) != len(widths) or len(up) != len(widths):
        problems.append(f"{len(widths)} resolutions with {len(down)} down and {len(up)} up blocks (2 to 5 "
                        f"resolutions, one block each way, are built here)")
    elif any(b not in DOWN_BLOCKS.values() for b in down) or any(b not in UP_BLOCKS.values() for b in up):
        problems.append(f"block types {sorted(set(down + up) - set(DOWN_BLOCKS.values()) - set(UP_BLOCKS.values()))} "
                        f"(built here: {', '.join(list(DOWN_BLOCKS.values()) + list(UP_BLOCKS.values()))})")
    else:
        encoder_attention = [b == DOWN_BLOCKS[True] for b in down]
        if encoder_attention != [b == UP_BLOCKS[True] for b in up][::-1]:
            problems.append(f"attention at different resolutions in the encoder ({down}) and decoder ({up})")
    if problems:
        raise CheckpointError("this diffusers VQModel has no equivalent here: " + "; ".join(problems))
    base = math.gcd(*widths)
    vq_dim = get("vq_embed_dim") or get("latent_channels", 3)
    size = image_size or get("sample_size", 32)
    if isinstance(size, (list, tuple)):
        size = size[0]
    model = ModelConfig(image_size=int(size), in_channels=get("in_channels", 3), hidden_channels=base, arch="vqgan",
                        code_dim=vq_dim, channel_mult=[w // base for w in widths],
                        layers_per_block=get("layers_per_block", 1),
                        attention_resolutions=[2 ** i for i, a in enumerate(encoder_attention) if a],
                        mid_attention=bool(get("mid_block_add_attention", True)),
                        norm_groups=get("norm_num_groups", 32), latent_channels=get("latent_channels", 3))
    quantizer = QuantizerConfig(codebook_size=get("num_vq_embeddings", 256), kind="vq", update="loss", init="uniform",
                                **LEGACY_WEIGHTS)
    return model, quantizer


def our_state(model, diffusers_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers' weights under our names, with the quantizer's own state (EMA sums, counters) taken
    from `model` as built (its codebook replaced), ready for `load_weights`."""
    back = {theirs: ours for ours, theirs in DIFFUSERS_RENAMES.items()}
    state = {rename(name, back): tensor for name, tensor in diffusers_state.items()}
    for name, tensor in model.state_dict().items():
        if name.startswith("quantizer.") and name not in state:
            state[name] = tensor.clone()
    if "quantizer.codebook" in state and "quantizer.ema_embed_sum" in state:
        state["quantizer.ema_embed_sum"] = state["quantizer.codebook"].clone()  # EMA state consistent with it
    return state
