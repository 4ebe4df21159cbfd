"""A training step of the `vqgan-f8-64` preset against taming-transformers' own networks, in one run.

Issue 18's speed goal: one adversarial training step (bf16, both networks) of our preset against
taming-transformers' `Encoder`, `Decoder` and `NLayerDiscriminator` at the same configuration.

    # from the repository root; third_party_taming/ is git-ignored, so copy it to the GPU machine yourself:
    git clone https://github.com/CompVis/taming-transformers /tmp/taming
    git -C /tmp/taming checkout 3ba01b2   # the commit this script was written against
    mkdir -p third_party_taming && cp -r /tmp/taming/taming third_party_taming/
    python benchmarks/bench_vs_taming.py --taming third_party_taming --device cuda
    # a smoke check of the script on a CPU, fp32 (its timings are not the goal's figure):
    python benchmarks/bench_vs_taming.py --taming third_party_taming --device cpu --image-size 32 \\
        --batch-size 4 --steps 2 --out /tmp/vs-taming-smoke.json

What is imported from taming-transformers (ROOT = --taming, the folder holding `taming/`), each file
by its path with importlib, so none of taming's package `__init__`s runs:
    ROOT/taming/modules/diffusionmodules/model.py   Encoder, Decoder
    ROOT/taming/modules/discriminator/model.py      NLayerDiscriminator, weights_init
    ROOT/taming/modules/util.py                     (ActNorm: the discriminator file imports it; it is
                                                    registered as `taming.modules.util` only while that
                                                    file runs)
Nothing else: not taming/models (Lightning, `main`), not taming/modules/losses (its LPIPS downloads
VGG16 weights when built). The loss math of its `VQLPIPSWithDiscriminator` is written out here.

Ours: the preset with loss.perceptual=none (no LPIPS weights on the device machine), trained by the
toolkit's own code, `training.loop.fit` on a `VQVAEStage` (what `vqvae train` runs): one forward
of the model and of the discriminator, one backward and one optimiser step per network, with all
the per-step bookkeeping the CLI does. The stage is subclassed only to time a window of steps.

Taming's: Encoder/Decoder as latent-diffusion's vq-f8 configures them (ch 128, ch_mult (1, 2, 2, 4),
2 residual blocks, attention at the lowest resolution (8 pixels at 64), z_channels 4, double_z
false, dropout 0), the 1x1 quant_conv/post_quant_conv of taming's VQModel (embed_dim 4), and
NLayerDiscriminator(n_layers=loss.disc_layers, ndf=loss.disc_channels) with taming's weights_init
and its default BatchNorm (ours: GroupNorm). The quantizer between them is OUR VectorQuantizer built
from the preset's quantizer config (1,024 codes, EMA updates, k-means init), so both sides pay the
same for it. The step is taming's loss without LPIPS: nll = mean |x - x_rec| (images in [-1, 1]),
g_loss = -mean D(x_rec), the adaptive weight of `calculate_adaptive_weight` (autograd.grad of both
at decoder.conv_out.weight, norm ratio, clamp [0, 1e4]) times loss.disc_weight, plus the
quantizer's weighted terms; then the discriminator on real and reconstructed images, two calls as
taming makes them, hinge loss. Each network has its own Adam, built by our `make_optimizer` with
the preset's lr and betas (fused on CUDA) for both sides. Taming's Lightning loop runs the
autoencoder's forward once per optimiser, twice a step; here it runs once (its faster form).

Timing: both sides read their batches through the toolkit's `Batches` from the same synthetic uint8
images; bf16 autocast on CUDA (train.amp=bf16), fp32 on CPU; --warmup steps, then --steps timed
between two device synchronisations. The preset trains channels_last, so taming runs both
contiguous and channels_last; the ratio uses the faster. A diagnostic part (not the goal's figure;
on CUDA, or with --diagnostic) times our stage's two losses and optimiser steps without the loop's
per-step bookkeeping. Writes one JSON document (--out) and prints it; exits 1 if any part failed
(the others' figures are kept).
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import hashlib
import importlib.util
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vqvae.config import load_config
from vqvae.data import ImageSet
from vqvae.data.datasets import Splits
from vqvae.data.loader import Batches
from vqvae.models.vqvae import build_quantizer
from vqvae.training.distributed import setup
from vqvae.training.loop import Optimised, amp_enabled, fit, make_optimizer
from vqvae.training.vqvae_stage import VQVAEStage, build_vqvae

from result_file import print_and_write

PRESET = "vqgan-f8-64"
RESULTS = Path(__file__).resolve().parent / "results"


# --------------------------------------------------------------------------- taming's modules

def _load_file(name: str, path: Path):
    if not path.is_file():
        raise SystemExit(f"--taming: {path} does not exist; pass the folder that holds taming/ (see this "
                         f"script's header for how to extract it)")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TAMING_FILES = ("diffusionmodules/model.py", "discriminator/model.py", "util.py")


def load_taming(root: Path):
    """(diffusionmodules/model.py, discriminator/model.py) as modules, loaded by path (header)."""
    modules = Path(root) / "taming" / "modules"
    networks = _load_file("taming_bench_diffusionmodules_model", modules / "diffusionmodules" / "model.py")
    util = _load_file("taming_bench_util", modules / "util.py")
    # discriminator/model.py says `from taming.modules.util import ActNorm`: an entry under that name
    # is found before any parent package is imported; it is removed again once the file has run.
    sys.modules["taming.modules.util"] = util
    try:
        discriminator = _load_file("taming_bench_discriminator_model", modules / "discriminator" / "model.py")
    finally:
        del sys.modules["taming.modules.util"]
    assert not any(name == "taming" or name.startswith("taming.") for name in sys.modules)
    return networks, discriminator


def taming_file_hashes(root: Path) -> dict:
    """sha256 (first 16 hex digits) of each file loaded: which taming code was measured."""
    modules = Path(root) / "taming" / "modules"
    return {f"taming/modules/{name}": hashlib.sha256((modules / name).read_bytes()).hexdigest()[:16]
            for name in TAMING_FILES}


class TamingAutoencoder(nn.Module):
    """taming's VQModel without Lightning or its loss: Encoder, 1x1 quant_conv, a quantizer, 1x1
    post_quant_conv, Decoder. Images in [-1, 1], as taming's are."""

    def __init__(self, networks, ddconfig: dict, embed_dim: int, quantizer: nn.Module):
        super().__init__()
        self.encoder = networks.Encoder(**ddconfig)
        with contextlib.redirect_stdout(sys.stderr):  # its "Working with z of shape ..." line: stdout is the JSON's
            self.decoder = networks.Decoder(**ddconfig)
        self.quantizer = quantizer
        self.quant_conv = nn.Conv2d(ddconfig["z_channels"], embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, ddconfig["z_channels"], 1)

    def forward(self, x: torch.Tensor):
        q = self.quantizer(self.quant_conv(self.encoder(x)))
        return self.decoder(self.post_quant_conv(q.quantized)), q


