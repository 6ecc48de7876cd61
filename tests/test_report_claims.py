"""study.report.claims: planned contrasts on hand-made studies, the verdict from the Holm-adjusted p.

Frames with three and four objectives per T, both metric modes, touching and overlapping
intervals, a missing seed, and a grid's explicit `contrasts:` against its defaults."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from study.report.claims import (
    NO_DATA,
    NOT_IN_DESIGN,
    RESOLVED,
    UNRESOLVED,
    analyse,
    claims_frame,
    claims_section,
)
from study.report.contrasts import CellInfo, ContrastPlan, Planned, default_contrasts
from study.report.tables import best_by_cell, interval95

M = "eval/fd_fmnist_2k"
SEEDS = (0, 1, 2, 3, 4, 5, 6, 7)


def _trial(cell, method, loss, T, seed, value, lr=1e-4, sampler=None, steps=None, status="completed"):
    return {"trial_key": f"{cell}-lr{lr:g}-s{seed}", "cell": cell, "phase": "sample" if sampler else "train",
            "method": method, "loss": loss, "T": T, "sampler": sampler, "sampling_steps": steps or T, "lr": lr,
            "seed": seed, "preset": "small", "status": status, "steps": 100, "total_steps": 100,
            "batch_size": 64, "images_seen": 6400, M: value, "eval/sample_ms_per_image": float(steps or T),
            "eval/nfe": float(steps or T), "run_id": f"run-{cell}-{seed}-{lr:g}"}


def study(means: dict[tuple[str, int], float], noise=1.0, block=2.0, seeds=SEEDS, rng_seed=0,
          ddpm: dict[int, float] | None = None) -> pd.DataFrame:
    """A DDGAN study with the given true cell means, a seed effect and noise; optional DDPM T=1000
    respaced cells (DDIM S -> mean), sampled from the same seeds' models."""
    rng = np.random.default_rng(rng_seed)
    seed_effect = dict(zip(seeds, block * rng.standard_normal(len(seeds)), strict=True))
    rows = [_trial(f"ddgan-{loss}-T{T}", "ddgan", loss, T, s, mu + seed_effect[s] + noise * rng.standard_normal())
            for (loss, T), mu in means.items() for s in seeds]
    for S, mu in (ddpm or {}).items():
        rows += [_trial(f"ddpm-ddim-S{S}", "ddpm", "mse", 1000, s, mu + seed_effect[s] + noise * rng.standard_normal(),
                        sampler="ddim", steps=S) for s in seeds]
    return pd.DataFrame(rows)


def infos(summary: pd.DataFrame) -> list[CellInfo]:
    first = summary.drop_duplicates("cell")
    return [CellInfo(r["cell"], r["method"], r["loss"] if r["method"] == "ddgan" else None, int(r["T"]),
                     int(r["sampling_steps"])) for _, r in first.iterrows()]


def run(summary: pd.DataFrame, mode="min", plan: ContrastPlan | None = None):
    best = best_by_cell(summary, M, mode)
    plan = plan or ContrastPlan(tuple(default_contrasts(infos(summary))), "test defaults")
    analysis = analyse(summary, best, M, plan)
    return {c.name: c for c in analysis.claims}, analysis, best


FOUR = {("ns", 1): 100.0, ("hellinger", 1): 100.0, ("rkl", 1): 110.0, ("tv", 1): 95.0,
        ("ns", 2): 100.0, ("hellinger", 2): 100.0, ("rkl", 2): 100.0, ("tv", 2): 100.0}


def test_default_contrasts_are_few_and_planned():
    plan = default_contrasts(infos(study(FOUR)))
    names = [p.name for p in plan]
    # objective at fixed T: each of three objectives against ns, at both T (not all 6 pairs per T)
    assert [n for n in names if " vs ns at T=" in n] == [f"{loss} vs ns at T={T}" for T in (1, 2)
                                                       for loss in ("hellinger", "rkl", "tv")]
    assert [n for n in names if "equal images" in n] == [f"{loss}: T=2 vs T=1, equal images"
                                                         for loss in ("ns", "hellinger", "rkl", "tv")]
    absent = {p.kind: p.absent for p in plan if p.absent}
    assert "1/T of the updates" in absent["T_at_equal_updates"]
    assert "no DDPM cell" in absent["ddgan_vs_ddpm_at_equal_nfe"]


