import json

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_overrides
from test_pixelcnn import check_autoregressive, dependency_matrix
from vqvae import api
from vqvae.cli import main
from vqvae.config import PriorConfig, load_config
from vqvae.errors import ConfigError
from vqvae.models import GatedPixelCNN, PriorSpec, TransformerPrior, sample_full_pass
from vqvae.models import prior_common
from vqvae.models import transformer_prior as transformer_module
from vqvae.models.prior_common import filter_top_p, mix_guidance
from vqvae.runs import load_prior
from vqvae.sampling import cached_samples
from vqvae.checkpoint import load_checkpoint


def transformer(conditional=False, label_dropout=0.0, size=5, codes=4, classes=3):
    torch.manual_seed(0)
    config = PriorConfig(kind="transformer", num_layers=2, hidden_channels=16, num_heads=2, conditional=conditional,
                         label_dropout=label_dropout)
    return TransformerPrior(config, PriorSpec(codebook_size=codes, latent_size=size, num_classes=classes)).eval()


def pixelcnn(conditional=False, label_dropout=0.0, size=5, codes=4, classes=3):
    torch.manual_seed(0)
    config = PriorConfig(num_layers=3, hidden_channels=8, conditional=conditional, label_dropout=label_dropout)
    return GatedPixelCNN(config, PriorSpec(codebook_size=codes, latent_size=size, num_classes=classes)).eval()


@pytest.mark.parametrize("conditional", [False, True])
def test_transformer_is_causal_and_sees_every_earlier_code(conditional):
    model = transformer(conditional)
    labels = torch.tensor([0, 2]) if conditional else None
    causal, missing = check_autoregressive(dependency_matrix(model, 4, 5, 5, labels))
    assert causal  # changing a later code never changes an earlier logit
    assert missing == 0  # full attention: no blind spot


def test_the_causality_check_catches_attention_without_the_mask(monkeypatch):
    """Negative control: the same model with the causal mask switched off fails the check."""
    def leaky_forward(self, x):
        q, k, v = self._heads(x)
        return self._merge(F.scaled_dot_product_attention(q, k, v, is_causal=False))

    monkeypatch.setattr(transformer_module.SelfAttention, "forward", leaky_forward)
    causal, _ = check_autoregressive(dependency_matrix(transformer(), 4, 5, 5))
    assert not causal


@pytest.mark.parametrize("size", [3, 7])
@pytest.mark.parametrize("conditional", [False, True])
def test_cached_path_equals_full_pass(size, conditional):
    model = transformer(conditional, size=size, codes=6)
    codes = torch.randint(0, 6, (3, size, size), generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1, 2]) if conditional else None
    assert torch.allclose(model(codes, labels), model.teacher_forced_logits(codes, labels), atol=1e-5)


@pytest.mark.parametrize("make", [transformer, pixelcnn])
def test_cached_sampler_draws_what_full_passes_draw(make):
    model = make(conditional=True, label_dropout=0.1)
    labels = torch.tensor([0, 1, 2, 1])
    for options in ({}, {"top_p": 0.7, "temperature": 0.9}, {"guidance": 2.5, "top_k": 3}):
        fast = model.sample(4, labels, generator=torch.Generator().manual_seed(3), **options)
        slow = sample_full_pass(model, 4, labels, generator=torch.Generator().manual_seed(3), **options)
        assert torch.equal(fast, slow), options


def test_guidance_mixes_logits():
    cond, uncond = torch.randn(3, 5), torch.randn(3, 5)
    both = torch.cat([cond, uncond])
    assert torch.equal(mix_guidance(both, 0.0, True), uncond)
    assert torch.allclose(mix_guidance(both, 1.0, True), cond)
    assert torch.allclose(mix_guidance(both, 3.0, True), uncond + 3 * (cond - uncond))


@pytest.mark.parametrize("make", [transformer, pixelcnn])
def test_guidance_zero_samples_from_the_unconditional_logits(make, monkeypatch):
    """The logits the cached sampler draws from at guidance 0 are the null class's, for any class."""
    model = make(conditional=True, label_dropout=0.1)
    seen = []
    original = prior_common.sample_logits  # both priors sample through AutoregressivePrior.sample

    def spy(logits, *args, **kwargs):
        seen.append(logits.clone())
        return original(logits, *args, **kwargs)

    monkeypatch.setattr(prior_common, "sample_logits", spy)
    labels = torch.tensor([0, 1, 2])
    codes = model.sample(3, labels, guidance=0.0, generator=torch.Generator().manual_seed(0))
    guided = torch.stack(seen, 2).reshape(3, -1, 5, 5)  # (B, K, H, W) in raster order
    unconditional = model(codes, torch.full((3,), model.null_class))
    conditional = model(codes, labels)
    assert torch.allclose(guided, unconditional, atol=1e-5)
    assert not torch.allclose(guided, conditional, atol=1e-3)


