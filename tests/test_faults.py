"""Faults survived, with real Ray, real MLflow (SQLite) and real Optuna storage.

Every fault is injected through the documented, off-by-default `fault` config section
(set per trial with the grid's `trial_overrides`), never by patching internals:

* `fault.nan_at_step`: the loss goes non-finite -> that trial is FAILED with its step and
  quantity in Ray, Optuna and MLflow, is not trained again by Ray's retries, and the other
  trials finish;
* `fault.exit_at_step` (+ `fault.exit_marker`): the trial process dies (`os._exit(1)`) ->
  Ray retries it from its last checkpoint: one MLflow run, no gap, no duplicate step;
* a worker node lost mid-trial (`ray.cluster_utils.Cluster`, two nodes, the driver joins with
  `--address`): the trial resumes from its checkpoint on the remaining node;
* `--resume` of a finished study with a failed trial: nothing reruns, states stay as they are.
  (A driver SIGKILLed mid-study, then `--resume`: tests/test_study_e2e.py.)

Ray's view (experiment state), Optuna's and MLflow's must always agree:
`assert_consistent` below.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]

NAN, EXIT, CLEAN = "ddgan-ns-T1-lr0.001-s0", "ddgan-ns-T2-lr0.001-s0", "ddgan-ns-T3-lr0.001-s0"
FAULT_GRID = """
name: {name}
base:
  ddgan: {repo}/configs/ddgan.yaml
overrides: [model.preset=tiny, train.batch_size=16, train.log_every=10, train.device=cpu, train.ema_decay=0.9]
ddgan:
  losses: [ns]
  T: {Ts}
  lr: [1.0e-3]
budget:
  steps: {steps}
eval:
  every: {every}
  n_samples: 64
  batch_size: 64
  metrics: [fd_test-extractor]
  grid_size: 4
metric: eval/fd_test-extractor_64
pruner:
  kind: none
resources:
  cpus: 1
max_concurrent: 2
max_failures: {max_failures}
trial_overrides: {trial_overrides}
"""
METRIC = "eval/fd_test-extractor_64"


def write_grid(path: Path, name: str, Ts: list[int], steps: int, every: int, max_failures: int,
               trial_overrides: dict[str, list[str]] | None = None) -> Path:
    path.write_text(FAULT_GRID.format(name=name, repo=REPO, Ts=Ts, steps=steps, every=every,
                                      max_failures=max_failures, trial_overrides=json.dumps(trial_overrides or {})))
    return path


# -- reading the three stores -----------------------------------------------------------------


def mlflow_runs(uri: str, study: str) -> dict[str, list]:
    """trial key -> its MLflow runs (exactly one is expected)."""
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(study)
    runs: dict[str, list] = {}
    for run in client.search_runs([experiment.experiment_id], "tags.role = 'trial'", max_results=1000):
        runs.setdefault(run.data.tags["trial_key"], []).append(run)
    return runs


def optuna_trials(storage: str, study: str) -> dict[str, optuna.trial.FrozenTrial]:
    out = {}
    for summary in optuna.get_all_study_summaries(storage):
        if summary.study_name.startswith(f"{study}/"):
            for trial in optuna.load_study(study_name=summary.study_name, storage=storage).get_trials():
                out[trial.user_attrs["trial_key"]] = trial
    return out


def ray_trials(ray_storage: Path, phase: str = "train") -> dict:
    """trial key -> Ray's Trial (status, num_failures, error) from the saved experiment state."""
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(str(ray_storage / phase))
    return {trial.config["trial"]["key"]: trial for trial in analysis.trials}


def metric_steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


RAY_FOR_OPTUNA = {TrialState.COMPLETE: "TERMINATED", TrialState.PRUNED: "TERMINATED", TrialState.FAIL: "ERROR"}
MLFLOW_FOR_OPTUNA = {TrialState.COMPLETE: ("completed", "FINISHED"), TrialState.PRUNED: ("pruned", "KILLED"),
                     TrialState.FAIL: ("failed", "FAILED")}