def taming_ddconfig(cfg) -> dict:
    """latent-diffusion's vq-f8 ddconfig in taming's terms, at our preset's sizes. Taming's
    attn_resolutions are feature-map sizes; ours are downsampling factors."""
    m = cfg.model
    return dict(double_z=False, z_channels=m.latent_channels or m.code_dim, resolution=m.image_size,
                in_channels=m.in_channels, out_ch=m.in_channels, ch=m.hidden_channels, ch_mult=tuple(m.channel_mult),
                num_res_blocks=m.layers_per_block, attn_resolutions=[m.image_size // f for f in m.attention_resolutions],
                dropout=0.0)


def adaptive_weight(nll: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor, disc_weight: float):
    """taming's VQLPIPSWithDiscriminator.calculate_adaptive_weight."""
    nll_grads = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
    g_grads = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    d_weight = torch.norm(nll_grads) / (torch.norm(g_grads) + 1e-4)
    return torch.clamp(d_weight, 0.0, 1e4).detach() * disc_weight


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (torch.mean(F.relu(1. - logits_real)) + torch.mean(F.relu(1. + logits_fake)))


def taming_step(ae: TamingAutoencoder, disc: nn.Module, opt_ae, opt_disc, images: torch.Tensor, autocast,
                loss_weights: dict, disc_weight: float) -> dict:
    """One step of both networks with taming's loss, past disc_start (disc_factor 1); its terms, detached."""
    x = images * 2 - 1  # our batches are in [0, 1]; taming's images in [-1, 1]
    with autocast():
        x_rec, q = ae(x)
        qloss = sum(loss_weights[name] * value for name, value in q.losses.items())
        nll = torch.mean(torch.abs(x.contiguous() - x_rec.contiguous()))
        disc.requires_grad_(False)  # Lightning's toggle_optimizer: the generator step leaves D's grads alone
        g_loss = -torch.mean(disc(x_rec.contiguous()))
        d_weight = adaptive_weight(nll, g_loss, ae.decoder.conv_out.weight, disc_weight)
        loss = nll + d_weight * g_loss + qloss
    opt_ae.zero_grad(set_to_none=True)
    loss.backward()
    opt_ae.step()
    disc.requires_grad_(True)
    with autocast():
        logits_real = disc(x.contiguous().detach())
        logits_fake = disc(x_rec.contiguous().detach())
        d_loss = hinge_d_loss(logits_real, logits_fake)
    opt_disc.zero_grad(set_to_none=True)
    d_loss.backward()
    opt_disc.step()
    return {"nll_l1_in_minus1_1": nll.detach(), "g_loss": g_loss.detach(), "d_weight": d_weight,
            "codebook_terms": qloss.detach(), "d_loss": d_loss.detach()}


# --------------------------------------------------------------------------- timing

class Window:
    """Seconds from the end of step `warmup` to the end of step `warmup + steps` (steps counted
    from 1), the device synchronised at both ends, and the peak device memory in between."""

    def __init__(self, device: torch.device, warmup: int, steps: int):
        self.device, self.first, self.last = device, warmup, warmup + steps
        self.seconds = self.peak_bytes = None

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def step_done(self, n: int) -> None:
        if n == self.first:
            self._sync()
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.device)
            self.t0 = time.perf_counter()
        elif n == self.last:
            self._sync()
            self.seconds = time.perf_counter() - self.t0
            if self.device.type == "cuda":
                self.peak_bytes = torch.cuda.max_memory_allocated(self.device)

    def result(self, batch: int, steps: int) -> dict:
        return {"ms_per_step": round(1000 * self.seconds / steps, 2),
                "images_per_s": round(batch * steps / self.seconds, 1),
                "peak_memory_gib": round(self.peak_bytes / 2 ** 30, 3) if self.peak_bytes is not None else None,
                "timed_seconds": round(self.seconds, 3)}


