"""study.report.claims: every claim's verdict follows from the intervals (hand-made best_by_cell frames)."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from study.report.claims import (
    NO_INTERVAL,
    RESOLVED,
    UNRESOLVED,
    claims_section,
    study_claims,
    verdict,
)
from study.report.tables import MS

M = "eval/fd_fmnist_2k"


def _row(method, loss, T, mean, half, ms=1.0, images=12_800, sampler=None, steps=None):
    low, high = (mean - half, mean + half) if half is not None else (math.nan, math.nan)
    cell = f"ddgan-{loss}-T{T}" if method == "ddgan" else (
        f"ddpm-{sampler}-S{steps}" if sampler else f"ddpm-T{T}")
    return {"cell": cell, "method": method, "loss": loss, "T": T, "sampler": sampler,
            "sampling_steps": steps or T, "preset": "small", f"{M}_mean": mean, f"{M}_ci_low": low,
            f"{M}_ci_high": high, MS: ms, "images_seen": images}


@pytest.mark.parametrize("a, b, mode, expected", [
    ((10, 2), (20, 3), "min", RESOLVED),       # [8, 12] below [17, 23]
    ((10, 5), (20, 6), "min", UNRESOLVED),     # [5, 15] meets [14, 26]
    ((20, 3), (10, 2), "max", RESOLVED),
    ((10, None), (20, 3), "min", NO_INTERVAL),
])
def test_verdict_is_interval_separation(a, b, mode, expected):
    better, worse = pd.Series(_row("ddgan", "ns", 1, *a)), pd.Series(_row("ddgan", "tv", 1, *b))
    assert verdict(better, worse, M, mode) == expected


def _best():
    return pd.DataFrame([
        _row("ddgan", "ns", 1, 200, 10, ms=2), _row("ddgan", "tv", 1, 240, 10, ms=2),
        _row("ddgan", "ns", 4, 150, 20, ms=8), _row("ddgan", "tv", 4, 160, 20, ms=8),
        _row("ddpm", "mse", 10, 120, 5, ms=20),
        _row("ddpm", "mse", 1000, 100, 4, ms=40, sampler="ancestral", steps=10),
        _row("ddpm", "mse", 1000, 300, 30, ms=6, sampler="ddim", steps=2),
    ])


def test_claims_of_a_study():
    claims = {c.topic: c for c in study_claims(_best(), M, "min")}
    assert claims["best objective at T=1"].verdict == RESOLVED          # 200+-10 vs 240+-10
    assert claims["best objective at T=4"].verdict == UNRESOLVED        # 150+-20 vs 160+-20
    assert claims["best objective overall (each at its best T)"].verdict == UNRESOLVED
    assert claims["effect of T (ns)"].verdict == RESOLVED                # [130, 170] vs [190, 210]
    assert "T=4 150" in claims["effect of T (ns)"].statement
    assert claims["effect of T (tv)"].verdict == RESOLVED                # [140, 180] vs [230, 250]
    equal_images = claims["DDGAN vs DDPM at equal training images"]
    assert equal_images.verdict == RESOLVED  # DDPM 100+-4 against ns T=4 150+-20
    assert equal_images.statement.endswith("DDPM T=1000, ancestral S=10 is better")
    timed = claims["DDGAN vs DDPM at equal sampling time"]
    # best DDGAN (ns T=4, 8 ms) against the best DDPM no slower than 8 ms: the 2-step DDIM cell (300 +- 30)
    assert "S=2" in timed.statement or "S2" in timed.statement
    assert timed.verdict == RESOLVED


def test_unequal_images_are_named_and_one_seed_has_no_interval():
    best = _best()
    best.loc[best["method"] == "ddpm", "images_seen"] = 76_800
    best.loc[best["cell"] == "ddgan-tv-T1", [f"{M}_ci_low", f"{M}_ci_high"]] = math.nan
    claims = {c.topic: c for c in study_claims(best, M, "min")}
    assert "DDGAN vs DDPM (UNEQUAL training images)" in claims
    assert claims["best objective at T=1"].verdict == NO_INTERVAL
    text = "\n".join(claims_section(best, M, "min"))
    assert "## Claims and their intervals" in text and "not resolved at this scale" in text


def test_no_ddgan_no_claims():
    assert study_claims(pd.DataFrame(), M, "min") == []


def test_smallest_t_best_is_checked_against_every_other_t_and_an_overlap_wins_over_a_missing_interval():
    best = pd.DataFrame([_row("ddgan", "rkl", 1, 100, 5), _row("ddgan", "rkl", 2, 108, 5),
                         _row("ddgan", "rkl", 4, 200, None)])
    claim = {c.topic: c for c in study_claims(best, M, "min")}["effect of T (rkl)"]
    assert claim.verdict == UNRESOLVED  # T=2 overlaps T=1; T=4 has no interval
    assert "T=2 108" in claim.statement and "T=4 200" in claim.statement


def test_images_not_recorded_are_not_called_unequal():
    best = _best()
    best["images_seen"] = math.nan
    topics = {c.topic for c in study_claims(best, M, "min")}
    assert "DDGAN vs DDPM (training images not recorded)" in topics
