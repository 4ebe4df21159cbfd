"""The checked nearest-code search: its error bound holds, and its codes equal the fp32 search's
except where fp32 itself cannot tell two codes apart. On the CPU the fp16 matmul is emulated
exactly (fp16-rounded inputs, fp32 sums); the fused Triton kernel runs under Triton's interpreter."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from vqvae.config import RunConfig, apply_overrides
from vqvae.errors import ConfigError
from vqvae.models import codebook_search
from vqvae.models.codebook_search import checked_search, margins, to_half
from vqvae.models.quantizer import nearest_codes

SRC = Path(__file__).resolve().parents[1] / "src"


def search_cases():
    """(name, vectors, codebook): spread-out and clustered data, planted near-twin and identical
    codes, and scales far from 1 (the power-of-two scaling must keep fp16 in range)."""
    g = torch.Generator().manual_seed(0)
    codebook = torch.randn(1024, 48, generator=g)
    codebook[900:] = codebook[:124] + 1e-4 * torch.randn(124, 48, generator=g)  # near-twins
    codebook[1000:] = codebook[:24]  # exact duplicates
    spread = torch.randn(3000, 48, generator=g)
    clustered = codebook[torch.randint(0, 1024, (3000,), generator=g)] + 0.05 * torch.randn(3000, 48, generator=g)
    yield "spread", spread, codebook
    yield "clustered", clustered, codebook
    yield "tiny", spread * 1e-6, codebook * 1e-6
    yield "huge", clustered * 3e4, codebook * 3e4


def exact_distances(flat, codebook):
    return torch.cdist(flat.double(), codebook.double()) ** 2


def near_tie_tolerance(flat, codebook):
    """How far apart fp32's ||e||^2 - 2 z.e can put two equally distant codes."""
    return 1e-5 * (flat.double().pow(2).sum(1) + codebook.double().pow(2).sum(1).max())


@pytest.mark.parametrize("case", ["spread", "clustered", "tiny", "huge"])
def test_the_bound_covers_every_low_precision_distance(case):
    _, flat, codebook = next(c for c in search_cases() if c[0] == case)
    z, codes = to_half(flat), to_half(codebook)
    code_norms = (codebook * codebook).sum(1)
    alpha = -2.0 / (z.scale * codes.scale)
    low = torch.addmm(code_norms, z.values.float(), codes.values.float().t(), alpha=alpha)  # as on tensor cores
    exact = (codebook.double() ** 2).sum(1) - 2 * flat.double() @ codebook.double().t()
    error = (low.double() - exact).abs()
    bound = margins(z, codes, code_norms, alpha).double()[:, None]
    assert (error <= bound).all(), f"worst error / bound {float((error / bound).max()):.3f}"
    # Not vacuous: fp16 rounding uses a visible part of the bound.
    assert float((error / bound).max()) > 0.02


@pytest.mark.parametrize("case", ["spread", "clustered", "tiny", "huge"])
def test_checked_search_picks_fp32_codes_except_at_near_ties(case):
    _, flat, codebook = next(c for c in search_cases() if c[0] == case)
    reference = nearest_codes(flat, codebook)
    chosen, ambiguous = checked_search(flat, codebook, kernel="torch", chunk_size=1000)
    exact = exact_distances(flat, codebook)
    rows = torch.arange(len(flat))
    differ = chosen != reference
    gap = (exact[rows, chosen] - exact[rows, reference]).abs()
    assert (gap[differ] <= near_tie_tolerance(flat, codebook)[differ]).all()
    # What the margin decided without fp32 is the true nearest code (no tie in float64).
    decided = ~ambiguous
    assert torch.equal(exact[decided].argmin(1), chosen[decided])
    assert ambiguous.float().mean() < 0.3  # the fp32 pass is the exception, not the rule


