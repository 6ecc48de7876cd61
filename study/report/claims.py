"""The study's claims: its planned contrasts, each tested on the seed-blocked fit y ~ cell + seed.

Pure functions of the summary frame (one row per trial), best_by_cell and a `ContrastPlan`
(study/report/contrasts.py); the statistics are study/report/stats.py. For each planned
contrast (mean over cells a minus mean over cells b, on the study's metric):

  * the values: per cell, its completed trials at the cell's best learning rate, one per seed;
  * the difference and its 95% t-interval from the least-squares fit of y ~ cell + seed, over
    the cells of every planned contrast ("study" variance, pooled) or over the contrast's own
    cells ("contrast": a two-cell contrast is the paired t-test); seeds missing in a cell are
    left out by the fit, not imputed; or ("groups") the paired mean over the contrast's complete
    seeds with one residual variance per variance group (`variance_group`: a DDGAN objective at
    every T, the DDPM training cells, each DDPM sampler), Welch-Satterthwaite df;
  * a two-sided p, Holm-adjusted over the planned contrasts that have one;
  * **resolved** when the Holm-adjusted p < alpha, never from overlapping intervals;
  * the smallest difference a test at alpha / m (Holm's first step) detects with the plan's
    power, from the noncentral t with the contrast's standard error and df.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from study.report.contrasts import KIND_TITLES, ContrastPlan, Planned
from study.report.stats import (
    ContrastEstimate,
    contrast_weights,
    detectable_difference,
    equal_scatter_p,
    estimate_contrast,
    estimate_grouped_contrast,
    fit_additive,
    holm,
    seed_block_test,
)
from study.report.tables import MS, cell_label, duplicated_by_sampling_cell, fmt, markdown_table

RESOLVED, UNRESOLVED = "resolved", "not resolved at this scale"
NO_INTERVAL, NO_DATA, NOT_IN_DESIGN = "no interval", "no data", "not in this design"


@dataclass(frozen=True)
class Claim:
    name: str
    kind: str
    verdict: str
    estimate: ContrastEstimate | None = None
    p_holm: float = math.nan
    detectable: float = math.nan
    statement: str = ""  # which side is better (resolved), or why there is no test


@dataclass
class Analysis:
    plan: ContrastPlan
    claims: list[Claim]
    cells: list[str]  # the analysed cells (named by a planned contrast and with values)
    seeds: list[int]
    residual_sd: float = math.nan
    df: int = 0
    seed_test: tuple[float, int, int, float] = (math.nan, 0, 0, math.nan)
    m: int = 0  # contrasts with a p-value (Holm's family)
    notes: list[str] = field(default_factory=list)
    caution: list[str] = field(default_factory=list)  # printed beside the verdicts, not at the end
    groups: dict[str, tuple[int, float, int]] = field(default_factory=dict)  # "groups" variance: cells, SD, df


def seed_values(summary: pd.DataFrame, best: pd.DataFrame, metric: str) -> tuple[dict[str, dict[int, float]], list[str]]:
    """Per analysable cell, seed -> the metric of its completed trial at the cell's best lr; and notes."""
    values, notes, chosen = {}, [], []
    if best.empty or f"{metric}_mean" not in best or metric not in summary:
        return values, notes
    rows = best[~duplicated_by_sampling_cell(best) & best[f"{metric}_mean"].notna() & (best["basis"] == "completed")]
    for _, row in rows.iterrows():
        trials = summary[(summary["cell"] == row["cell"]) & (summary["status"] == "completed")
                         & summary[metric].notna()]
        if trials["lr"].nunique() > 1:
            chosen.append(row["cell"])
        trials = trials[trials["lr"] == row["best_lr"]]
        values[row["cell"]] = {int(s): float(v) for s, v in trials.groupby("seed")[metric].mean().items()}
    if chosen:
        notes.append(f"the learning rate of {', '.join(f'`{c}`' for c in chosen)} was chosen on the same seeds "
                     "(the best mean of several): differences involving these cells lean in their favour")
    return values, notes


