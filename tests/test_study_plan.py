"""What a dry-run plans: every committed grid on a fresh clone, a cost estimate with its
sources, notes (not errors) for what this machine lacks; run state apart from reports."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from study import cost
from study.grid import load_plan
from study.prepare import StudyOptions, prepare

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("grid", ["cpu", "full"])
def test_dry_run_of_a_committed_grid_plans_and_costs_on_a_fresh_checkout(tmp_path, fmnist_dir, grid):
    """A fresh clone: no state, results/cpu committed. The dry-run exits 0, prints the cost with
    where its figures come from, and writes nothing (also not into the committed report)."""
    shutil.copytree(REPO / "results" / "cpu", tmp_path / "results" / "cpu")
    before = sorted(tmp_path.rglob("*"))
    done = subprocess.run([sys.executable, "-m", "study.run", "--grid", grid, "--dry-run", "--data-dir", str(fmnist_dir)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "cost estimate" in out and "GPU-hours" in out and out.count("per-step figures:") == 2, out
    assert "configs/costs.yaml" in out and ("ESTIMATE" in out or "measured" in out)
    assert f"{tmp_path}/results/runs/{grid}" in out  # the run's state, not results/<grid>
    if grid == "full" and not torch.cuda.is_available():
        assert "note: 0.25 GPU(s) per trial requested but this machine has no GPU" in out
    assert sorted(tmp_path.rglob("*")) == before


def test_a_committed_report_is_not_a_run_state(tmp_path, fmnist_dir, monkeypatch):
    """`study.run --grid cpu` on a fresh clone starts a new study beside the committed results/cpu."""
    shutil.copytree(REPO / "results" / "cpu", tmp_path / "results" / "cpu")
    monkeypatch.chdir(tmp_path)
    prep = prepare(StudyOptions(grid="cpu", data_dir=str(fmnist_dir)))  # no "already exists"
    assert prep.stores.study_dir == tmp_path / "results" / "runs" / "cpu"
    assert not prep.stores.plan_file.exists()


def test_dry_run_without_data_plans_with_a_note(tmp_path):
    done = subprocess.run([sys.executable, "-m", "study.run", "--grid", "smoke", "--dry-run",
                           "--data-dir", str(tmp_path / "nowhere"), "--state-dir", str(tmp_path / "state")],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "note: no usable Fashion-MNIST here" in done.stdout and "nowhere" in done.stdout
    assert not (tmp_path / "state").exists()


FIGURES = cost.Figures(name="test", source="made up", batch=16,
                       train_step_s={"tiny": {"ddgan": 1.0, "ddpm": 0.5}}, nfe_ms_per_image={"tiny": {"ddgan": 0.0, "ddpm": 0.0}},
                       eval_overhead_s=2.0, trial_startup_s=0.0, study_startup_s=0.0, inception_ms_per_image=0.0)


def test_cost_of_the_pruning_grid_in_closed_form():
    """test_pruning: two DDGAN trials in one cell (40 steps at batch 16, evaluation every 10) and one
    DDPM trial alone. Full trial: 40 x 1 s + 4 evaluations x 2 s = 48 s (DDPM 40 x 0.5 + 8 = 28 s).
    Pruned at the first evaluation at or after n_warmup_steps 10: 10 x 1 + 2 = 12 s. Only the
    DDGAN cell has a trial to prune; the DDPM trial is alone in its cell."""
    plan = load_plan("test_pruning")
    est = cost.estimate(plan, FIGURES, slots=2)
    assert est.trial_s == (pytest.approx(48 + 12 + 28), pytest.approx(48 + 48 + 28))
    # one phase, two slots: the longer of half the trial time and the longest trial
    assert est.wall_s == (pytest.approx(max(88 / 2, 48)), pytest.approx(max(124 / 2, 48)))
    assert est.saving == pytest.approx(1 - 88 / 124)


def test_evaluation_cost_counts_network_evaluations():
    """A DDGAN evaluation at T samples n images x T network evaluations; DDPM at its respaced S."""
    plan = load_plan("smoke")
    figures = cost.Figures(**{**FIGURES.__dict__, "eval_overhead_s": 0.0, "train_step_s": {"tiny": {"ddgan": 0.0, "ddpm": 0.0}},
                              "nfe_ms_per_image": {"tiny": {"ddgan": 1.0, "ddpm": 1.0}}})
    for spec in plan.trials:
        config = plan.configs[spec.key]
        evaluations = math.ceil(spec.total_steps / config["eval"]["every"])
        nfe = spec.sampling_steps or (config["diffusion"]["T"] if spec.method == "ddgan"
                                      else config["eval"].get("respaced_steps") or config["diffusion"]["T"])
        expected = (1 if spec.phase == "sample" else evaluations) * config["eval"]["n_samples"] * nfe / 1000
        assert cost.trial_cost(spec, config, plan, figures).full_s == pytest.approx(expected), spec.key


def test_calibrate_measures_each_preset_and_method_of_the_plan():
    plan = load_plan("test_pruning")
    base = cost.load_figures()["cpu"]
    measured = cost.calibrate(plan, base, "cpu", steps=1)
    assert measured.source.startswith("calibrated just now")
    for method in ("ddgan", "ddpm"):
        assert 0 < measured.train_step_s["tiny"][method] < math.inf
        assert 0 < measured.nfe_ms_per_image["tiny"][method] < math.inf
    assert measured.train_step_s["paper"] == base.train_step_s["paper"]  # not in the plan: kept
