"""`python -m study.report`: files, numbers equal to MLflow's, figures, partial studies."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image
from study_fixtures import fake_study, real_study  # noqa: F401 (session fixtures)

from study.report import figures
from study.report.build import build_report, missing_notes
from study.report.cli import main
from study.report.data import load_study
from study.report.tables import MS, best_by_cell, fmt, interval95, pareto_mask, speed_table

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def real_report(real_study, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("real-report")
    return build_report(real_study.uri, real_study.study, out, real_study.results)


@pytest.fixture(scope="module")
def fake_report(fake_study, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("fake-report")
    return build_report(fake_study.uri, fake_study.study, out, fake_study.results)


def _trial_runs(uri: str, study: str) -> dict[str, object]:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(study).experiment_id
    return {r.data.tags["trial_key"]: r for r in client.search_runs([experiment], "tags.role = 'trial'")}


@pytest.mark.slow  # the real study (Ray); built once per session
def test_report_numbers_equal_the_mlflow_values(real_study, real_report):  # noqa: F811
    out = real_report.out
    for name in ("summary.csv", "best_by_cell.csv", "REPORT.md"):
        assert (out / name).is_file()
    summary = pd.read_csv(out / "summary.csv")
    runs = _trial_runs(real_study.uri, real_study.study)
    metric = "eval/fd_test-extractor_64"
    assert sorted(summary["trial_key"]) == sorted(runs)
    for _, row in summary.iterrows():
        run = runs[row["trial_key"]]
        for key in (metric, "eval/sample_ms_per_image", "eval/nfe"):
            assert row[key] == run.data.metrics[key], (row["trial_key"], key)  # exact: CSV keeps full precision
        assert row["status"] == run.data.tags["status"] == "completed"
        assert row["run_id"] == run.info.run_id and row["cell"] == run.data.tags["cell"]
        assert row["steps"] == 20
    best = pd.read_csv(out / "best_by_cell.csv")
    assert set(best["cell"]) == set(summary["cell"]) == {"ddgan-ns-T1", "ddgan-ns-T2", "ddpm-T2", "ddpm-ddim-S1"}
    text = (out / "REPORT.md").read_text()
    for _, row in best.iterrows():
        trial = summary[summary["cell"] == row["cell"]].iloc[0]  # one trial per cell
        assert row[f"{metric}_mean"] == trial[metric] and row["best_trial"] == trial["trial_key"]
        assert fmt(trial[metric]) in text
    assert "## DDPM baseline" in text and "## Sampling speed" in text and "## Metric protocol" in text
    assert "What is missing" not in text or "command" in text  # only provenance may be missing here


def _assert_png(path: Path, size: tuple[int, int]) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.size == size, (path.name, image.size, size)


@pytest.mark.slow  # the real study (Ray); built once per session
def test_figures_are_pngs_of_the_expected_size(real_report):
    out = real_report.out
    single = figures.size_px(figures.SINGLE)
    _assert_png(out / "fig1_ddpm_metric_vs_steps.png", single)
    _assert_png(out / "fig3_ddgan_ns_metric_vs_T.png", single)
    _assert_png(out / "fig5_objectives_metric_vs_T.png", single)
    _assert_png(out / "fig3_8_per_objective_metric_vs_T.png",  # one objective: one panel
                figures.size_px(figures.grid_figsize(1, 4, figures.PANEL, extra_height=0.5)))
    _assert_png(out / "pareto_metric_vs_ms.png", (900, 600))
    train_cells = 3  # ddgan-ns-T1, ddgan-ns-T2, ddpm-T2 (the sampling cell has no curve)
    _assert_png(out / "learning_curves.png",
                figures.size_px(figures.grid_figsize(train_cells, 4, figures.PANEL, extra_height=0.6)))
    _assert_png(out / "samples_ddgan-ns.png", (520, 330))  # two panels (T=1, T=2) of 2.6 x 2.9 in
    _assert_png(out / "samples_ddpm-ddim.png", (400, 330))  # one panel, widened for its title
    listed = {p.name for p in real_report.files if p.suffix == ".png"}
    assert listed == {p.name for p in out.glob("*.png")}
    text = (out / "REPORT.md").read_text()
    assert all(f"]({name})" in text for name in listed)


def test_best_learning_rate_is_the_best_mean_over_seeds(fake_report):
    best = pd.read_csv(fake_report.out / "best_by_cell.csv").set_index("cell")
    metric = "eval/fd_test-extractor_64"
    ns_t1 = best.loc["ddgan-ns-T1"]
    # lr 1e-3: seeds 30, 34 (mean 32); lr 1e-2: 25, 45 (mean 35) holds the single best trial but loses
    assert ns_t1["best_lr"] == 1e-3 and ns_t1["seeds"] == 2
    half = 12.706204736174698 * math.sqrt(8) / math.sqrt(2)  # t_{0.975,1} * s / sqrt(n)
    assert ns_t1[f"{metric}_mean"] == 32.0
    assert ns_t1[f"{metric}_ci_low"] == pytest.approx(32 - half) and ns_t1[f"{metric}_ci_high"] == pytest.approx(32 + half)
    assert ns_t1["lrs_tried"] == "0.001: 32; 0.01: 35"
    assert ns_t1["eval/kid_test-extractor_64_mean"] == pytest.approx(0.32)  # a final-only metric, same lr
    assert "| eval/kid_test-extractor_64 |" in (fake_report.out / "REPORT.md").read_text()
    ns_t2 = best.loc["ddgan-ns-T2"]  # the pruned (90) and failed trials do not count
    assert (ns_t2["best_lr"], ns_t2[f"{metric}_mean"], ns_t2["pruned"], ns_t2["failed"]) == (1e-3, 21.0, 1, 1)
    assert best.loc["ddgan-hellinger-T1", "seeds"] == 1 and math.isnan(best.loc["ddgan-hellinger-T1", f"{metric}_ci_low"])
    assert best.loc["ddgan-hellinger-T2", "basis"] == "none"  # its only trial is pending


def test_partial_study_says_what_is_missing(fake_study, fake_report):  # noqa: F811
    text = (fake_report.out / "REPORT.md").read_text()
    assert "incomplete" in text and "## What is missing" in text
    assert "`ddgan-hellinger-T2-lr0.001-s0` (pending)" in text
    assert "`ddgan-ns-T2-lr0.01-s1` failed at step 5: TrainingDiverged" in text
    assert "cell `ddgan-hellinger-T2` has no completed trial" in text
    assert "The pruner stopped 1 trial(s): `ddgan-ns-T2-lr0.01-s0` at step 10" in text
    summary = pd.read_csv(fake_report.out / "summary.csv")
    assert dict(summary["status"].value_counts()) == {"completed": 11, "pruned": 1, "failed": 1, "pending": 1}
    runs = load_study(fake_study.uri, fake_study.study)
    runs.parent["status"] = "RUNNING"  # as while the driver still runs (or was killed)
    notes = missing_notes(runs, best_by_cell(runs.summary, runs.metric, runs.mode))
    assert any("still running or was interrupted" in n for n in notes)


def test_hand_written_discussion_is_kept_when_the_report_is_regenerated(fake_study, tmp_path):  # noqa: F811
    (tmp_path / "discussion.md").write_text("ns wins at T=2; tv collapses.\n")
    build_report(fake_study.uri, fake_study.study, tmp_path, fake_study.results)
    build_report(fake_study.uri, fake_study.study, tmp_path, fake_study.results)
    text = (tmp_path / "REPORT.md").read_text()
    assert text.count("## Discussion") == 1 and "ns wins at T=2; tv collapses." in text
    assert text.index("## At a glance") < text.index("## Discussion") < text.index("## What is missing")


def test_a_cell_with_only_pruned_trials_is_reported_as_not_final():
    summary = pd.DataFrame({
        "trial_key": ["a", "b"], "cell": ["ddgan-ns-T1"] * 2, "method": "ddgan", "loss": "ns", "T": 1,
        "sampler": None, "sampling_steps": 1, "preset": "tiny", "lr": [1e-3, 1e-2], "seed": 0,
        "status": ["pruned", "running"], "m": [5.0, 4.0], "run_id": ["r1", "r2"]})
    row = best_by_cell(summary, "m", "min").iloc[0]
    assert (row["basis"], row["best_lr"], row["m_mean"], row["pruned"], row["unfinished"]) == ("partial", 1e-2, 4.0, 1, 1)


def test_speed_up_against_ddpm_1000_and_the_pareto_front():
    ms, nfe, m = MS, "eval/nfe", "m"  # a best-by-cell frame's ms/image (alone where measured, else packed)
    best = pd.DataFrame({
        "cell": ["ddgan-ns-T4", "ddpm-ddim-S10", "ddpm-ancestral-S100"], "method": ["ddgan", "ddpm", "ddpm"],
        "loss": ["ns", "mse", "mse"], "T": [4, 1000, 1000], "sampler": [None, "ddim", "ancestral"],
        "sampling_steps": [4, 10, 100], "preset": "small", ms: [2.0, 4.0, 40.0], nfe: [4.0, 10.0, 100.0],
        f"{m}_mean": [30.0, 50.0, 20.0]})
    speed = speed_table(best, m, "min").set_index("cell")
    # no S=1000 timing: 40 ms / 100 NFE * 1000 = 400 ms per image, extrapolated
    assert speed.loc["ddgan-ns-T4", "speedup_vs_ddpm1000"] == pytest.approx(200.0)
    assert speed.loc["ddpm-ancestral-S100", "speedup_vs_ddpm1000"] == pytest.approx(10.0)
    assert list(speed["on_pareto_front"]) == [True, False, True]
    assert list(pareto_mask([1, 2, 3, 3], [1, 2, 3, 2], "max")) == [True, True, True, False]
    mean, low, high = interval95([1.0, 2.0, 3.0])
    assert mean == 2.0 and high - mean == pytest.approx(4.302652729911275 / math.sqrt(3))


def test_sample_time_is_the_one_measured_alone_where_the_study_has_it():
    """speed/* (timed alone after the phases) wins over eval/* (timed inside packed trials); a study
    without speed/* keeps its packed figures, and the report says which is which."""
    from study.report.markdown import speed_section

    summary = pd.DataFrame({
        "trial_key": ["a0", "a1", "b0"], "cell": ["ddgan-ns-T1", "ddgan-ns-T1", "ddgan-ns-T2"], "phase": "train",
        "method": "ddgan", "loss": "ns", "T": [1, 1, 2], "sampler": None, "sampling_steps": None, "preset": "tiny",
        "lr": 1e-3, "seed": [0, 1, 0], "status": "completed", "m": [5.0, 6.0, 4.0], "run_id": ["r0", "r1", "r2"],
        "eval/nfe": [1.0, 1.0, 2.0], "eval/sample_ms_per_image": [9.0, 11.0, 30.0],
        "speed/sample_ms_per_image": [2.0, 2.0, math.nan]})
    best = best_by_cell(summary, "m", "min").set_index("cell")
    assert best.loc["ddgan-ns-T1", MS] == 2.0 and best.loc["ddgan-ns-T1", "sample_ms_timed"] == "alone"
    assert best.loc["ddgan-ns-T2", MS] == 30.0 and best.loc["ddgan-ns-T2", "sample_ms_timed"] == "packed"
    assert best.loc["ddgan-ns-T1", "eval/sample_ms_per_image"] == 10.0  # the packed figure is kept beside it
    text = "\n".join(speed_section(speed_table(best.reset_index(), "m", "min"), best, "m", {}))
    assert "measured alone" in text and "Cells marked packed" in text


def test_cli_errors_are_one_line_and_exit_2(fake_study, tmp_path, capsys):  # noqa: F811
    from ddgan.cli import run_cli

    assert run_cli(main, ["--results-dir", str(tmp_path)]) == 2
    assert "no MLflow store" in capsys.readouterr().err
    assert run_cli(main, ["--mlflow-uri", fake_study.uri, "--study", "nope", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no study 'nope'" in err and "fake" in err


def test_summary_states_images_seen_and_wall_clock_per_trial(fake_report):
    """Issue 15: the report states images seen and wall-clock per cell; budgets here are equal."""
    summary = pd.read_csv(fake_report.out / "summary.csv").set_index("trial_key")
    assert (summary["batch_size"].dropna() == 64).all()
    assert summary.loc["ddgan-ns-T1-lr0.001-s0", "images_seen"] == 20 * 64
    assert summary.loc["ddgan-ns-T2-lr0.01-s0", "images_seen"] == 10 * 64  # pruned at step 10
    assert summary.loc["ddpm-ancestral-S2-of-ddpm-T8-lr0.001-s0", "images_seen"] == 20 * 64  # its source's
    finished = summary[summary["status"].isin(["completed", "pruned", "failed"])]
    assert (finished["wall_min"] >= 0).all() and finished["wall_min"].notna().all()  # from the started_ms tag
    trained = summary[(summary["phase"] == "train") & summary["train/img_per_s"].notna()]
    assert len(trained) and ((trained["train_min"] - trained["images_seen"] / trained["train/img_per_s"] / 60).abs()
                             < 1e-9).all()
    assert "Unequal budgets" not in (fake_report.out / "REPORT.md").read_text()


def test_unequal_budgets_are_named():
    from study.report.markdown import planned_images

    summary = pd.DataFrame({"method": ["ddgan", "ddgan", "ddpm", "ddpm"], "phase": ["train", "train", "train", "sample"],
                            "total_steps": [352, 352, 1200, 1200], "batch_size": [64, 64, 64, 64]})
    assert planned_images(summary, "ddgan") == [22_528] and planned_images(summary, "ddpm") == [76_800]


def test_one_models_fid_is_not_printed_as_a_cell_mean():
    """A final Inception FID logged on the cell's best trial only (study.final_fid) is listed with its
    seed in its own column, never as the mean of a cell whose other seeds lack it."""
    from study.report.markdown import ddgan_tables

    fid, m = "eval/fid_inception_1k", "eval/fd_fmnist_1k"
    summary = pd.DataFrame({
        "trial_key": [f"ddgan-ns-T1-s{s}" for s in range(3)], "cell": "ddgan-ns-T1", "method": "ddgan", "loss": "ns",
        "T": 1, "sampler": None, "sampling_steps": 1, "preset": "small", "lr": 1e-4, "seed": [0, 1, 2],
        "status": "completed", m: [10.0, 8.0, 12.0], fid: [math.nan, 81.25, math.nan], "images_seen": 640,
        "eval/sample_ms_per_image": 1.0, "eval/nfe": 1.0, "run_id": ["r0", "r1", "r2"]})
    row = best_by_cell(summary, m, "min").iloc[0]
    assert f"{fid}_mean" not in row.index
    assert row[f"{fid}_trials"] == "81.25 (seed 1)"
    table = "\n".join(ddgan_tables(best_by_cell(summary, m, "min"), m))
    assert f"| {fid} of single trials (not a cell mean) |" in table and "| 81.25 (seed 1) |" in table
    summary[fid] = [80.0, 81.0, 85.0]  # every seed scored: a cell mean again
    assert best_by_cell(summary, m, "min").iloc[0][f"{fid}_mean"] == pytest.approx(82.0)
