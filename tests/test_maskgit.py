"""MaskGIT prior: masking schedule, iterative decoding, guidance, training and checkpoint choice."""
import json
import math

import numpy as np
import pytest
import torch

from conftest import tiny_overrides
from vqvae import api
from vqvae.cli import main
from vqvae.config import PriorConfig, load_config
from vqvae.data import TensorBatches
from vqvae.errors import ConfigError
from vqvae.models import MaskGITPrior, PriorSpec
from vqvae.models import maskgit_prior as maskgit_module
from vqvae.models.maskgit_prior import (VALIDATION_MASK_RATIOS, cosine_mask_ratio, training_mask,
                                        training_mask_counts, validation_masks)
from vqvae.runs import load_prior, read_metrics
from vqvae.training.prior_stage import heldout_masked_nats

MASKGIT_SETTINGS = ["prior.kind=maskgit", "prior.num_layers=2", "prior.hidden_channels=16", "prior.num_heads=2"]


def maskgit(conditional=False, label_dropout=0.0, size=5, codes=6, classes=3):
    torch.manual_seed(0)
    config = PriorConfig(kind="maskgit", num_layers=2, hidden_channels=16, num_heads=2, conditional=conditional,
                         label_dropout=label_dropout)
    return MaskGITPrior(config, PriorSpec(codebook_size=codes, latent_size=size, num_classes=classes)).eval()


# ---------------------------------------------------------------------- masking schedule

def test_training_mask_counts_follow_the_cosine_schedule():
    L = 49
    u = torch.tensor([0.0, 0.25, 0.5, 0.75, 0.999999])
    expected = [49, math.ceil(49 * math.cos(math.pi / 8)), math.ceil(49 * math.cos(math.pi / 4)),
                math.ceil(49 * math.cos(3 * math.pi / 8)), 1]  # at least one masked
    assert training_mask_counts(u, L).tolist() == expected
    codes = torch.zeros(2000, 7, 7, dtype=torch.long)
    counts = training_mask(codes, torch.Generator().manual_seed(0)).flatten(1).sum(1).float()
    assert counts.min() >= 1 and counts.max() <= L
    # E[cos(pi/2 u)] = 2/pi of the codes (plus the ceiling's half a code on average)
    assert abs(counts.mean().item() - (L * 2 / math.pi + 0.5)) < 1.0
    # Fully masked maps (what sampling starts from): P(cos(pi/2 u) > 1 - 1/L) = 12.9% at L = 49.
    assert 0.10 < (counts == L).float().mean().item() < 0.16


def test_validation_masks_are_fixed_and_at_the_stated_ratios():
    first = validation_masks((4, 5, 5), "cpu")
    again = validation_masks((4, 5, 5), "cpu")
    assert [m.flatten(1).sum(1).tolist() for m in first] == [[round(r * 25)] * 4 for r in VALIDATION_MASK_RATIOS]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert cosine_mask_ratio(0.0) == 1.0 and abs(cosine_mask_ratio(1.0)) < 1e-12


# ---------------------------------------------------------------------- iterative decoding

def record_inputs(model, monkeypatch) -> list[torch.Tensor]:
    seen = []
    forward = MaskGITPrior.forward

    def spy(self, codes, labels=None):
        seen.append(codes.clone())
        return forward(self, codes, labels)

    monkeypatch.setattr(MaskGITPrior, "forward", spy)
    return seen


def test_a_step_never_changes_a_known_code_and_follows_the_schedule(monkeypatch):
    model = maskgit(codes=6, size=6)
    generator = torch.Generator().manual_seed(3)
    codes = torch.randint(0, 6, (4, 6, 6), generator=generator)
    masked = torch.zeros_like(codes, dtype=torch.bool)
    masked[0] = True
    masked[1, 3:] = True  # a lower half
    masked[2, 2, 2] = True  # a single code
    masked[3, :, :4] = True
    seen = record_inputs(model, monkeypatch)
    steps = 8
    out = model.complete(codes, masked, steps=steps, generator=generator)
    assert len(seen) == steps
    for inputs in seen:  # every step's input keeps every known code as it was
        assert torch.equal(inputs[~masked], codes[~masked])
    assert torch.equal(out[~masked], codes[~masked])
    assert (out != model.mask_token).all() and out.max() < 6
    # After step t, max(1, min(still masked - 1, floor(N cos(pi/2 t/T)))) codes stay masked (the reference's rule).
    start = masked.flatten(1).sum(1)
    for t in range(1, steps):
        left = (seen[t] == model.mask_token).flatten(1).sum(1)
        before = (seen[t - 1] == model.mask_token).flatten(1).sum(1)
        planned = torch.floor(start * math.cos(math.pi / 2 * t / steps)).long()
        assert left.tolist() == torch.maximum(torch.ones_like(left), torch.minimum(before - 1, planned)).tolist()


