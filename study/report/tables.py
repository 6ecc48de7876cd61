"""The study's tables as pandas frames: best learning rate per cell, sampling speed, Pareto front.

Pure functions of the summary frame (`study.report.data`), so tests feed them small
hand-made frames. Conventions:
  * a cell's best learning rate is the one whose completed trials have the best mean
    metric (mean over seeds); its 95% interval is mean +- t_{0.975, n-1} s / sqrt(n)
    over those seeds (no interval with one seed);
  * another metric (e.g. an Inception FID of the winners only) is a cell mean only when every
    seed of the best learning rate has it; otherwise its single values are listed with their
    seeds (`<name>_trials`), never printed as the cell's number;
  * a cell with no completed trial falls back to the last values of its unfinished or
    pruned trials, marked `basis = partial` (the numbers are not final);
  * the sampling speed-up is measured against DDPM with T = 1000 sampled with all 1000
    steps on the same network preset; when the study did not time that directly it is
    extrapolated linearly in NFE from the slowest DDPM T=1000 measurement, and says so.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from study.report.data import UNFINISHED, cell_order

SPEED_REFERENCE_T = 1000
CELL_COLUMNS = ["cell", "method", "loss", "T", "sampler", "sampling_steps", "preset"]
# Sampling time per image: measured alone on the device after the phases (`speed/*`, see
# study.tuning.speed) where the study has it, else what the trials' evaluations timed while
# sharing their device (`eval/*`, packed); the column `sample_ms_timed` says which.
MS = "sample_ms_per_image"
MS_ALONE, MS_PACKED = "speed/sample_ms_per_image", "eval/sample_ms_per_image"
NFE = "eval/nfe"


def with_sample_ms(summary: pd.DataFrame) -> pd.DataFrame:
    """`summary` with the MS column (alone where measured, else packed) and `sample_ms_timed`."""
    frame = summary.copy()
    nan = pd.Series(math.nan, index=frame.index, dtype=float)
    alone = pd.to_numeric(frame[MS_ALONE], errors="coerce") if MS_ALONE in frame else nan
    packed = pd.to_numeric(frame[MS_PACKED], errors="coerce") if MS_PACKED in frame else nan
    given = pd.to_numeric(frame[MS], errors="coerce") if MS in frame else nan  # a frame that has it already
    packed = packed.where(packed.notna(), given)
    frame[MS] = alone.where(alone.notna(), packed)
    frame["sample_ms_timed"] = np.where(alone.notna(), "alone", np.where(packed.notna(), "packed", ""))
    return frame


def interval95(values: pd.Series | list[float]) -> tuple[float, float, float]:
    """(mean, low, high) of a 95% Student-t interval for the mean; low/high are NaN with n < 2."""
    x = np.asarray(pd.Series(values).dropna(), dtype=float)
    if len(x) == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if len(x) < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return mean, mean - half, mean + half


def _counts(group: pd.DataFrame) -> dict[str, int]:
    status = group["status"]
    return {"trials": len(group), "completed": int((status == "completed").sum()),
            "pruned": int((status == "pruned").sum()), "failed": int((status == "failed").sum()),
            "unfinished": int(status.isin(UNFINISHED).sum())}


def _candidates(group: pd.DataFrame, metric: str) -> tuple[pd.DataFrame, str]:
    scored = group[group[metric].notna()]
    done = scored[scored["status"] == "completed"]
    if len(done):
        return done, "completed"
    return scored[scored["status"] != "failed"], "partial"


def _best_lr(done: pd.DataFrame, metric: str, mode: str) -> tuple[float, str]:
    by_lr = done.groupby("lr")[metric].mean()
    best = by_lr.idxmin() if mode == "min" else by_lr.idxmax()
    text = "; ".join(f"{lr:g}: {value:.4g}" for lr, value in by_lr.items())
    return float(best), text


def _best_trial(rows: pd.DataFrame, metric: str, mode: str) -> pd.Series:
    ordered = rows.sort_values(metric, ascending=(mode == "min"), kind="stable")
    return ordered.iloc[0]


def at_other_counts(names, metric: str, suffix: str = "") -> list[str]:
    """Names (minus `suffix`) of the same distance as `metric` at other sample counts:
    eval/fd_fmnist_1k -> [eval/fd_fmnist_250, ...]; none if `metric` names no count."""
    base, _, count = metric.rpartition("_")
    if not base or not re.fullmatch(r"\d+k?", count):
        return []
    pattern = re.escape(base) + r"_\d+k?" + re.escape(suffix)
    return sorted(n.removesuffix(suffix) for n in names if re.fullmatch(pattern, n) and n != metric + suffix)


def cell_metric(group: pd.DataFrame, metric: str) -> str:
    """The study's metric, or, for a cell scored on fewer samples (e.g. S=1000 on 250 images),
    its own: the same distance at another count (eval/fd_fmnist_1k -> eval/fd_fmnist_250)."""
    if metric in group and group[metric].notna().any():
        return metric
    return next((c for c in at_other_counts(group.columns, metric) if group[c].notna().any()), metric)


def cell_best(group: pd.DataFrame, metric: str, mode: str) -> dict[str, Any]:
    """One best_by_cell row for the trials of one cell (scored on its own metric if it has one)."""
    first = group.iloc[0]
    row: dict[str, Any] = {c: first.get(c) for c in CELL_COLUMNS}
    metric = cell_metric(group, metric)
    done, basis = _candidates(group, metric)
    row.update(best_lr=math.nan, basis="none" if done.empty else basis, seeds=0, lrs_tried="", images_seen=math.nan)
    row.update({f"{metric}_mean": math.nan, f"{metric}_ci_low": math.nan, f"{metric}_ci_high": math.nan})
    row.update({MS: math.nan, NFE: math.nan, "sample_ms_timed": "", "best_trial": None, "best_run_id": None})
    if not done.empty:
        best_lr, row["lrs_tried"] = _best_lr(done, metric, mode)
        chosen = done[done["lr"] == best_lr]
        mean, low, high = interval95(chosen[metric])
        best = _best_trial(chosen, metric, mode)
        images = chosen["images_seen"].dropna() if "images_seen" in chosen else pd.Series(dtype=float)
        row["images_seen"] = int(images.max()) if len(images) else math.nan
        row.update(best_lr=best_lr, seeds=int(chosen["seed"].nunique()), best_trial=best["trial_key"],
                   best_run_id=best["run_id"], **{f"{metric}_mean": mean, f"{metric}_ci_low": low,
                                                  f"{metric}_ci_high": high})
        for column in [c for c in group.columns if c.startswith("eval/") and c != metric]:
            row.update(_other_metric(chosen, column))
        if MS in chosen:
            row[MS] = chosen[MS].mean()
            row["sample_ms_timed"] = "/".join(sorted(set(chosen["sample_ms_timed"]) - {""}))
    row.update(_counts(group))
    return row


def _other_metric(chosen: pd.DataFrame, column: str) -> dict[str, Any]:
    """Another eval column of a cell: its mean over seeds when every seed has it (`<name>_mean`);
    when only some trials have it (e.g. a final Inception FID of the cell's best trial), the single
    values with their seeds (`<name>_trials`, text): one model's number is not a cell mean."""
    values = chosen[column]
    if column in (MS, MS_PACKED, NFE) or values.notna().all():
        return {column if column in (MS, MS_PACKED, NFE) else f"{column}_mean": values.mean()}
    present = chosen[values.notna()]
    if present.empty:
        return {}
    return {f"{column}_trials": "; ".join(f"{fmt(v)} (seed {s})" for s, v in zip(present["seed"], present[column],
                                                                                   strict=True))}


def best_by_cell(summary: pd.DataFrame, metric: str, mode: str) -> pd.DataFrame:
    """Per cell (DDGAN: loss x T; DDPM: per-T models and respaced samplers) the best lr and its numbers."""
    summary = with_sample_ms(summary)
    rows = [cell_best(group, metric, mode) for _, group in summary.groupby("cell", sort=False)]
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    frame = frame.iloc[sorted(range(len(frame)), key=lambda i: cell_order(frame["cell"].iloc[i]))]
    return frame.reset_index(drop=True)


# -- speed and the Pareto front -------------------------------------------------------------------


def speed_reference(best: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per preset: ms/image of DDPM T=1000 with 1000 steps (measured, or extrapolated in NFE)."""
    out = {}
    ddpm = best[(best["method"] == "ddpm") & (best["T"] == SPEED_REFERENCE_T) & best[MS].notna() & best[NFE].notna()]
    for preset, group in ddpm.groupby(ddpm["preset"].fillna("?")):
        full = group[group[NFE] == SPEED_REFERENCE_T]
        if len(full):
            out[preset] = {"ms": float(full[MS].mean()), "how": "measured"}
            continue
        longest = group[group[NFE] == group[NFE].max()]  # least dominated by per-call overhead
        per_nfe = float((longest[MS] / longest[NFE]).mean())
        samplers = "/".join(sorted({str(s) for s in longest["sampler"].dropna()})) or "-"
        out[preset] = {"ms": per_nfe * SPEED_REFERENCE_T, "how": (
            f"extrapolated: {per_nfe:.3g} ms per network evaluation timed at S={int(longest[NFE].iloc[0])} "
            f"({samplers}), x {SPEED_REFERENCE_T}")}
    return out


def pareto_mask(x: np.ndarray, y: np.ndarray, mode: str) -> np.ndarray:
    """True where no other point is at least as fast and at least as good, and strictly better in one."""
    sign = 1.0 if mode == "min" else -1.0
    x, y = np.asarray(x, float), sign * np.asarray(y, float)
    keep = np.zeros(len(x), bool)
    for i in range(len(x)):
        if not (np.isfinite(x[i]) and np.isfinite(y[i])):
            continue
        dominated = (x <= x[i]) & (y <= y[i]) & ((x < x[i]) | (y < y[i]))
        keep[i] = not dominated.any()
    return keep


def duplicated_by_sampling_cell(best: pd.DataFrame) -> pd.Series:
    """True for a DDPM training cell evaluated with S < T steps when a sampling cell measures the same
    (T, sampler, S): the training-time number is the same evaluation, shown once (as the sampling cell)."""
    respaced = best["cell"].str.fullmatch(r"ddpm-\w+-S\d+")
    measured = {(r["T"], r["sampler"], r["sampling_steps"]) for _, r in best[respaced].iterrows()}
    return pd.Series([bool(r["method"] == "ddpm" and not respaced.iloc[i] and r["sampling_steps"] != r["T"]
                           and (r["T"], r["sampler"], r["sampling_steps"]) in measured)
                      for i, (_, r) in enumerate(best.iterrows())], index=best.index, dtype=bool)


def speed_table(best: pd.DataFrame, metric: str, mode: str) -> pd.DataFrame:
    """Every cell with its NFE, ms/image, speed-up vs DDPM T=1000 (same preset), and Pareto membership."""
    frame = best[best[MS].notna() & ~duplicated_by_sampling_cell(best)].copy()
    if frame.empty:
        return frame
    reference = speed_reference(best)
    frame["speedup_vs_ddpm1000"] = [
        reference[p]["ms"] / ms if p in reference and ms > 0 else math.nan
        for p, ms in zip(frame["preset"].fillna("?"), frame[MS], strict=True)]
    frame["on_pareto_front"] = pareto_mask(frame[MS].to_numpy(), frame[f"{metric}_mean"].to_numpy(), mode)
    return frame.reset_index(drop=True)


# -- Markdown ------------------------------------------------------------------------------------


def markdown_table(headers: list[str], rows: list[list[Any]], right: set[int] | None = None) -> str:
    """A GitHub Markdown table; `right` holds the indices of right-aligned (numeric) columns."""
    right = right or set()
    def cell(value: Any) -> str:
        return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value).replace("|", "\\|")

    rule = ["---:" if i in right else "---" for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt(value: Any, digits: int = 4) -> str | None:
    """Significant digits; None for missing values."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)) or pd.isna(value):
        return None
    text = f"{float(value):.{digits}g}"
    return f"{float(value):,.0f}" if "e+" in text else text  # 2910, not 2.91e+03


def fmt_interval(mean: float, low: float, high: float) -> str | None:
    """"12.3 [11.0, 13.6]", or "12.3" without an interval."""
    if fmt(mean) is None:
        return None
    if fmt(low) is None:
        return fmt(mean)
    return f"{fmt(mean)} [{fmt(low)}, {fmt(high)}]"


def cell_label(row: pd.Series | dict[str, Any]) -> str:
    """"ns, T=4"; "DDPM T=10"; "DDPM T=1000, DDIM S=50"."""
    T, steps, sampler = row.get("T"), row.get("sampling_steps"), row.get("sampler")
    if row.get("method") == "ddgan":
        return f"{row.get('loss')}, T={T}"
    label = f"DDPM T={T}"
    if steps is not None and not pd.isna(steps) and int(steps) != int(T):
        label += f", {sampler or 'ancestral'} S={int(steps)}"
    elif sampler and sampler != "ancestral":
        label += f", {sampler}"
    return label
