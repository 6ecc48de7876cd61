"""Report figures of issue 19: Fig. 1 keeps the cells scored on fewer samples; Figs. 3-8 per objective with bands."""

from __future__ import annotations

import math

import pandas as pd
from matplotlib.figure import Figure

from study.report import figures

M, FEW = "eval/fd_fmnist_1k", "eval/fd_fmnist_250"


def _row(cell, S, mean, few=math.nan):
    return {"cell": cell, "method": "ddpm", "loss": "mse", "T": 1000, "sampler": "ancestral", "sampling_steps": S,
            "preset": "small", f"{M}_mean": mean, f"{M}_ci_low": mean - 1, f"{M}_ci_high": mean + 1,
            f"{FEW}_mean": few, "basis": "completed"}


def test_same_kind_metrics_and_the_fewer_samples_point(tmp_path, monkeypatch):
    best = pd.DataFrame([_row("ddpm-ancestral-S10", 10, 90.0), _row("ddpm-ancestral-S100", 100, 60.0),
                         _row("ddpm-ancestral-S1000", 1000, math.nan, few=70.0)])
    summary = pd.DataFrame({"cell": best["cell"], "phase": "sample"})
    assert figures.same_kind_metrics(best, M) == [M, FEW]
    drawn = []
    real = Figure.add_subplot

    def spy(self, *args, **kwargs):
        ax = real(self, *args, **kwargs)
        drawn.append(ax)
        return ax

    monkeypatch.setattr(Figure, "add_subplot", spy)
    path = figures.plot_ddpm_vs_steps(best, summary, M, "min", tmp_path / "fig1.png")
    assert path is not None and path.read_bytes()[:4] == b"\x89PNG"
    labels = drawn[0].get_legend_handles_labels()[1]
    assert labels == ["T=1000 model, ancestral, S steps", "T=1000 model, ancestral, S steps [fd_fmnist_250]"]
    lines = [line for line in drawn[0].get_lines() if len(line.get_xdata()) and line.get_linestyle() in ("-", ":")]
    points = sorted((float(x), float(y)) for line in lines for x, y in zip(line.get_xdata(), line.get_ydata(), strict=True))
    assert points == [(10.0, 90.0), (100.0, 60.0), (1000.0, 70.0)]


def test_a_cell_scored_on_fewer_samples_gets_its_own_mean_interval_and_time():
    """summary -> best_by_cell: the S=1000 cell logs only eval/fd_fmnist_250; it is ranked on it."""
    from study.report.tables import MS, NFE, best_by_cell, cell_metric

    rows = []
    for seed, (a, b) in enumerate([(60.0, 70.0), (62.0, 74.0), (64.0, 72.0)]):
        common = {"method": "ddpm", "loss": "mse", "T": 1000, "sampler": "ancestral", "preset": "small",
                  "lr": 2e-4, "seed": seed, "status": "completed", "phase": "sample", "images_seen": 12_800,
                  "trial_key": f"k{seed}", "run_id": f"r{seed}"}
        rows.append({**common, "cell": "ddpm-ancestral-S100", "sampling_steps": 100, M: a, FEW: math.nan,
                     MS: 200.0, NFE: 100.0, "trial_key": f"a{seed}"})
        rows.append({**common, "cell": "ddpm-ancestral-S1000", "sampling_steps": 1000, M: math.nan, FEW: b,
                     MS: 2000.0, NFE: 1000.0, "trial_key": f"b{seed}"})
    summary = pd.DataFrame(rows)
    assert cell_metric(summary[summary["cell"] == "ddpm-ancestral-S1000"], M) == FEW
    best = best_by_cell(summary, M, "min").set_index("cell")
    full = best.loc["ddpm-ancestral-S1000"]
    assert math.isnan(full[f"{M}_mean"]) and full[f"{FEW}_mean"] == 72.0 and full[f"{FEW}_ci_low"] < 72.0
    assert (full[MS], full[NFE], full["seeds"], full["images_seen"]) == (2000.0, 1000.0, 3, 12_800)
    assert best.loc["ddpm-ancestral-S100", f"{M}_mean"] == 62.0


def test_per_objective_panels_have_interval_bands(tmp_path, monkeypatch):
    rows = []
    for loss in ("ns", "tv"):
        for T, mean in ((1, 200.0), (2, 150.0), (4, 120.0)):
            rows.append({"cell": f"ddgan-{loss}-T{T}", "method": "ddgan", "loss": loss, "T": T,
                         f"{M}_mean": mean, f"{M}_ci_low": mean - 10, f"{M}_ci_high": mean + 10})
    best = pd.DataFrame(rows)
    made = []
    real = Figure.subplots

    def spy(self, *args, **kwargs):
        axes = real(self, *args, **kwargs)
        made.append(axes)
        return axes

    monkeypatch.setattr(Figure, "subplots", spy)
    path = figures.plot_objective_panels(best, M, "min", ["ns", "hellinger", "tv"], tmp_path / "f.png")
    assert path is not None and path.read_bytes()[:4] == b"\x89PNG"
    axes = made[0][0]
    assert [ax.get_title() for ax in axes] == ["ns", "tv"]  # hellinger has no cell: no panel
    band = axes[0].collections[0].get_paths()[0].vertices
    assert band[:, 1].min() == 110.0 and band[:, 1].max() == 210.0  # mean +- 10 at T=4 and T=1
    assert figures.plot_objective_panels(best, M, "min", ["rkl"], tmp_path / "g.png") is None