def test_one_step_with_top_k_1_takes_the_argmax():
    model = maskgit(codes=6)
    out = model.sample(3, steps=1, top_k=1, generator=torch.Generator().manual_seed(0))
    all_masked = torch.full((3, 5, 5), model.mask_token)
    assert torch.equal(out, model(all_masked).argmax(1))


def test_guidance_zero_equals_the_unconditional_logits(monkeypatch):
    model = maskgit(conditional=True, label_dropout=0.1)
    seen = []
    mix = maskgit_module.mix_guidance

    def spy(logits, guidance, doubled):
        out = mix(logits, guidance, doubled)
        seen.append(out.clone())
        return out

    monkeypatch.setattr(maskgit_module, "mix_guidance", spy)
    labels = torch.tensor([0, 1, 2])
    model.sample(3, labels, guidance=0.0, steps=1, generator=torch.Generator().manual_seed(0))
    all_masked = torch.full((3, 5, 5), model.mask_token)
    unconditional = model(all_masked, torch.full((3,), model.null_class)).flatten(2).transpose(1, 2)
    conditional = model(all_masked, labels).flatten(2).transpose(1, 2)
    assert torch.allclose(seen[0], unconditional, atol=1e-5)
    assert not torch.allclose(seen[0], conditional, atol=1e-3)
    with pytest.raises(ConfigError, match="label dropout"):
        maskgit(conditional=True).sample(2, torch.tensor([0, 1]), guidance=2.0)


def test_every_position_sees_every_other_code():
    """Bidirectional: the logits at the first position change with the last code (a causal prior's could not)."""
    model = maskgit(codes=6)
    codes = torch.full((1, 5, 5), model.mask_token)
    changed = codes.clone()
    changed[0, 4, 4] = 2
    assert not torch.allclose(model(codes)[0, :, 0, 0], model(changed)[0, :, 0, 0])


# ---------------------------------------------------------------------- config

def test_steps_and_choice_temperature_are_maskgit_options(bar_folder):
    with pytest.raises(ConfigError, match="sample.steps=8 is for prior.kind=maskgit"):
        load_config("tiny", ["sample.steps=8"])
    with pytest.raises(ConfigError, match="sample.choice_temperature=2.0 is for prior.kind=maskgit"):
        load_config("tiny", ["prior.kind=transformer", "prior.num_heads=2", "sample.choice_temperature=2"])
    cfg = load_config("tiny", MASKGIT_SETTINGS + ["sample.steps=8", "sample.choice_temperature=2"])
    assert cfg.sample.steps == 8
    with pytest.raises(ConfigError, match="sample.steps=0"):
        load_config("tiny", MASKGIT_SETTINGS + ["sample.steps=0"])


# ---------------------------------------------------------------------- training through the normal path

@pytest.fixture(scope="module")
def maskgit_run(bar_folder, tmp_path_factory):
    """A tiny run with a VQ-VAE and a class-conditional MaskGIT prior (label dropout: guidance works)."""
    run = tmp_path_factory.mktemp("maskgit-run")
    cfg = load_config("tiny", tiny_overrides(bar_folder) + MASKGIT_SETTINGS + [
        "prior.conditional=true", "prior.label_dropout=0.2", "prior_train.epochs=3", "sample.steps=6"])
    api.train_vqvae(cfg, run)
    result = api.train_prior(cfg, run)
    return run, result


def test_api_trains_a_maskgit_prior_and_chooses_checkpoints_on_the_masked_loss(maskgit_run):
    run, result = maskgit_run
    metrics = read_metrics(run)["prior"]
    assert metrics["kind"] == "maskgit"
    assert not any("bits" in key for key in metrics)  # no likelihood is claimed
    history = [h["val_masked_nats"] for h in metrics["history"]]
    assert metrics["best_val_masked_nats"] == min(history) and "0.25, 0.5, 0.75" in metrics["masked_nats_meaning"]
    # The kept weights are the best epoch's on the masked validation loss: re-scoring them gives that figure.
    prior, _, _ = load_prior(run)
    assert isinstance(prior, MaskGITPrior)
    val_codes = torch.from_numpy(np.load(run / "codes" / "val.npy")).long()
    from vqvae.data import load_splits
    from vqvae.runs import read_run_config
    val_labels = load_splits(read_run_config(run).data).val.labels
    score = heldout_masked_nats(prior, TensorBatches((val_codes, val_labels), 500, torch.device("cpu"),
                                                     shuffle=False))
    assert score == pytest.approx(min(history), abs=2e-5)
    assert torch.equal(result.model.cpu().state_dict()["head.weight"], prior.state_dict()["head.weight"])