class TimedStage(VQVAEStage):
    """The CLI's stage, unchanged, with a timing window closed after its optimiser steps."""

    window: Window

    def after_step(self, values) -> None:
        super().after_step(values)
        self.window.step_done(self.step + 1)  # self.step: steps taken before this one


def parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def trainable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def scratch_dir() -> str | None:
    """/dev/shm when it has room for the checkpoint fit writes at the epoch's end (about 1 GB), else
    the system's temporary folder."""
    try:
        return "/dev/shm" if shutil.disk_usage("/dev/shm").free > 4 * 2 ** 30 else None
    except OSError:
        return None


def run_ours(cfg, data: ImageSet, args, device: torch.device) -> dict:
    ctx = setup(str(device))
    torch.manual_seed(cfg.train.seed)
    model = build_vqvae(cfg, ctx.device)
    stage = TimedStage(model, cfg, Splits(data, None, data), ctx, None)
    stage.window = Window(ctx.device, args.warmup, args.steps)
    with tempfile.TemporaryDirectory(dir=scratch_dir()) as run_dir:  # fit's checkpoint, after the timed steps
        fit(stage, Path(run_dir), ctx)
    return {**stage.window.result(cfg.train.batch_size, args.steps),
            "last_step": {k: round(v, 5) for k, v in zip(stage.terms, stage._last_values.tolist())},
            "parameters": {"encoder": parameters(model.encoder), "quantizer": parameters(model.quantizer),
                           "decoder": parameters(model.decoder), "discriminator": parameters(stage.critic),
                           "total": parameters(model) + parameters(stage.critic),
                           "trainable": trainable(model) + trainable(stage.critic)}}


