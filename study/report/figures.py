"""The report's figures (matplotlib, PNG, fixed pixel sizes).

Every figure is a `matplotlib.figure.Figure` drawn without pyplot (no global state) and
saved at `DPI` without tight bounding boxes, so its pixel size is `figsize * DPI`
exactly (tests check it; see `grid_figsize`). Missing data never raises: a figure with
nothing to draw is skipped and the caller says so in REPORT.md.

  metric vs T      DDPM (the paper's Fig. 1), DDGAN ns (Fig. 3), all objectives (Fig. 5); error
                   bars are 95% intervals over seeds where a cell has more than one
  sample grids     per model, the final grid of each cell's best trial (figs. 2, 4, 6-8)
  Pareto front     metric vs sampling ms per image, every cell, DDPM and DDGAN together
  learning curves  the metric at each evaluation, one panel per training cell
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, MaxNLocator, NullFormatter, NullLocator
from PIL import Image

from study.report.tables import (
    MS,
    at_other_counts,
    cell_label,
    duplicated_by_sampling_cell,
    pareto_mask,
)

DPI = 100
SINGLE = (8.0, 5.0)  # inches: 800 x 500 px
PANEL = (3.2, 2.6)  # one learning-curve panel
SAMPLE_PANEL = (2.6, 2.9)  # one sample grid with its title
LOSS_COLORS = {"ns": "#1f77b4", "hellinger": "#2ca02c", "rkl": "#d62728", "tv": "#9467bd"}
DDPM_STYLE = {"per-T": ("#555555", "s"), "ancestral": ("#ff7f0e", "^"), "ddim": ("#8c564b", "v")}
DASHES = ["-", "--", ":", "-."]  # line style per seed
STATUS_MARKER = {"completed": "o", "pruned": "x", "failed": "v", "running": ">", "pending": ">"}


def size_px(figsize: tuple[float, float]) -> tuple[int, int]:
    """(width, height) in pixels of a figure of `figsize` inches saved by this module."""
    return round(figsize[0] * DPI), round(figsize[1] * DPI)


def grid_figsize(n_panels: int, ncols: int, panel: tuple[float, float], extra_height: float = 0.0,
                 min_width: float = 0.0) -> tuple[float, float]:
    """Inches of a figure of `n_panels` panels in rows of `ncols`, plus room for a title or legend."""
    rows = max(1, math.ceil(n_panels / ncols))
    return (max(panel[0] * min(ncols, n_panels), min_width), panel[1] * rows + extra_height)


def sample_figsize(n_panels: int, ncols: int = 5) -> tuple[float, float]:
    return grid_figsize(n_panels, ncols, SAMPLE_PANEL, extra_height=0.4, min_width=4.0)


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    return path


def _loss_color(loss: str, index: int) -> str:
    fallback = ("#17becf", "#bcbd22", "#e377c2", "#7f7f7f")
    return LOSS_COLORS.get(loss, fallback[index % len(fallback)])


def _errorbar(ax, x, rows: pd.DataFrame, metric: str, **style) -> None:
    mean = rows[f"{metric}_mean"].to_numpy(float)
    low, high = rows[f"{metric}_ci_low"].to_numpy(float), rows[f"{metric}_ci_high"].to_numpy(float)
    has = np.isfinite(low)
    yerr = np.vstack([np.where(has, mean - low, 0.0), np.where(has, high - mean, 0.0)])
    ax.errorbar(x, mean, yerr=yerr, capsize=4, linewidth=1.8, markersize=7, **style)
    partial = (rows["basis"] == "partial").to_numpy()
    if partial.any():  # hollow markers: not final
        label = "not final (no completed trial)"
        ax.plot(np.asarray(x)[partial], mean[partial], linestyle="none", marker="o", markersize=12,
                markerfacecolor="none", markeredgecolor="black",
                label=None if label in ax.get_legend_handles_labels()[1] else label)


def _finish_axes(ax, metric: str, mode: str, xlabel: str, title: str, log_x: bool = True) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{metric} ({'lower' if mode == 'min' else 'higher'} is better)")
    ax.set_title(title)
    if log_x:
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(lambda value, _: f"{value:g}")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=9)


def plot_metric_vs_T(best: pd.DataFrame, metric: str, mode: str, losses: Sequence[str], path: Path,
                     title: str) -> Path | None:
    """DDGAN: the best-lr metric of each (loss, T) cell against T, one line per loss."""
    rows = best[(best["method"] == "ddgan") & best["loss"].isin(losses) & best[f"{metric}_mean"].notna()]
    if rows.empty:
        return None
    fig = Figure(figsize=SINGLE, layout="constrained")
    ax = fig.add_subplot()
    for i, loss in enumerate(losses):
        line = rows[rows["loss"] == loss].sort_values("T")
        if len(line):
            _errorbar(ax, line["T"].to_numpy(float), line, metric, color=_loss_color(loss, i), marker="o",
                      label=loss)
    ts = sorted(rows["T"].unique())
    _finish_axes(ax, metric, mode, "T (denoising steps = NFE)", title)
    ax.set_xticks(ts)
    return _save(fig, path)


def plot_objective_panels(best: pd.DataFrame, metric: str, mode: str, losses: Sequence[str],
                          path: Path) -> Path | None:
    """One panel per objective: the cell means against T with the 95% interval over seeds as a band."""
    rows = best[(best["method"] == "ddgan") & best["loss"].isin(losses) & best[f"{metric}_mean"].notna()]
    present = [loss for loss in losses if (rows["loss"] == loss).any()]
    if not present:
        return None
    fig = Figure(figsize=grid_figsize(len(present), 4, PANEL, extra_height=0.5), layout="constrained")
    axes = fig.subplots(1, len(present), squeeze=False, sharey=True)[0]
    for i, (ax, loss) in enumerate(zip(axes, present, strict=True)):
        line = rows[rows["loss"] == loss].sort_values("T")
        x = line["T"].to_numpy(float)
        color = _loss_color(loss, i)
        ax.plot(x, line[f"{metric}_mean"].to_numpy(float), marker="o", color=color)
        low, high = line[f"{metric}_ci_low"].to_numpy(float), line[f"{metric}_ci_high"].to_numpy(float)
        if np.isfinite(low).any():
            ax.fill_between(x, low, high, color=color, alpha=0.2, linewidth=0)
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(lambda value, _: f"{value:g}")
        ax.set_xticks(sorted(line["T"].astype(float).unique()))
        ax.set_title(loss, fontsize=10)
        ax.set_xlabel("T")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel(f"{metric} ({'lower' if mode == 'min' else 'higher'} is better)", fontsize=8)
    fig.suptitle("DDGAN per objective: quality vs T, band = 95% interval over seeds", fontsize=10)
    return _save(fig, path)


def _ddpm_group(row: pd.Series) -> str:
    return "per-T" if row["phase"] == "train" and int(row["sampling_steps"]) == int(row["T"]) else row["sampler"]


def same_kind_metrics(best: pd.DataFrame, metric: str) -> list[str]:
    """The study's metric, then the same distance on other sample counts that some cells use
    (eval/fd_fmnist_1k -> eval/fd_fmnist_250 for the cells sampled on fewer images)."""
    return [metric, *at_other_counts(best.columns, metric, "_mean")]


def plot_ddpm_vs_steps(best: pd.DataFrame, summary: pd.DataFrame, metric: str, mode: str, path: Path) -> Path | None:
    """DDPM: metric against sampling steps; per-T models and the respaced T=1000 model (ancestral, DDIM).
    Cells scored on fewer samples (their own metric, e.g. S=1000 on 250 images) are drawn as their
    own series, named by their metric: the same distance, but not the same sample count."""
    ddpm = best[(best["method"] == "ddpm") & ~duplicated_by_sampling_cell(best)].copy()
    phases = summary.drop_duplicates("cell").set_index("cell")["phase"]
    ddpm["phase"] = ddpm["cell"].map(phases)
    fig = Figure(figsize=SINGLE, layout="constrained")
    ax = fig.add_subplot()
    steps: set[float] = set()
    for k, name in enumerate(same_kind_metrics(best, metric)):
        rows = ddpm[ddpm[f"{name}_mean"].notna()].copy()
        if name != metric:  # drawn only where the study's metric is missing
            rows = rows[rows[f"{metric}_mean"].isna()]
        if rows.empty:
            continue
        rows["group"] = [_ddpm_group(r) for _, r in rows.iterrows()]
        for group, part in rows.groupby("group"):
            color, marker = DDPM_STYLE.get(group, ("#7f7f7f", "D"))
            part = part.sort_values("sampling_steps")
            label = "one model per T (S = T)" if group == "per-T" else f"T={int(part['T'].iloc[0])} model, {group}, S steps"
            if name != metric:
                label += f" [{name.removeprefix('eval/')}]"
                for s in ("mean", "ci_low", "ci_high"):  # best_by_cell keeps only the mean of other metrics
                    part[f"{metric}_{s}"] = part.get(f"{name}_{s}", np.nan)
            _errorbar(ax, part["sampling_steps"].to_numpy(float), part, metric, color=color,
                      marker=marker if k == 0 else "X", label=label, linestyle="-" if k == 0 else ":")
            steps |= set(part["sampling_steps"].astype(float))
    if not steps:
        return None
    _finish_axes(ax, metric, mode, "sampling steps (T or respaced S = NFE)", "DDPM: quality vs number of steps",
                 log_x=False)
    _log_ticks(ax, sorted(steps))
    return _save(fig, path)


def _log_ticks(ax, ticks: list[float]) -> None:
    """A log x axis labelled exactly at `ticks` (plain numbers, no minor labels)."""
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(lambda value, _: f"{value:g}")
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())


def _point_style(row: pd.Series, losses: list[str]) -> tuple[str, str, str]:
    """(color, marker, legend label) of a cell in the Pareto plot."""
    if row["method"] == "ddgan":
        index = losses.index(row["loss"]) if row["loss"] in losses else 0
        return _loss_color(row["loss"], index), "o", f"DDGAN {row['loss']}"
    group = "per-T" if int(row["sampling_steps"]) == int(row["T"]) else (row["sampler"] or "ancestral")
    color, marker = DDPM_STYLE.get(group, ("#7f7f7f", "D"))
    return color, marker, "DDPM, one model per T" if group == "per-T" else f"DDPM T={int(row['T'])}, {group}"


def plot_pareto(speed: pd.DataFrame, metric: str, mode: str, path: Path) -> Path | None:
    """Metric vs ms per image, every cell; the non-dominated cells joined by a dashed line."""
    rows = speed[speed[f"{metric}_mean"].notna() & speed[MS].notna()]
    if rows.empty:
        return None
    fig = Figure(figsize=(9.0, 6.0), layout="constrained")
    ax = fig.add_subplot()
    losses = list(dict.fromkeys(rows.loc[rows["method"] == "ddgan", "loss"]))
    seen = set()
    for _, row in rows.iterrows():
        color, marker, label = _point_style(row, losses)
        ax.scatter(row[MS], row[f"{metric}_mean"], color=color, marker=marker, s=55, zorder=3,
                   label=None if label in seen else label)
        seen.add(label)
        respaced = row["method"] == "ddpm" and int(row["sampling_steps"]) != int(row["T"])
    offsets = label_offsets(np.log10(rows[MS].to_numpy(float)), rows[f"{metric}_mean"].to_numpy(float))
    for (_, row), dy in zip(rows.iterrows(), offsets, strict=True):
        respaced = row["method"] == "ddpm" and int(row["sampling_steps"]) != int(row["T"])
        short = f"S={int(row['sampling_steps'])}" if respaced else f"T={row['T']}"  # the legend names the rest
        ax.annotate(short, (row[MS], row[f"{metric}_mean"]), fontsize=7, xytext=(4, 3 + dy), textcoords="offset points")
    front = rows[pareto_mask(rows[MS].to_numpy(), rows[f"{metric}_mean"].to_numpy(), mode)].sort_values(MS)
    ax.step(front[MS], front[f"{metric}_mean"], where="post", linestyle="--", color="black", linewidth=1,
            label="Pareto front", zorder=2)
    _finish_axes(ax, metric, mode, "sampling time, ms per image (log)", "Quality vs sampling speed", log_x=False)
    ax.set_xscale("log")
    readable_log_ticks(ax.xaxis, rows[MS].min(), rows[MS].max())
    return _save(fig, path)


def readable_log_ticks(axis, low: float, high: float) -> None:
    """Plain numbers at 1-2-5 steps on a log axis (1, 2, 5, 10, 20, ...; finer within a decade), no minor labels: matplotlib
    would otherwise label a range of less than a decade with minor ticks such as 3x10^0, 4x10^0."""
    low, high = max(low, 1e-9), max(high, low)
    first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
    steps = (1, 2, 5) if high / low >= 10 else (1, 1.5, 2, 3, 4, 5, 6, 8)  # under a decade: finer
    ticks = [m * 10.0**e for e in range(first, last + 1) for m in steps if low / 1.2 <= m * 10.0**e <= high * 1.2]
    axis.set_major_locator(FixedLocator(ticks or [low]))
    axis.set_major_formatter(lambda value, _: f"{value:g}")
    axis.set_minor_formatter(NullFormatter())


def label_offsets(x: np.ndarray, y: np.ndarray, near: float = 0.035, step: float = -9.0) -> list[float]:
    """Vertical offsets (points) that keep point labels from overlapping: each label moves one line
    down per earlier label whose point is within `near` of it (x and y scaled to [0, 1]), e.g. the
    T=1 cells of several losses, which sample equally fast and score alike."""
    def unit(v: np.ndarray) -> np.ndarray:
        span = float(np.nanmax(v) - np.nanmin(v)) if len(v) else 0.0
        return (v - np.nanmin(v)) / span if span > 0 else np.zeros_like(v)

    ux, uy = unit(np.asarray(x, float)), unit(np.asarray(y, float))
    offsets: list[float] = []
    for i in range(len(ux)):
        crowd = sum(abs(ux[i] - ux[j]) < near and abs(uy[i] - uy[j]) < near for j in range(i))
        offsets.append(crowd * step)
    return offsets


def _curve_panel(ax, trials: pd.DataFrame, histories: dict[str, pd.DataFrame], colors: dict[float, str],
                 seeds: list[int]) -> None:
    for _, trial in trials.iterrows():
        history = histories.get(trial["run_id"])
        if history is None or history.empty:
            continue
        style = DASHES[seeds.index(trial["seed"]) % len(DASHES)] if trial["seed"] in seeds else "-"
        color = colors.get(trial["lr"], "gray")
        ax.plot(history["step"], history["value"], style, color=color, linewidth=1.3)
        marker = STATUS_MARKER.get(trial["status"], "o")
        ax.plot(history["step"].iloc[-1], history["value"].iloc[-1], marker, color=color, markersize=6)


def plot_learning_curves(summary: pd.DataFrame, histories: dict[str, pd.DataFrame], metric: str,
                         path: Path, ncols: int = 4) -> Path | None:
    """One panel per training cell: the metric at every evaluation, colour = lr, end marker = status."""
    train = summary[summary["phase"] == "train"]
    cells = [c for c in dict.fromkeys(train["cell"]) if any(len(histories.get(r, ())) for r in
                                                              train.loc[train["cell"] == c, "run_id"])]
    if not cells:
        return None
    lrs = sorted(train["lr"].dropna().unique())
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf"]
    colors = {lr: palette[i % len(palette)] for i, lr in enumerate(lrs)}
    seeds = sorted(train["seed"].dropna().unique())
    fig = Figure(figsize=grid_figsize(len(cells), ncols, PANEL, extra_height=0.6), layout="constrained")
    axes = fig.subplots(math.ceil(len(cells) / ncols), min(ncols, len(cells)), squeeze=False, sharey=True)
    values = pd.concat([h["value"] for h in histories.values() if len(h)])
    log_y = bool((values > 0).all() and values.max() / values.min() > 20)
    for ax, cell in zip(axes.flat, cells, strict=False):
        _curve_panel(ax, train[train["cell"] == cell], histories, colors, seeds)
        ax.set_title(cell_label(train[train["cell"] == cell].iloc[0]), fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(4, integer=True))
        if log_y:
            ax.set_yscale("log")
    for ax in list(axes.flat)[len(cells):]:
        ax.set_visible(False)
    drawn = train[[len(histories.get(r, ())) > 0 for r in train["run_id"]]]
    handles = [Line2D([], [], color=colors[lr], label=f"lr {lr:g}") for lr in lrs]
    if len(seeds) > 1:
        handles += [Line2D([], [], color="black", linestyle=DASHES[i % len(DASHES)], label=f"seed {seed}")
                    for i, seed in enumerate(seeds)]
    handles += [Line2D([], [], color="black", marker=m, linestyle="none", label=s)
                for s, m in STATUS_MARKER.items() if s in set(drawn["status"])]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6), fontsize=8)
    fig.suptitle(f"{metric} during training (x: optimiser step)", fontsize=11)
    return _save(fig, path)


def plot_sample_grids(panels: list[tuple[str, Path]], title: str, path: Path, ncols: int = 5) -> Path | None:
    """Side by side: one sample-grid PNG per panel, titled (e.g. "T=1", "T=2", ...)."""
    if not panels:
        return None
    fig = Figure(figsize=sample_figsize(len(panels), ncols), layout="constrained")
    axes = fig.subplots(math.ceil(len(panels) / ncols), min(ncols, len(panels)), squeeze=False)
    for ax, (label, png) in zip(axes.flat, panels, strict=False):
        with Image.open(png) as image:
            ax.imshow(np.asarray(image.convert("L")), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(label, fontsize=9)
        ax.set_axis_off()
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)
