"""A run's report: RUN/report.md and RUN/report.html from metrics.json and the run's figures,
and the few lines `vqvae run` prints at the end.

The Markdown is the source; the HTML is that Markdown rendered by Python-Markdown (with its
tables extension) inside a small page template, so every table and image of the Markdown
appears in the page.
"""
from __future__ import annotations

import json
from pathlib import Path

import markdown
import numpy as np
import torch

from .figures import plot_usage_histogram
from .files import atomic_write_text
from .runs import read_metrics

# The figures a run may hold, in the order the report shows them.
FIGURES = (("Reconstructions (originals above, reconstructions below)", "reconstructions.png"),
           ("Samples", "samples.png"), ("VQ-VAE training", "curves.png"),
           ("Prior training", "prior_curves.png"), ("Codebook usage", "codebook_usage.png"))

HTML_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{padding:2px 8px;border-bottom:1px solid #ddd;text-align:left}}img{{max-width:100%;image-rendering:pixelated}}</style>
</head>
<body>
{body}
</body>
</html>
"""


def write_report(run_dir: str | Path) -> Path:
    """RUN/report.md and RUN/report.html: metrics, reconstruction and sample grids, curves,
    and a codebook-usage histogram (drawn here from the cached held-out codes)."""
    run_dir = Path(run_dir)
    metrics = read_metrics(run_dir)
    codes_path = run_dir / "codes" / "test.npy"
    if codes_path.is_file():
        K = metrics.get("prior", {}).get("codebook_size") or int(np.load(codes_path).max()) + 1
        plot_usage_histogram(torch.bincount(torch.from_numpy(np.load(codes_path).astype(np.int64)).flatten(),
                                            minlength=K), run_dir / "codebook_usage.png", "held-out codebook usage")
    md = report_markdown(run_dir, metrics)
    atomic_write_text(run_dir / "report.md", md + "\n")
    atomic_write_text(run_dir / "report.html", markdown_page(md, title=f"VQ-VAE run report: {run_dir.name}"))
    return run_dir / "report.md"


def markdown_page(md: str, title: str) -> str:
    """A whole HTML page showing the Markdown `md`."""
    # The report holds no HTML of its own: anything that looks like a tag (in a run or dataset
    # name) is shown as text, not passed through by Markdown as markup.
    body = markdown.markdown(md.replace("&", "&amp;").replace("<", "&lt;"), extensions=["tables"])
    return HTML_PAGE.format(title=title.replace("&", "&amp;").replace("<", "&lt;"), body=body)


def report_markdown(run_dir: Path, metrics: dict) -> str:
    ev = metrics.get("evaluation", {})
    rec = ev.get("reconstruction", {})
    lines = [f"# VQ-VAE run report: {run_dir.name}", ""]
    if rec:
        lines += ["## Reconstruction (held-out)", "",
                  f"- test set: {ev.get('test_dataset')} ({rec.get('num_images')} images)",
                  f"- MSE {rec.get('mse', float('nan')):.5f} (clipped to [0, 1]: {rec.get('mse_clipped', float('nan')):.5f}), "
                  f"PSNR {rec.get('psnr_db', float('nan')):.2f} dB"]
        if "psnr_8bit_per_image_db" in rec:
            ssim = rec.get("ssim")
            lines.append(f"- on 8-bit images: PSNR {rec['psnr_8bit_per_image_db']:.2f} dB (mean of per-image PSNRs), "
                         f"{rec['psnr_8bit_db']:.2f} dB (of the set's MSE); SSIM "
                         + (f"{ssim:.4f} (Gaussian 11x11 window, sigma 1.5, as torchmetrics)" if ssim is not None
                            else "not defined for images under 11 px"))
        lines += [f"- codes used {rec.get('codes_used')} of {rec.get('codes_used', 0) + rec.get('dead_codes', 0)}, "
                  f"perplexity {rec.get('perplexity')}", ""]
    lines += _texture_lines(ev.get("texture", {})) + _perceptual_lines(ev.get("perceptual", {}))
    lines += objective_lines(metrics.get("vqvae", {}))
    prior = ev.get("prior", {})
    prior_metrics = metrics.get("prior", {})
    # A prior on pseudo-classes is scored in its unconditional mode (its clusters are not kept).
    given = (" in its unconditional mode (a prior on pseudo-classes)" if prior_metrics.get("pseudo_classes")
             else " given the class" if prior_metrics.get("conditional") else "")
    if "test_bits_per_code" in prior:
        lines += ["## Prior", "", f"- test negative log-likelihood: {prior['test_bits_per_code']:.4f} bits per code{given}"]
    elif "test_masked_nats" in prior:  # MaskGIT: no likelihood, so no bits per code
        lines += ["## Prior", "", f"- MaskGIT, test masked cross-entropy: {prior['test_masked_nats']:.4f} nats "
                  f"per masked code{given} ({prior.get('masked_nats_meaning', 'not a likelihood, not bits per code')})"]
    if "test_bits_per_code" in prior or "test_masked_nats" in prior:
        drawn = _sample_settings(run_dir)
        if drawn:
            lines.append(f"- samples drawn with {drawn}{_tuned_note(run_dir, metrics)}")
        lines.append("")
    lines += _tuning_section(run_dir, metrics)
    sq = ev.get("samples", {})
    if "rows" in sq:
        lines += ["## Sample quality (calibrated; classifier features)", "",
                  "Each row: n images scored against the same reference of n real held-out images. Real images "
                  "and the VQ-VAE's reconstructions of them bound what samples can reach; noise shows the far end. "
                  "Fréchet distance: lower is better; precision (no malformed images) and recall (no missing "
                  f"modes): higher is better, k = {sq['k']} nearest neighbours.", "",
                  "| images | Fréchet distance | precision | recall | confidence | class coverage | classes present |",
                  "|---|---|---|---|---|---|---|"]
        for name, r in sq["rows"].items():
            lines.append(f"| {name} | {r['frechet_distance']:.3f} | {r['precision']:.3f} | {r['recall']:.3f} | "
                         f"{r['confidence']:.3f} | {r['class_coverage']:.3f} | {r['classes_present']} |")
        c = sq.get("classifier", {})
        fid = sq.get("inception_fid", {})
        fid_text = fid.get("fid") if fid.get("available") else f"unavailable ({fid.get('reason')})"
        lines += ["", f"Samples' Fréchet distance / reconstructions': {sq['samples_vs_reconstructions']:.2f}. "
                  f"n = {sq['n']} ({sq.get('heldout')}). Classifier: held-out accuracy {c.get('heldout_accuracy')} "
                  f"on {c.get('heldout_set')}, trained on {c.get('train_images')} images with augmentation. "
                  f"Inception FID: {fid_text}", ""]
    for title, name in FIGURES:
        if (run_dir / name).is_file():
            lines += [f"## {title}", "", f"![{title}]({name})", ""]
    return "\n".join(lines)


def _texture_lines(tex: dict) -> list[str]:
    if "rows" not in tex:
        return [f"Texture measure skipped: {tex['skipped']}", ""] if "skipped" in tex else []
    levels = ", ".join(f"{size} px" for size in tex["levels"])
    lines = ["## Texture and sharpness (calibrated; no pretrained weights)", "",
             "Sliced Wasserstein distance (x 1e3) between 7x7 Laplacian-pyramid patches of each row and a reference "
             f"of n = {tex['n']} real held-out images, per level ({levels}) and averaged, and each row's "
             "high-frequency power over the reference's. Real images disjoint from the reference are the floor; a "
             "blurred copy of them shows what smoothing costs; noise shows the far end. Lower SWD is better; a power "
             "ratio below 1 means lost detail.", "",
             "| images | SWD x 1e3 per level | SWD x 1e3 mean | high-frequency power ratio |", "|---|---|---|---|"]
    for name, r in tex["rows"].items():
        lines.append(f"| {name} | {' / '.join(f'{v:.1f}' for v in r['swd_x1e3'])} | {r['swd_x1e3_mean']:.1f} | "
                     f"{r['high_frequency_power_ratio']:.3f} |")
    return lines + ["", f"Reconstructions' mean SWD / real images': {tex['reconstructions_vs_real']:.2f}.", ""]


def _perceptual_lines(p: dict) -> list[str]:
    if not p:
        return []
    parts = []
    if "rfid" in p:
        parts.append(f"rFID {p['rfid']:.3f} (Inception-v3, {p['num_images']} originals against their reconstructions)")
    if "lpips_vgg" in p:
        parts.append(f"LPIPS {p['lpips_vgg']:.4f} (VGG16, mean per image)")
    if p.get("skipped_line"):
        parts.append(p["skipped_line"])
    return ["## Perceptual metrics (pretrained networks)", "", *(f"- {part}" for part in parts), ""]
# Loss terms of a perceptual/adversarial run (training/losses.py), as the report names them.
OBJECTIVE_TERMS = (("recon", "reconstruction"), ("perceptual", "perceptual (LPIPS)"),
                   ("adversarial", "adversarial (model's)"), ("adaptive_weight", "adaptive weight applied"),
                   ("disc_loss", "discriminator loss"), ("logits_real", "discriminator logit, real (mean)"),
                   ("logits_fake", "discriminator logit, reconstructed (mean)"),
                   ("disc_accuracy", "discriminator accuracy"), ("r1", "R1 penalty"))


def objective_lines(vqvae: dict) -> list[str]:
    """What the VQ-VAE minimised and, for a perceptual/adversarial run, every term's mean over
    the last epoch ([] for the seed's MSE-only runs)."""
    objective, last = vqvae.get("objective", {}), vqvae.get("last_epoch", {})
    if not objective or (objective.get("reconstruction") == "l2" and objective.get("perceptual") == "none"
                         and objective.get("adversarial") == "none"):
        return []
    settings = ", ".join(f"{k} {v}" for k, v in objective.items() if k != "note")
    lines = ["## Training objective (VQ-VAE)", "", f"- {settings}"]
    if objective.get("note"):
        lines.append(f"- {objective['note']}")
    rows = [(label, last[key]) for key, label in OBJECTIVE_TERMS if isinstance(last.get(key), (int, float))]
    if rows:
        lines += ["", f"Training terms, mean over the last epoch ({last.get('epoch')}):", "", "| term | value |",
                  "|---|---|"] + [f"| {label} | {value:.4g} |" for label, value in rows]
    return lines + [""]


def _tuned_note(run_dir: Path, metrics: dict) -> str:
    """Why the samples were drawn with their settings: chosen by tune-sampling, or the config's."""
    tuning = metrics.get("sampling_tuning", {})
    try:
        drawn = json.loads((run_dir / "samples.json").read_text())
    except (OSError, ValueError):
        return ""
    if tuning and isinstance(drawn, dict) and drawn.get("prior_fingerprint") == tuning.get("prior_fingerprint") \
            and all(drawn.get(k) == v for k, v in tuning.get("chosen", {}).items()):
        return " (chosen by `vqvae tune-sampling` on validation data; see Sampling settings)"
    if tuning and isinstance(drawn, dict) and drawn.get("prior_fingerprint") != tuning.get("prior_fingerprint"):
        return " (the tuned settings belong to an earlier prior and are not used: run `vqvae tune-sampling` again)"
    return " (not the tuned settings: `vqvae sample RUN` redraws them with those)" if tuning else ""


def _interval_text(figure: dict) -> str:
    return f"{figure['mean']:.3f} [{figure['low']:.3f}, {figure['high']:.3f}]"


def _tuning_section(run_dir: Path, metrics: dict) -> list[str]:
    """The table tune-sampling scored on validation data, and the setting it chose and why."""
    tuning = metrics.get("sampling_tuning", {})
    if "settings" not in tuning:
        return []
    r = tuning["reconstructions"]
    chosen = ", ".join(f"{k} {v:g}" for k, v in tuning["chosen"].items())
    lines = ["## Sampling settings (chosen on validation data)", "",
             f"Rule: {tuning['rule']}. Chosen: **{chosen}**: {tuning['reason']}.", "",
             f"The run's samples (samples.png) were drawn with {_sample_settings(run_dir) or 'no samples yet'}"
             f"{_tuned_note(run_dir, metrics)}.", "",
             f"Each setting drew {tuning['draws']} sets of n = {tuning['n']} samples (seeds {tuning['seeds']}), "
             f"scored against {tuning['heldout']}; figures are means with 95% intervals over the draws. The last "
             f"column is a check the rule does not read: the Fréchet distance in the features of an untrained "
             f"network (random weights, no labels; each feature scaled by its spread over the reference).", "",
             "| guidance | temperature | top-p | Fréchet distance | precision | recall | classes present | "
             "untrained-network Fréchet |", "|---|---|---|---|---|---|---|---|",
             f"| reconstructions | | | {r['frechet_distance']:.3f} | {r['precision']:.3f} | {r['recall']:.3f} | "
             f"{r['classes_present']:g} | {r['untrained_frechet_distance']:.3f} |"]
    for row in tuning["settings"]:
        s = row["setting"]
        mark = " (chosen)" if s == tuning["chosen"] else ""
        lines.append(f"| {s['guidance']:g}{mark} | {s['temperature']:g} | {s['top_p']:g} | "
                     f"{_interval_text(row['frechet_distance'])} | {_interval_text(row['precision'])} | "
                     f"{_interval_text(row['recall'])} | {row['classes_present']['mean']:g} | "
                     f"{_interval_text(row['untrained_frechet_distance'])} |")
    return lines + [""]


def _sample_settings(run_dir: Path) -> str:
    """The settings RUN/samples.json records for the run's samples, in words ("" if none)."""
    try:
        s = json.loads((run_dir / "samples.json").read_text())
    except (OSError, ValueError):
        return ""
    if not isinstance(s, dict):
        return ""
    parts = [f"{key} {s[key]}" for key in ("temperature", "top_k", "top_p", "guidance", "steps", "choice_temperature")
             if key in s]
    return ", ".join(parts)


STEP_NAMES = {"vqvae_s": "VQ-VAE", "prior_s": "prior", "sample_s": "sampling", "evaluate_s": "evaluation"}


def timings_text(timings: dict) -> str:
    """{"vqvae_s": 47.0, "prior_s": 131.2, ...} -> "time: 178.2 s (VQ-VAE 47.0 s, prior 131.2 s, ...)"."""
    steps = [(STEP_NAMES.get(key, key.removesuffix("_s")), float(seconds)) for key, seconds in timings.items()]
    parts = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in steps)
    return f"time: {sum(s for _, s in steps):.1f} s ({parts})"


def summary_text(run_dir: Path) -> str:
    """What `vqvae run` prints at the end: the run's headline figures from metrics.json."""
    m = read_metrics(run_dir)
    ev = m.get("evaluation", {})
    rec, prior, sq = ev.get("reconstruction", {}), ev.get("prior", {}), ev.get("samples", {})
    lines = [f"run folder: {run_dir}"]
    if rec:
        lines.append(f"  reconstruction: MSE {rec['mse_clipped']:.5f} (clipped), PSNR {rec['psnr_db']:.2f} dB, "
                     f"{rec['codes_used']} codes used, perplexity {rec['perplexity']}")
        if "psnr_8bit_per_image_db" in rec:
            lines.append(f"  8-bit: PSNR {rec['psnr_8bit_per_image_db']:.2f} dB per image, "
                         f"{rec['psnr_8bit_db']:.2f} dB of the set's MSE; SSIM {rec['ssim']}")
    tex = ev.get("texture", {})
    if "rows" in tex:
        r = tex["rows"]
        lines.append(f"  texture SWD x 1e3: reconstructions {r['reconstructions']['swd_x1e3_mean']:.1f} (real "
                     f"{r['real']['swd_x1e3_mean']:.1f}, blurred {r['blurred']['swd_x1e3_mean']:.1f}, noise "
                     f"{r['noise']['swd_x1e3_mean']:.0f}); high-frequency power "
                     f"{r['reconstructions']['high_frequency_power_ratio']:.2f}x the real images'")
    if "test_bits_per_code" in prior:
        lines.append(f"  prior: {prior['test_bits_per_code']:.4f} bits per code on test codes")
    elif "test_masked_nats" in prior:
        lines.append(f"  prior (maskgit): {prior['test_masked_nats']:.4f} nats per masked code on test codes "
                     f"(masked cross-entropy, not a likelihood)")
    if "rows" in sq:
        r = sq["rows"]
        lines.append(f"  samples (n={sq['n']}): Fréchet {r['samples']['frechet_distance']:.2f} = "
                     f"{sq['samples_vs_reconstructions']:.2f}x the reconstructions' "
                     f"{r['reconstructions']['frechet_distance']:.2f} (real {r['real']['frechet_distance']:.2f}, "
                     f"noise {r['noise']['frechet_distance']:.0f}); precision {r['samples']['precision']:.3f}, "
                     f"recall {r['samples']['recall']:.3f}, {r['samples']['classes_present']} classes present")
    if "pipeline" in m:
        lines.append("  " + timings_text(m["pipeline"]["timings"]))
    lines.append(f"  report: {run_dir / 'report.md'}")
    return "\n".join(lines)
