"""The study against real stores, as on a cluster, and against the embedded SQLite defaults.

* Optuna on PostgreSQL and MLflow through `mlflow server` (both on 127.0.0.1, tests/servers.py),
  a smoke-like grid with 4 trials writing at once: every trial completes, no metric is lost,
  no lock error; the stores are given as a user would type them (`postgresql://`, which
  SQLAlchemy 2.1 maps to the missing psycopg 3, and an MLflow URI with user:password), and
  neither password appears in MLflow params/tags, Ray's files, the logs or the output.
* 8 trials at once on the SQLite defaults (MLflow `results/mlflow.db`): the same guarantees.
* Unreachable servers and refused credentials fail before anything starts, within seconds,
  with the URI shown masked (one table).
"""

from __future__ import annotations

import http.server
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from servers import bad_password_url, free_port, unreachable_postgres_url
from test_faults import (
    assert_consistent,
    assert_history_without_gaps,
    mlflow_runs,
    optuna_trials,
    ray_trials,
)

from ddgan.cli import run_cli
from study import run as study_run

REPO = Path(__file__).resolve().parents[1]
METRIC = "eval/fd_test-extractor_64"
LOCK_WORDS = ("database is locked", "database table is locked", "could not serialize", "deadlock detected")

GRID = """
name: {name}
base:
  ddgan: {repo}/configs/ddgan.yaml
  ddpm: {repo}/configs/ddpm.yaml
overrides: [model.preset=tiny, train.batch_size=16, train.log_every={log_every}, train.device=cpu,
            train.ema_decay=0.9]
ddgan:
  losses: [ns, hellinger]
  T: [1, 2]
  lr: {lrs}
{ddpm}
budget:
  steps: {steps}
eval:
  every: 10
  n_samples: 64
  batch_size: 64
  metrics: [fd_test-extractor]
  grid_size: 4
metric: {metric}
pruner:
  kind: {pruner}
  n_warmup_steps: 10
resources:
  cpus: {cpus}
max_concurrent: {concurrent}
max_failures: 1
"""
DDPM_RESPACED = "ddpm:\n  lr: [1.0e-3]\n  respaced: {T: 2, steps: [1], samplers: [ddim], schedule: vp}"


def write_grid(path: Path, name: str, *, lrs: list[float], concurrent: int, steps: int, log_every: int = 10,
               ddpm: bool = False, pruner: str = "median") -> str:
    path.write_text(GRID.format(name=name, repo=REPO, lrs=lrs, ddpm=DDPM_RESPACED if ddpm else "", steps=steps,
                                log_every=log_every, metric=METRIC, cpus=1.0 if concurrent <= 2 else 2 / concurrent,
                                concurrent=concurrent, pruner=pruner))
    return str(path)


def max_overlap(intervals: list[tuple[int, int]]) -> int:
    """The largest number of [start, end] intervals that hold one instant in common."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda x: (x[0], -x[1]))
    best = current = 0
    for _, delta in events:
        current += delta
        best = max(best, current)
    return best


def writing_intervals(client: MlflowClient, runs: dict[str, list], keys: list[str]) -> list[tuple[int, int]]:
    """Per trial: first and last metric timestamp (ms), i.e. when it was writing to MLflow."""
    out = []
    for key in keys:
        run = runs[key][0]
        stamps = [m.timestamp for name in run.data.metrics for m in client.get_metric_history(run.info.run_id, name)]
        out.append((min(stamps), max(stamps)))
    return out


def files_containing(root: Path, secrets: list[str]) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            hits += [f"{path}: {secret[:4]}..." for secret in secrets if secret.encode() in data]
    return hits


def lock_errors(root: Path) -> list[str]:
    """Lock errors anywhere in Ray's trial files (error.txt of a failed attempt, results)."""
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and path.suffix in (".txt", ".json", ".csv", ".log"):
            text = path.read_text(errors="replace").lower()
            hits += [f"{path}: {word}" for word in LOCK_WORDS if word in text]
    return hits


def ray_log_dir() -> Path:
    import ray

    return Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"


# -- PostgreSQL + mlflow server, 4 trials at once ------------------------------------------------


