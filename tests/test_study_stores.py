"""Stores: embedded defaults are absolute, URIs are validated and masked, preflight fails fast."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from ddgan.errors import UsageError
from study.stores import (
    init_stores,
    mask_uri,
    normalize_mlflow_uri,
    normalize_optuna_url,
    preflight,
    resolve_stores,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(("uri", "masked"), [
    ("postgresql://ddgan:s3cret@db:5432/optuna", "postgresql://ddgan:***@db:5432/optuna"),
    ("postgresql+psycopg2://u:p%40ss@127.0.0.1/x", "postgresql+psycopg2://u:***@127.0.0.1/x"),
    ("http://user:pw@mlflow:5000", "http://user:***@mlflow:5000"),
    ("mysql://u@h/db?password=hunter2&x=1", "mysql://u@h/db?password=***&x=1"),
    ("sqlite:////abs/results/mlflow.db", "sqlite:////abs/results/mlflow.db"),
    ("http://mlflow:5000", "http://mlflow:5000"),
])
def test_mask_uri_hides_passwords_only(uri, masked):
    assert mask_uri(uri) == masked


def test_embedded_defaults_are_absolute_and_under_results(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    stores = resolve_stores("s1", "results")
    root = (tmp_path / "results").resolve()
    assert stores.mlflow_uri == f"sqlite:///{root}/mlflow.db"
    assert stores.mlflow_uri.startswith("sqlite:////")  # four slashes: an absolute path
    assert stores.optuna_url == f"sqlite:///{root}/s1/optuna.db"
    assert stores.ray_storage == str(root / "s1" / "ray")
    assert stores.artifact_root == (root / "mlartifacts").as_uri()
    assert not (tmp_path / "results").exists()  # resolving creates nothing


def test_relative_sqlite_uris_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert normalize_mlflow_uri("sqlite:///m.db") == f"sqlite:///{tmp_path.resolve()}/m.db"
    assert normalize_optuna_url("sqlite:///o.db") == f"sqlite:///{tmp_path.resolve()}/o.db"


@pytest.mark.parametrize("uri", ["mlruns", "file:///tmp/mlruns", "ftp://host/x", "http://", "http://host:notaport"])
def test_malformed_mlflow_uris(uri):
    with pytest.raises(UsageError, match="malformed MLflow URI"):
        normalize_mlflow_uri(uri)


@pytest.mark.parametrize("url", ["optuna.db", "redis://h", "postgresql://", "sqlite://"])
def test_malformed_optuna_urls(url):
    with pytest.raises(UsageError, match="malformed Optuna storage"):
        normalize_optuna_url(url)


def test_preflight_fails_fast_on_unreachable_servers_with_masked_uri(tmp_path):
    port = free_port()
    stores = resolve_stores("s", tmp_path, mlflow_uri=f"http://u:topsecret@127.0.0.1:{port}")
    start = time.perf_counter()
    with pytest.raises(UsageError) as err:
        preflight(stores)
    # a hang detector, not a speed test: MLflow's own client retries for minutes; the probe's
    # timeout is seconds, plus imports on a loaded machine
    assert time.perf_counter() - start < 30
    assert "unreachable" in str(err.value) and "topsecret" not in str(err.value) and "***" in str(err.value)
    stores = resolve_stores("s", tmp_path, optuna_storage=f"postgresql://u:topsecret@127.0.0.1:{port}/optuna")
    with pytest.raises(UsageError) as err:
        preflight(stores)
    assert "Optuna storage" in str(err.value) and "topsecret" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_preflight_refuses_an_unwritable_results_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a directory should be")  # unwritable even for root
    with pytest.raises(UsageError, match="not writable"):
        preflight(resolve_stores("s", blocker / "results"))


def test_init_stores_creates_both_databases_once(tmp_path):
    stores = resolve_stores("s", tmp_path)
    preflight(stores)
    init_stores(stores)
    init_stores(stores)  # idempotent
    assert Path(tmp_path / "mlflow.db").is_file() and Path(tmp_path / "s" / "optuna.db").is_file()


def test_a_resumed_study_keeps_each_trials_commit_and_lists_every_invocations(tmp_path):
    """Before: every invocation wrote its commit over every trial's, so trials trained at one commit
    claimed the commit that only timed their speed. Now an ended trial keeps its commit, a trial
    continued by --resume lists both, and the parent run lists every invocation's, oldest first."""
    from study.stores.tracking import Tracker

    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = tracker.experiment("s")

    def invocation(commit: str) -> tuple[str, dict[str, str]]:
        parent = tracker.parent_run(experiment, "s", {"git_commit": commit})
        trials = [(key, {"git_commit": commit, "rerun_command": f"run {key} at {commit}"}, {"lr": 1.0})
                  for key in ("done", "going", "new")[:2 if commit == "a1" else 3]]
        return parent, tracker.trial_runs(experiment, parent, trials)

    parent, ids = invocation("a1")
    tracker.mark(ids["done"], "completed", "FINISHED")
    tracker.mark(ids["going"], "running")
    assert invocation("b2")[1]["done"] == ids["done"]  # the same runs, found again
    invocation("b2")  # a third invocation at the same commit adds nothing to the lists
    parent, ids = invocation("c3")
    tags = {key: tracker.tags(run_id) for key, run_id in ids.items()}
    assert (tags["done"]["git_commit"], tags["done"].get("git_commits")) == ("a1", None)
    assert tags["done"]["rerun_command"] == "run done at a1"
    assert (tags["going"]["git_commit"], tags["going"]["git_commits"]) == ("c3", "a1,b2,c3")
    # created at b2 but never started: it will run at c3, and no list claims it ran at b2
    assert (tags["new"]["git_commit"], tags["new"].get("git_commits")) == ("c3", None)
    assert tracker.tags(parent)["git_commits"] == "a1,b2,c3"
