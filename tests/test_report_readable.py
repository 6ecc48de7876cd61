"""REPORT.md and its figures read right: the scale up front, the paper's figures named as such,
plain numbers on the Pareto plot's log axis, point labels that do not overlap."""

from __future__ import annotations

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from study.report.data import StudyRuns
from study.report.figures import label_offsets, readable_log_ticks
from study.report.markdown import FIGURE_CAPTIONS, scale_lines


def _runs(preset: str) -> StudyRuns:
    raw = pd.DataFrame({"params.train.steps": ["40", "40", "40"], "params.train.batch_size": ["16", "16", "16"],
                        "params.eval.n_samples": ["256", "256", "256"], "tags.phase": ["train", "train", "sample"]})
    summary = pd.DataFrame({"preset": [preset] * 3, "phase": ["train", "train", "sample"], "method": ["ddgan"] * 3,
                            "total_steps": [40, 40, 40], "batch_size": [16, 16, 16]})
    return StudyRuns(study="s", uri="sqlite:///x.db", experiment_id="1", parent={}, summary=summary, metric="eval/fd",
                     mode="min", raw=raw)


def test_a_tiny_study_opens_with_its_scale():
    lines = scale_lines(_runs("tiny"))
    assert lines[0].startswith("**A plumbing check, not a result.**")
    assert "tiny preset networks; 40 training steps per trial at batch 16 (640 images seen" in lines[2]
    assert "the metric on 256 samples; 3 trials" in lines[2]
    small = scale_lines(_runs("small"))
    assert small[0].startswith("**Scale:** small preset") and not any("plumbing" in line for line in small)


def test_captions_name_the_papers_figures():
    captions = " ".join(FIGURE_CAPTIONS.values())
    assert "seed fig" not in captions.lower()
    assert all(f"the paper's Fig. {n}" in captions for n in (1, 3, 5))


def test_log_axis_labels_are_plain_numbers():
    for low, high in [(3.0, 14.0), (0.9, 350.0), (1.5, 2.5)]:
        fig = Figure()
        ax = fig.add_subplot()
        ax.scatter([low, high], [1, 2])
        ax.set_xscale("log")
        readable_log_ticks(ax.xaxis, low, high)
        FigureCanvasAgg(fig).draw()
        labels = [t.get_text() for t in ax.get_xticklabels(which="both") if t.get_text()]
        assert len(labels) >= 2, (low, high, labels)
        assert all(float(text.replace("\u2212", "-")) > 0 for text in labels), labels  # no 3x10^0


def test_labels_of_points_that_coincide_are_stacked():
    # three T=1 cells at about the same speed and score, one far away
    x, y = [1.0, 1.01, 1.0, 3.0], [200.0, 201.0, 200.5, 400.0]
    assert label_offsets(x, y) == [0.0, -9.0, -18.0, 0.0]
    assert label_offsets([1.0, 2.0], [1.0, 1.0]) == [0.0, 0.0]