def test_four_objectives_min_mode_resolves_only_the_true_differences():
    claims, analysis, _ = run(study(FOUR))
    assert claims["rkl vs ns at T=1"].verdict == RESOLVED  # +10, noise SD 1, 8 seeds
    assert claims["tv vs ns at T=1"].verdict == RESOLVED  # -5
    assert claims["hellinger vs ns at T=1"].verdict == UNRESOLVED
    assert all(claims[f"{loss} vs ns at T=2"].verdict == UNRESOLVED for loss in ("hellinger", "rkl", "tv"))
    assert claims["rkl: T=2 vs T=1, equal images"].verdict == RESOLVED
    assert claims["T at equal updates per denoising step"].verdict == NOT_IN_DESIGN
    assert analysis.m == 10  # 6 objective + 4 T contrasts have a p; not-in-design ones do not count
    text = "\n".join(claims_section(analysis, run(study(FOUR))[2], M, "min"))
    assert text.index("Resolved: ") < text.index("| contrast")  # the resolved claims come first
    assert "**resolved**: tv, T=1 is better" in text  # lower is better: tv's -5 wins
    assert "**resolved**: ns, T=1 is better" in text  # over rkl's +10


def test_max_mode_flips_the_better_side_not_the_test():
    low, _, best = run(study(FOUR), "min")
    high, analysis, _ = run(study(FOUR), "max")
    for name in low:
        assert low[name].verdict == high[name].verdict
        if low[name].estimate is not None:
            assert low[name].estimate.p == pytest.approx(high[name].estimate.p)
    text = "\n".join(claims_section(analysis, best, M, "max"))
    assert "**resolved**: rkl, T=1 is better" in text  # higher is better: rkl's +10 wins


def test_the_verdict_is_the_adjusted_p_not_the_overlap_of_intervals():
    """Paired seeds: two cells whose per-cell 95% intervals overlap widely, yet every seed shows the
    same +1.5 difference -> resolved; and the old overlap rule would have said not resolved."""
    summary = study({("ns", 1): 100.0, ("hellinger", 1): 101.5, ("rkl", 1): 100.0}, noise=0.3, block=10.0)
    claims, _, best = run(summary)
    assert claims["hellinger vs ns at T=1"].verdict == RESOLVED
    cells = best.set_index("cell")
    ns, hel = cells.loc["ddgan-ns-T1"], cells.loc["ddgan-hellinger-T1"]
    assert hel[f"{M}_ci_low"] < ns[f"{M}_ci_high"]  # the intervals overlap