def run_ours_bare(cfg, data: ImageSet, args, device: torch.device) -> dict:
    """A diagnostic, not the goal's figure: the same stage's model and discriminator losses and the
    same per-network optimiser steps `fit` calls, without the loop's per-step bookkeeping
    (non-finite check, statistics, collapse watch), meant to show that bookkeeping's cost. Unverified:
    on the CPU smoke check this part was slower than `ours`, so read it only on a GPU."""
    ctx = setup(str(device))
    torch.manual_seed(cfg.train.seed)
    model = build_vqvae(cfg, ctx.device)
    stage = VQVAEStage(model, cfg, Splits(data, None, data), ctx, None)
    nets = [Optimised.build(model, cfg.train, len(stage.batches), device),
            Optimised.build(stage.critic, stage.critic_train_cfg, len(stage.batches), device)]
    autocast = (functools.partial(torch.autocast, device.type, dtype=torch.bfloat16)
                if amp_enabled(cfg.train.amp, device) else contextlib.nullcontext)
    model.train()
    stage.critic.train()
    window = Window(device, args.warmup, args.steps)
    for n, batch in enumerate(stage.batches.epoch(0), start=1):
        stage.before_step(n - 1)
        with autocast():
            loss, _ = stage.loss(model, batch)
            critic_loss, _ = stage.critic_loss(stage.critic, batch)
        nets[0].step(loss)
        nets[1].step(critic_loss)
        window.step_done(n)
    return window.result(cfg.train.batch_size, args.steps)


