"""On a Ray cluster (--address): node-local stores are refused, the trials run the driver's code.

A trial on another node sees neither this node's SQLite MLflow file nor a Ray storage path
or reference cache left at its default under the state directory: with --address these are
refused in one line naming the flags (exit 2, nothing written) unless --allow-local. Only the
driver uses Optuna, so a SQLite Optuna storage is allowed. The whole set-up on two Ray nodes
is rehearsed by benchmarks/cluster_rehearsal.sh.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ddgan.errors import UsageError
from study.prepare import StudyOptions, prepare
from study.stores.uris import node_local, resolve_stores
from study.tuning.project import ProjectMismatch, check_same_project, code_fingerprint, this_project

REPO = Path(__file__).resolve().parents[1]
LOCAL_FLAGS = ("--mlflow-uri", "--storage-path", "--cache-dir")


@pytest.fixture(autouse=True)
def no_cache_env(monkeypatch):
    monkeypatch.delenv("DDGAN_CACHE_DIR", raising=False)


@pytest.fixture(scope="module")
def address():
    """host:port where something listens (preflight's probe of --address is one TCP connect)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield f"127.0.0.1:{sock.getsockname()[1]}"


def test_cluster_run_on_node_local_defaults_is_one_line_exit_2_nothing_written(tmp_path, fmnist_dir, address):
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if k != "DDGAN_CACHE_DIR"}
    cmd = [sys.executable, "-m", "study.run", "--grid", "smoke", "--address", address, "--state-dir", str(state),
           "--data-dir", str(fmnist_dir), "--quiet"]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    for flag in (*LOCAL_FLAGS, "--allow-local"):
        assert flag in lines[0], lines[0]
    assert str(state / "mlflow.db") in lines[0]
    assert list(tmp_path.iterdir()) == []  # nothing written: no state dir, nothing in the working directory


def options(tmp_path: Path, fmnist_dir: Path, address: str, **kw) -> StudyOptions:
    return StudyOptions(grid="smoke", address=address, results_dir=str(tmp_path / "state"), data_dir=str(fmnist_dir),
                        verbose=0, **kw)


@pytest.mark.parametrize(("given", "still_refused"), [
    ((), LOCAL_FLAGS),
    (("storage_path",), ("--mlflow-uri", "--cache-dir")),
    (("cache_dir",), ("--mlflow-uri", "--storage-path")),
    (("mlflow_uri", "storage_path", "cache_dir"), ("--mlflow-uri",)),  # a SQLite file named is still on this node
])
def test_each_node_local_default_is_named(tmp_path, fmnist_dir, address, given, still_refused):
    shared = {"mlflow_uri": f"sqlite:///{tmp_path}/shared/mlflow.db", "storage_path": str(tmp_path / "shared/ray"),
              "cache_dir": str(tmp_path / "shared/cache")}
    with pytest.raises(UsageError) as err:
        prepare(options(tmp_path, fmnist_dir, address, **{name: shared[name] for name in given}))
    message = str(err.value)
    assert "\n" not in message
    assert [f for f in LOCAL_FLAGS if f"{f} (" in message] == list(still_refused), message
    assert not (tmp_path / "state").exists()


def test_cache_dir_from_the_environment_counts_as_named(tmp_path, fmnist_dir, address, monkeypatch):
    monkeypatch.setenv("DDGAN_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(UsageError) as err:
        prepare(options(tmp_path, fmnist_dir, address))
    assert "--cache-dir (" not in str(err.value) and "--storage-path (" in str(err.value)


def test_allow_local_accepts_and_dry_run_notes(tmp_path, fmnist_dir, address):
    accepted = prepare(options(tmp_path, fmnist_dir, address, allow_local=True))
    assert accepted.stores.mlflow_uri.startswith("sqlite:///") and not any("--address" in n for n in accepted.notes)
    planned = prepare(options(tmp_path, fmnist_dir, address, dry_run=True))
    assert any(all(f in n for f in LOCAL_FLAGS) for n in planned.notes), planned.notes
    local = prepare(StudyOptions(grid="smoke", results_dir=str(tmp_path / "state"), data_dir=str(fmnist_dir)))
    assert local.stores.ray_address is None  # without --address the embedded defaults are the point
    assert not (tmp_path / "state").exists()


def test_shared_stores_pass_and_optuna_sqlite_is_the_drivers_own(tmp_path):
    shared = resolve_stores("s", tmp_path / "state", mlflow_uri="http://mlflow:5000",
                            optuna_storage=f"sqlite:///{tmp_path}/optuna.db", storage_path=str(tmp_path / "ray"),
                            address="auto")
    assert node_local(shared, storage_path=str(tmp_path / "ray"), cache_dir=str(tmp_path / "cache")) == []
    remote = resolve_stores("s", tmp_path / "state", mlflow_uri="http://mlflow:5000", storage_path="s3://b/ray",
                            address="head:6379")
    assert node_local(remote, storage_path="s3://b/ray", cache_dir="/shared/cache") == []
    assert node_local(resolve_stores("s", tmp_path), storage_path=None, cache_dir=None) == []  # no --address


def test_mlflow_database_uri_keeps_artifacts_on_each_node(tmp_path):
    stores = resolve_stores("s", tmp_path / "state", mlflow_uri="postgresql://u:secret@db/mlflow",
                            storage_path=str(tmp_path / "ray"), address="auto")
    found = node_local(stores, storage_path=str(tmp_path / "ray"), cache_dir=str(tmp_path / "cache"))
    assert len(found) == 1 and found[0].startswith("--mlflow-uri (a database URI: artifacts would go to file://")
    assert "secret" not in found[0]


def test_trial_on_other_code_fails_with_both_identities(tmp_path):
    driver = this_project()
    check_same_project(driver)  # the same process: the same code
    check_same_project({})  # a context without the driver's identity compares nothing
    other = {**driver, "code": "0" * 16, "path": "/elsewhere", "host": "worker-1"}
    with pytest.raises(ProjectMismatch) as err:
        check_same_project(other)
    assert all(part in str(err.value) for part in (driver["path"], driver["code"], "/elsewhere", "worker-1"))


def test_code_fingerprint_follows_the_files(tmp_path):
    import shutil

    for name in ("ddgan", "study"):
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    copies = (tmp_path / "ddgan", tmp_path / "study")
    original = code_fingerprint(copies)
    assert original == code_fingerprint((REPO / "ddgan", REPO / "study"))  # relative paths: the place is not hashed
    assert len(original) == len(this_project()["code"]) == 16
    (tmp_path / "study" / "__pycache__").mkdir()
    (tmp_path / "study" / "__pycache__" / "x.py").write_text("# bytecode caches do not count\n")
    assert code_fingerprint(copies) == original
    schedule = tmp_path / "ddgan" / "schedule.py"
    schedule.write_text(schedule.read_text() + "\n# edited on one node\n")
    assert code_fingerprint(copies) != original


def test_each_study_has_its_own_ray_folder_under_a_storage_path(tmp_path):
    """A grid's pilot and its study (or two --study names) on one --storage-path never share
    `<storage>/train`: Ray would keep two experiments' state in one folder."""
    a = resolve_stores("full-pilot", tmp_path, storage_path=str(tmp_path / "ray"))
    b = resolve_stores("full", tmp_path, storage_path=str(tmp_path / "ray"))
    assert a.ray_storage == str(tmp_path / "ray" / "full-pilot") and b.ray_storage == str(tmp_path / "ray" / "full")
    assert resolve_stores("s", tmp_path, storage_path="s3://bucket/ray/").ray_storage == "s3://bucket/ray/s"
