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
from vqvae.models.codebook_search import (BY_FP32_SEARCH, BY_MARGIN, BY_TWO_CANDIDATES, checked_search, largest_entry,
                                          margins, power_of_two_scale, to_half)
from vqvae.models.quantizer import nearest_codes

SRC = Path(__file__).resolve().parents[1] / "src"


def search_cases():
    """(name, vectors, codebook): spread-out and clustered data, planted near-twin and identical
    codes, and scales far from 1 (the power-of-two scaling must keep fp16 in range)."""
    g = torch.Generator().manual_seed(0)
    codebook = torch.randn(1024, 48, generator=g)
    codebook[900:] = codebook[:124] + 1e-4 * torch.randn(124, 48, generator=g)  # near-twins
    codebook[1000:] = codebook[:24]  # exact duplicates: codes 0-23 are triplets
    spread = torch.randn(3000, 48, generator=g)
    clustered = codebook[torch.randint(0, 1024, (3000,), generator=g)] + 0.05 * torch.randn(3000, 48, generator=g)
    yield "spread", spread, codebook
    yield "clustered", clustered, codebook
    yield "tiny", spread * 1e-6, codebook * 1e-6
    yield "huge", clustered * 3e4, codebook * 3e4


def half(x):
    return to_half(x, power_of_two_scale(largest_entry(x)))


def exact_distances(flat, codebook):
    return torch.cdist(flat.double(), codebook.double()) ** 2


def near_tie_tolerance(flat, codebook):
    """How far apart fp32's ||e||^2 - 2 z.e can put two equally distant codes."""
    return 1e-5 * (flat.double().pow(2).sum(1) + codebook.double().pow(2).sum(1).max())


@pytest.mark.parametrize("case", ["spread", "clustered", "tiny", "huge"])
def test_the_bound_covers_every_low_precision_distance(case):
    _, flat, codebook = next(c for c in search_cases() if c[0] == case)
    z, codes = half(flat), half(codebook)
    code_sq_norms = (codebook * codebook).sum(1)
    alpha = -2.0 / (z.scale * codes.scale)
    low = torch.addmm(code_sq_norms, z.values.float(), codes.values.float().t(), alpha=alpha)  # as on tensor cores
    exact = (codebook.double() ** 2).sum(1) - 2 * flat.double() @ codebook.double().t()
    error = (low.double() - exact).abs()
    bound = margins(z, codes, code_sq_norms, alpha).double()[:, None]
    assert (error <= bound).all(), f"worst error / bound {float((error / bound).max()):.3f}"
    # Not vacuous: fp16 rounding uses a visible part of the bound.
    assert float((error / bound).max()) > 0.02


@pytest.mark.parametrize("case", ["spread", "clustered", "tiny", "huge"])
def test_checked_search_picks_fp32_codes_except_at_near_ties(case):
    _, flat, codebook = next(c for c in search_cases() if c[0] == case)
    reference = nearest_codes(flat, codebook)
    chosen, route = checked_search(flat, codebook, kernel="torch", chunk_size=1000)
    exact = exact_distances(flat, codebook)
    rows = torch.arange(len(flat))
    differ = chosen != reference
    gap = (exact[rows, chosen] - exact[rows, reference]).abs()
    assert (gap[differ] <= near_tie_tolerance(flat, codebook)[differ]).all()
    # What the margin decided alone is the true nearest code (no tie in float64).
    alone = route == BY_MARGIN
    assert torch.equal(exact[alone].argmin(1), chosen[alone])
    # The full fp32 search is the exception: about the 7% of vectors whose nearest code is in a triplet.
    assert (route == BY_FP32_SEARCH).float().mean() < 0.1
    if case == "clustered":  # twins and triplets send vectors down every route
        assert {int(v) for v in route.unique()} == {BY_MARGIN, BY_TWO_CANDIDATES, BY_FP32_SEARCH}


def test_without_the_margin_fp16_distances_pick_wrong_codes(monkeypatch):
    """Negative control: trusting the fp16 winner (margin and slack zero) picks codes that are
    clearly farther than fp32's, so the margin is what makes the search exact."""
    _, flat, codebook = next(search_cases())
    monkeypatch.setattr(codebook_search, "margins", lambda z, *_: torch.zeros(len(z.values)))
    monkeypatch.setattr(codebook_search, "fp32_slack", lambda z_norms, *_: torch.zeros(len(z_norms)))
    chosen, _ = checked_search(flat, codebook, kernel="torch")
    reference = nearest_codes(flat, codebook)
    exact = exact_distances(flat, codebook)
    rows = torch.arange(len(flat))
    worse = exact[rows, chosen] - exact[rows, reference]
    assert (worse > near_tie_tolerance(flat, codebook)).any()