def test_guidance_needs_label_dropout():
    with pytest.raises(ConfigError, match="label dropout"):
        transformer(conditional=True).sample(2, torch.tensor([0, 1]), guidance=2.0)


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.15, 0.5, 0.05, 0.3]])
    logits = probs.log()

    def kept(p):
        return set(torch.nonzero(filter_top_p(logits, p)[0] > float("-inf")).flatten().tolist())

    assert kept(0.45) == {1}
    assert kept(0.79) == {1, 3}
    assert kept(0.81) == {1, 3, 0}
    assert kept(0.96) == {0, 1, 2, 3}
    assert kept(1.0) == {0, 1, 2, 3}
    with pytest.raises(ConfigError, match="top_p"):
        transformer().sample(1, top_p=0.0)


@pytest.fixture(scope="module")
def transformer_run(bar_folder, tmp_path_factory):
    run = tmp_path_factory.mktemp("transformer-run")
    cfg = load_config("tiny", tiny_overrides(bar_folder) + [
        "prior.kind=transformer", "prior.num_layers=2", "prior.hidden_channels=16", "prior.num_heads=2",
        "prior.conditional=true", "prior.label_dropout=0.2"])
    api.train_vqvae(cfg, run)
    result = api.train_prior(cfg, run)
    return run, result.model


def test_transformer_checkpoint_round_trip(transformer_run):
    run, trained = transformer_run
    assert load_checkpoint(run / "checkpoints" / "prior-best.pt", kind="prior")["prior_kind"] == "transformer"
    loaded, cfg, _ = load_prior(run)
    assert isinstance(loaded, TransformerPrior) and cfg.prior.kind == "transformer"
    codes = torch.randint(0, 16, (2, 4, 4))
    labels = torch.tensor([0, 1])
    trained.eval()
    assert torch.equal(loaded(codes, labels), trained.cpu()(codes, labels))


def test_sample_command_with_guidance_and_top_p(transformer_run, tmp_path, trained_run):
    run, _ = transformer_run
    assert main([str(a) for a in ("sample", run, "--out", tmp_path, "-n", 6, "--guidance", 2.0, "--top-p", 0.9,
                                  "--class", "all")]) == 0
    settings = json.loads((tmp_path / "samples.json").read_text())
    assert settings["guidance"] == 2.0 and settings["top_p"] == 0.9 and settings["num_samples"] == 6
    with pytest.raises(ConfigError, match=r"sample.top_p=1.5: must be in \(0, 1\]"):
        api.sample(run, out_dir=tmp_path, num_samples=2, top_p=1.5, device="cpu")
    # trained_run's conditional prior was trained without label dropout: no unconditional mode
    with pytest.raises(ConfigError, match="label dropout"):
        api.sample(trained_run, out_dir=tmp_path, num_samples=2, guidance=2.0, device="cpu")


def test_cached_samples_are_redrawn_when_the_prior_or_settings_change(transformer_run, tmp_path):
    import shutil

    source, _ = transformer_run
    run = tmp_path / "run"
    shutil.copytree(source, run)
    prior, cfg, _ = load_prior(run)
    first = cached_samples(run, cfg, prior, 8, "cpu")
    stamp = (run / "samples.npy").stat().st_mtime_ns
    assert torch.equal(cached_samples(run, cfg, prior, 8, "cpu"), first)
    assert (run / "samples.npy").stat().st_mtime_ns == stamp  # same prior, same settings: reused
    meta = json.loads((run / "samples.json").read_text())
    (run / "samples.json").write_text(json.dumps({**meta, "prior_fingerprint": "another prior"}))
    cached_samples(run, cfg, prior, 8, "cpu")
    assert json.loads((run / "samples.json").read_text())["prior_fingerprint"] == meta["prior_fingerprint"]
    assert (run / "samples.npy").stat().st_mtime_ns != stamp
    stamp = (run / "samples.npy").stat().st_mtime_ns
    cfg.sample.temperature = 0.7  # what a user changing sample settings gets: fresh samples
    cached_samples(run, cfg, prior, 8, "cpu")
    assert (run / "samples.npy").stat().st_mtime_ns != stamp


def test_a_presets_guidance_leaves_priors_without_a_null_class_unguided(trained_run, tmp_path):
    """The mnist preset samples with guidance 2; a prior that cannot be guided (unconditional, or
    trained without label dropout) samples unguided under that setting instead of failing, while an
    explicit --guidance on it stays an error."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    prior, cfg, _ = load_prior(run)
    assert prior.null_class is None
    cfg.sample.guidance = 1.5
    images = cached_samples(run, cfg, prior, 4, "cpu")
    assert images.shape[0] == 4 and json.loads((run / "samples.json").read_text())["guidance"] == 1.0
    with pytest.raises(ConfigError, match="label dropout"):
        api.sample(run, out_dir=tmp_path / "s", num_samples=2, guidance=1.5, device="cpu")
