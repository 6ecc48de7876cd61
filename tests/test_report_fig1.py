"""Fig. 1 (DDPM quality vs steps) keeps the cells scored on fewer samples, as their own named series."""

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
    points = sorted((float(x), float(y)) for line in lines for x, y in zip(line.get_xdata(), line.get_ydata()))
    assert points == [(10.0, 90.0), (100.0, 60.0), (1000.0, 70.0)]