ULP = 2.0 ** -10  # fp16's step between 1 and 2


def codes_rounded():
    """z exact in fp16; code a's entries just below a halfway point (rounded down: its fp16 distance
    comes out high), code b's just above (rounded up: low)."""
    z = torch.ones(1, 64)
    a = torch.full((64,), 1 + 0.49 * ULP)
    b = torch.full((64,), 1 + 0.51 * ULP)
    b[0] = 1.1875 + 0.51 * ULP
    return z, torch.stack([a, b])


def vector_rounded():
    """The codes exact in fp16; z's first half rounded down, its second half up, and each code
    leaning on the half that errs its way (found by a grid search over exact code values)."""
    z = torch.empty(1, 64)
    z[0, :32], z[0, 32:] = 1 + 0.49 * ULP, 1 + 0.51 * ULP
    a, b = torch.empty(64), torch.empty(64)
    a[:32], a[32:] = 1.0, -0.75
    b[:32], b[32:] = -0.75, 0.96875
    return z, torch.stack([a, b])


@pytest.mark.parametrize("case", [codes_rounded, vector_rounded])
def test_rounding_errors_that_all_point_one_way_reach_the_bound_and_need_twice_the_margin(case):
    """Code a is truly nearer (by 0.030-0.035), but fp16 puts b ahead by more than one margin and
    less than two. So the error reaches over 90% of the bound, and only the threshold of two
    margins keeps b from being chosen on fp16 alone."""
    z, codebook = case()
    zh, codes = half(z), half(codebook)
    code_sq_norms = (codebook * codebook).sum(1)
    alpha = -2.0 / (zh.scale * codes.scale)
    low = torch.addmm(code_sq_norms, zh.values.float(), codes.values.float().t(), alpha=alpha).double()[0]
    exact = ((codebook.double() ** 2).sum(1) - 2 * z.double() @ codebook.double().t())[0]
    margin = float(margins(zh, codes, code_sq_norms, alpha))
    assert float((low - exact).abs().max()) / margin > 0.9
    assert exact[0] + 0.03 < exact[1] and margin < float(low[0] - low[1]) < 2 * margin
    chosen, route = checked_search(z, codebook, kernel="torch")
    assert chosen.tolist() == [0] and route.tolist() == [BY_TWO_CANDIDATES]


def test_a_true_nearest_code_ranked_third_in_fp16_is_still_found():
    """codes_rounded plus a copy of b one step farther: fp16 ranks b, its copy, then a, all within
    two margins of each other, so the two-candidate comparison (b against its copy) would miss a."""
    z, codebook = codes_rounded()
    c = codebook[1].clone()
    c[1] = 1.1875 + 0.51 * ULP
    codebook = torch.cat([codebook, c[None]])
    chosen, route = checked_search(z, codebook, kernel="torch")
    assert chosen.tolist() == [0] and route.tolist() == [BY_FP32_SEARCH]


@pytest.mark.parametrize("vectors, codes", [
    # One huge vector sets the batch's scale; the small one's residuals vanish when squared in fp32.
    ([[1e20, 0, 0, 0], [1e-8, 0, 0, 0]], [[0, 0, 0, 0], [0, 1e-8, 0, 0], [0, 0, 1e-8, 0], [1.5e-8, 0, 0, 0]]),
    # Tiny inputs: 2 / (scale_z scale_e) would underflow to 0 in fp32.
    ([[1e-19, 0, 0, 0]], [[0, 0, 0, 0], [0, 1e-19, 0, 0], [0, 0, 1e-19, 0], [1.5e-19, 0, 0, 0]]),
])
def test_extreme_ranges_still_get_the_fp32_codes(vectors, codes):
    """Found by review: both once gave code 0 by the margin, 4x farther than fp32's (and float64's) code 3."""
    flat, codebook = torch.tensor(vectors), torch.tensor(codes)
    chosen, _ = checked_search(flat, codebook, kernel="torch")
    assert chosen[-1] == 3 and torch.equal(chosen, nearest_codes(flat, codebook))


def test_an_empty_batch_gets_no_codes():
    chosen, route = checked_search(torch.zeros(0, 8), torch.randn(16, 8), kernel="torch")
    assert chosen.shape == route.shape == (0,)


def test_vectors_that_are_not_finite_get_the_fp32_answer():
    g = torch.Generator().manual_seed(1)
    codebook, flat = torch.randn(300, 16, generator=g), torch.randn(50, 16, generator=g)
    flat[3, 2], flat[7, 0] = float("inf"), float("nan")
    chosen, route = checked_search(flat, codebook, kernel="torch")
    assert (route == BY_FP32_SEARCH).all()  # one bad vector: the whole batch in fp32
    assert torch.equal(chosen, nearest_codes(flat, codebook))


