"""Optuna on a real PostgreSQL and MLflow through a real `mlflow server`, written concurrently.

Writers are separate processes (like Ray trial workers) that wait on a barrier, so
their writes really overlap. Unreachable servers and bad credentials must fail fast.
"""

from __future__ import annotations

import multiprocessing
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from servers import bad_password_url, free_port, unreachable_postgres_url

pytestmark = pytest.mark.servers

WRITERS = 4
TRIALS_PER_WRITER = 8
STEPS = 50
FAIL_FAST_S = 5.0


def run_concurrently(target, args_per_writer: list[tuple], timeout_s: float = 60.0) -> None:
    """Run `target(*args, barrier)` in one fresh process per args tuple; all must exit 0.

    A forkserver (not fork: the parent holds open connections) that has imported the clients
    once, so four writers do not each spend seconds importing mlflow on two cores.
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["mlflow", "optuna", "psycopg2", "test_servers"])
    barrier = context.Barrier(len(args_per_writer))
    processes = [context.Process(target=target, args=(*args, barrier)) for args in args_per_writer]
    for process in processes:
        process.start()
    deadline = time.monotonic() + timeout_s
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
    for process in processes:
        if process.is_alive():
            process.kill()
    assert [p.exitcode for p in processes] == [0] * len(processes), "a writer failed (stderr above)"


# --------------------------------------------------------------------------- Optuna on PostgreSQL


def _optuna_writer(url: str, study_name: str, writer: int, barrier) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=study_name, storage=url)

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("writer", writer)
        return trial.suggest_float("x", -1.0, 1.0) ** 2

    barrier.wait(timeout=60)
    study.optimize(objective, n_trials=TRIALS_PER_WRITER)


def test_optuna_concurrent_trials_on_postgres(postgres_url):
    import optuna

    study_name = f"servers-{uuid.uuid4().hex[:8]}"
    optuna.create_study(study_name=study_name, storage=postgres_url)
    run_concurrently(_optuna_writer, [(postgres_url, study_name, w) for w in range(WRITERS)])

    trials = optuna.load_study(study_name=study_name, storage=postgres_url).trials
    assert sorted(t.number for t in trials) == list(range(WRITERS * TRIALS_PER_WRITER))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert all(t.value == pytest.approx(t.params["x"] ** 2) for t in trials)
    per_writer = [sum(t.user_attrs["writer"] == w for t in trials) for w in range(WRITERS)]
    assert per_writer == [TRIALS_PER_WRITER] * WRITERS


# --------------------------------------------------------------------------- MLflow server


def metric_value(writer: int, step: int, name: str) -> float:
    return writer + step / 100 + (0.5 if name == "train/g_loss" else 0.0)


def _mlflow_writer(uri: str, run_id: str, writer: int, barrier) -> None:
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(tracking_uri=uri)
    barrier.wait(timeout=60)
    for step in range(STEPS):
        now_ms = int(time.time() * 1000)
        metrics = [
            Metric(name, metric_value(writer, step, name), now_ms, step)
            for name in ("train/d_loss", "train/g_loss")
        ]
        client.log_batch(run_id, metrics=metrics)
    client.set_terminated(run_id)


def test_mlflow_server_concurrent_metric_histories(mlflow_server_uri):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server_uri)
    experiment_id = client.create_experiment(f"servers-{uuid.uuid4().hex[:8]}")
    run_ids = [client.create_run(experiment_id, run_name=f"writer-{w}").info.run_id for w in range(WRITERS)]
    run_concurrently(_mlflow_writer, [(mlflow_server_uri, run_ids[w], w) for w in range(WRITERS)])

    for writer, run_id in enumerate(run_ids):
        assert client.get_run(run_id).info.status == "FINISHED"
        for name in ("train/d_loss", "train/g_loss"):
            history = sorted(client.get_metric_history(run_id, name), key=lambda m: m.step)
            assert [m.step for m in history] == list(range(STEPS)), (run_id, name)
            assert [m.value for m in history] == [metric_value(writer, s, name) for s in range(STEPS)]


def test_mlflow_server_proxies_artifacts(mlflow_server_uri, tmp_path):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server_uri)
    experiment_id = client.create_experiment(f"servers-{uuid.uuid4().hex[:8]}")
    run = client.create_run(experiment_id)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
    client.log_text(run.info.run_id, "resolved: config\n", "config/resolved.yaml")
    local = client.download_artifacts(run.info.run_id, "config/resolved.yaml", str(tmp_path))
    assert Path(local).read_text() == "resolved: config\n"


# --------------------------------------------------------------------------- failing fast


def _assert_rdb_storage_fails_fast(url: str, expected: str):
    import optuna
    import sqlalchemy.exc

    started = time.perf_counter()
    with pytest.raises(sqlalchemy.exc.OperationalError) as excinfo:
        optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"connect_timeout": 5}})
    assert time.perf_counter() - started < FAIL_FAST_S
    assert expected in str(excinfo.value)
    assert urlsplit(url).password not in str(excinfo.value)


def test_postgres_wrong_port_fails_fast():
    _assert_rdb_storage_fails_fast(unreachable_postgres_url(), "Connection refused")


def test_postgres_bad_password_fails_fast(postgres_url):
    _assert_rdb_storage_fails_fast(bad_password_url(postgres_url), "password authentication failed")


def test_mlflow_wrong_port_fails_fast_without_retries(monkeypatch):
    """MLflow's client retries 7 times with backoff by default; a pre-flight check must not."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    uri = f"http://127.0.0.1:{free_port()}"
    started = time.perf_counter()
    with pytest.raises(MlflowException, match="127.0.0.1"):
        MlflowClient(tracking_uri=uri).search_experiments()
    assert time.perf_counter() - started < FAIL_FAST_S
