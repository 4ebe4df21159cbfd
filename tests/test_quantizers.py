"""The quantizer family: invariants of each kind, the rotation trick against its formula, and
each kind through training, checkpoints, resume and code files."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import memory_data
from vqvae import api
from vqvae.config import QuantizerConfig, apply_overrides, fsq_levels, load_config
from vqvae.errors import ConfigError
from vqvae.models import (VQVAE, FiniteScalarQuantizer, LookupFreeQuantizer, ResidualVectorQuantizer, VectorQuantizer,
                          rotation_trick, straight_through)
from vqvae.models.lfq import lfq_entropies
from vqvae.models.rvq import dropout_depths
from vqvae.runs import load_vqvae
from vqvae.checkpoint import save_checkpoint
from vqvae.training.loop import checkpoint_path

# One tiny-preset override list per kind (tiny: 16x16 bars, 16 channels, 16 codes).
KINDS = {
    "vq": [],
    "vq-cosine-lowdim-rotation": ["quantizer.distance=cosine", "quantizer.lookup_dim=4", "quantizer.gradient=rotation"],
    "fsq": ["quantizer.kind=fsq", "quantizer.codebook_size=64"],
    "lfq": ["quantizer.kind=lfq"],
    "rvq": ["quantizer.kind=rvq", "quantizer.rvq_depth=3", "quantizer.rvq_dropout=0.5"],
}


# --------------------------------------------------------------------------- FSQ

def test_fsq_rounds_to_the_grid_and_indices_round_trip():
    q = FiniteScalarQuantizer(4, QuantizerConfig(kind="fsq", codebook_size=1000, fsq_levels=[8, 5, 5, 5]))
    assert q.project_in is None and q.codebook_size == 1000
    z = 3 * torch.randn(64, 4, 5, 5)
    codes = q.quantize_latent(z)
    half_width = torch.tensor([4, 2, 2, 2]).view(1, -1, 1, 1)
    steps = codes * half_width
    assert torch.equal(steps, steps.round())  # on the integer grid
    for i, level in enumerate([8, 5, 5, 5]):  # exactly L values per channel, all reached
        values = steps[:, i].unique()
        assert len(values) == level
        assert values.min() == -(level // 2) and values.max() == level - 1 - level // 2
    indices = q.codes_to_indices(codes)
    assert indices.min() >= 0 and indices.max() < 1000
    assert torch.equal(q.indices_to_codes(indices), codes)
    every = torch.arange(1000).view(1, 10, 100)
    assert torch.equal(q.codes_to_indices(q.indices_to_codes(every)), every)  # a bijection
    assert q.bound(torch.zeros(1, 4, 1, 1)).abs().max() < 1e-6  # centred: 0 maps to 0


def _levels_reached(q: FiniteScalarQuantizer, z: torch.Tensor) -> list[int]:
    """Distinct levels each channel takes on z (pre-projection input), in eval mode."""
    steps = q.quantize_latent(q.project_in(z)) * q._per_channel(q.levels // 2)
    return [int(steps[:, c].unique().numel()) for c in range(steps.shape[1])]


def test_fsq_data_init_puts_every_level_within_reach():
    """Encoder outputs at init are small (std ~0.01-0.02 on MNIST); with PyTorch's init project_in
    keeps them in tanh's centre cell, while fsq_normalise=init rescales it on the first training batch
    to mean 0, std 1 per channel, where every level of every channel is reached."""
    levels = [7, 5, 5, 5, 5]
    config = dict(kind="fsq", codebook_size=4375, fsq_levels=levels)
    torch.manual_seed(0)
    z = 0.02 * torch.randn(32, 16, 7, 7) + 0.01 * torch.randn(1, 16, 1, 1)  # small, with an offset
    plain = FiniteScalarQuantizer(16, QuantizerConfig(**config, fsq_normalise="none"))
    plain(z)
    assert max(_levels_reached(plain, z)) <= 2  # the centre cell and at most one neighbour
    q = FiniteScalarQuantizer(16, QuantizerConfig(**config, fsq_normalise="init"))
    assert not q.initialised
    q.eval()(z)  # evaluation never initialises
    assert not q.initialised
    q.train()(z)
    pre = q.project_in(z).detach()
    torch.testing.assert_close(pre.mean((0, 2, 3)), torch.zeros(5), atol=1e-5, rtol=0)
    torch.testing.assert_close(pre.std((0, 2, 3)), torch.ones(5), atol=1e-4, rtol=0)
    assert _levels_reached(q, z) == levels
    assert q(z).indices.unique().numel() > 500  # of 1,568 positions: no longer a handful of codes
    weight = q.project_in.weight.detach().clone()
    q(2 * z)  # only the first batch rescales
    assert torch.equal(q.project_in.weight, weight)


def test_fsq_data_init_survives_checkpoints():
    config = QuantizerConfig(kind="fsq", codebook_size=64, fsq_normalise="init")
    z = 0.02 * torch.randn(8, 16, 4, 4)
    trained = FiniteScalarQuantizer(16, config)
    trained(z)
    fresh = FiniteScalarQuantizer(16, config)
    fresh.load_state_dict(trained.state_dict())
    fresh(5 * z)  # resumed: already initialised, not rescaled again
    assert torch.equal(fresh.project_in.weight, trained.project_in.weight)
    assert FiniteScalarQuantizer(2, config).initialised  # no project_in: nothing to rescale
    with pytest.raises(ConfigError, match="fsq_normalise='none' does not apply to quantizer.kind=vq"):
        load_config("tiny", ["quantizer.fsq_normalise=none"])


def test_fsq_batch_normalisation_keeps_saturating_channels_in_range():
    """The CIFAR-10 failure: channels driven to |z| of 4-8, where tanh is flat, sit in one outer
    level. fsq_normalise=batch standardises each channel over the batch (eval: running averages),
    so every level of every channel is reached, and gradients reach z again."""
    levels = [7, 5, 5, 5, 5]
    torch.manual_seed(0)
    z = torch.randn(32, 5, 7, 7) + torch.tensor([0.0, -8.0, 1.0, -6.0, 4.0]).view(1, -1, 1, 1)
    plain = FiniteScalarQuantizer(5, QuantizerConfig(kind="fsq", codebook_size=4375, fsq_levels=levels,
                                                     fsq_normalise="none"))
    steps = plain.quantize_latent(z) * plain._per_channel(plain.levels // 2)
    assert [steps[:, c].unique().numel() for c in (1, 3)] == [1, 1]  # stuck in an outer level
    q = FiniteScalarQuantizer(5, QuantizerConfig(kind="fsq", codebook_size=4375, fsq_levels=levels))
    assert q.project_in is None and q.config.fsq_normalise == "batch"
    z.requires_grad_(True)
    out = q(z)
    pre = q.standardise(z.detach())
    torch.testing.assert_close(pre.mean((0, 2, 3)), torch.zeros(5), atol=1e-5, rtol=0)
    torch.testing.assert_close(pre.std((0, 2, 3), unbiased=False), torch.ones(5), atol=1e-4, rtol=0)
    steps = q.quantize_latent(pre) * q._per_channel(q.levels // 2)
    assert [steps[:, c].unique().numel() for c in range(5)] == levels
    out.quantized.square().sum().backward()
    assert z.grad[:, 1].abs().mean() > 1e-3  # plain tanh at z ~ -8 passes ~1e-6
    for _ in range(150):  # running statistics converge to the data's: eval codes match training codes
        q(z.detach())
    train_indices = q(z.detach()).indices
    assert (q.eval()(z.detach()).indices == train_indices).float().mean() > 0.99


def test_fsq_levels_follow_the_paper_table_and_config_checks():
    assert fsq_levels(QuantizerConfig(kind="fsq", codebook_size=1024)) == [8, 5, 5, 5]
    assert fsq_levels(QuantizerConfig(kind="fsq", codebook_size=4096)) == [7, 5, 5, 5, 5]
    cfg = load_config("tiny", ["quantizer.kind=fsq", "quantizer.fsq_levels=8,5,5,5", "quantizer.codebook_size=1000"])
    assert cfg.quantizer.fsq_levels == [8, 5, 5, 5]
    with pytest.raises(ConfigError, match="codebook_size=1000"):
        load_config("tiny", ["quantizer.kind=fsq", "quantizer.fsq_levels=8,5,5,5"])
    with pytest.raises(ConfigError, match="no recommended levels"):
        load_config("tiny", ["quantizer.kind=fsq", "quantizer.codebook_size=100"])
    with pytest.raises(ConfigError, match="2\\^bits"):
        load_config("tiny", ["quantizer.kind=lfq", "quantizer.codebook_size=100"])
    with pytest.raises(ConfigError, match="does not apply to quantizer.kind=fsq"):
        load_config("tiny", ["quantizer.kind=fsq", "quantizer.codebook_size=64", "quantizer.gradient=rotation"])
    with pytest.raises(ConfigError, match="quantizer.kind"):
        load_config("tiny", ["quantizer.kind=pq"])


# --------------------------------------------------------------------------- LFQ

def test_lfq_indices_match_the_sign_bits():
    q = LookupFreeQuantizer(5, QuantizerConfig(kind="lfq", codebook_size=32)).eval()
    assert q.project_in is None and q.bits == 5
    z = torch.randn(8, 5, 3, 3)
    out = q(z)
    for i in range(5):
        assert torch.equal((out.indices >> i) & 1, (z[:, i] > 0).long())
    assert torch.equal(out.quantized, torch.where(z > 0, 1.0, -1.0))
    assert torch.equal(q.lookup(out.indices), out.quantized)


def test_lfq_factorised_entropies_equal_the_full_softmax():
    z = torch.randn(50, 3, dtype=torch.float64)
    tau = 0.7
    codes = torch.tensor([[1.0 if (k >> i) & 1 else -1.0 for i in range(3)] for k in range(8)], dtype=torch.float64)
    probs = torch.softmax(-torch.cdist(z, codes) ** 2 / tau, dim=1)  # (N, 8): the paper's soft assignment
    per_sample = -(probs * probs.log()).sum(1).mean()
    mean = probs.mean(0)
    codebook = -(mean * mean.log()).sum()
    got_per_sample, got_codebook = lfq_entropies(z, tau)
    assert torch.allclose(got_per_sample, per_sample, atol=1e-9)
    assert torch.allclose(got_codebook, codebook, atol=1e-9)


# --------------------------------------------------------------------------- RVQ

def test_rvq_error_does_not_grow_with_depth_and_prefixes_decode_to_sums():
    cfg = QuantizerConfig(kind="rvq", codebook_size=8, rvq_depth=4, init="kmeans", kmeans_iters=5)
    q = ResidualVectorQuantizer(3, cfg)
    z = torch.randn(4, 3, 8, 8)
    q.train()(z)  # k-means seeds each level on its residuals
    q.eval()
    out = q(z)
    assert out.indices.shape == (4, 4, 8, 8)
    errors = []
    for k in range(1, 5):
        prefix = q.lookup(out.indices[:, :k])
        by_hand = sum(q.levels[i].codebook[out.indices[:, i]].permute(0, 3, 1, 2) for i in range(k))
        assert torch.allclose(prefix, by_hand, atol=1e-6)
        errors.append(F.mse_loss(prefix, z).item())
    assert all(b <= a + 1e-7 for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.5 * errors[0]
    assert torch.allclose(q.lookup(out.indices), out.quantized, atol=1e-6)  # all levels = the forward value
    counts = q.usage_counts(out.indices)
    assert counts.shape == (32,) and counts.sum() == out.indices.numel()
    assert torch.equal(counts[8:16], torch.bincount(out.indices[:, 1].flatten(), minlength=8))


def test_rvq_dropout_decodes_fewer_levels_for_some_images():
    cfg = QuantizerConfig(kind="rvq", codebook_size=8, rvq_depth=3, rvq_dropout=1.0, init="samples")
    q = ResidualVectorQuantizer(3, cfg).train()
    torch.manual_seed(3)
    z = torch.randn(64, 3, 2, 2)
    out = q(z)
    full = q.lookup(out.indices)
    per_image = [(out.quantized[b] - full[b]).abs().max().item() for b in range(64)]
    assert 0 < sum(d < 1e-6 for d in per_image) < 64  # some images use every level, some fewer


def test_rvq_dropout_shards_draw_what_one_process_draws_at_the_global_batch():
    torch.manual_seed(5)
    whole = dropout_depths([32], 0, 4, 0.5)
    after_one = torch.rand(1)
    torch.manual_seed(5)  # one process draws as it did before shards were considered: old seeds reproduce
    assert torch.equal(whole, torch.where(torch.rand(32) < 0.5, torch.randint(1, 5, (32,)), 4))
    assert whole.min() >= 1 and whole.max() == 4 and (whole < 4).any()
    for sizes in ([16, 16], [17, 15]):  # even shards, and tensor_split's uneven ones
        shards, after = [], []
        for rank in range(2):  # each process starts from the same random state
            torch.manual_seed(5)
            shards.append(dropout_depths(sizes, rank, 4, 0.5))
            after.append(torch.rand(1))
        assert [len(s) for s in shards] == sizes
        assert torch.equal(torch.cat(shards), whole)  # not one shard's pattern repeated
        assert torch.equal(after[0], after[1]) and torch.equal(after[0], after_one)  # streams stay in step


# --------------------------------------------------------------------------- rotation trick

def rotation_matrix(e: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """R = I - 2 r r^T + 2 q^ e^T (Fifty et al., eq. in section 4.2), built as a matrix."""
    e_hat, q_hat = e / e.norm(), q / q.norm()
    r = (e_hat + q_hat) / (e_hat + q_hat).norm()
    return torch.eye(len(e), dtype=e.dtype) - 2 * torch.outer(r, r) + 2 * torch.outer(q_hat, e_hat)


def test_rotation_trick_by_hand_in_2d():
    # e = (1, 0), q = (0, 2): R is the 90-degree rotation [[0, -1], [1, 0]], scale ||q||/||e|| = 2.
    e = torch.tensor([[1.0], [0.0]]).view(1, 2, 1, 1).requires_grad_()
    q = torch.tensor([0.0, 2.0]).view(1, 2, 1, 1)
    out = rotation_trick(e, q)
    assert torch.equal(out, q)
    out.backward(torch.tensor([1.0, 3.0]).view(1, 2, 1, 1))
    # dL/de = 2 R^T g = 2 [[0, 1], [-1, 0]] (1, 3) = (6, -2); straight-through would give (1, 3).
    assert torch.allclose(e.grad.flatten(), torch.tensor([6.0, -2.0]), atol=1e-6)


def test_rotation_trick_gradient_is_scaled_rotated_straight_through():
    g = torch.Generator().manual_seed(0)
    e = torch.randn(4, 6, 2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    q = torch.randn(4, 6, 2, 3, generator=g, dtype=torch.float64)
    upstream = torch.randn(4, 6, 2, 3, generator=g, dtype=torch.float64)
    out = rotation_trick(e, q)
    assert torch.equal(out, q)  # forward: exactly the quantized value
    out.backward(upstream)
    st = e.detach().clone().requires_grad_()
    straight_through(st, q).backward(upstream)
    assert torch.equal(st.grad, upstream)
    for b, h, w in [(0, 0, 0), (1, 1, 2), (3, 0, 1)]:
        ev, qv, gv = e[b, :, h, w].detach(), q[b, :, h, w], upstream[b, :, h, w]
        R = rotation_matrix(ev, qv)
        assert torch.allclose(R @ (ev / ev.norm()), qv / qv.norm())  # R turns e's direction into q's
        assert torch.allclose(R.T @ R, torch.eye(6, dtype=R.dtype))  # and is orthogonal
        expected = qv.norm() / ev.norm() * R.T @ gv
        assert torch.allclose(e.grad[b, :, h, w], expected, atol=1e-10)
        assert not torch.allclose(e.grad[b, :, h, w], st.grad[b, :, h, w])


def test_vq_with_rotation_trick_passes_the_formula_gradient_to_the_encoder():
    q = VectorQuantizer(4, QuantizerConfig(codebook_size=6, gradient="rotation")).eval()
    q.codebook.data = torch.randn(6, 4)
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    out = q(z)
    codes = q.codebook[out.indices].permute(0, 3, 1, 2)
    assert torch.equal(out.quantized, codes)
    upstream = torch.randn_like(codes)
    out.quantized.backward(upstream)
    ev, qv, gv = z[0, :, 1, 2].detach(), codes[0, :, 1, 2].detach(), upstream[0, :, 1, 2]
    expected = qv.norm() / ev.norm() * rotation_matrix(ev, qv).T @ gv
    assert torch.allclose(z.grad[0, :, 1, 2], expected, atol=1e-5)


# --------------------------------------------------------------------------- cosine codes, low-dim lookup

def test_cosine_codes_are_unit_norm_and_chosen_by_angle():
    q = VectorQuantizer(5, QuantizerConfig(codebook_size=12, distance="cosine")).eval()
    q.codebook.data = 3 * torch.randn(12, 5)
    z = torch.randn(3, 5, 4, 4)
    out = q(z)
    assert torch.allclose(out.quantized.norm(dim=1), torch.ones(3, 4, 4), atol=1e-6)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 5)
    similarity = F.normalize(flat, dim=1) @ F.normalize(q.codebook, dim=1).T
    assert torch.equal(out.indices.flatten(), similarity.argmax(1))


def test_low_dimensional_lookup_projects_down_and_back_up():
    q = VectorQuantizer(16, QuantizerConfig(codebook_size=10, lookup_dim=3)).eval()
    assert q.codebook.shape == (10, 3)
    out = q(torch.randn(2, 16, 4, 4))
    assert out.quantized.shape == (2, 16, 4, 4)
    assert torch.allclose(q.lookup(out.indices), out.quantized, atol=1e-6)


# --------------------------------------------------------------------------- every kind

@pytest.mark.parametrize("kind", list(KINDS))
def test_quantization_is_fp32_under_bf16_autocast(kind):
    uniform = ["quantizer.init=uniform"] if kind in ("vq", "rvq") else []  # fsq and lfq have no codebook to init
    cfg = load_config("tiny", KINDS[kind] + uniform)
    model = VQVAE(cfg.model, cfg.quantizer).eval()
    z = torch.randn(2, 16, 4, 4)
    reference = model.quantizer(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_amp = model.quantizer(z.bfloat16())
    assert under_amp.quantized.dtype == torch.float32
    assert all(v.dtype == torch.float32 for v in under_amp.losses.values())
    assert torch.equal(under_amp.indices, model.quantizer(z.bfloat16().float()).indices)
    assert reference.indices.dtype == torch.long


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_kind_trains_a_tiny_model_and_lowers_the_loss(kind):
    from conftest import bar_images

    cfg = load_config("tiny", KINDS[kind] + ["data.image_size=16"])
    torch.manual_seed(0)
    model = VQVAE(cfg.model, cfg.quantizer).train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    x = torch.from_numpy(bar_images(32)[0])[:, None].float() / 255
    losses = []
    for _ in range(20):
        out = model(x)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.reconstruction_loss.item())
        assert set(out.losses) == set(model.loss_names)
    assert np.mean(losses[-3:]) < 0.85 * np.mean(losses[:3]), losses


@pytest.mark.parametrize("kind", list(KINDS))
def test_checkpoint_round_trip_per_kind(kind, tmp_path):
    cfg = load_config("tiny", KINDS[kind] + ["data.image_size=16"])
    model = VQVAE(cfg.model, cfg.quantizer).train()
    x = torch.rand(8, 1, 16, 16)
    model(x)  # initialises and updates whatever state the kind has
    path = checkpoint_path(tmp_path, "vqvae", "last")
    save_checkpoint(path, "vqvae", cfg.to_dict(), model.state_dict())
    loaded, loaded_cfg = load_vqvae(path)
    model.eval()
    assert loaded_cfg.quantizer == cfg.quantizer
    a, b = model(x), loaded(x)
    assert torch.equal(a.indices, b.indices) and torch.equal(a.reconstruction, b.reconstruction)
    assert torch.equal(model.decode_indices(a.indices), loaded.decode_indices(b.indices))


def test_rvq_resume_is_bitwise_identical(tiny_config, tmp_path):
    """Residual levels with EMA, k-means init, restarts and quantizer dropout (random draws)."""
    cfg = apply_overrides(tiny_config, KINDS["rvq"] + ["train.lr_schedule=constant", "train.epochs=2",
                                                       "quantizer.restart_after_steps=2"])
    data = memory_data()
    api.train_vqvae(cfg, tmp_path / "straight", data=data)
    api.train_vqvae(apply_overrides(cfg, ["train.epochs=1"]), tmp_path / "split", data=data)
    api.train_vqvae(cfg, tmp_path / "split", resume=True, data=data)
    a = torch.load(checkpoint_path(tmp_path / "straight", "vqvae", "last"), weights_only=True)
    b = torch.load(checkpoint_path(tmp_path / "split", "vqvae", "last"), weights_only=True)
    for key, value in a["model_state"].items():
        assert torch.equal(value, b["model_state"][key]), key
    history = a["loop"]["history"]
    assert history[-1]["codes_used"] <= 3 * 16 and "dead_codes" in history[-1]


@pytest.mark.parametrize("kind", ["fsq", "rvq"])
def test_code_files_record_the_kind_and_decode(kind, tiny_config, tmp_path):
    cfg = apply_overrides(tiny_config, KINDS[kind] + ["train.epochs=1"])
    run = tmp_path / "run"
    api.train_vqvae(cfg, run, data=memory_data())
    meta = api.encode(run, tmp_path / "codes", data=str(tiny_config.data.dataset), device="cpu")
    saved = json.loads((tmp_path / "codes" / "codes.json").read_text())
    assert saved["quantizer"]["kind"] == kind == meta["quantizer"]["kind"]
    codes = np.load(tmp_path / "codes" / "codes.npy")
    if kind == "rvq":
        assert saved["quantizer"]["depth"] == 3 and codes.shape[1] == 3 and codes.ndim == 4
        np.save(tmp_path / "first_level.npy", codes[:, :1])  # fewer levels still decode
        api.decode(run, tmp_path / "first_level.npy", tmp_path / "coarse.png", device="cpu")
        with pytest.raises(ConfigError, match="one code index per position.*vq, fsq or lfq"):
            api.train_prior(cfg, run, data=memory_data())
    else:
        assert saved["quantizer"]["fsq_levels"] == [8, 8] and saved["codebook_size"] == 64
    assert api.decode(run, tmp_path / "codes", tmp_path / "decoded.png", device="cpu").is_file()
    saved["quantizer"]["kind"] = "lfq"
    (tmp_path / "codes" / "codes.json").write_text(json.dumps(saved))
    with pytest.raises(ConfigError, match="kind=lfq"):
        api.decode(run, tmp_path / "codes", tmp_path / "wrong.png", device="cpu")


def test_fsq_run_trains_a_prior_over_its_implicit_codebook(tiny_config, tmp_path):
    cfg = apply_overrides(tiny_config, KINDS["fsq"] + ["train.epochs=1", "prior_train.epochs=1"])
    run = tmp_path / "run"
    api.train_vqvae(cfg, run, data=memory_data())
    prior = api.train_prior(cfg, run, data=memory_data())
    assert prior.metrics["codebook_size"] == 64 and math.isfinite(prior.metrics["test_bits_per_code"])


@pytest.mark.parametrize("kind", ["rvq", "fsq"])
def test_replicas_stay_identical_under_two_gloo_processes(kind, tiny_config, tmp_path):
    """rvq: every level's EMA statistics are all-reduced and its init/restarts broadcast, level by
    level, and quantizer dropout draws the global batch's depths, so the two processes also train
    as one process does; fsq: project_in's data-dependent init is taken over the global batch and
    broadcast."""
    from test_distributed import launch

    restarts = ["quantizer.restart_after_steps=2"] if kind == "rvq" else []  # fsq has no codes to restart
    cfg = apply_overrides(tiny_config, KINDS[kind] + ["train.epochs=1", "train.amp=off", "train.channels_last=false",
                                                       *restarts])
    launch(cfg, tmp_path / "ddp", 2)
    rank0 = torch.load(tmp_path / "ddp" / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "ddp" / "rank1.pt", weights_only=True)
    if kind == "rvq":
        assert any(k.startswith("quantizer.levels.2.") for k in rank0["state"])
    else:
        assert rank0["state"]["quantizer.initialised"]
    for key, value in rank0["state"].items():
        assert torch.equal(value, rank1["state"][key]), f"replicas differ in {key}"
    if kind == "rvq":  # same global batch, same depths: the same training up to float reordering
        launch(cfg, tmp_path / "single", 1)
        single = torch.load(tmp_path / "single" / "rank0.pt", weights_only=True)
        for a, b in zip(rank0["history"], single["history"], strict=True):
            assert abs(a - b) <= 1e-3 * max(abs(b), 1e-3) + 1e-5, (rank0["history"], single["history"])
        for key, value in single["state"].items():  # shards drawing one pattern each move codebooks far more
            gap = (rank0["state"][key].double() - value.double()).abs().max() / value.double().abs().max().clamp_min(1)
            assert gap < 1e-2, f"{key}: one process and two differ by {gap:.3g} of its size"


def test_runs_saved_before_the_quantizer_family_still_resume(tiny_config, tmp_path):
    from vqvae.training.loop import check_resume_config

    old = tiny_config.to_dict()
    for name in ("kind", "distance", "lookup_dim", "gradient", "search_precision", "fsq_levels", "fsq_normalise", "entropy_weight",
                 "entropy_diversity", "entropy_temperature", "lfq_commitment_weight", "rvq_depth", "rvq_dropout"):
        del old["quantizer"][name]
    save_checkpoint(checkpoint_path(tmp_path, "vqvae", "last"), "vqvae", old, {})
    check_resume_config(tmp_path, "vqvae", tiny_config, ("model", "quantizer"))  # no error
    with pytest.raises(ConfigError, match="quantizer.kind: 'vq' -> 'lfq'"):
        check_resume_config(tmp_path, "vqvae", apply_overrides(tiny_config, ["quantizer.kind=lfq"]),
                            ("model", "quantizer"))