def variance_group(cell: str) -> str:
    """A cell's variance group: its name without the trailing -T<k> / -S<k>, i.e. one DDGAN
    objective at every T (`ddgan-ns`), DDPM's training cells (`ddpm`), one DDPM sampler at every
    S (`ddpm-ddim`): the cells whose seed-to-seed scatter the "groups" variance assumes alike."""
    return re.sub(r"-[TS]\d+$", "", cell)


def _matrix(values: dict[str, dict[int, float]], cells: list[str], seeds: list[int]) -> np.ndarray:
    return np.array([[values.get(c, {}).get(s, math.nan) for s in seeds] for c in cells], dtype=float)


def analyse(summary: pd.DataFrame, best: pd.DataFrame, metric: str, plan: ContrastPlan) -> Analysis:
    """Every planned contrast of `plan`, tested (see the module docstring)."""
    values, notes = seed_values(summary, best, metric)
    planned = [p for p in plan.contrasts if p.absent is None]
    cells = list(dict.fromkeys(c for p in planned for c in (*p.a, *p.b) if c in values))
    seeds = sorted({s for c in cells for s in values[c]})
    study_fit = fit_additive(_matrix(values, cells, seeds), cells, seeds)
    group_of = {c: variance_group(c) for c in values}
    group_fits = {}
    if plan.variance == "groups":  # each group's variance from all of its cells with values
        every = sorted({s for c in values for s in values[c]})
        for group in dict.fromkeys(group_of.values()):
            members = [c for c in values if group_of[c] == group]
            group_fits[group] = fit_additive(_matrix(values, members, every), members, every)
    estimates: list[ContrastEstimate | None] = []
    for p in planned:
        if any(c not in values for c in (*p.a, *p.b)):
            estimates.append(None)
            continue
        weights = contrast_weights(p.a, p.b)
        if plan.variance == "groups":
            own = list(weights)
            estimates.append(estimate_grouped_contrast(_matrix(values, own, seeds), own, weights, group_fits,
                                                       group_of))
            continue
        fit = study_fit
        if plan.variance == "contrast":
            own = [*p.a, *p.b]
            fit = fit_additive(_matrix(values, own, seeds), own, seeds)
        estimates.append(estimate_contrast(fit, weights))
    pvalues = [e.p if e is not None else math.nan for e in estimates]
    adjusted = holm(pvalues)
    m = int(np.isfinite(pvalues).sum())
    level = plan.alpha / max(m, 1)  # Holm's first step
    claims = [_claim(p, e, q, level, plan, values) for p, e, q in zip(planned, estimates, adjusted, strict=True)]
    claims += [Claim(p.name, p.kind, NOT_IN_DESIGN, statement=p.absent or "") for p in plan.contrasts if p.absent]
    notes += _missing_seed_notes(values, cells, seeds)
    sd = math.sqrt(study_fit.residual_var) if math.isfinite(study_fit.residual_var) else math.nan
    groups = {g: (len(f.cells), math.sqrt(f.residual_var) if math.isfinite(f.residual_var) else math.nan, f.df)
              for g, f in group_fits.items()}
    return Analysis(plan, claims, cells, seeds, sd, study_fit.df, seed_block_test(study_fit), m, notes,
                    _scatter_notes(values, cells, plan), groups)