def test_without_the_margin_fp16_distances_pick_wrong_codes(monkeypatch):
    """Negative control: trusting the fp16 winner (margin and slack zero) picks codes that are
    clearly farther than fp32's, so the margin is what makes the search exact."""
    _, flat, codebook = next(search_cases())
    monkeypatch.setattr(codebook_search, "margins", lambda z, *_: torch.zeros(len(z.values)))
    monkeypatch.setattr(codebook_search, "fp32_slack", lambda z, _: torch.zeros(len(z)))
    chosen, _ = checked_search(flat, codebook, kernel="torch")
    reference = nearest_codes(flat, codebook)
    exact = exact_distances(flat, codebook)
    rows = torch.arange(len(flat))
    worse = exact[rows, chosen] - exact[rows, reference]
    assert (worse > near_tie_tolerance(flat, codebook)).any()


def test_vectors_that_are_not_finite_get_the_fp32_answer():
    g = torch.Generator().manual_seed(1)
    codebook, flat = torch.randn(300, 16, generator=g), torch.randn(50, 16, generator=g)
    flat[3, 2], flat[7, 0] = float("inf"), float("nan")
    chosen, ambiguous = checked_search(flat, codebook, kernel="torch")
    assert ambiguous[3] and ambiguous[7]
    assert torch.equal(chosen, nearest_codes(flat, codebook))


def test_fast_precision_is_the_fp32_search_off_cuda():
    g = torch.Generator().manual_seed(2)
    codebook, flat = torch.randn(2048, 16, generator=g), torch.randn(500, 16, generator=g)
    assert torch.equal(nearest_codes(flat, codebook, precision="fast"), nearest_codes(flat, codebook))


def test_runs_saved_with_the_old_shortlist_searches_load_as_fast(tiny_config):
    saved = tiny_config.to_dict()
    saved["quantizer"]["search_precision"] = "bf16"
    assert RunConfig.from_dict(saved).quantizer.search_precision == "fast"
    with pytest.raises(ConfigError, match="search_precision"):
        apply_overrides(tiny_config, ["quantizer.search_precision=bf16"])


def test_the_search_precision_may_change_on_resume(tiny_config, tmp_path):
    from vqvae.checkpoint import save_checkpoint
    from vqvae.training.loop import check_resume_config, checkpoint_path

    save_checkpoint(checkpoint_path(tmp_path, "vqvae", "last"), "vqvae", tiny_config.to_dict(), {})
    check_resume_config(tmp_path, "vqvae", apply_overrides(tiny_config, ["quantizer.search_precision=fast"]),
                        ("model", "quantizer"))  # no error
    with pytest.raises(ConfigError, match="codebook_size"):
        check_resume_config(tmp_path, "vqvae", apply_overrides(tiny_config, ["quantizer.codebook_size=64"]),
                            ("model", "quantizer"))


TRITON_CHECK = textwrap.dedent("""
    import torch
    from vqvae.models.codebook_search import best_two_torch, to_half
    from vqvae.models.codebook_search_triton import best_two_triton

    g = torch.Generator().manual_seed(0)
    # Sizes that are not multiples of the tiles: every mask in the kernel matters.
    codebook, flat = torch.randn(150, 40, generator=g), torch.randn(70, 40, generator=g)
    codebook[140:] = codebook[:10]  # identical codes: the runner-up equals the winner
    codes, z = to_half(codebook), to_half(flat)
    norms = (codebook ** 2).sum(1)
    alpha = -2.0 / (z.scale * codes.scale)
    want = best_two_torch(z, codes, norms, alpha)
    got = best_two_triton(z.values, codes.values.t().contiguous(), norms, alpha,
                          config=dict(BLOCK_M=32, BLOCK_N=64, BLOCK_C=16))
    scale = float(want.best.abs().max())
    assert torch.allclose(got.best, want.best, atol=1e-5 * scale), (got.best - want.best).abs().max()
    assert torch.allclose(got.second, want.second, atol=1e-5 * scale), (got.second - want.second).abs().max()
    clear = (want.second - want.best) > 1e-4 * scale
    assert torch.equal(got.index[clear], want.index[clear])
    twins = (want.index < 10) | (want.index >= 140)
    assert torch.allclose(got.second[twins], got.best[twins], atol=1e-5 * scale)
    print("ok", int(clear.sum()), "of", len(flat))
""")


def test_the_fused_triton_kernel_matches_the_matmul_path():
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", TRITON_CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("ok")