def assert_consistent(runs: dict[str, list], trials: dict, ray: dict, keys: set[str]) -> None:
    """Every trial: one MLflow run; Optuna final; Ray's status and MLflow's status agree with it."""
    assert set(runs) == set(trials) == keys
    assert keys <= set(ray)
    for key in keys:
        assert len(runs[key]) == 1, f"{key}: {len(runs[key])} MLflow runs"
        state = trials[key].state
        assert state in RAY_FOR_OPTUNA, f"{key}: Optuna state {state.name} is not final"
        assert ray[key].status == RAY_FOR_OPTUNA[state], f"{key}: Ray {ray[key].status} vs Optuna {state.name}"
        run = runs[key][0]
        assert (run.data.tags["status"], run.info.status) == MLFLOW_FOR_OPTUNA[state], key


def assert_history_without_gaps(client: MlflowClient, run, every: int, log_every: int, last: int) -> None:
    """train/* at every log_every steps and eval/* at every evaluation, each step exactly once."""
    for key in run.data.metrics:
        history = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert len(history) == len(set(history)), f"{key}: duplicate steps {sorted(history)}"
        if key.startswith("train/"):
            assert sorted(history) == list(range(log_every, last + 1, log_every)), f"{key}: {sorted(history)}"
        elif key.startswith("eval/") and key != "eval/nfe":
            assert sorted(history) == list(range(every, last + 1, every)), f"{key}: {sorted(history)}"


# -- NaN loss and a dying trial process, in one study ------------------------------------------


@dataclass(frozen=True)
class FaultStudy:
    root: Path
    results: Path
    summary: str
    marker: Path
    seconds: float

    @property
    def uri(self) -> str:
        return f"sqlite:///{self.results}/mlflow.db"

    @property
    def optuna(self) -> str:
        return f"sqlite:///{self.results}/test_faults/optuna.db"

    @property
    def ray_storage(self) -> Path:
        return self.results / "test_faults" / "ray"


def run_fault_study(root: Path, fmnist_dir: Path, cache: Path, resume: bool = False) -> str:
    from study.driver import StudyOptions, run_study

    return run_study(StudyOptions(grid=str(root / "test_faults.yaml"), results_dir=str(root / "results"),
                                  data_dir=str(fmnist_dir), cache_dir=str(cache), verbose=0, resume=resume))


@pytest.fixture(scope="module")
def fault_study(ray_session, tmp_path_factory, fmnist_dir, reference_cache) -> FaultStudy:
    """Three trials: NaN loss at step 15, process exit at step 25 (once), and a clean one."""
    root = tmp_path_factory.mktemp("faults")
    marker = root / "markers" / "exit-once"  # a shared path: a retry on any node does not die again
    write_grid(root / "test_faults.yaml", "test_faults", [1, 2, 3], steps=40, every=10, max_failures=2,
               trial_overrides={NAN: ["fault.nan_at_step=15"],
                                EXIT: ["fault.exit_at_step=25", f"fault.exit_marker={marker}"]})
    start = time.perf_counter()
    summary = run_fault_study(root, fmnist_dir, reference_cache)
    return FaultStudy(root, root / "results", summary, marker, time.perf_counter() - start)


def test_states_agree_across_ray_optuna_and_mlflow(fault_study):
    runs = mlflow_runs(fault_study.uri, "test_faults")
    trials = optuna_trials(fault_study.optuna, "test_faults")
    ray = ray_trials(fault_study.ray_storage)
    assert_consistent(runs, trials, ray, {NAN, EXIT, CLEAN})
    assert {k: t.state for k, t in trials.items()} == {
        NAN: TrialState.FAIL, EXIT: TrialState.COMPLETE, CLEAN: TrialState.COMPLETE}
    assert "2 completed, 0 pruned, 1 failed" in fault_study.summary
    print(f"fault study: 3 trials (NaN, exit, clean) in {fault_study.seconds:.1f} s")


def test_non_finite_loss_fails_the_trial_with_step_and_quantity(fault_study):
    client = MlflowClient(fault_study.uri)
    run = mlflow_runs(fault_study.uri, "test_faults")[NAN][0]
    tags = run.data.tags
    # MLflow: FAILED, with the step and the quantity; nothing logged past the divergence.
    assert (run.info.status, tags["status"], tags["diverged_step"]) == ("FAILED", "failed", "15")
    assert "step 15" in tags["failure_reason"] and tags["diverged_quantity"] in tags["failure_reason"]
    assert tags["diverged_quantity"].startswith("train/")
    assert metric_steps(client, run.info.run_id, METRIC) == [10]
    # Retries do not train into a deterministic failure again: one training attempt only.
    assert tags["start_steps"] == "0"
    print(f"NaN trial: {tags['failure_reason']}")
    # Optuna: FAIL with the reason and the step.
    trial = optuna_trials(fault_study.optuna, "test_faults")[NAN]
    assert trial.state == TrialState.FAIL
    assert "step 15" in trial.user_attrs["fail_reason"] and tags["diverged_quantity"] in trial.user_attrs["fail_reason"]
    assert trial.user_attrs["failed_step"] == 15
    # Ray: ERROR, and its error names the divergence.
    ray_trial = ray_trials(fault_study.ray_storage)[NAN]
    assert ray_trial.status == "ERROR"
    error = ray_trial.get_error()
    assert error is not None and "TrainingDiverged" in f"{type(error).__name__} {error}"
    assert "step 15" in str(error)