def _claim(p: Planned, e: ContrastEstimate | None, p_holm: float, level: float, plan: ContrastPlan,
           values: dict[str, dict[int, float]]) -> Claim:
    if e is None:
        absent = [c for c in (*p.a, *p.b) if c not in values]
        return Claim(p.name, p.kind, NO_DATA, statement=f"no completed values on the study's metric for "
                                                         f"{', '.join(f'`{c}`' for c in absent)}")
    if not e.has_interval or not math.isfinite(e.p):
        why = "too few seeds for a residual variance"
        if not math.isfinite(e.estimate):
            why = "not estimable: its cells share no seed"
        elif plan.variance == "groups":
            why = ("no residual variance in its variance group(s) "
                   + ", ".join(f"`{g}`" for g in dict.fromkeys(variance_group(c) for c in (*p.a, *p.b)))
                   + " (a group needs two cells and two seeds)")
        return Claim(p.name, p.kind, NO_INTERVAL, e, statement=why)
    detectable = detectable_difference(e.se, e.df, level, plan.power)
    if p_holm < plan.alpha:
        return Claim(p.name, p.kind, RESOLVED, e, p_holm, detectable)
    return Claim(p.name, p.kind, UNRESOLVED, e, p_holm, detectable)


def _missing_seed_notes(values: dict[str, dict[int, float]], cells: list[str], seeds: list[int]) -> list[str]:
    lacking = [f"`{c}` lacks seed(s) {sorted(set(seeds) - set(values[c]))}" for c in cells
               if set(values[c]) != set(seeds)]
    if not lacking:
        return []
    return ["incomplete blocks, fitted as they are by least squares (no value imputed; a seed seen in "
            "one cell of a comparison only adds nothing to it): " + "; ".join(lacking)]


def _scatter_notes(values: dict[str, dict[int, float]], cells: list[str], plan: ContrastPlan) -> list[str]:
    """Flag a pooled fit over cells that do not scatter alike over seeds (Bartlett p < 0.05)."""
    groups = {c: list(values[c].values()) for c in cells if len(values[c]) >= 3}
    p = equal_scatter_p(list(groups.values()))
    if plan.variance != "study" or not p < 0.05:
        return []
    sd = {c: float(np.std(g, ddof=1)) for c, g in groups.items()}
    low, high = min(sd, key=sd.get), max(sd, key=sd.get)
    return [f"the scatter over seeds differs between cells (SD {fmt(sd[low], 3)} in `{low}` to {fmt(sd[high], 3)} "
            f"in `{high}`; Bartlett p {_p(p)}): the pooled residual variance makes intervals too narrow for "
            "contrasts of the noisiest cells and too wide for the others; `contrasts: {variance: groups}` in "
            "the grid pools only within groups of alike cells, `{variance: contrast}` tests each contrast on its own "
            "cells"]


# -- Markdown -------------------------------------------------------------------------------------


def _better_side(claim: Claim, mode: str) -> str:
    lower = claim.estimate.estimate < 0
    a_better = lower if mode == "min" else not lower
    return "a" if a_better else "b"


def _side_text(cells: tuple[str, ...], best: pd.DataFrame) -> str:
    labels = []
    for cell in cells:
        row = best[best["cell"] == cell]
        labels.append(cell_label(row.iloc[0]) if len(row) else cell)
    return labels[0] if len(labels) == 1 else "the mean of " + "; ".join(labels)


def _times(planned: Planned, best: pd.DataFrame) -> str:
    """" (ms/image 2.05 vs 2.5)": the measured sampling time of each side (equal-NFE contrasts)."""
    sides = []
    for cells in (planned.a, planned.b):
        ms = best.loc[best["cell"].isin(cells), MS] if MS in best else pd.Series(dtype=float)
        sides.append(fmt(ms.mean(), 3) if ms.notna().all() and len(ms) == len(cells) else None)
    return f" (ms/image {sides[0]} vs {sides[1]})" if all(sides) else ""


def _verdict_text(claim: Claim, planned: Planned, best: pd.DataFrame, mode: str) -> str:
    if claim.verdict != RESOLVED:
        return claim.verdict
    side = _better_side(claim, mode)
    return f"**resolved**: {_side_text(planned.a if side == 'a' else planned.b, best)} is better"


def _p(value: float) -> str | None:
    if not math.isfinite(value):
        return None
    return f"{value:.2g}" if value >= 1e-4 else "<1e-4"