def test_fast_precision_is_the_fp32_search_off_cuda():
    g = torch.Generator().manual_seed(2)
    codebook, flat = torch.randn(2048, 16, generator=g), torch.randn(500, 16, generator=g)
    assert torch.equal(nearest_codes(flat, codebook, precision="fast"), nearest_codes(flat, codebook))


def test_search_precision_accepts_only_fp32_and_fast(tiny_config):
    saved = tiny_config.to_dict()
    saved["quantizer"]["search_precision"] = "bf16"
    with pytest.raises(ConfigError, match="search_precision='bf16': must be one of fp32, fast"):
        RunConfig.from_dict(saved)
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
    from vqvae.models.codebook_search import best_three_torch, largest_entry, power_of_two_scale, to_half
    from vqvae.models.codebook_search_triton import best_three_triton, to_half_triton

    g = torch.Generator().manual_seed(0)
    # Sizes that are not multiples of the tiles: every mask in the kernels matters.
    codebook, flat = torch.randn(150, 40, generator=g), torch.randn(70, 40, generator=g)
    codebook[140:] = codebook[:10]  # identical codes: the runner-up equals the winner
    flat[:5] = codebook[:5] + 1e-3 * torch.randn(5, 40, generator=g)
    codes = to_half(codebook, power_of_two_scale(largest_entry(codebook)))
    z = to_half(flat, power_of_two_scale(largest_entry(flat)))
    fused = to_half_triton(flat, z.scale)
    assert fused.scale == z.scale and torch.equal(fused.values, z.values)
    assert torch.allclose(fused.norms, z.norms, rtol=1e-6) and torch.allclose(fused.residual_norms, z.residual_norms, rtol=1e-5)
    norms = (codebook ** 2).sum(1)
    alpha = -2.0 / (z.scale * codes.scale)
    want = best_three_torch(z, codes, norms, alpha)
    for tiles in (dict(BLOCK_M=32, BLOCK_N=64, BLOCK_C=16), dict(BLOCK_M=16, BLOCK_N=16, BLOCK_C=64)):
        got = best_three_triton(z.values, codes.values.t().contiguous(), norms, alpha, config=tiles)
        atol = 1e-5 * float(want.best.abs().max())
        for name in ("best", "second", "third"):
            assert torch.allclose(getattr(got, name), getattr(want, name), atol=atol), name
        clear = (want.second - want.best > 1e-3) & (want.third - want.second > 1e-3)
        assert torch.equal(got.index[clear], want.index[clear])
        assert torch.equal(got.second_index[clear], want.second_index[clear])
        assert clear.sum() > 40 and (~clear).sum() > 4  # both kinds of vectors were compared
    # The whole search through the fused kernels (tiles fixed: the autotuner needs a GPU).
    import vqvae.models.codebook_search_triton as fused
    from vqvae.models.codebook_search import checked_search
    from vqvae.models.quantizer import nearest_codes
    untuned = fused.best_three_triton
    fused.best_three_triton = lambda *args: untuned(*args, config=dict(BLOCK_M=32, BLOCK_N=64, BLOCK_C=16))
    chosen, _ = checked_search(flat, codebook, kernel="triton")
    reference = nearest_codes(flat, codebook)
    assert torch.equal(chosen[clear], reference[clear])
    print("ok")
""")


def test_the_fused_triton_kernel_matches_the_matmul_path():
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", TRITON_CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("ok")


def test_a_triton_that_fails_here_gives_way_to_the_fp32_search(monkeypatch):
    g = torch.Generator().manual_seed(3)
    codebook, flat = torch.randn(300, 16, generator=g), torch.randn(100, 16, generator=g)
    monkeypatch.setattr(codebook_search, "_TRITON", True)
    monkeypatch.setattr(codebook_search, "_choose_kernel", lambda kernel, _: "triton")

    def cannot_compile(*_):
        raise RuntimeError("no ptxas for this card")

    monkeypatch.setattr(codebook_search, "_fp16_pass", cannot_compile)
    with pytest.raises(RuntimeError, match="ptxas"):  # asked for by name: its error
        checked_search(flat, codebook, kernel="triton")
    with pytest.warns(RuntimeWarning, match="ptxas"):  # chosen automatically: a warning, then the fp32 search
        chosen, _ = checked_search(flat, codebook)
    assert codebook_search._TRITON is False
    assert torch.equal(chosen, nearest_codes(flat, codebook))