def test_dead_trial_process_is_retried_from_its_checkpoint(fault_study):
    assert fault_study.marker.read_text().startswith("injected exit at step 25")
    client = MlflowClient(fault_study.uri)
    runs = mlflow_runs(fault_study.uri, "test_faults")
    run = runs[EXIT][0]
    tags = run.data.tags
    assert (run.info.status, tags["status"]) == ("FINISHED", "completed")
    # Two attempts on the same run: from 0, then from the step-20 checkpoint (the exit hit step 25).
    assert (tags["start_steps"], tags["attempts"]) == ("0,20", "2")
    assert_history_without_gaps(client, run, every=10, log_every=10, last=40)
    ray_trial = ray_trials(fault_study.ray_storage)[EXIT]
    assert (ray_trial.status, ray_trial.num_failures) == ("TERMINATED", 1)
    trial = optuna_trials(fault_study.optuna, "test_faults")[EXIT]
    assert sorted(trial.intermediate_values) == [10, 20, 30, 40]
    assert trial.value == pytest.approx(run.data.metrics[METRIC])
    # The clean trial ran once, start to end, untouched by its neighbours' faults.
    clean = runs[CLEAN][0]
    assert (clean.data.tags["start_steps"], clean.data.tags["attempts"]) == ("0", "1")
    assert_history_without_gaps(client, clean, every=10, log_every=10, last=40)


def test_resume_of_a_finished_study_reruns_nothing(fault_study, fmnist_dir, reference_cache):
    """Finished trials are not rerun, the failed one stays failed (Ray, Optuna, MLflow)."""
    before = {k: dict(r[0].data.tags) for k, r in mlflow_runs(fault_study.uri, "test_faults").items()}
    summary = run_fault_study(fault_study.root, fmnist_dir, reference_cache, resume=True)
    assert "2 completed, 0 pruned, 1 failed" in summary
    runs = mlflow_runs(fault_study.uri, "test_faults")
    trials = optuna_trials(fault_study.optuna, "test_faults")
    assert_consistent(runs, trials, ray_trials(fault_study.ray_storage), {NAN, EXIT, CLEAN})
    for key, tags in before.items():
        after = runs[key][0].data.tags
        assert (after["start_steps"], after["attempts"], after["status"]) == (
            tags["start_steps"], tags["attempts"], tags["status"]), key


# -- a worker node lost mid-trial ---------------------------------------------------------------

NODE_STEPS, NODE_EVERY = 100, 20


def _trial_progress(db: Path) -> dict[str, dict]:
    """trial key -> status, node of its latest attempt and last eval step, read from the SQLite file."""
    if not db.exists():
        return {}
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            rows = con.execute(
                "SELECT k.value, "
                "(SELECT value FROM tags t WHERE t.run_uuid = k.run_uuid AND t.key = 'status'), "
                "(SELECT value FROM tags t WHERE t.run_uuid = k.run_uuid AND t.key = 'ray_node_id'), "
                "(SELECT MAX(step) FROM metrics m WHERE m.run_uuid = k.run_uuid AND m.key = ?) "
                "FROM tags k WHERE k.key = 'trial_key'", (METRIC,)).fetchall()
    except sqlite3.Error:
        return {}
    return {key: {"status": status, "node": node, "step": step or 0} for key, status, node, step in rows}