@pytest.mark.slow
@pytest.mark.servers
def test_grid_on_postgres_and_mlflow_server_4_concurrent(ray_session, postgres_server, mlflow_server_uri, tmp_path,
                                                         fmnist_dir, reference_cache, capfd):
    optuna_url = postgres_server.create_database("study_servers")  # postgresql+psycopg2://ddgan:PW@...
    pg_password = urlsplit(optuna_url).password
    typed_optuna = optuna_url.replace("postgresql+psycopg2://", "postgresql://")  # what a user types
    mlflow_password = "mlflow-pw-4d1c0ffee"
    typed_mlflow = mlflow_server_uri.replace("http://", f"http://ddgan:{mlflow_password}@")
    grid = write_grid(tmp_path / "servers_smoke.yaml", "servers_smoke", lrs=[1.0e-3], concurrent=4, steps=30,
                      ddpm=True)
    results = tmp_path / "results"
    start = time.perf_counter()
    code = run_cli(study_run.main, ["--grid", grid, "--results-dir", str(results), "--data-dir", str(fmnist_dir),
                                    "--cache-dir", str(reference_cache), f"--optuna-storage={typed_optuna}",
                                    "--mlflow-uri", typed_mlflow, "--quiet"])
    seconds = time.perf_counter() - start
    out, err = capfd.readouterr()
    assert code == 0, err[-3000:]
    assert "6 completed, 0 pruned, 0 failed" in out, out

    client = MlflowClient(mlflow_server_uri)
    runs = mlflow_runs(mlflow_server_uri, "servers_smoke")
    trials = optuna_trials(optuna_url, "servers_smoke")
    ray = {**ray_trials(results / "servers_smoke" / "ray", "train"),
           **ray_trials(results / "servers_smoke" / "ray", "sample")}
    train_keys = [k for k in runs if not k.startswith("ddpm-ddim")]
    assert_consistent(runs, trials, ray, set(runs))
    assert len(runs) == 6 and all(t.state == TrialState.COMPLETE for t in trials.values())
    for key in train_keys:  # no metric lost: every step of every series, once
        run = runs[key][0]
        assert_history_without_gaps(client, run, every=10, log_every=10, last=30)
        assert sorted(trials[key].intermediate_values) == [10, 20, 30]
        assert trials[key].value == pytest.approx(run.data.metrics[METRIC])
        assert [a.path for a in client.list_artifacts(run.info.run_id, "model")]  # proxied artifacts
    sample = runs["ddpm-ddim-S1-of-ddpm-T2-lr0.001-s0"][0]  # downloaded its source's model via the server
    assert [m.step for m in client.get_metric_history(sample.info.run_id, METRIC)] == [30]
    overlap = max_overlap(writing_intervals(client, runs, [k for k in train_keys if k.startswith("ddgan")]))
    assert overlap == 4, f"the 4 DDGAN trials did not write at once (max overlap {overlap})"
    assert not lock_errors(results) and not any(w in (out + err).lower() for w in LOCK_WORDS)

    # No secret anywhere: MLflow params and tags, the study's files, Ray's logs, the output.
    secrets = [pg_password, mlflow_password]
    experiment = client.get_experiment_by_name("servers_smoke")
    for run in client.search_runs([experiment.experiment_id], max_results=100):
        text = " ".join([*run.data.params.values(), *run.data.tags.values(), run.info.artifact_uri])
        assert not any(s in text for s in secrets), run.data.tags.get("trial_key", "parent run")
    leaks = [line[:300].replace(s, "<SECRET>") for line in (out + err).splitlines() for s in secrets if s in line]
    assert not leaks, "\n".join(leaks[:5])
    assert not files_containing(results, secrets)
    assert not files_containing(ray_log_dir(), secrets)
    print(f"servers grid: 6 trials, 4 at once, {seconds:.1f} s")


# -- SQLite defaults, 8 trials at once -----------------------------------------------------------


@pytest.mark.slow
def test_8_concurrent_trials_on_the_sqlite_defaults(ray_session, tmp_path, fmnist_dir, reference_cache, capfd):
    grid = write_grid(tmp_path / "sqlite_8.yaml", "sqlite_8", lrs=[1.0e-3, 2.0e-3], concurrent=8, steps=30,
                      log_every=5, pruner="none")  # two learning rates per cell: nothing may be pruned
    results = tmp_path / "results"
    start = time.perf_counter()
    code = run_cli(study_run.main, ["--grid", grid, "--results-dir", str(results), "--data-dir", str(fmnist_dir),
                                    "--cache-dir", str(reference_cache), "--quiet"])
    seconds = time.perf_counter() - start
    out, err = capfd.readouterr()
    assert code == 0, err[-3000:]
    assert "8 completed, 0 pruned, 0 failed" in out, out
    uri = f"sqlite:///{results}/mlflow.db"
    client = MlflowClient(uri)
    runs = mlflow_runs(uri, "sqlite_8")
    trials = optuna_trials(f"sqlite:///{results}/sqlite_8/optuna.db", "sqlite_8")
    assert_consistent(runs, trials, ray_trials(results / "sqlite_8" / "ray"), set(runs))
    assert len(runs) == 8
    for key, [run] in runs.items():
        assert_history_without_gaps(client, run, every=10, log_every=5, last=30)
        assert trials[key].value == pytest.approx(run.data.metrics[METRIC])
    overlap = max_overlap(writing_intervals(client, runs, list(runs)))
    assert overlap == 8, f"the 8 trials did not write at once (max overlap {overlap})"
    assert not lock_errors(results) and not any(w in (out + err).lower() for w in LOCK_WORDS)
    print(f"sqlite grid: 8 trials at once, {seconds:.1f} s")


