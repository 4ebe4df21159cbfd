"""Choosing sampling settings on validation data with a rule that sees diversity (recall), over several draws."""
import json

import pytest

from vqvae import api
from vqvae.cli import main
from vqvae.config import load_config
from vqvae.errors import ConfigError
from vqvae.metrics.selection import choose_setting, interval
from vqvae.report import write_report

from conftest import tiny_overrides


def test_interval_is_the_t_interval_of_the_mean():
    r = interval([1.0, 2.0, 3.0, 4.0, 5.0])
    # mean 3, sd sqrt(2.5), t(0.975, 4 dof) = 2.776: half-width 2.776 * 1.5811 / sqrt(5) = 1.963
    assert r["mean"] == 3.0 and r["draws"] == 5
    assert abs(r["high"] - 4.963) < 1e-3 and abs(r["low"] - 1.037) < 1e-3
    assert interval([2.0, 2.0]) == {"mean": 2.0, "low": 2.0, "high": 2.0, "draws": 2}
    with pytest.raises(ValueError, match="at least 2 draws"):
        interval([1.0])


def _row(frechet, recall):
    return {"frechet_distance": interval([frechet, frechet]), "recall": interval([recall, recall])}


def test_rule_refuses_a_setting_that_lost_recall_even_at_a_lower_frechet_distance():
    # Guidance 2 has the lowest distance, but its recall fell 0.13 below the reconstructions':
    # the rule takes guidance 1.5, the lowest distance among settings that kept their recall.
    rows = [_row(13.5, 0.79), _row(9.7, 0.76), _row(9.5, 0.67)]
    assert choose_setting(rows, reconstructions_recall=0.80, recall_margin=0.1)[0] == 1
    # Negative control: a margin wide enough to admit guidance 2 chooses it by distance alone.
    assert choose_setting(rows, reconstructions_recall=0.80, recall_margin=0.2)[0] == 2
    # No setting qualifies: the highest recall, and the reason says so.
    index, reason = choose_setting([_row(20.0, 0.3), _row(10.0, 0.5)], reconstructions_recall=0.9)
    assert index == 1 and "no setting reached" in reason


@pytest.fixture(scope="module")
def guided_run(bar_folder, tmp_path_factory):
    """A tiny run with a class-conditional prior trained with label dropout (so guidance applies)
    and a validation split large enough to score (a third of the training images)."""
    run = tmp_path_factory.mktemp("guided")
    cfg = load_config("tiny", tiny_overrides(bar_folder) + ["prior.conditional=true", "prior.label_dropout=0.2",
                                                            "data.val_fraction=0.3"])
    api.train_vqvae(cfg, run)
    api.train_prior(cfg, run)
    return run


def test_tune_sampling_scores_on_validation_and_sample_uses_the_choice(guided_run, capsys):
    result = api.tune_sampling(guided_run, guidance=[0.0, 1.0, 3.0], temperature=[1.0, 0.5], draws=3, device="cpu")
    assert len(result["settings"]) == 6
    assert "(validation)" in result["heldout"] and "val" in result["heldout"].split(" ")[0]
    for row in result["settings"]:
        f = row["frechet_distance"]
        assert f["draws"] == 3 and f["low"] <= f["mean"] <= f["high"]
        assert 0 <= row["recall"]["mean"] <= 1
    # The choice follows the rule on the table it wrote.
    floor = result["reconstructions"]["recall"] - 0.1
    eligible = [r for r in result["settings"] if r["recall"]["mean"] >= floor]
    expected = (min(eligible, key=lambda r: r["frechet_distance"]["mean"]) if eligible
                else max(result["settings"], key=lambda r: r["recall"]["mean"]))
    assert result["chosen"] == expected["setting"]
    assert json.loads((guided_run / "sampling.json").read_text())["chosen"] == result["chosen"]
    # `sample` with no options now draws with the chosen settings, and the report says why.
    drawn = api.sample(guided_run, device="cpu", num_samples=8)
    assert {k: drawn[k] for k in result["chosen"]} == result["chosen"]
    write_report(guided_run)
    report = (guided_run / "report.md").read_text()
    assert "## Sampling settings (chosen on validation data)" in report
    assert "chosen by `vqvae tune-sampling`" in report
    # An explicit option still wins over the tuned setting.
    assert api.sample(guided_run, device="cpu", num_samples=8, temperature=0.7)["temperature"] == 0.7


def test_tuned_settings_of_another_prior_are_ignored(guided_run):
    tuned = json.loads((guided_run / "sampling.json").read_text())
    configured = api.sample(guided_run, device="cpu", num_samples=4)
    stale = dict(tuned, prior_fingerprint="0" * 16, chosen={"guidance": 0.0, "temperature": 0.25, "top_p": 1.0})
    (guided_run / "sampling.json").write_text(json.dumps(stale))
    try:
        drawn = api.sample(guided_run, device="cpu", num_samples=4)
        assert drawn["temperature"] != 0.25 and drawn["guidance"] != 0.0
        assert {k: drawn[k] for k in ("temperature", "guidance")} != {"temperature": 0.25, "guidance": 0.0}
        # Without tuning, the run's config applies (the tiny preset: temperature 1).
        assert drawn["temperature"] == 1.0 and configured["prior_fingerprint"] == drawn["prior_fingerprint"]
    finally:
        (guided_run / "sampling.json").write_text(json.dumps(tuned))


def test_tune_sampling_cli_prints_the_table_and_refuses_bad_input(guided_run, trained_run, capsys):
    assert main(["tune-sampling", str(guided_run), "--guidance", "1,2", "--draws", "2", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "chosen: guidance" in out and "recall" in out and out.count("guidance 2, temperature") == 1
    for args, message in ((["--guidance", "1,x"], "expected numbers separated by commas"),
                          (["--draws", "1"], "--draws=1"), (["--temperature", "0"], "sample.temperature"),
                          (["--guidance", "1,1"], "given twice")):
        assert main(["tune-sampling", str(guided_run), *args, "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    # trained_run's prior has no unconditional mode: guidance is refused, and its validation split
    # (a tenth of 192 images) is too small to score.
    assert main(["tune-sampling", str(trained_run), "--guidance", "2"]) == 2
    assert "label dropout" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="validation"):
        api.tune_sampling(trained_run, device="cpu")