def node_lost_scenario(root: Path, data_dir: str, cache_dir: str) -> dict:
    """Run in its own process (its own Ray cluster): start a head and a worker node (1 CPU
    each), run a 2-trial study through `python -m study.run --address`, SIGKILL the worker
    node once its trial has logged two evaluations, and let the study finish."""
    from ray.cluster_utils import Cluster

    fast_detection = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 1000,
                      "health_check_timeout_ms": 1000, "health_check_failure_threshold": 3}
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "include_dashboard": False, "_system_config": fast_detection})
    worker = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    results = root / "results"
    cmd = [sys.executable, "-m", "study.run", "--grid", str(root / "test_node_lost.yaml"), "--results-dir",
           str(results), "--data-dir", data_dir, "--cache-dir", cache_dir, "--address", cluster.address, "--allow-local", "--quiet"]
    out: dict = {"head_node": cluster.head_node.node_id, "worker_node": worker.node_id}
    with (root / "driver.log").open("w") as log:
        driver = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 240
            victim = None
            while victim is None and time.monotonic() < deadline and driver.poll() is None:
                for key, p in _trial_progress(results / "mlflow.db").items():
                    if p["node"] == worker.node_id and p["status"] == "running" and 2 * NODE_EVERY <= p["step"] < NODE_STEPS:
                        victim = (key, p["step"])
                time.sleep(0.25)
            out["victim"], out["victim_step_at_kill"] = victim or (None, None)
            if victim is not None:
                cluster.remove_node(worker, allow_graceful=False)  # SIGKILL: raylet, workers, the trial
                out["killed_at"] = time.time()
            out["rc"] = driver.wait(timeout=300)
        finally:
            if driver.poll() is None:
                driver.kill()
                driver.wait()
            cluster.shutdown()
    return out


def test_worker_node_lost_mid_trial_resumes_on_the_other_node(tmp_path, fmnist_dir, reference_cache):
    root = tmp_path
    write_grid(root / "test_node_lost.yaml", "test_node_lost", [1, 2], steps=NODE_STEPS, every=NODE_EVERY,
               max_failures=3)
    # Its own Ray temp dir: Cluster() records its address in <tmp>/ray/ray_current_cluster, where
    # any other `ray.init()` on this machine would otherwise find and join it. Short: socket paths.
    ray_tmp = Path(tempfile.mkdtemp(prefix="rn", dir="/tmp"))
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "PYTHONPATH": str(REPO / "tests")}
    code = ("import json, sys; from pathlib import Path; from test_faults import node_lost_scenario; "
            "print('RESULT ' + json.dumps(node_lost_scenario(Path(sys.argv[1]), sys.argv[2], sys.argv[3])))")
    try:
        done = subprocess.run([sys.executable, "-c", code, str(root), str(fmnist_dir), str(reference_cache)],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    log = (root / "driver.log").read_text() if (root / "driver.log").exists() else ""
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, f"{done.stderr[-3000:]}\n--- driver ---\n{log[-3000:]}"
    out = json.loads(lines[-1].removeprefix("RESULT "))
    assert out["victim"] is not None, f"no trial ran on the worker node: {out}\n{log[-3000:]}"
    assert out["rc"] == 0, log[-3000:]
    results = root / "results"
    uri = f"sqlite:///{results}/mlflow.db"
    runs = mlflow_runs(uri, "test_node_lost")
    trials = optuna_trials(f"sqlite:///{results}/test_node_lost/optuna.db", "test_node_lost")
    ray = ray_trials(results / "test_node_lost" / "ray")
    keys = {"ddgan-ns-T1-lr0.001-s0", "ddgan-ns-T2-lr0.001-s0"}
    assert_consistent(runs, trials, ray, keys)
    assert all(t.state == TrialState.COMPLETE for t in trials.values())
    victim = runs[out["victim"]][0]
    tags = victim.data.tags
    starts = [int(s) for s in tags["start_steps"].split(",")]
    # The retry ran on the remaining (head) node, from a checkpoint, not from scratch.
    assert tags["ray_node_id"] == out["head_node"] != out["worker_node"]
    assert len(starts) == 2 and starts[0] == 0 and NODE_EVERY <= starts[1] <= out["victim_step_at_kill"], starts
    assert ray[out["victim"]].num_failures >= 1
    assert_history_without_gaps(MlflowClient(uri), victim, every=NODE_EVERY, log_every=10, last=NODE_STEPS)
    print(f"node lost: {out['victim']} killed at eval step {out['victim_step_at_kill']}, resumed from "
          f"{starts[1]} on the head node; {ray[out['victim']].num_failures} Ray failure(s)")