def test_touching_intervals_and_the_threshold():
    """Two cells whose per-cell intervals just touch are decided by the Holm p alone; a p just above
    alpha / m is not resolved, whatever the intervals."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal(8)
    half = stats.t.ppf(0.975, 7) * x.std(ddof=1) / math.sqrt(8)
    gap = 2 * half  # b's interval starts where a's ends
    rows = [_trial("ddgan-ns-T1", "ddgan", "ns", 1, s, 100 + x[i]) for i, s in enumerate(SEEDS)]
    rows += [_trial("ddgan-tv-T1", "ddgan", "tv", 1, s, 100 + gap + x[i]) for i, s in enumerate(SEEDS)]
    summary = pd.DataFrame(rows)
    _, low_a, high_a = interval95(summary[summary["cell"] == "ddgan-ns-T1"][M])
    _, low_b, _ = interval95(summary[summary["cell"] == "ddgan-tv-T1"][M])
    assert low_b == pytest.approx(high_a)  # touching
    # the same noise in both cells: every paired difference is exactly `gap`, so p is 0 -> resolved
    claims, _, _ = run(summary)
    assert claims["tv vs ns at T=1"].verdict == RESOLVED and claims["tv vs ns at T=1"].estimate.p < 1e-12
    # a p just above 0.05 (one contrast: Holm p = p) is not resolved, one just below is
    for target, verdict in ((0.051, UNRESOLVED), (0.049, RESOLVED)):
        d = rng.standard_normal(8)
        d = (d - d.mean()) / d.std(ddof=1)  # mean 0, SD 1: t = shift * sqrt(8)
        shift = stats.t.ppf(1 - target / 2, 7) / math.sqrt(8)
        rows = [_trial("ddgan-ns-T1", "ddgan", "ns", 1, s, 100.0) for s in SEEDS]
        rows += [_trial("ddgan-tv-T1", "ddgan", "tv", 1, s, 100.0 + shift + d[i]) for i, s in enumerate(SEEDS)]
        claims, _, _ = run(pd.DataFrame(rows))
        claim = claims["tv vs ns at T=1"]
        assert claim.p_holm == pytest.approx(target, rel=1e-6) and claim.verdict == verdict


def test_a_missing_seed_is_fitted_not_imputed_and_named():
    summary = study({("ns", 1): 100.0, ("hellinger", 1): 103.0, ("rkl", 1): 100.0}, noise=1.0)
    summary = summary[~((summary["cell"] == "ddgan-hellinger-T1") & (summary["seed"] == 3))]
    plan = ContrastPlan(tuple(default_contrasts(infos(summary))), "test", variance="contrast")
    claims, analysis, _ = run(summary, plan=plan)
    claim = claims["hellinger vs ns at T=1"]
    wide = summary.pivot(index="seed", columns="cell", values=M).dropna()
    paired = stats.ttest_rel(wide["ddgan-hellinger-T1"], wide["ddgan-ns-T1"])
    assert claim.estimate.seeds == 7 and claim.estimate.p == pytest.approx(paired.pvalue, rel=1e-9)
    assert any("`ddgan-hellinger-T1` lacks seed(s) [3]" in n for n in analysis.notes)


def test_equal_nfe_contrasts_and_detectable_differences():
    summary = study({("ns", 1): 100.0, ("ns", 2): 90.0, ("tv", 2): 90.0}, ddpm={1: 300.0, 2: 150.0, 10: 80.0})
    claims, analysis, best = run(summary)
    nfe = {n: c for n, c in claims.items() if c.kind == "ddgan_vs_ddpm_at_equal_nfe"}
    assert set(nfe) == {"ns T=1 vs ddpm-ddim-S1 (NFE 1)", "ns T=2 vs ddpm-ddim-S2 (NFE 2)"}  # S=10 meets no T
    assert all(c.verdict == RESOLVED for c in nfe.values())
    # detectable difference: power 0.8 at Holm's first step, from the contrast's own se and df
    c = claims["tv vs ns at T=2"]
    level = 0.05 / analysis.m
    crit = stats.t.ppf(1 - level / 2, c.estimate.df)
    ncp = c.detectable / c.estimate.se
    assert stats.nct.sf(crit, c.estimate.df, ncp) + stats.nct.cdf(-crit, c.estimate.df, ncp) == pytest.approx(0.8)
    frame = claims_frame(analysis)
    assert list(frame.columns[:4]) == ["contrast", "kind", "a", "b"] and len(frame) == len(analysis.claims)
    text = "\n".join(claims_section(analysis, best, M, "min"))
    assert "ns T=2 vs ddpm-ddim-S2 (NFE 2) (ms/image 2 vs 2)" in text and "detectable (power 0.8)" in text
    assert "**resolved**: ns, T=2 is better" in text


def test_explicit_contrasts_and_cells_without_data():
    summary = study({("ns", 1): 100.0, ("ns", 2): 95.0, ("ns", 4): 90.0, ("hellinger", 4): 90.0}, noise=1.0)
    plan = ContrastPlan((
        Planned("T 2 and 4 vs T 1 (ns)", "T_at_equal_images", ("ddgan-ns-T2", "ddgan-ns-T4"), ("ddgan-ns-T1",)),
        Planned("rkl vs ns at T=4", "objective_at_T", ("ddgan-rkl-T4",), ("ddgan-ns-T4",)),
    ), "test")
    claims, analysis, best = run(summary, plan=plan)
    avg = claims["T 2 and 4 vs T 1 (ns)"]
    wide = summary.pivot(index="seed", columns="cell", values=M)
    expected = ((wide["ddgan-ns-T2"] + wide["ddgan-ns-T4"]) / 2 - wide["ddgan-ns-T1"]).mean()
    assert avg.estimate.estimate == pytest.approx(expected) and avg.verdict == RESOLVED
    assert claims["rkl vs ns at T=4"].verdict == NO_DATA and analysis.m == 1
    # the study fit pools only the cells that planned contrasts name (hellinger T=4 is not one)
    assert analysis.cells == ["ddgan-ns-T2", "ddgan-ns-T4", "ddgan-ns-T1"]


def test_unequal_scatter_is_flagged_under_the_pooled_fit():
    summary = study({("ns", 1): 100.0, ("hellinger", 1): 100.0, ("tv", 1): 100.0}, noise=1.0)
    noisy = summary["cell"] == "ddgan-tv-T1"
    summary.loc[noisy, M] += 40 * np.random.default_rng(9).standard_normal(int(noisy.sum()))
    _, analysis, best = run(summary)
    assert any("scatter over seeds differs between cells" in n and "ddgan-tv-T1" in n for n in analysis.caution)
    text = "\n".join(claims_section(analysis, best, M, "min"))
    assert text.index("**Caution:** the scatter over seeds differs") < text.index("| contrast")
    plan = ContrastPlan(tuple(default_contrasts(infos(summary))), "test", variance="contrast")
    _, analysis, _ = run(summary, plan=plan)
    assert analysis.caution == []


def test_groups_variance_pools_within_objectives_and_samplers():
    """`variance: groups` through the report: a cell's group is its name without -T<k>/-S<k> (each
    objective at every T, each DDPM sampler); a contrast across groups is the paired mean over its
    seeds with each group's variance; a noisy objective does not widen ns's interval; a group of one
    cell gives no interval and says why."""
    from study.report.claims import variance_group
    from study.report.stats import contrast_weights, estimate_grouped_contrast, fit_additive

    assert [variance_group(c) for c in ("ddgan-ns-T10", "ddpm-T1000", "ddpm-ddim-S4", "ddpm-ancestral-S1000")] == \
        ["ddgan-ns", "ddpm", "ddpm-ddim", "ddpm-ancestral"]
    summary = study({("ns", 1): 100.0, ("ns", 2): 104.0, ("tv", 1): 100.0, ("tv", 2): 100.0}, noise=1.0,
                    ddpm={1: 130.0, 2: 120.0})
    noisy = summary["cell"].str.startswith("ddgan-tv")
    summary.loc[noisy, M] += 30 * np.random.default_rng(11).standard_normal(int(noisy.sum()))
    planned = (Planned("ns T2 vs T1", "T_at_equal_images", ("ddgan-ns-T2",), ("ddgan-ns-T1",)),
               Planned("tv vs ns at T=1", "objective_at_T", ("ddgan-tv-T1",), ("ddgan-ns-T1",)),
               Planned("ns T1 vs DDIM S1", "ddgan_vs_ddpm_at_equal_nfe", ("ddgan-ns-T1",), ("ddpm-ddim-S1",)))
    claims, analysis, best = run(summary, plan=ContrastPlan(planned, "test", variance="groups"))
    assert set(analysis.groups) == {"ddgan-ns", "ddgan-tv", "ddpm-ddim"}
    assert all(df == len(SEEDS) - 1 for _, _, df in analysis.groups.values())
    wide = summary.pivot(index="cell", columns="seed", values=M)
    cells = list(wide.index)
    group_of = {c: variance_group(c) for c in cells}
    fits = {g: fit_additive(wide.loc[[c for c in cells if group_of[c] == g]].to_numpy(),
                            [c for c in cells if group_of[c] == g], SEEDS) for g in set(group_of.values())}
    for p in planned:
        expected = estimate_grouped_contrast(wide.to_numpy(), cells, contrast_weights(p.a, p.b), fits, group_of)
        assert claims[p.name].estimate.se == pytest.approx(expected.se, rel=1e-10)
        assert claims[p.name].estimate.p == pytest.approx(expected.p, rel=1e-9)
    assert claims["ns T2 vs T1"].verdict == RESOLVED and claims["ns T1 vs DDIM S1"].verdict == RESOLVED
    assert claims["tv vs ns at T=1"].estimate.se > 5 * claims["ns T2 vs T1"].estimate.se
    text = "\n".join(claims_section(analysis, best, M, "min"))
    assert "one fit per variance group" in text and "`ddgan-tv`" in text and "Welch-Satterthwaite" in text
    lone = summary[summary["cell"] != "ddgan-tv-T2"]
    claims, _, _ = run(lone, plan=ContrastPlan(planned, "test", variance="groups"))
    assert claims["tv vs ns at T=1"].verdict == "no interval"
    assert "`ddgan-tv`" in claims["tv vs ns at T=1"].statement


def test_contrasts_are_checked_again_on_fd_infinity():
    """The final FD-infinity column (eval/..._inf) gets the same planned contrasts, its own Holm, and
    a column that says whether each verdict is the same; claims.csv names the metric of each row."""
    from study.report.claims import infinity_metrics, infinity_section

    summary = study({("ns", 1): 100.0, ("hellinger", 1): 106.0, ("rkl", 1): 100.0}, noise=1.0)
    inf = "eval/fd_fmnist_inf"
    summary[inf] = summary[M] - 3.0  # the same ordering: every verdict agrees
    summary["eval/fd_fmnist_2048"] = summary[M] + 1.0  # not an infinity column
    assert infinity_metrics(summary, M) == [inf]
    plan = ContrastPlan(tuple(default_contrasts(infos(summary))), "test", variance="contrast")
    claims, analysis, best = run(summary, plan=plan)
    assert claims["hellinger vs ns at T=1"].verdict == RESOLVED and claims["rkl vs ns at T=1"].verdict == UNRESOLVED

    def check(frame):
        return analyse(frame, best_by_cell(frame, inf, "min"), inf, plan)

    text = "\n".join(infinity_section([(inf, check(summary))], analysis, best, "min"))
    assert f"**The same contrasts on `{inf}`**" in text and "Every verdict is the same." in text
    moved = summary.copy()
    ns_inf = moved.loc[moved["cell"] == "ddgan-ns-T1"].sort_values("seed")[inf].to_numpy()
    wiggle = np.resize([0.5, -0.5], len(ns_inf))  # hellinger's gap vanishes on FD-infinity: mean difference 0
    moved.loc[moved["cell"] == "ddgan-hellinger-T1", inf] = ns_inf + wiggle
    text = "\n".join(infinity_section([(inf, check(moved))], analysis, best, "min"))
    assert "1 verdict(s) differ." in text
    row = next(line for line in text.splitlines() if line.startswith("| hellinger vs ns at T=1"))
    assert row.rstrip(" |").endswith("**no**") and UNRESOLVED in row
    frame = pd.concat([claims_frame(analysis, M), claims_frame(check(moved), inf)])
    assert list(frame.columns[:2]) == ["metric", "contrast"] and set(frame["metric"]) == {M, inf}


@pytest.mark.parametrize("variance", ["study", "contrast", "groups"])
def test_cells_that_share_no_seed_are_not_estimable_and_say_so(variance):
    summary = study({("ns", 1): 100.0, ("hellinger", 1): 103.0}, noise=1.0)
    apart = ((summary["cell"] == "ddgan-ns-T1") & (summary["seed"] < 4)) | \
        ((summary["cell"] == "ddgan-hellinger-T1") & (summary["seed"] >= 4))
    planned = (Planned("hellinger vs ns at T=1", "objective_at_T", ("ddgan-hellinger-T1",), ("ddgan-ns-T1",)),)
    claims, analysis, _ = run(summary[apart], plan=ContrastPlan(planned, "test", variance=variance))
    claim = claims["hellinger vs ns at T=1"]
    assert claim.verdict == "no interval" and claim.statement == "not estimable: its cells share no seed"
    assert analysis.m == 0


def test_no_study_no_claims():
    best = pd.DataFrame()
    plan = ContrastPlan((), "none")
    analysis = analyse(pd.DataFrame(columns=[M]), best, M, plan)
    assert analysis.claims == [] and claims_section(analysis, best, M, "min") == []


def test_the_plan_comes_from_the_recorded_grid_file_else_from_the_cells(tmp_path):
    from study.grid import GRID_DIR, expand, load_grid
    from study.report.contrasts import study_plan

    summary = study({("ns", 1): 100.0, ("tv", 1): 100.0})
    best = best_by_cell(summary, M, "min")
    fallback = study_plan(str(tmp_path / "gone.yaml"), best)
    assert "defaults derived from the study's cells" in fallback.source and "not on this machine" in fallback.source
    assert [c.name for c in fallback.contrasts if c.absent is None] == ["tv vs ns at T=1"]
    smoke = str(GRID_DIR / "smoke.yaml")
    plan = study_plan(smoke, best, expand(*load_grid(smoke)).fingerprint())
    assert plan.contrasts[0].name == "hellinger vs ns at T=2" and "changed" not in plan.source
    assert "has changed since the study ran" in study_plan(smoke, best, "0123456789abcdef").source