def _signed(value: float) -> str | None:
    text = fmt(value, 3)
    return None if text is None else (text if value < 0 else f"+{text}")


def _difference(e: ContrastEstimate | None) -> str | None:
    """"+4.8 [-29.6, +39.3]": the difference and, where there is one, its interval."""
    if e is None or not math.isfinite(e.estimate):
        return None
    return _signed(e.estimate) + (f" [{_signed(e.low)}, {_signed(e.high)}]" if e.has_interval else "")


def _row(claim: Claim, planned: Planned, best: pd.DataFrame, mode: str) -> list:
    e, diff = claim.estimate, _difference(claim.estimate)
    detect = fmt(claim.detectable, 3)
    name = claim.name + (_times(planned, best) if claim.kind == "ddgan_vs_ddpm_at_equal_nfe" else "")
    return [name, diff,
            e.seeds if e is not None else None, _p(e.p) if e is not None else None, _p(claim.p_holm),
            f"±{detect}" if detect else None, _verdict_text(claim, planned, best, mode)
            + (f" ({claim.statement})" if claim.statement else "")]


def _how(analysis: Analysis, metric: str, mode: str) -> str:
    plan = analysis.plan
    if plan.variance == "contrast":
        fit = "each contrast's own cells (a two-cell contrast is the paired t-test)"
    elif plan.variance == "groups":
        fit = ("one fit per variance group (a DDGAN objective at every T, DDPM's training cells, each DDPM "
               "sampler; residual SD, df: " + ", ".join(f"`{g}` {fmt(sd, 3) or '–'}, {df}"
                                                       for g, (_, sd, df) in analysis.groups.items())
               + "); a contrast is the paired mean over its complete seeds with Welch-Satterthwaite df")
    else:
        fit = (f"the {len(analysis.cells)} cells of the planned contrasts, pooled: residual SD "
               f"{fmt(analysis.residual_sd, 3) or '–'} on {analysis.df} df")
    F, df1, df2, p = analysis.seed_test
    seed = (f" The seed effect (block) over the planned contrasts' cells: F({df1}, {df2}) = {F:.3g}, p = {_p(p)}."
            if math.isfinite(F) else "")
    better = "lower" if mode == "min" else "higher"
    return (f"Each planned contrast is the mean of `{metric}` over its cells a minus that over its cells b "
            f"({better} is better), estimated from the fit y ~ cell + seed: every cell trains with the same "
            f"seeds {analysis.seeds}, and a seed fixes both the initial weights and the data order, so the seed "
            f"is a block and cells are compared within seeds. Residual variance from {fit}.{seed} "
            "95% t-intervals; p two-sided, "
            f"Holm-adjusted over the {analysis.m} planned contrasts that have one; **resolved** when the Holm p "
            f"< {plan.alpha:g}. \"Detectable\": the smallest difference a test at {plan.alpha:g}/{max(analysis.m, 1)} "
            f"(Holm's first step) detects with power {plan.power:g}, given the contrast's standard error (noncentral t). "
            f"Contrasts: {plan.source}. Per-cell means and intervals are in the tables below.")