def run_taming(networks, discriminators, cfg, data: ImageSet, args, device: torch.device, channels_last: bool) -> dict:
    torch.manual_seed(cfg.train.seed)
    m = cfg.model
    embed_dim = m.code_dim
    ae = TamingAutoencoder(networks, taming_ddconfig(cfg), embed_dim, build_quantizer(embed_dim, cfg.quantizer))
    disc = discriminators.NLayerDiscriminator(input_nc=m.in_channels, ndf=cfg.loss.disc_channels,
                                              n_layers=cfg.loss.disc_layers, use_actnorm=False)
    disc.apply(discriminators.weights_init)
    ae, disc = ae.to(device), disc.to(device)
    if channels_last:
        ae, disc = ae.to(memory_format=torch.channels_last), disc.to(memory_format=torch.channels_last)
    ae.train()
    disc.train()
    # taming's opt_ae: encoder, decoder, quantizer, quant_conv, post_quant_conv; opt_disc: the discriminator.
    ae_params = [p for part in (ae.encoder, ae.decoder, ae.quantizer, ae.quant_conv, ae.post_quant_conv)
                 for p in part.parameters() if p.requires_grad]
    opt_ae = make_optimizer(ae_params, cfg.train, device)
    opt_disc = make_optimizer([p for p in disc.parameters() if p.requires_grad], cfg.train, device)
    q = cfg.quantizer
    loss_weights = {"codebook": q.codebook_weight, "commitment": q.commitment_weight}
    autocast = (functools.partial(torch.autocast, device.type, dtype=torch.bfloat16)
                if amp_enabled(cfg.train.amp, device) else contextlib.nullcontext)
    batches = Batches(data, cfg.train.batch_size, device, shuffle=True, seed=cfg.train.seed,
                      channels_last=channels_last)
    window = Window(device, args.warmup, args.steps)
    for n, (images, _) in enumerate(batches.epoch(0), start=1):
        terms = taming_step(ae, disc, opt_ae, opt_disc, images, autocast, loss_weights, cfg.loss.disc_weight)
        window.step_done(n)
    return {**window.result(cfg.train.batch_size, args.steps),
            "last_step": {k: round(float(v), 5) for k, v in terms.items()},
            "parameters": {"encoder": parameters(ae.encoder) + parameters(ae.quant_conv),
                           "quantizer": parameters(ae.quantizer),
                           "decoder": parameters(ae.decoder) + parameters(ae.post_quant_conv),
                           "discriminator": parameters(disc), "total": parameters(ae) + parameters(disc),
                           "trainable": trainable(ae) + trainable(disc)}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--taming", type=Path, required=True, help="the folder that holds taming/")
    ap.add_argument("--device", default="cuda", help="cuda (the goal's figure: bf16) or cpu (a smoke check: fp32)")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=0, help="0: the preset's (64)")
    ap.add_argument("--warmup", type=int, help="untimed steps first (default 10 on CUDA, 1 on a CPU; >= 1: "
                                               "the discriminator joins ours at step 2, loss.disc_start=1)")
    ap.add_argument("--steps", type=int, default=30, help="timed steps")
    ap.add_argument("--taming-layouts", default="contiguous,channels_last",
                    help="taming's memory layouts to time, comma-separated")
    ap.add_argument("--diagnostic", action=argparse.BooleanOptionalAction,
                    help="also time ours without the loop's per-step bookkeeping (default: on CUDA only)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="more overrides of the preset: model.* and loss.disc_* shape both sides; train.* "
                         "(train.compile=true, say) is ours only")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--out", type=Path, help="JSON file (default benchmarks/results/<gpu>-vs-taming.json; "
                                             "cpu-smoke-vs-taming.json on a CPU)")
    args = ap.parse_args()
    if args.warmup is None:
        args.warmup = 1 if args.device == "cpu" else 10
    if args.diagnostic is None:
        args.diagnostic = args.device != "cpu"
    if args.warmup < 1 or args.steps < 1:
        raise SystemExit("--warmup and --steps must be >= 1")
    layouts = args.taming_layouts.split(",")
    if not layouts or set(layouts) - {"contiguous", "channels_last"}:
        raise SystemExit(f"--taming-layouts {args.taming_layouts!r}: choose from contiguous, channels_last")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    if device.type not in ("cuda", "cpu"):
        raise SystemExit(f"--device {args.device!r}: cuda or cpu")
    networks, discriminators = load_taming(args.taming)

    size = args.image_size
    overrides = ["loss.perceptual=none", f"train.device={args.device}", "train.progress=false", "train.epochs=1",
                 f"train.amp={'bf16' if device.type == 'cuda' else 'off'}", f"model.image_size={size}",
                 f"data.image_size={size}"]
    if args.batch_size:
        overrides.append(f"train.batch_size={args.batch_size}")
    cfg = load_config(PRESET, overrides + args.set)
    batch = cfg.train.batch_size
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, ((args.warmup + args.steps) * batch, cfg.model.in_channels, size, size),
                           dtype=torch.uint8, generator=g)
    data = ImageSet("synthetic", size, cfg.model.in_channels, images=images)

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    result = {
        "what": "one training step of both networks (autoencoder + patch discriminator, one backward and one "
                "optimiser step each): ours (vqgan-f8-64 through training.loop.fit) vs taming-transformers' "
                "Encoder/Decoder/NLayerDiscriminator with taming's loss math; LPIPS off on both sides",
        "figure": "the goal's (bf16 on a GPU)" if device.type == "cuda" else
                  "CPU SMOKE CHECK of the script (fp32, tiny): not the goal's figure; on a shared CPU machine "
                  "loaded by other jobs, its timings say nothing about speed",
        "device": gpu or "cpu", "torch": torch.__version__, "cuda": torch.version.cuda,
        "torch_threads": torch.get_num_threads(), "taming_files_sha256": taming_file_hashes(args.taming),
        "config": {"preset": PRESET, "image_size": size, "batch_size": batch, "warmup_steps": args.warmup,
                   "timed_steps": args.steps, "autocast": "bf16" if amp_enabled(cfg.train.amp, device) else "off",
                   "ours_channels_last": cfg.train.channels_last, "ours_compile": cfg.train.compile,
                   "codebook_size": cfg.quantizer.codebook_size, "disc_layers": cfg.loss.disc_layers,
                   "disc_channels": cfg.loss.disc_channels, "taming_ddconfig": taming_ddconfig(cfg),
                   "overrides": overrides + args.set, "cudnn_benchmark": torch.backends.cudnn.benchmark},
        "differences": [
            "discriminator norm: taming BatchNorm2d (its default, use_actnorm=False), ours GroupNorm",
            "quantizer: ours (EMA, k-means init) on both sides; taming's own VectorQuantizer2 is not used",
            "taming's Lightning loop runs the autoencoder forward twice a step (once per optimiser); here once",
            "taming's discriminator sees real and reconstructed images in two calls (as its loss does), ours in one",
            "both sides use our make_optimizer (Adam, fused on CUDA, the preset's lr and betas)",
            "ours also does the CLI's per-step bookkeeping (non-finite check, codebook usage, collapse watch)"],
    }
    parts = [("ours", lambda: run_ours(cfg, data, args, device))]
    if args.diagnostic:
        parts.append(("diagnostic_ours_without_loop_bookkeeping", lambda: run_ours_bare(cfg, data, args, device)))
    parts += [(f"taming_{layout}", functools.partial(run_taming, networks, discriminators, cfg, data, args, device,
                                                     layout == "channels_last")) for layout in layouts]
    for name, fn in parts:
        print(f"# {name} ...", file=sys.stderr, flush=True)
        gc.collect()  # the previous part's networks, so they count in no later peak
        left = torch.cuda.memory_allocated(device) if device.type == "cuda" else None
        try:
            result[name] = fn()
        except Exception as e:  # one shot on a GPU: keep the other parts' figures
            result[name] = {"error": f"{type(e).__name__}: {e}"[:500]}
        if left is not None:
            result[name]["memory_allocated_before_gib"] = round(left / 2 ** 30, 3)  # included in its peak
            torch.cuda.empty_cache()
        print(f"# {name}: {json.dumps(result[name])}", file=sys.stderr, flush=True)
    timed = [name for name in layouts if "ms_per_step" in result[f"taming_{name}"]]
    if "ms_per_step" in result["ours"] and timed:
        ours_ms = result["ours"]["ms_per_step"]
        fastest = min(timed, key=lambda name: result[f"taming_{name}"]["ms_per_step"])
        result["speedup_ours_over_taming"] = {name: round(result[f"taming_{name}"]["ms_per_step"] / ours_ms, 3)
                                              for name in timed}
        result["speedup_ours_over_fastest_taming"] = {"taming_layout": fastest,
                                                      "ratio": result["speedup_ours_over_taming"][fastest],
                                                      "goal": 1.5}
        ours_p, taming_p = result["ours"]["parameters"], result[f"taming_{fastest}"]["parameters"]
        result["parameter_difference"] = {k: ours_p[k] - taming_p[k] for k in ours_p}
    out = args.out or RESULTS / (f"{gpu.split()[1].lower() if gpu and len(gpu.split()) > 1 else 'gpu'}-vs-taming.json"
                                 if gpu else "cpu-smoke-vs-taming.json")
    print_and_write(result, out)
    if any("error" in result[name] for name, _ in parts):
        sys.exit(1)


if __name__ == "__main__":
    main()
