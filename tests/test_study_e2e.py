"""The study end to end: real Ray (one session cluster), real MLflow on SQLite, real Optuna storage.

Tiny networks and a few dozen steps; the numbers mean nothing, the bookkeeping is checked:
one MLflow run per trial with params, metric history and sample grids; Optuna trials that
match; pruning inside a cell only; --dry-run touches nothing; a SIGKILLed driver resumes.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from study_fixtures import readme_smoke  # noqa: F401 (session fixture)
from test_faults import mlflow_runs

from ddgan.checkpoint import load_checkpoint
from ddgan.errors import CheckpointError
from study.driver import StudyOptions, run_study
from study.grid import load_plan
from study.prepare import saved_checkpoints

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def study_options(tmp_path, grid, fmnist_dir, reference_cache, **changes) -> StudyOptions:
    return StudyOptions(grid=grid, results_dir=str(tmp_path / "results"), data_dir=str(fmnist_dir),
                        cache_dir=str(reference_cache), verbose=0, **changes)


def trial_runs(results: Path, study: str) -> dict[str, list]:
    """trial key -> its MLflow runs in the embedded store under `results`."""
    return mlflow_runs(f"sqlite:///{results}/mlflow.db", study)


def optuna_trials(results: Path, study: str) -> dict[str, optuna.trial.FrozenTrial]:
    storage = f"sqlite:///{results}/{study}/optuna.db"
    out = {}
    for summary in optuna.get_all_study_summaries(storage):
        for trial in optuna.load_study(study_name=summary.study_name, storage=storage).get_trials():
            assert summary.study_name == f"{study}/{trial.user_attrs['cell']}"
            out[trial.user_attrs["trial_key"]] = trial
    return out


def steps_of(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return [m.step for m in client.get_metric_history(run_id, key)]


def test_smoke_grid_end_to_end(readme_smoke):  # noqa: F811
    """The README's main command (`readme_smoke`: run once per session, as a fresh clone would):
    every trial's MLflow run and Optuna trial agree with the plan."""
    assert readme_smoke.returncode == 0, readme_smoke.output[-3000:]
    summary = readme_smoke.output
    results, plan = readme_smoke.results, load_plan("smoke")
    client = MlflowClient(f"sqlite:///{results}/mlflow.db")
    runs, trials = trial_runs(results, "smoke"), optuna_trials(results, "smoke")
    assert set(runs) == set(trials) == {t.key for t in plan.trials}
    metric = plan.grid.metric
    for spec in plan.trials:
        assert len(runs[spec.key]) == 1, spec.key
        run = runs[spec.key][0]
        tags, params = run.data.tags, run.data.params
        assert (run.info.status, tags["status"]) == ("FINISHED", "completed")
        assert tags["cell"] == spec.cell and tags["ray_trial"] and tags["git_commit"]
        assert int(tags["optuna_trial_number"]) == trials[spec.key].number
        assert ("ddgan.train" in tags["rerun_command"]) == (spec.phase == "train")
        assert float(params["train.lr_g"]) == spec.lr and int(params["diffusion.T"]) == spec.T
        expected_steps = [20, 40] if spec.phase == "train" else [40]
        assert steps_of(client, run.info.run_id, metric) == expected_steps
        samples = [a.path for a in client.list_artifacts(run.info.run_id, "samples")]
        assert samples and all(p.endswith(".png") for p in samples)
        if spec.phase == "train":
            assert "model/manifest.json" in [a.path for a in client.list_artifacts(run.info.run_id, "model")]
            assert steps_of(client, run.info.run_id, "train/img_per_s") == [10, 20, 30, 40]
        assert trials[spec.key].state == TrialState.COMPLETE
        assert trials[spec.key].value == pytest.approx(run.data.metrics[metric])
    assert "7 completed" in summary


def test_forced_pruning_stays_inside_the_cell(ray_session, tmp_path, fmnist_dir, reference_cache):
    run_study(study_options(tmp_path, "test_pruning", fmnist_dir, reference_cache))
    results = tmp_path / "results"
    runs, trials = trial_runs(results, "test_pruning"), optuna_trials(results, "test_pruning")
    good, absurd, alone = "ddgan-ns-T1-lr0.002-s0", "ddgan-ns-T1-lr1e-07-s0", "ddpm-T10-lr1e-07-s0"
    assert trials[absurd].state == TrialState.PRUNED
    pruned_at = trials[absurd].user_attrs["pruned_at_step"]
    assert pruned_at < 40
    run = runs[absurd][0]
    assert (run.data.tags["status"], run.info.status) == ("pruned", "KILLED")
    assert int(run.data.tags["pruned_at_step"]) == pruned_at
    metric = "eval/fd_test-extractor_128"
    client = MlflowClient(f"sqlite:///{results}/mlflow.db")
    assert max(steps_of(client, run.info.run_id, metric)) == pruned_at
    for key in (good, alone):
        assert trials[key].state == TrialState.COMPLETE
        assert runs[key][0].data.tags["status"] == "completed"
    best = {key: min(trials[key].intermediate_values.values()) for key in (good, alone)}
    assert best[alone] > best[good]  # worse, but alone in its cell: not pruned