def claims_section(analysis: Analysis | None, best: pd.DataFrame, metric: str, mode: str) -> list[str]:
    if analysis is None or not analysis.claims:
        return []
    by_name = {p.name: p for p in analysis.plan.contrasts}
    tested = [c for c in analysis.claims if c.verdict != NOT_IN_DESIGN]
    resolved = [c for c in tested if c.verdict == RESOLVED]
    lines = ["## Claims: the planned contrasts", ""]
    if resolved:
        lines.append("Resolved: " + "; ".join(
            f"{c.name} ({_signed(c.estimate.estimate)} [{_signed(c.estimate.low)}, {_signed(c.estimate.high)}], "
            f"Holm p {_p(c.p_holm)}, detectable ±{fmt(c.detectable, 3)})" for c in resolved) + ".")
    else:
        lines.append("No planned contrast resolves at this scale.")
    for caution in analysis.caution:
        lines += ["", f"**Caution:** {caution}."]
    lines += ["", _how(analysis, metric, mode), ""]
    for kind, title in KIND_TITLES.items():
        group = [c for c in tested if c.kind == kind]
        if group:
            rows = [_row(c, by_name[c.name], best, mode) for c in group]
            lines += [f"**{title[0].upper() + title[1:]}**", "",
                      markdown_table(["contrast (a − b)", "difference a − b [95% interval]", "seeds", "p", "Holm p",
                                      f"detectable (power {analysis.plan.power:g})", "verdict"], rows, {1, 2, 3, 4, 5}),
                      ""]
    absent = [c for c in analysis.claims if c.verdict == NOT_IN_DESIGN]
    if absent:
        lines += ["Not tested:", "", *[f"- {c.name}: {c.statement}." for c in absent], ""]
    if analysis.notes:
        lines += ["Notes:", "", *[f"- {note}." for note in analysis.notes], ""]
    return lines


def infinity_metrics(summary: pd.DataFrame, metric: str) -> list[str]:
    """The study's FD/FID-infinity columns (eval/<kind>_<extractor>_inf: the final evaluation's 1/N
    fit of Chong & Forsyth) other than `metric`: where the planned contrasts are checked again."""
    return [c for c in summary.columns if c.startswith("eval/") and c.endswith("_inf") and c != metric
            and summary[c].notna().any()]


def infinity_section(checks: list[tuple[str, Analysis]], primary: Analysis, best: pd.DataFrame,
                     mode: str) -> list[str]:
    """The planned contrasts again on each FD-infinity metric: does a verdict depend on the sample
    count? The claims above stay the answer (the pre-registered metric); this is a check."""
    lines = []
    verdicts = {c.name: c.verdict for c in primary.claims}
    for metric, analysis in checks:
        tested = [c for c in analysis.claims if c.verdict != NOT_IN_DESIGN]
        if not tested:
            continue
        rows = [[c.name, _difference(c.estimate), _p(c.p_holm), c.verdict,
                 "yes" if verdicts.get(c.name) == c.verdict else "**no**"] for c in tested]
        changed = sum(r[-1] != "yes" for r in rows)
        lines += [f"**The same contrasts on `{metric}`** (the final evaluation's distance extrapolated to "
                  "infinitely many samples, the 1/N fit of Chong & Forsyth: FD's bias shrinks as 1/N with a "
                  "slope that differs between models, so a verdict that holds here does not come from the sample "
                  f"count; Holm over this family on its own). The claims above stay the study's answer. "
                  + ("Every verdict is the same." if not changed else f"{changed} verdict(s) differ."), "",
                  markdown_table(["contrast (a − b)", "difference a − b [95% interval]", "Holm p", "verdict",
                                  "same verdict"], rows, {1, 2}), ""]
    return lines


def claims_frame(analysis: Analysis, metric: str | None = None) -> pd.DataFrame:
    """One row per planned contrast (claims.csv): the numbers behind the claims section; `metric`
    names the metric tested (a column, for a file that holds the checks too)."""
    by_name = {p.name: p for p in analysis.plan.contrasts}
    rows = []
    for c in analysis.claims:
        e = c.estimate
        rows.append({"contrast": c.name, "kind": c.kind, "a": " ".join(by_name[c.name].a),
                     "b": " ".join(by_name[c.name].b), "difference": e.estimate if e else math.nan,
                     "ci_low": e.low if e else math.nan, "ci_high": e.high if e else math.nan,
                     "se": e.se if e else math.nan, "df": e.df if e else 0, "seeds": e.seeds if e else 0,
                     "p": e.p if e else math.nan, "p_holm": c.p_holm, "detectable": c.detectable,
                     "verdict": c.verdict, "note": c.statement})
    frame = pd.DataFrame(rows)
    if metric is not None:
        frame.insert(0, "metric", metric)
    return frame
