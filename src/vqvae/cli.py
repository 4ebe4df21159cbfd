"""Command line: parse -> build a config -> call the API. No logic of its own."""
from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import signal
import sys
import time
import warnings
from pathlib import Path

from . import api, export
from .config import PRESETS, RunConfig, apply_overrides, check_sections, get_preset, load_config
from .data import choose_preset
from .errors import CheckpointError, ConfigError, VQVAEError
from .models.pretrained import is_model_folder
from .files import os_error_text
from .inpainting import DEFAULT_CLASS_CHOICE
from .runs import check_output_path, read_run_config


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows '(default: X)' once: not where the help text already states it, nor for defaults
    that say nothing (None, False, [])."""

    def _get_help_string(self, action):
        if "default" in (action.help or "") or action.default in (None, False, []):
            return action.help
        return super()._get_help_string(action)


def _set_arg(p: argparse.ArgumentParser, help: str) -> None:
    # "extend": every --set counts, in order (a later value for the same field wins).
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="SECTION.FIELD=VALUE",
                   help=help)


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", help=f"named settings: {', '.join(PRESETS)} (default: the one that fits --data, "
                                    f"chosen by its channels and image size)")
    p.add_argument("--config", metavar="FILE", help="JSON file of settings applied over the preset")
    p.add_argument("--data", metavar="NAME|PATH",
                   help="training data: mnist-5k (default), mnist, fashion-mnist, cifar10, a folder of images, "
                        "a .npy/.npz file of images, or a folder of MNIST IDX files")
    p.add_argument("--test-data", metavar="NAME|PATH",
                   help="held-out data (default: the dataset's test split, or a held-out fraction)")
    p.add_argument("--out", metavar="RUN_DIR", help="run folder (default: runs/<preset>-<time>)")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:1 ...")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    _set_arg(p, "override any config field, e.g. --set train.epochs=5 quantizer.codebook_size=512 (repeatable)")


def _device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")


def _overrides(args, extra: list[str] | None = None) -> list[str]:
    items = list(extra or [])
    if getattr(args, "data", None):
        items.append(f"data.dataset={args.data}")
    if getattr(args, "test_data", None):
        items.append(f"data.test_dataset={args.test_data}")
    if getattr(args, "device", None):
        items += [f"train.device={args.device}", f"prior_train.device={args.device}"]
    return items + list(args.overrides)


# A resumed run is rebuilt from its own config.json: options that would choose other settings
# or another folder are refused rather than silently ignored (or, for data, half applied).
NOT_WITH_RESUME = {"preset": "--preset", "config": "--config", "out": "--out", "data": "--data",
                   "test_data": "--test-data"}


# What `train-prior --set` may change: the VQ-VAE and data it trains on are the run's.
PRIOR_SECTIONS = ("prior", "prior_train", "sample")


def _run_config(args, extra: list[str] | None = None) -> tuple[RunConfig, Path, bool]:
    """(config, run folder, resume?) from --preset/--config/--set, or from the run being resumed."""
    if args.resume:
        given = [flag for name, flag in NOT_WITH_RESUME.items() if getattr(args, name, None) is not None]
        if given:
            raise ConfigError(f"{', '.join(given)} cannot be combined with --resume: a resumed run keeps its own "
                              f"settings, data and folder ({args.resume}/config.json); only --set of training "
                              f"settings (train.*, prior_train.*, sample.*) and --device may change. Start a new run "
                              f"with --out for other data or settings")
        run_dir = Path(args.resume)
        if is_model_folder(run_dir):
            raise CheckpointError(f"cannot resume {run_dir}: a model folder is for use, not training; resume the "
                                  f"run folder it was exported from")
        config = read_run_config(run_dir)
        return apply_overrides(config, _overrides(args, extra)), run_dir, True
    choice = choose_preset(args.preset, _overrides(args, extra), args.config)
    if choice.message:
        print(choice.message, flush=True)
    config = load_config(choice.preset, choice.overrides + _overrides(args, extra), args.config)
    run_dir = Path(args.out) if args.out else Path("runs") / f"{choice.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    check_output_path(run_dir, folder=True)
    if any((run_dir / "checkpoints").glob("*.pt")):
        raise CheckpointError(f"{run_dir} already holds a run: pass --resume {run_dir} to continue it, "
                              f"or choose another --out")
    return config, run_dir, False



def cmd_train(args):
    config, run_dir, resume = _run_config(args)
    result = api.train_vqvae(config, run_dir, resume=resume)
    if result.metrics:
        test = result.metrics["test"]
        print(f"done: held-out MSE {test['mse_clipped']:.5f} (clipped), PSNR {test['psnr_db']:.2f} dB, "
              f"{test['codes_used']}/{test['codes_used'] + test['dead_codes']} codes used; run folder {run_dir}")
        if config.loss.adversarial != "none" or config.loss.perceptual != "none":
            # A perceptual/adversarial run's terms, curves and reconstructions, to judge the GAN by.
            print(f"report: {api.write_report(run_dir)}")


def cmd_pipeline(args):
    config, run_dir, resume = _run_config(args)
    if resume:
        raise CheckpointError("pipeline does not resume; use `train --resume` and `train-prior --resume`")
    api.run_pipeline(config, run_dir)


def cmd_train_prior(args):
    run_dir = Path(args.run_dir)
    if is_model_folder(run_dir):
        raise CheckpointError(f"{run_dir} is a model folder, for use, not training: train the prior in the run folder")
    if not (run_dir / "config.json").is_file():
        raise CheckpointError(f"{run_dir} is not a run folder (no config.json): train a VQ-VAE there first")
    check_sections(args.overrides, PRIOR_SECTIONS, "train-prior")
    config = read_run_config(run_dir)
    extra = ["prior.conditional=true"] if args.conditional else []
    if args.device:
        extra.append(f"prior_train.device={args.device}")
    config = apply_overrides(config, extra + list(args.overrides))
    metrics = api.train_prior(config, run_dir, resume=args.resume).metrics
    if metrics:
        # MaskGIT has no likelihood: its figure is the masked cross-entropy, named as such.
        name, unit = (("masked_nats", "nats per masked code (masked cross-entropy at fixed ratios)")
                      if "test_masked_nats" in metrics else ("bits_per_code", "bits per code"))
        val = metrics[f"best_val_{name}"]
        print(f"done: {metrics[f'test_{name}']:.4f} {unit} on test codes"
              f"{f' (best validation {val:.4f})' if val is not None else ''}; run folder {run_dir}")


def cmd_reconstruct(args):
    print(api.reconstruct(args.checkpoint, args.out, data=args.data, num_images=args.num, device=args.device))


def cmd_encode(args):
    meta = api.encode(args.checkpoint, args.out, data=args.data, device=args.device)
    print(f"wrote {args.out}/codes.npy: {meta['shape']} codes of a {meta['codebook_size']}-code codebook "
          f"({meta['quantizer']['kind']})")


def cmd_decode(args):
    print(api.decode(args.checkpoint, args.codes, args.out, device=args.device))


def cmd_evaluate(args):
    result = api.evaluate(args.path, data=args.data, out=args.out, num_samples=args.num_samples,
                          device=args.device, samples=not args.no_samples, inception_weights=args.inception_weights,
                          lpips_vgg_weights=args.lpips_vgg_weights, allow_download=args.allow_download)
    print(json.dumps(result, indent=2))
    skipped = result["perceptual"].get("skipped_line")
    if skipped:
        print(skipped, file=sys.stderr)


def cmd_sample(args):
    if args.out:
        check_output_path(args.out, folder=True)
    result = api.sample(args.run_dir, out_dir=args.out, num_samples=args.num_samples, batch_size=args.batch_size,
                        temperature=args.temperature, top_k=args.top_k, seed=args.seed, class_=args.class_,
                        prior_path=args.prior, vqvae_path=args.vqvae, device=args.device, top_p=args.top_p,
                        guidance=args.guidance, steps=args.steps, choice_temperature=args.choice_temperature)
    print(f"{result['num_samples']} samples in {result['seconds']} s ({result['samples_per_s']}/s): {result['grid']}")


def cmd_inpaint(args):
    result = api.inpaint(args.run_dir, args.image, args.mask, args.out, class_=args.class_, margin=args.margin,
                         seed=args.seed, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                         guidance=args.guidance, steps=args.steps, choice_temperature=args.choice_temperature,
                         device=args.device, class_choice=args.class_choice)
    print(f"{result['images']} image(s): {result['mask_pixels']} pixels and {result['codes_redrawn']} codes re-drawn "
          f"by the {result['prior_kind']} prior: {result['out']} (+ .npy, .json)")
    if result.get("inferred_class") is not None and result["images"] == 1:
        name = (result["inferred_class_name"] or result["inferred_class"])[0]
        print(f"class inferred from the kept region: {name} (posterior {result['inferred_class_posterior'][0]:.3f})")


def _float_list(option: str, text: str | None) -> list[float] | None:
    """'1,1.5,2' -> [1.0, 1.5, 2.0]; None stays None (the option was not given)."""
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values:
        raise ConfigError(f"{option} {text!r}: expected numbers separated by commas, e.g. 1,1.5,2")
    return values


def cmd_tune_sampling(args):
    result = api.tune_sampling(args.run_dir, guidance=_float_list("--guidance", args.guidance),
                               temperature=_float_list("--temperature", args.temperature),
                               top_p=_float_list("--top-p", args.top_p),
                               draws=args.draws, num_images=args.num_images, recall_margin=args.recall_margin,
                               device=args.device)
    r = result["reconstructions"]
    print(f"validation, n={result['n']}, {result['draws']} draws; reconstructions: Fréchet "
          f"{r['frechet_distance']:.3f}, precision {r['precision']:.3f}, recall {r['recall']:.3f}")
    for row in result["settings"]:
        s, f, rec = row["setting"], row["frechet_distance"], row["recall"]
        print(f"  guidance {s['guidance']:g}, temperature {s['temperature']:g}, top-p {s['top_p']:g}: Fréchet "
              f"{f['mean']:.3f} [{f['low']:.3f}, {f['high']:.3f}], precision {row['precision']['mean']:.3f}, "
              f"recall {rec['mean']:.3f} [{rec['low']:.3f}, {rec['high']:.3f}]")
    chosen = ", ".join(f"{k} {v:g}" for k, v in result["chosen"].items())
    print(f"chosen: {chosen}: {result['reason']}; written to {Path(args.run_dir) / 'sampling.json'}, which `sample` "
          f"now uses (`vqvae evaluate {args.run_dir}` redraws the run's samples with it and updates the report)")


def cmd_export(args):
    if args.format == "diffusers":
        result = export.export_diffusers(args.source, args.out, data=args.data,
                                         num_images=export.DIFFUSERS_VERIFY_IMAGES if args.num_images is None
                                         else args.num_images,
                                         verify=not args.no_verify)
        check = result["verification"]
        verdict = (f"verified with diffusers {check['diffusers']} on {check['images']}: {check['codes_equal']}/"
                   f"{check['codes_compared']} codes equal ({check['distance_ties']} distance ties), images within "
                   f"{check['max_abs_image_difference']:.1e}" if "skipped" not in check
                   else f"NOT verified: {check['skipped']}")
        print(f"wrote diffusers VQModel folder {result['path']} (diffusers.VQModel.from_pretrained loads it); {verdict}")
        return
    if args.format == "folder":
        result = export.export_folder(args.source, args.out)
        sizes = ", ".join(f"{name} ({size / 1e3:.1f} kB)" for name, size in result["files"].items())
        print(f"wrote model folder {result['path']} ({' + '.join(result['models'])}): {sizes}")
        return
    result = export.export_onnx(args.source, args.out, data=args.data,
                                num_images=export.VERIFY_IMAGES if args.num_images is None else args.num_images,
                                verify=not args.no_verify)
    check = result["verification"]
    verdict = (f"verified with ONNX Runtime {check['onnxruntime']} on {check['images']}: {check['codes_equal']}/"
               f"{check['codes_compared']} codes equal ({check['distance_ties']} distance ties), images within "
               f"{check['max_abs_image_difference']:.1e}" if "skipped" not in check else f"NOT verified: {check['skipped']}")
    print(f"wrote {args.out}/encoder.onnx ({result['encoder']['bytes'] / 1e3:.1f} kB) and decoder.onnx "
          f"({result['decoder']['bytes'] / 1e3:.1f} kB); {verdict}")


def cmd_import(args):
    result = export.import_diffusers(args.folder, args.out, data=args.data, image_size=args.image_size,
                                     preset=args.preset, overrides=args.overrides)
    size = result["latent_size"]
    print(f"imported the diffusers VQModel in {result['from']} as run folder {result['path']}: {size}x{size} codes of "
          f"{result['codebook_size']}" + ("" if result["dataset"] else
                                          "; no --data given: pass --set data.dataset=IMAGES to train-prior"))


def cmd_presets(args):
    if args.name:
        print(json.dumps(get_preset(args.name).to_dict(), indent=2))
    else:
        for name in PRESETS:
            cfg = get_preset(name)
            m = cfg.model
            width = (f"vqgan {m.hidden_channels}x{m.channel_mult}" if m.arch == "vqgan"
                     else f"{m.hidden_channels} channels")
            print(f"{name:14s} {m.image_size}x{m.image_size}x{m.in_channels}, "
                  f"{width}, {cfg.quantizer.codebook_size} codes ({cfg.quantizer.kind}, "
                  f"{cfg.quantizer.update}), "
                  f"{cfg.train.epochs} epochs, batch {cfg.train.batch_size}, lr {cfg.train.lr}; prior "
                  f"{cfg.prior.kind} {cfg.prior.num_layers}x{cfg.prior.hidden_channels}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vqvae", description="Train VQ-VAEs, learn a prior over their codes, generate and measure images.",
        formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    fmt = HelpFormatter

    p = sub.add_parser("pipeline", help="the whole job: VQ-VAE, prior, samples, evaluation, report",
                       formatter_class=fmt)
    _config_args(p)
    p.set_defaults(func=cmd_pipeline)

    p = sub.add_parser("train", help="train a VQ-VAE (or --resume one)", formatter_class=fmt)
    _config_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("train-prior", help="train a prior (prior.kind: pixelcnn, transformer or maskgit) on a run's "
                                             "codes",
                       formatter_class=fmt)
    p.add_argument("run_dir", help="run folder holding a trained VQ-VAE")
    p.add_argument("--conditional", action="store_true", help="condition on the dataset's class labels")
    p.add_argument("--resume", action="store_true", help="continue the prior from its last checkpoint")
    p.add_argument("--device", help="auto (default), cpu, cuda ...")
    _set_arg(p, "override prior.*, prior_train.* and sample.* fields, e.g. --set prior_train.epochs=5 (repeatable)")
    p.set_defaults(func=cmd_train_prior)

    p = sub.add_parser("reconstruct", help="originals beside reconstructions, as a grid PNG", formatter_class=fmt)
    p.add_argument("checkpoint", help="VQ-VAE checkpoint file, run folder or model folder")
    p.add_argument("--data", help="images to reconstruct (name or folder; default: the run's held-out split)")
    p.add_argument("--out", default="reconstructions.png", help="output PNG")
    p.add_argument("--num", type=int, default=32, help="number of images (a spread over the set: every class)")
    _device_arg(p)
    p.set_defaults(func=cmd_reconstruct)

    p = sub.add_parser("encode", help="images -> integer code maps (.npy + .json)", formatter_class=fmt)
    p.add_argument("checkpoint", help="VQ-VAE checkpoint file, run folder or model folder")
    p.add_argument("--data", help="images to encode (default: the run's held-out split)")
    p.add_argument("--out", default="codes", help="output folder")
    _device_arg(p)
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("decode", help="code maps -> images (grid PNG + .npy)", formatter_class=fmt)
    p.add_argument("checkpoint", help="VQ-VAE checkpoint file, run folder or model folder")
    p.add_argument("codes", help="codes.npy (or the folder `encode` wrote)")
    p.add_argument("--out", default="decoded.png", help="output PNG (the images also go to the same name .npy)")
    _device_arg(p)
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser("evaluate", help="metrics JSON (and, for a run with a prior, a report)", formatter_class=fmt)
    p.add_argument("path", help="VQ-VAE checkpoint file, run folder or model folder")
    p.add_argument("--data", help="held-out images (default: the run's test split)")
    p.add_argument("--out", help="also write the metrics to this JSON file")
    p.add_argument("--num-samples", type=int, help="images per row of the calibrated sample score (default 1000; "
                                                   "at most half the held-out images)")
    p.add_argument("--no-samples", action="store_true", help="skip sampling and sample-quality scores")
    p.add_argument("--inception-weights", metavar="FILE",
                   help="rFID (and the samples' standard FID): torch-fidelity's Inception-v3 weights file, "
                        "weights-inception-2015-12-05-6726825d.pth (default: that file in torch.hub's checkpoint "
                        "folder, if there)")
    p.add_argument("--lpips-vgg-weights", metavar="FILE",
                   help="LPIPS: torchvision's VGG16 weights file, vgg16-397923af.pth (default: that file in "
                        "torch.hub's checkpoint folder, if there); the LPIPS heads ship with the lpips package")
    p.add_argument("--allow-download", action="store_true",
                   help="let torch-fidelity and torchvision download missing Inception-v3 / VGG16 weights into "
                        "torch.hub's checkpoint folder ($TORCH_HOME/hub/checkpoints)")
    _device_arg(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("sample", help="generate images from a run's prior and VQ-VAE", formatter_class=fmt)
    p.add_argument("run_dir", help="run folder or model folder with a VQ-VAE and a prior")
    p.add_argument("--out", help="output folder (default: the run folder)")
    p.add_argument("-n", "--num-samples", type=int, help="number of samples (default: sample.num_samples)")
    p.add_argument("--batch-size", type=int, help="samples drawn at once (default: sample.batch_size)")
    p.add_argument("--temperature", type=float, help="softmax temperature > 0 (default: sample.temperature)")
    p.add_argument("--top-k", type=int, help="sample among the k likeliest codes; 0 = all (default: sample.top_k)")
    p.add_argument("--seed", type=int, help="random seed (default: sample.seed)")
    p.add_argument("--top-p", type=float, help="sample among the fewest likeliest codes holding this probability "
                                                "mass (nucleus); 1 = all (default: sample.top_p)")
    p.add_argument("--guidance", type=float,
                   help="classifier-free guidance for a conditional prior trained with prior.label_dropout > 0: "
                        "0 = unconditional, 1 = conditional, > 1 = stronger class (default: sample.guidance)")
    p.add_argument("--steps", type=int, help="maskgit prior only: parallel decoding steps (default: sample.steps)")
    p.add_argument("--choice-temperature", type=float,
                   help="maskgit prior only: Gumbel noise on which draws each step keeps, annealed to 0 "
                        "(default: sample.choice_temperature)")
    p.add_argument("--class", dest="class_", help="class-conditional prior: a class index or name, or 'all'")
    p.add_argument("--prior", help="prior checkpoint or model folder (default: the run's)")
    p.add_argument("--vqvae", help="VQ-VAE checkpoint or model folder (default: the run's)")
    _device_arg(p)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("inpaint", help="re-draw a region of images with a run's prior; the rest is kept",
                       formatter_class=fmt)
    p.add_argument("run_dir", help="run folder or model folder with a VQ-VAE and a prior")
    p.add_argument("--image", required=True, help="an image at the model's size, or a folder or .npy of images")
    p.add_argument("--mask", required=True,
                   help="the region: a box x0,y0,x1,y1 in pixels (x1, y1 exclusive), or a mask image of the same "
                        "size (nonzero = re-draw, no transparency); one mask for all images")
    p.add_argument("--out", required=True, help="output .png or .jpg (also OUT.npy: uint8 images, OUT.json: "
                                                "settings)")
    p.add_argument("--class", dest="class_", help="conditional prior: re-draw the region as this class, or 'none': "
                                                  "the prior's unconditional mode (default: the class inferred from "
                                                  "the kept region, see --class-choice)")
    p.add_argument("--class-choice", help="without --class, a conditional prior infers each image's class from the "
                                          "kept region: 'argmax' (the likeliest class) or 'sample' (a draw from the "
                                          f"posterior) (default: {DEFAULT_CLASS_CHOICE})")
    p.add_argument("--margin", help="pixels around each code's cell in which a masked pixel makes the code re-drawn, "
                                    "or 'rf': the encoder's whole receptive field (default: half a cell)")
    p.add_argument("--seed", type=int, help="random seed (default: sample.seed)")
    p.add_argument("--temperature", type=float, help="softmax temperature > 0 (default: sample.temperature)")
    p.add_argument("--top-k", type=int, help="draw among the k likeliest codes; 0 = all (default: sample.top_k)")
    p.add_argument("--top-p", type=float, help="nucleus mass; 1 = all (default: sample.top_p)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance with --class (default: sample.guidance)")
    p.add_argument("--steps", type=int, help="maskgit prior only: decoding steps (default: sample.steps)")
    p.add_argument("--choice-temperature", type=float, help="maskgit prior only (default: sample.choice_temperature)")
    _device_arg(p)
    p.set_defaults(func=cmd_inpaint)

    p = sub.add_parser("tune-sampling", formatter_class=fmt,
                       help="choose a run's guidance, temperature and top-p on validation data (precision and "
                            "recall over several draws); sample and the report then use them")
    p.add_argument("run_dir", help="run folder with a VQ-VAE and a prior")
    p.add_argument("--guidance", metavar="G1,G2,...",
                   help="candidate guidance values (default: 1,1.5,2 for a conditional prior with label dropout, "
                        "else none)")
    p.add_argument("--temperature", metavar="T1,T2,...",
                   help="candidate temperatures (default: the run's sample.temperature)")
    p.add_argument("--top-p", metavar="P1,P2,...",
                   help="candidate top-p values (default: the run's sample.top_p)")
    p.add_argument("--draws", type=int, default=5, help="sample sets per setting (seeds), for the intervals")
    p.add_argument("--num-images", type=int, help="images per set (default and at most: half the validation split)")
    p.add_argument("--recall-margin", type=float, default=0.1,
                   help="a setting qualifies when its mean recall is at least the reconstructions' minus this")
    _device_arg(p)
    p.set_defaults(func=cmd_tune_sampling)

    p = sub.add_parser("export", help="a model folder (config.json + safetensors + card) or ONNX graphs",
                       formatter_class=fmt)
    p.add_argument("source", help="run folder, VQ-VAE checkpoint file or model folder")
    p.add_argument("--format", choices=("folder", "onnx", "diffusers"), required=True,
                   help="folder: config.json + vqvae.safetensors (+ prior.safetensors) + README.md, for "
                        "VQVAE.from_pretrained and every command here; onnx: encoder.onnx (images -> indices) and "
                        "decoder.onnx (indices -> images); diffusers: a VQModel folder for "
                        "diffusers.VQModel.from_pretrained (model.arch=vqgan with a plain vq codebook)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--data", help="onnx, diffusers: images to verify on (default: the run's test split)")
    p.add_argument("--num-images", type=int,
                   help=f"onnx, diffusers: images to verify on (default: {export.VERIFY_IMAGES} for onnx, "
                        f"{export.DIFFUSERS_VERIFY_IMAGES} for diffusers)")
    p.add_argument("--no-verify", action="store_true", help="onnx, diffusers: skip the check against ONNX Runtime "
                                                            "or diffusers")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("import", help="a diffusers VQModel folder -> a run folder to encode with and train priors on",
                       formatter_class=fmt)
    p.add_argument("folder", help="diffusers VQModel folder (config.json + diffusion_pytorch_model.safetensors)")
    p.add_argument("--out", required=True, help="run folder to create")
    p.add_argument("--data", metavar="NAME|PATH", help="images the prior will train on (data.dataset)")
    p.add_argument("--image-size", type=int, help="the images' side (default: the VQModel's sample_size)")
    p.add_argument("--preset", default=export.IMPORT_PRESET, choices=list(PRESETS),
                   help="where the prior's, training's and sampling's settings come from")
    _set_arg(p, "override settings of the new run, e.g. --set prior_train.epochs=5 (repeatable)")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("presets", help="list presets, or print one's full config", formatter_class=fmt)
    p.add_argument("name", nargs="?", help="a preset to print")
    p.set_defaults(func=cmd_presets)
    return parser


ENVIRONMENT_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EEXIST,
                      errno.ENOTDIR, errno.EISDIR)


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as the user reads it: `warning: message` on one line, without Python's file,
    line number and source line."""
    print("warning: " + " ".join(str(message).split()), file=file or sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    # A path with bytes that are not UTF-8 (kept by Python as surrogates) prints as \xNN instead
    # of raising on the way out; stderr already does this.
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="backslashreplace")
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = show_warning
            args.func(args)
    except VQVAEError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader of our output went away (`vqvae train ... | head -1`): stop quietly, as a
        # command killed by SIGPIPE would, and keep the interpreter's exit flush from failing again.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except OSError as e:
        # The machine's, not the program's: a full disk, no permission to write, a read-only disk.
        if e.errno not in ENVIRONMENT_ERRORS:
            raise
        print(f"error: cannot write {e.filename or 'a file'}: {os_error_text(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