def test_dry_run_starts_nothing_and_writes_nothing(tmp_path, fmnist_dir):
    results = tmp_path / "results"
    code = ("import sys; from study.run import main; "
            f"main(['--grid', 'smoke', '--dry-run', '--results-dir', {str(results)!r}, "
            f"'--data-dir', {str(fmnist_dir)!r}]); "
            "print('imported:', sorted(m for m in ('ray', 'mlflow') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "imported: []" in done.stdout
    assert "ddgan-ns-T1" in done.stdout and "7 trials in 7 cells" in done.stdout
    assert not results.exists()


def _mlflow_status(db: Path) -> dict[str, tuple[str, int]]:
    """trial key -> (status tag, last logged eval step), read straight from the SQLite file."""
    if not db.exists():
        return {}
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            rows = con.execute(
                "SELECT k.value, s.value, (SELECT MAX(step) FROM metrics m WHERE m.run_uuid = k.run_uuid "
                "AND m.key LIKE 'eval/%') FROM tags k JOIN tags s ON s.run_uuid = k.run_uuid "
                "WHERE k.key = 'trial_key' AND s.key = 'status'").fetchall()
    except sqlite3.Error:
        return {}
    return {key: (status, step or 0) for key, status, step in rows}


def _resumable_steps(ray_storage: Path) -> dict[str, int]:
    """trial key -> the step of its newest checkpoint file that loads: what `--resume` continues
    it from (study.prepare.resume_checkpoints). A file Ray is still copying does not load yet."""
    found = {}
    for key, files in saved_checkpoints(str(ray_storage), "train").items():
        for path in files:
            try:
                found[key] = int(load_checkpoint(path)["step"])
                break
            except CheckpointError:
                continue
    return found


def _wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_driver_killed_then_resumed(ray_session, tmp_path, fmnist_dir, reference_cache):
    results = tmp_path / "results"
    cmd = [sys.executable, "-m", "study.run", "--grid", "test_resume", "--results-dir", str(results),
           "--data-dir", str(fmnist_dir), "--cache-dir", str(reference_cache), "--address", ray_session, "--allow-local", "--quiet"]
    log = (tmp_path / "driver.log").open("w")
    driver = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    db, ray_storage = results / "mlflow.db", results / "test_resume" / "ray"

    def mid_study():
        status, saved = _mlflow_status(db), _resumable_steps(ray_storage)
        done = [k for k, (s, _) in status.items() if s == "completed"]
        partial = [k for k, (s, step) in status.items() if s == "running" and 20 <= step <= 60 and saved.get(k, 0) >= 20]
        return done and partial

    try:
        _wait_for(mid_study, 240, "one trial completed and one mid-way with a whole checkpoint file")
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    assert driver.returncode == -signal.SIGKILL
    import ray

    # Ray ends the killed driver's trials; a trial may get one report further first. Read after.
    _wait_for(lambda: ray.available_resources().get("CPU", 0) >= 2, 60, "Ray to free the killed driver's trials")
    at_kill, saved_at_kill = _mlflow_status(db), _resumable_steps(ray_storage)
    done_before = [k for k, (s, _) in at_kill.items() if s == "completed"]
    partial_before = [k for k, (s, _) in at_kill.items() if s == "running" and saved_at_kill.get(k, 0) >= 20]
    assert done_before and partial_before

    run_study(study_options(tmp_path, "test_resume", fmnist_dir, reference_cache, resume=True))
    runs, trials = trial_runs(results, "test_resume"), optuna_trials(results, "test_resume")
    keys = {t.key for t in load_plan("test_resume").trials}
    assert set(runs) == set(trials) == keys
    client = MlflowClient(f"sqlite:///{results}/mlflow.db")
    for key in keys:
        assert len(runs[key]) == 1, f"{key}: duplicate MLflow runs"
        run = runs[key][0]
        assert run.data.tags["status"] == "completed" and trials[key].state == TrialState.COMPLETE
        for metric in ("eval/fd_test-extractor_128", "train/d_loss"):
            steps = steps_of(client, run.info.run_id, metric)
            assert steps == sorted(set(steps)) and steps[-1] == 80, f"{key} {metric}: {steps}"
    for key in done_before:
        assert runs[key][0].data.tags["start_steps"] == "0", f"{key} finished before the kill but ran again"
    for key in partial_before:
        starts = [int(s) for s in runs[key][0].data.tags["start_steps"].split(",")]
        assert starts == [0, saved_at_kill[key]], f"{key} did not continue from its newest checkpoint: {starts}"
    # Ray's own record agrees with Optuna and MLflow, and no step is missing (tests/test_faults.py).
    from test_faults import assert_consistent, assert_history_without_gaps, ray_trials

    assert_consistent(runs, trials, ray_trials(results / "test_resume" / "ray"), keys)
    for key in keys:
        assert_history_without_gaps(client, runs[key][0], every=20, log_every=10, last=80)
