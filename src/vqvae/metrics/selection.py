"""Choosing sampling settings on a score that sees diversity.

The calibrated score's Fréchet distance comes from a classifier trained on the labels, whose
features barely move when guidance or a low temperature narrows each class: two settings can
sit at the same distance while one has lost much of the variety within a class. Recall
(Kynkäänniemi et al. 2019: the share of real images inside the samples' k-NN manifold) does
see it. The rule here therefore chooses the setting with the lowest mean Fréchet distance
among those whose mean recall is within `recall_margin` of the reconstructions' recall (what
the decoder itself reaches), and falls back to the highest recall when no setting qualifies.
Each figure is a mean over several draws (sample seeds) with a 95% Student-t interval, so a
reader can see which differences are noise.
"""
from __future__ import annotations

import math

RULE = ("lowest mean Fréchet distance among the settings whose mean recall is within {margin} of the "
        "reconstructions' recall (when none is, the highest mean recall)")

# Two-sided 95% quantiles of Student's t by degrees of freedom (draws - 1); 1.96 beyond the table.
_T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
          10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}


def _t_quantile(dof: int) -> float:
    known = [d for d in _T_975 if d <= dof]
    return _T_975[max(known)] if dof <= 30 else 1.96  # the nearest smaller table entry: a wider interval


def interval(values: list[float]) -> dict:
    """Mean and 95% t-interval of the mean over draws: {"mean", "low", "high", "draws"}."""
    if len(values) < 2:
        raise ValueError(f"an interval needs at least 2 draws, got {len(values)}")
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = _t_quantile(n - 1) * sd / math.sqrt(n)
    return {"mean": round(mean, 4), "low": round(mean - half, 4), "high": round(mean + half, 4), "draws": n}


def choose_setting(rows: list[dict], reconstructions_recall: float, recall_margin: float = 0.1) -> tuple[int, str]:
    """Index of the chosen row and why, in words. Each row holds "frechet_distance" and "recall"
    intervals (from `interval`)."""
    if not rows:
        raise ValueError("no settings to choose from")
    floor = reconstructions_recall - recall_margin
    eligible = [i for i, r in enumerate(rows) if r["recall"]["mean"] >= floor]
    if eligible:
        best = min(eligible, key=lambda i: rows[i]["frechet_distance"]["mean"])
        return best, (f"lowest mean Fréchet distance ({rows[best]['frechet_distance']['mean']:.3f}) of the "
                      f"{len(eligible)} of {len(rows)} settings whose mean recall is at least {floor:.3f} "
                      f"(the reconstructions' {reconstructions_recall:.3f} - {recall_margin})")
    best = max(range(len(rows)), key=lambda i: rows[i]["recall"]["mean"])
    return best, (f"no setting reached recall {floor:.3f} (the reconstructions' {reconstructions_recall:.3f} - "
                  f"{recall_margin}): the highest mean recall ({rows[best]['recall']['mean']:.3f})")