# -- failing fast ---------------------------------------------------------------------------------


class _Refuse(http.server.BaseHTTPRequestHandler):
    """An HTTP server that wants other credentials (as an MLflow server behind basic auth)."""

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="mlflow"')
        self.end_headers()

    do_POST = do_GET  # noqa: N815 (the MLflow client searches with POST)

    def log_message(self, *args):
        pass


@pytest.fixture
def refusing_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refuse)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _plain(url: str) -> str:
    return url.replace("postgresql+psycopg2://", "postgresql://")


FAIL_FAST: list[tuple[str, Callable, str]] = [
    ("Optuna: PostgreSQL on a wrong port",
     lambda pg, ml, refuse: ["--optuna-storage", unreachable_postgres_url()],
     r"Optuna storage postgresql\+psycopg2://ddgan:\*\*\*@127\.0\.0\.1:\d+/optuna is unreachable \(.*refused"),
    ("Optuna: bad password",
     lambda pg, ml, refuse: ["--optuna-storage", bad_password_url(pg)],
     r"Optuna storage postgresql\+psycopg2://ddgan:\*\*\*@127\.0\.0\.1:\d+/optuna refused the credentials "
     r"\(.*password authentication failed"),
    ("Optuna: bad password, postgresql:// as typed",
     lambda pg, ml, refuse: [f"--optuna-storage={_plain(bad_password_url(pg))}"],
     r"Optuna storage postgresql\+psycopg2://ddgan:\*\*\*@.* refused the credentials"),
    ("MLflow: server on a wrong port",
     lambda pg, ml, refuse: ["--mlflow-uri", f"http://ddgan:top-secret@127.0.0.1:{free_port()}"],
     r"MLflow server http://ddgan:\*\*\*@127\.0\.0\.1:\d+ is unreachable \(.*refused"),
    ("MLflow: server refuses the credentials",
     lambda pg, ml, refuse: ["--mlflow-uri", refuse.replace("http://", "http://ddgan:top-secret@")],
     r"MLflow server http://ddgan:\*\*\*@127\.0\.0\.1:\d+ refused the credentials \(HTTP 401\)"),
    ("MLflow: database with a bad password",
     lambda pg, ml, refuse: ["--mlflow-uri", _plain(bad_password_url(pg))],
     r"MLflow database postgresql\+psycopg2://ddgan:\*\*\*@.* refused the credentials"),
]


@pytest.mark.servers
@pytest.mark.parametrize(("name", "flags", "message"), FAIL_FAST, ids=[c[0] for c in FAIL_FAST])
def test_unreachable_or_refusing_stores_fail_fast_masked(name, flags, message, postgres_url, refusing_server,
                                                         tmp_path, fmnist_dir, capsys, monkeypatch):
    import ray

    import study.stores

    def refuse(*args, **kwargs):
        raise AssertionError("started something before the stores were checked")

    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.setattr(study.stores, "init_stores", refuse)
    argv = flags(postgres_url, None, refusing_server)
    secrets = [p for p in (urlsplit(a.split("=", 1)[-1]).password for a in argv if "://" in a) if p]
    grid = write_grid(tmp_path / "g.yaml", "fail_fast", lrs=[1.0e-3], concurrent=2, steps=10)
    before = sorted(tmp_path.rglob("*"))
    start = time.perf_counter()
    code = run_cli(study_run.main, ["--grid", grid, "--results-dir", str(tmp_path / "results"),
                                    "--data-dir", str(fmnist_dir), *argv])
    seconds = time.perf_counter() - start
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and out == "", err
    assert re.search(message, lines[0]), lines[0]
    assert secrets and not any(s in err for s in secrets)
    assert seconds < 5.0, f"took {seconds:.1f} s"
    assert sorted(tmp_path.rglob("*")) == before