def test_cli_trains_and_samples_a_maskgit_prior(maskgit_run, tmp_path, capsys):
    run, _ = maskgit_run
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("prior-*.pt"))
    assert main(["train-prior", str(copy), "--set", "prior_train.epochs=1", "prior.conditional=false"]) == 0
    assert "nats per masked code" in capsys.readouterr().out
    out = tmp_path / "samples"
    assert main([str(a) for a in ("sample", copy, "--out", out, "-n", 5, "--steps", 4, "--choice-temperature", 1.0,
                                  "--top-k", 3)]) == 0
    settings = json.loads((out / "samples.json").read_text())
    assert settings["steps"] == 4 and settings["choice_temperature"] == 1.0
    assert np.load(out / "samples.npy").shape == (5, 1, 16, 16)
    # conditional, guided, from the module's run
    assert main([str(a) for a in ("sample", run, "--out", tmp_path / "guided", "-n", 4, "--guidance", 2.0,
                                  "--class", "all")]) == 0
    assert json.loads((tmp_path / "guided" / "samples.json").read_text())["steps"] == 6  # the run's sample.steps


def test_steps_on_an_autoregressive_prior_is_a_one_line_error(trained_run, tmp_path, capsys):
    assert main(["sample", str(trained_run), "--out", str(tmp_path), "-n", "2", "--steps", "8"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --steps and --choice-temperature are for a maskgit prior") and err.count("\n") == 1


def test_evaluate_and_report_keep_the_masked_loss_out_of_bits_per_code(maskgit_run, tmp_path):
    run, _ = maskgit_run
    result = api.evaluate(run, samples=False, device="cpu")
    assert "test_masked_nats" in result["prior"] and "test_bits_per_code" not in result["prior"]
    report = (run / "report.md").read_text()
    assert "MaskGIT, test masked cross-entropy" in report and "nats per masked code" in report
    assert "negative log-likelihood" not in report and "bits per code given" not in report
    from vqvae import export

    export.export_folder(run, tmp_path / "folder")
    card = (tmp_path / "folder" / "README.md").read_text()
    assert "nats per masked code" in card and "bits per code on test codes" not in card


# ---------------------------------------------------------------------- inpainting

from PIL import Image  # noqa: E402

from conftest import bar_images, save_bar_folder  # noqa: E402
from vqvae.config import ModelConfig, QuantizerConfig  # noqa: E402
from vqvae.inpainting import code_mask, inpaint_images, parse_mask, receptive_field  # noqa: E402
from vqvae.models import VQVAE  # noqa: E402


def test_receptive_field_of_the_seed_encoder_is_exact():
    # Two 4x4 stride-2 convs (pad 1): 4 + 3*2 = 10 pixels, first one at -1 - 2 = -3; a 3x3 conv at stride 4:
    # +8 (-7); two residual blocks, each a 3x3 conv: +16 (-15). 34 pixels from 4i - 15.
    model = VQVAE(ModelConfig(image_size=64), QuantizerConfig(codebook_size=8)).eval()
    field = receptive_field(model)
    assert (field.size, field.start, field.stride) == (34, -15, 4)
    # What it means: blanking pixels outside a code's field leaves that code's latent bit for bit the same.
    x = torch.rand(1, 1, 64, 64)
    mask = torch.zeros(64, 64, dtype=torch.bool)
    mask[40:, 40:] = True
    outside = ~code_mask(mask, 16, field=field)
    z, z_blanked = model.encode(x), model.encode(x.masked_fill(mask, 0))
    assert outside.sum() > 50
    assert torch.equal(z[0][:, outside], z_blanked[0][:, outside])
    assert not torch.equal(z[0][:, ~outside], z_blanked[0][:, ~outside])


def test_code_mask_rule():
    mask = torch.zeros(28, 28, dtype=torch.bool)
    mask[14:] = True  # the lower half; code rows are 4-pixel cells
    assert code_mask(mask, 7).any(1).tolist() == [False] * 3 + [True] * 4  # row 3 holds pixels 12..15
    assert code_mask(mask, 7, margin=3).any(1).tolist() == [False] * 2 + [True] * 5  # cell 2 grown to 5..14
    mask = torch.zeros(28, 28, dtype=torch.bool)
    mask[0, 27] = True  # one pixel: the one code over it, and its neighbours only with a margin
    assert code_mask(mask, 7, margin=0).nonzero().tolist() == [[0, 6]]


def test_parse_mask():
    assert parse_mask("2,3,5,4", 8).nonzero().tolist() == [[3, 2], [3, 3], [3, 4]]
    for bad in ("0,0,0,4", "0,0,9,4", "a,b,c,d", "5,0,2,4"):
        with pytest.raises(ConfigError, match="--mask"):
            parse_mask(bad, 8)


@pytest.mark.parametrize("kind", ["maskgit", "pixelcnn"])
def test_inpainting_blanks_before_encoding_and_keeps_the_other_pixels_bitwise(maskgit_run, trained_run, kind,
                                                                               monkeypatch):
    run = maskgit_run[0] if kind == "maskgit" else trained_run
    vqvae, _ = api.load_vqvae(run, "cpu")
    prior, _, _ = load_prior(run, "cpu")
    images = torch.from_numpy(bar_images(6, seed=5)[0])[:, None]
    mask = torch.zeros(16, 16, dtype=torch.bool)
    mask[9:, 3:12] = True
    seen = []
    encode = VQVAE.encode

    def spy(self, x):
        seen.append(x.clone())
        return encode(self, x)

    monkeypatch.setattr(VQVAE, "encode", spy)
    result = inpaint_images(vqvae, prior, images, mask, labels=torch.tensor([0, 1] * 3), guidance=1.0,
                            generator=torch.Generator().manual_seed(0))
    encoded = seen[0]
    assert (encoded[:, :, mask] == 0).all()  # the encoder never sees the masked pixels
    assert torch.equal(encoded[:, :, ~mask], images[:, :, ~mask].float() / 255)
    assert torch.equal(result.images[:, :, ~mask], images[:, :, ~mask])  # bit for bit
    assert (result.images[:, :, mask] != images[:, :, mask]).any()
    blanked_codes = vqvae.codes(encoded)
    if kind == "maskgit":  # exactly the masked codes are re-drawn
        assert torch.equal(result.codes[:, ~result.code_mask], blanked_codes[:, ~result.code_mask])
    else:  # raster order: everything before the first masked code is kept
        first = int(result.code_mask.flatten().nonzero()[0])
        assert torch.equal(result.codes.flatten(1)[:, :first], blanked_codes.flatten(1)[:, :first])


def test_inpaint_command(maskgit_run, tmp_path, capsys):
    run, _ = maskgit_run
    images = bar_images(4, seed=7)[0]
    Image.fromarray(images[0]).save(tmp_path / "one.png")
    assert main(["inpaint", str(run), "--image", str(tmp_path / "one.png"), "--mask", "0,8,16,16", "--out",
                 str(tmp_path / "out.png"), "--class", "1", "--steps", "4"]) == 0
    result = np.asarray(Image.open(tmp_path / "out.png"))
    assert result.shape == (16, 16) and np.array_equal(result[:8], images[0][:8])
    settings = json.loads((tmp_path / "out.json").read_text())
    # code rows 1-3: row 1's cell (pixels 4-7) grown by the default margin of 2 reaches pixel 9
    assert settings["class"] == "1" and settings["steps"] == 4 and settings["codes_redrawn"] == 12
    np.save(tmp_path / "many.npy", images)
    mask = np.zeros((16, 16), np.uint8)
    mask[6:10, 6:10] = 255  # the border codes stay: the class is inferred from them
    Image.fromarray(mask).save(tmp_path / "mask.png")
    assert main(["inpaint", str(run), "--image", str(tmp_path / "many.npy"), "--mask", str(tmp_path / "mask.png"),
                 "--out", str(tmp_path / "many.png")]) == 0
    many = np.load(tmp_path / "many.npy")
    assert many.shape == (4, 1, 16, 16) and np.array_equal(many[:, 0, :4], images[:, :4])
    assert json.loads((tmp_path / "many.json").read_text())["class"] == "inferred"  # no class: inferred


@pytest.mark.parametrize("mask_kind, message", [
    ("small", "is 8x8 pixels; the images are 16x16"),
    ("empty", "selects no pixel"),
    ("box", "a box needs 0 <= x0 < x1 <= 16"),
    ("margin", "--margin"),
])
def test_inpaint_bad_masks_are_one_line_errors(maskgit_run, tmp_path, capsys, mask_kind, message):
    run, _ = maskgit_run
    Image.fromarray(bar_images(1)[0][0]).save(tmp_path / "one.png")
    mask = {"small": np.full((8, 8), 255, np.uint8), "empty": np.zeros((16, 16), np.uint8)}.get(mask_kind)
    spec = "3,3,3,9"
    if mask is not None:
        Image.fromarray(mask).save(tmp_path / "mask.png")
        spec = str(tmp_path / "mask.png")
    extra = ["--margin", "-2"] if mask_kind == "margin" else []
    if mask_kind == "margin":
        spec = "0,0,4,4"
    code = main(["inpaint", str(run), "--image", str(tmp_path / "one.png"), "--mask", spec, "--out",
                 str(tmp_path / "out.png")] + extra)
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1


def test_tune_sampling_draws_a_maskgit_prior_with_the_runs_decoding(tmp_path, bar_folder, monkeypatch):
    """tune-sampling on a MaskGIT run with its own steps and choice temperature: the candidates are checked
    against the run's prior kind (not a default PixelCNN's) and drawn with the run's decoding."""
    from vqvae.models.maskgit_prior import MaskGITPrior

    cfg = load_config("tiny", tiny_overrides(bar_folder) + [
        "data.val_fraction=0.3", "prior.kind=maskgit", "prior.num_layers=1", "prior.hidden_channels=16",
        "prior.conditional=true", "prior.label_dropout=0.1", "sample.steps=3", "sample.choice_temperature=2.0"])
    run = tmp_path / "run"
    api.train_vqvae(cfg, run)
    api.train_prior(cfg, run)
    seen = set()
    original = MaskGITPrior.sample

    def spy(self, *args, **kwargs):
        seen.add((kwargs.get("steps"), kwargs.get("choice_temperature")))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(MaskGITPrior, "sample", spy)
    result = api.tune_sampling(run, guidance=[1.0, 2.0], draws=2, device="cpu", write=False)
    assert seen == {(3, 2.0)}
    assert result["maskgit_decoding"] == {"steps": 3, "choice_temperature": 2.0}


# ---------------------------------------------------------------------- inferring the class from the kept region

from vqvae.inpainting import (LIKELIHOOD_BATCH_ELEMENTS, class_posterior, infer_classes, kept_log_likelihood,  # noqa: E402
                               kept_positions, likelihood_rows_per_pass)
from vqvae.runs import read_run_config  # noqa: E402
from vqvae.models.prior_common import ConditionalPrior  # noqa: E402


class TablePrior(ConditionalPrior):
    """A hand-made conditional prior: every position's code distribution is table[class], whatever
    the other codes, so p(kept codes | class) is a product a test can write down. Records its inputs."""

    def __init__(self, kind: str, probs: list[list[float]], class_weights: tuple[float, ...] = ()):
        super().__init__()
        table = torch.tensor(probs).log()  # (C, K)
        self.config = PriorConfig(kind=kind, conditional=True, label_dropout=0.1)
        self.spec = PriorSpec(codebook_size=table.shape[1], latent_size=3, num_classes=table.shape[0],
                              class_weights=class_weights)
        self.mask_token = table.shape[1]
        self.register_buffer("table", table)
        self.inputs = []

    def forward(self, codes, labels=None):
        self.inputs.append((codes.clone(), labels.clone()))
        B, H, W = codes.shape
        return self.table[labels][:, :, None, None].expand(B, -1, H, W)


PROBS = [[0.7, 0.2, 0.1], [0.1, 0.2, 0.7], [1 / 3, 1 / 3, 1 / 3]]


@pytest.mark.parametrize("kind", ["maskgit", "pixelcnn"])
def test_inferring_a_class_from_no_kept_code_is_a_one_line_error(kind):
    """With nothing kept the posterior would be p(c) alone: its argmax, class 0, is no inference."""
    prior = TablePrior(kind, PROBS)
    codes = torch.zeros(2, 3, 3, dtype=torch.long)
    masked = torch.zeros(2, 3, 3, dtype=torch.bool)
    masked[1, 0, 0] = True  # the second map's first code: a raster-order prior keeps nothing before it
    if kind == "maskgit":
        masked[1] = True  # MaskGIT keeps what is not masked
    with pytest.raises(ConfigError, match=f"the {kind} prior keeps none of 1 image"):
        class_posterior(prior, codes, masked)


@pytest.mark.parametrize("kind", ["maskgit", "pixelcnn"])
@pytest.mark.parametrize("class_weights", [(), (0.1, 0.1, 0.8)])
def test_inferred_class_equals_a_hand_computation(kind, class_weights):
    prior = TablePrior(kind, PROBS, class_weights)
    codes = torch.tensor([[[2, 1, 2], [2, 2, 2], [0, 0, 0]],
                          [[0, 0, 1], [0, 0, 0], [1, 1, 1]]])
    masked = torch.zeros(2, 3, 3, dtype=torch.bool)
    masked[:, 0, 1] = True  # one masked code inside the top row, and the bottom row
    masked[:, 2] = True
    # MaskGIT keeps every unmasked code; a raster-order prior only those before (0, 1).
    kept = [[(0, 0), (0, 2), (1, 0), (1, 1), (1, 2)] if kind == "maskgit" else [(0, 0)]] * 2
    p = torch.tensor(PROBS, dtype=torch.float64)
    log_prior = (torch.tensor(class_weights or (1.0, 1.0, 1.0), dtype=torch.float64) / sum(class_weights or (3,))).log()
    expected = torch.stack([torch.stack([sum(p[c, codes[b, i, j]].log() for i, j in kept[b]) for c in range(3)])
                            for b in range(2)]) + log_prior
    expected = torch.softmax(expected, 1)
    posterior = class_posterior(prior, codes, masked)
    assert posterior.dtype == torch.float32  # float32 throughout: MPS has no float64
    assert torch.allclose(posterior.double(), expected, atol=1e-6)
    classes, probability = infer_classes(prior, codes, masked, "argmax")
    assert classes.tolist() == expected.argmax(1).tolist()
    if kind == "maskgit":  # five 2s: class 1; four 0s and a 1: class 0, even against a prior of 0.8 on class 2
        assert classes.tolist() == [1, 0]
    else:  # one kept code each (2, then 0): a likelihood ratio of 2.1 loses to the prior's 8 for class 2
        assert classes.tolist() == ([2, 2] if class_weights else [1, 0])
    assert torch.allclose(probability.double(), expected.max(1).values, atol=1e-6)
    # Sampling from the posterior: a clear posterior gives its class; an even one gives several.
    g = torch.Generator().manual_seed(0)
    even = torch.zeros(400, 3, 3, dtype=torch.long)
    half = torch.zeros_like(even, dtype=torch.bool)
    half[:, 2] = True
    drawn, _ = infer_classes(TablePrior(kind, [[1 / 3] * 3] * 3), even, half, "sample", g)
    assert set(drawn.tolist()) == {0, 1, 2}  # every class explains the kept codes alike: an even posterior


def test_maskgit_likelihood_is_the_chain_rule_over_groups_of_the_kept_codes():
    prior = TablePrior("maskgit", PROBS)
    codes = torch.randint(0, 3, (2, 3, 3), generator=torch.Generator().manual_seed(0))
    masked = torch.zeros(2, 3, 3, dtype=torch.bool)
    masked[:, 1:, 1:] = True
    masked[1, 0, 0] = True  # the maps keep different codes
    kept_log_likelihood(prior, codes, masked, torch.tensor([0, 1]), groups=3, orders=2)
    hidden = [c == prior.mask_token for c, _ in prior.inputs]
    # The first group from the class alone: one all-[MASK] pass per label serves both orders; then
    # groups 2 and 3 of each order, one pass each.
    assert len(hidden) == 1 + 2 * 2
    assert hidden[0].all() and prior.inputs[0][1].tolist() == [0, 1]
    everything = torch.ones_like(masked)
    for order in (hidden[1:3], hidden[3:]):
        assert all(h[masked].all() for h in order)  # the re-drawn region is never seen
        for earlier, later in zip([everything] + order, order):  # each pass reveals the group scored before it
            revealed = earlier & ~later
            assert torch.equal(earlier | later, earlier) and revealed.flatten(1).any(1).all()
    assert not torch.equal(hidden[1], hidden[3])  # two different orders


@torch.no_grad()
def one_pass_per_class_log_likelihood(prior, codes, masked, groups=4, orders=4):
    """(B, C) log p(kept codes | c), written the straightforward way: every class on its own, every
    MaskGIT group and order its own pass over the whole batch (the reference for the batched rule)."""
    B, H, W = codes.shape
    kept = kept_positions(prior, masked)
    columns = []
    for c in range(prior.spec.num_classes):
        labels = torch.full((B,), c)
        if prior.config.kind != "maskgit":
            log_probs = -torch.nn.functional.cross_entropy(prior(codes, labels), codes, reduction="none")
            columns.append((log_probs * kept).sum((1, 2)))
            continue
        flat_kept = kept.reshape(B, H * W)
        generator = torch.Generator().manual_seed(0)
        total = torch.zeros(B)
        for _ in range(orders):
            scores = torch.rand(H * W, generator=generator).expand(B, -1)
            rank = scores.masked_fill(~flat_kept, 2.0).argsort(1).argsort(1)
            group = (rank * groups // flat_kept.sum(1, keepdim=True)).view(B, H, W)
            for g in range(groups):
                hidden = masked | (kept & (group >= g))
                logits = prior(codes.masked_fill(hidden, prior.mask_token), labels)
                log_probs = -torch.nn.functional.cross_entropy(logits, codes, reduction="none")
                total += (log_probs * (kept & (group == g))).sum((1, 2))
        columns.append(total / orders)
    return torch.stack(columns, 1)


@pytest.mark.parametrize("kind", ["maskgit", "pixelcnn", "transformer"])
def test_all_classes_in_batched_passes_equal_one_pass_per_class(kind):
    """class_posterior scores every class in shared forward passes (and MaskGIT's class-only group
    once): the same log-likelihoods as one pass per class, whatever the number of maps per pass."""
    from vqvae.models import GatedPixelCNN, TransformerPrior

    torch.manual_seed(0)
    config = PriorConfig(kind=kind, num_layers=2, hidden_channels=16, num_heads=2, conditional=True,
                         label_dropout=0.1)
    spec = PriorSpec(codebook_size=6, latent_size=4, num_classes=3)
    prior = {"maskgit": MaskGITPrior, "pixelcnn": GatedPixelCNN, "transformer": TransformerPrior}[kind](config, spec)
    for parameter in prior.parameters():  # random weights large enough that the classes differ clearly
        torch.nn.init.normal_(parameter, std=0.3)
    prior.eval()
    B = 5
    codes = torch.randint(0, 6, (B, 4, 4), generator=torch.Generator().manual_seed(1))
    masked = torch.zeros(B, 4, 4, dtype=torch.bool)
    masked[:, 2:] = True
    masked[torch.arange(B), 1, torch.arange(B) % 4] = True  # each map keeps different codes
    expected = one_pass_per_class_log_likelihood(prior, codes, masked)  # (B, C)
    spread = (expected.max(1).values - expected.min(1).values).min()
    assert spread > 100 * 1e-5  # a class mix-up would be far outside the tolerance
    every_class = torch.arange(3)[:, None].expand(-1, B)
    for rows in (None, 1, 4, 7):  # 4 and 7 maps per pass cut across the classes' rows
        batched = kept_log_likelihood(prior, codes, masked, every_class, rows_per_pass=rows).T
        assert torch.allclose(batched, expected, atol=1e-5, rtol=1e-5), (rows, (batched - expected).abs().max())
    for c in range(3):  # one label per map: the (B,) form
        one = kept_log_likelihood(prior, codes, masked, torch.full((B,), c))
        assert one.shape == (B,) and torch.allclose(one, expected[:, c], atol=1e-5, rtol=1e-5)
    assert torch.allclose(class_posterior(prior, codes, masked), torch.softmax(expected - math.log(3), 1), atol=1e-6)
    # Maps per pass: the memory bound; an accelerator also takes at least the caller's batch.
    per_map = 17 * max(6, 4 * 16, 17)
    assert likelihood_rows_per_pass(prior, 10 ** 6, 17, "cpu") == LIKELIHOOD_BATCH_ELEMENTS // per_map < 10 ** 6
    assert likelihood_rows_per_pass(prior, 10 ** 6, 17, "cuda") == 10 ** 6
    assert likelihood_rows_per_pass(prior, 1, 17, "cuda") == LIKELIHOOD_BATCH_ELEMENTS // per_map


def test_autoregressive_kept_likelihood_is_exact(trained_run):
    """The pixelcnn's kept-prefix log-likelihood equals the sum of its incremental (cached) path's log-probs."""
    prior, _, _ = load_prior(trained_run, "cpu")
    B, size = 4, prior.spec.latent_size
    codes = torch.randint(0, prior.spec.codebook_size, (B, size, size), generator=torch.Generator().manual_seed(0))
    masked = torch.zeros_like(codes, dtype=torch.bool)
    masked[:, size // 2:] = True
    labels = torch.tensor([0, 1, 0, 1])
    log_probs = torch.log_softmax(prior.teacher_forced_logits(codes, labels).double(), 1)
    expected = log_probs.gather(1, codes[:, None])[:, 0, :size // 2].sum((1, 2))
    assert torch.allclose(kept_log_likelihood(prior, codes, masked, labels).double(), expected, atol=1e-4)


@pytest.mark.parametrize("kind", ["maskgit", "pixelcnn"])
def test_inpainting_without_a_class_redraws_with_the_inferred_one(maskgit_run, trained_run, kind, monkeypatch):
    run = maskgit_run[0] if kind == "maskgit" else trained_run
    vqvae, _ = api.load_vqvae(run, "cpu")
    prior, _, _ = load_prior(run, "cpu")
    images = torch.from_numpy(bar_images(6, seed=5)[0])[:, None]
    mask = torch.zeros(16, 16, dtype=torch.bool)
    mask[8:] = True
    given = []
    complete = type(prior).complete

    def spy(self, codes, masked, labels=None, **kw):
        given.append(labels.clone())
        return complete(self, codes, masked, labels, **kw)

    monkeypatch.setattr(type(prior), "complete", spy)
    result = inpaint_images(vqvae, prior, images, mask, generator=torch.Generator().manual_seed(0),
                            class_choice="argmax", guidance=1.0)
    blanked_codes = vqvae.codes(images.masked_fill(mask, 0).float() / 255)
    expected, probability = infer_classes(prior, blanked_codes, result.code_mask.expand_as(blanked_codes))
    assert torch.equal(result.classes, expected) and torch.equal(given[0], expected)
    assert torch.allclose(result.class_probability, probability) and (probability > 0).all()
    assert torch.equal(result.images[:, :, ~mask], images[:, :, ~mask])  # bit for bit


def test_inpaint_command_infers_the_class_and_keeps_the_unconditional_mode(maskgit_run, trained_run, tmp_path,
                                                                           capsys):
    run, _ = maskgit_run
    images = bar_images(4, seed=7)[0]
    np.save(tmp_path / "many.npy", images)
    Image.fromarray(images[0]).save(tmp_path / "one.png")
    base = ["inpaint", str(run), "--image", str(tmp_path / "many.npy"), "--mask", "0,8,16,16"]
    assert main(base + ["--out", str(tmp_path / "inferred.png")]) == 0
    settings = json.loads((tmp_path / "inferred.json").read_text())
    assert settings["class"] == "inferred" and settings["class_choice"] == "argmax"
    assert settings["class_prior"] == "uniform" and settings["guidance"] == read_run_config(run).sample.guidance
    assert len(settings["inferred_class"]) == 4 and set(settings["inferred_class"]) <= {0, 1}
    assert all(1 / 2 <= p <= 1 for p in settings["inferred_class_posterior"])  # argmax of 2 classes
    assert np.array_equal(np.load(tmp_path / "inferred.npy")[:, 0, :8], images[:, :8])
    assert main(base + ["--out", str(tmp_path / "sampled.png"), "--class-choice", "sample"]) == 0
    assert json.loads((tmp_path / "sampled.json").read_text())["class_choice"] == "sample"
    assert main(base + ["--out", str(tmp_path / "none.png"), "--class", "none"]) == 0
    settings = json.loads((tmp_path / "none.json").read_text())
    assert settings["class"] == "none" and settings["guidance"] == 0.0 and "inferred_class" not in settings
    assert np.array_equal(np.load(tmp_path / "none.npy")[:, 0, :8], images[:, :8])
    capsys.readouterr()
    # A conditional prior without label dropout (no unconditional mode) infers the class too.
    assert main(["inpaint", str(trained_run), "--image", str(tmp_path / "one.png"), "--mask", "0,8,16,16",
                 "--out", str(tmp_path / "ar.png")]) == 0
    assert "class inferred from the kept region" in capsys.readouterr().out
    assert json.loads((tmp_path / "ar.json").read_text())["guidance"] == 1.0


@pytest.mark.parametrize("extra, message", [
    (["--class-choice", "maybe"], "--class-choice 'maybe': one of argmax, sample"),
    (["--class-choice", ""], "--class-choice '': one of argmax, sample"),  # refused, not taken as the default
    (["--class-choice", "sample", "--class", "1"], "needs a class-conditional prior and no --class"),
    (["--class", "none", "--guidance", "2"], "--guidance needs a class"),
    (["--class", "all"], "--class all is for sampling"),
])
def test_inpaint_class_options_are_one_line_errors(maskgit_run, tmp_path, capsys, extra, message):
    Image.fromarray(bar_images(1)[0][0]).save(tmp_path / "one.png")
    code = main(["inpaint", str(maskgit_run[0]), "--image", str(tmp_path / "one.png"), "--mask", "0,8,16,16",
                 "--out", str(tmp_path / "out.png")] + extra)
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1


def test_inpaint_class_none_needs_an_unconditional_mode(trained_run, tmp_path, capsys):
    Image.fromarray(bar_images(1)[0][0]).save(tmp_path / "one.png")
    code = main(["inpaint", str(trained_run), "--image", str(tmp_path / "one.png"), "--mask", "0,8,16,16",
                 "--out", str(tmp_path / "out.png"), "--class", "none"])
    err = capsys.readouterr().err
    assert code == 2 and "no unconditional mode" in err and err.count("\n") == 1


@pytest.fixture(scope="module")
def word_class_run(tmp_path_factory):
    """A tiny conditional run whose classes are named 'all' and 'none' (folders all/ and none/)."""
    root = save_bar_folder(tmp_path_factory.mktemp("word-classes"), 80, ("all", "none"))
    run = tmp_path_factory.mktemp("word-class-run")
    cfg = load_config("tiny", tiny_overrides(root) + MASKGIT_SETTINGS + [
        "prior.conditional=true", "prior.label_dropout=0.2", "train.epochs=1", "prior_train.epochs=1"])
    api.train_vqvae(cfg, run)
    api.train_prior(cfg, run)
    return run


def test_a_class_named_like_a_command_word_is_ambiguous_there_and_a_name_elsewhere(word_class_run, tmp_path,
                                                                                     capsys, monkeypatch):
    """`inpaint --class none` and `sample --class all` mean a mode; with a class of that name they are a
    one-line error naming its index. The other command's word is just the class's name."""
    from vqvae.sampling import class_labels

    prior, _, _ = load_prior(word_class_run, "cpu")
    assert prior.spec.class_names == ("all", "none") and prior.null_class is not None
    Image.fromarray(bar_images(1)[0][0]).save(tmp_path / "one.png")
    inpaint = ["inpaint", str(word_class_run), "--image", str(tmp_path / "one.png"), "--mask", "0,8,16,16"]
    sample = ["sample", str(word_class_run), "-n", "4"]
    for argv, message in ((inpaint + ["--out", str(tmp_path / "x.png"), "--class", "none"],
                           "--class none is ambiguous: it means the prior's unconditional mode, and this prior also "
                           "has a class named 'none' (index 1); pass --class 1 to draw that class"),
                          (sample + ["--out", str(tmp_path / "s"), "--class", "all"],
                           "--class all is ambiguous: it means every class, and this prior also has a class named "
                           "'all' (index 0); pass --class 0 to draw that class")):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    # The word a command does not use names the class; the index the error suggests draws it.
    assert class_labels(prior, "none", 3, "cpu")[0].tolist() == [1, 1, 1]
    assert class_labels(prior, "all", 2, "cpu", every_class=False)[0].tolist() == [0, 0]
    given = []
    complete = type(prior).complete
    with monkeypatch.context() as patched:
        patched.setattr(type(prior), "complete", lambda self, codes, masked, labels=None, **kw:
                        given.append(labels.tolist()) or complete(self, codes, masked, labels, **kw))
        for i, class_ in enumerate(("all", "1")):
            assert main(inpaint + ["--out", str(tmp_path / f"in{i}.png"), "--class", class_]) == 0
    assert given == [[0], [1]]
    assert main(sample + ["--out", str(tmp_path / "s"), "--class", "none"]) == 0
    assert np.load(tmp_path / "s" / "samples.npy").shape[0] == 4
