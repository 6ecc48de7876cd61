"""Reach the stores: preflight (reachable and writable, before anything starts) and creation.

`preflight` checks every store *before* anything is started: an MLflow server is probed
through the client layer (`MlflowStore.probe`), a database with one `SELECT 1`, a Ray
address (`auto` resolved as Ray does) with one TCP connect, each with a short timeout; a
file store's directory must be writable. Nothing is created. The same probes run for every
command's store flags while its command line is parsed (study/stores/flags.py). MLflow
itself is imported only where a store is probed or created, so validating a study on the
embedded default (`--dry-run`, bad input) loads neither MLflow nor Ray.
`init_stores` then creates the databases once, in the driver (concurrent first-time
migrations from trials fail). URIs are shown with their passwords masked.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import optuna
import sqlalchemy
from optuna.storages.journal import JournalFileBackend

from ddgan.errors import UsageError
from study.stores.uris import Stores, mask_uri, scheme_of, sqlite_path

PROBE_TIMEOUT_S = 5.0


def _check_writable_dir(path: Path, what: str) -> None:
    """The nearest existing ancestor must be a writable directory (nothing is created)."""
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"{what} {str(path)!r} is not writable")


def _check_not_a_directory(url: str, what: str) -> None:
    """A SQLite (or journal) store names a file; an existing directory there is refused at once
    (SQLite would retry for minutes, then fail with a long traceback)."""
    path = sqlite_path(url, what)
    if path.is_dir():
        raise UsageError(f"{what} {mask_uri(url)}: {str(path)!r} is a directory; name a database file in it, "
                         f"e.g. sqlite:///{path / 'mlflow.db'}")


def ray_address_file() -> Path:
    """Where `ray start --head` records the cluster it started (Ray's temp dir: $RAY_TMPDIR, else
    $TMPDIR, else /tmp, then `ray/ray_current_cluster`), which `--address auto` joins."""
    temp = os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"
    return Path(temp) / "ray" / "ray_current_cluster"


def resolve_ray_address(address: str) -> str:
    """`auto` -> $RAY_ADDRESS, else the address `ray start` recorded; a UsageError when there is none
    (Ray would otherwise fail after the stores were created, with a 30-line traceback)."""
    if address != "auto":
        return address
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    recorded = ray_address_file()
    try:
        found = recorded.read_text().strip()
    except OSError:
        found = ""
    if not found:
        raise UsageError("--address auto: no running Ray cluster found (no $RAY_ADDRESS, nothing recorded in "
                         f"{str(recorded)!r}); start one with `ray start --head`, or leave --address out to run locally")
    return found


def probe_ray(address: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """--address auto, host:port or ray://host:port: something must listen there, or the driver would
    create the stores and then wait for the cluster forever (or fail with a traceback)."""
    where = resolve_ray_address(address)
    host, _, port = where.removeprefix("ray://").rpartition(":")
    shown = address if where == address else f"{address} ({where})"
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as err:
        reason = getattr(err, "strerror", None) or str(err)
        raise UsageError(f"--address {shown}: no Ray cluster answers there ({reason}); "
                         "start one with `ray start --head`, or leave --address out to run locally") from None


def probe_mlflow(uri: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Reach an MLflow server or database within `timeout` seconds (a UsageError otherwise)."""
    scheme = scheme_of(uri)
    if scheme == "sqlite":
        _check_not_a_directory(uri, "MLflow URI")
    elif scheme in ("http", "https"):
        from study.stores.mlflow_client import MlflowStore  # MLflow loads only to probe a server

        MlflowStore(uri).probe("MLflow server", timeout)
    else:
        _probe_database(uri, "MLflow database", timeout)


def probe_optuna(url: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Reach an Optuna storage within `timeout` seconds; a file store must name a file in a writable
    directory (a UsageError otherwise). Nothing is created."""
    if scheme_of(url) in ("sqlite", "journal"):
        _check_not_a_directory(url, "Optuna storage")
        _check_writable_dir(sqlite_path(url, "Optuna storage").parent, "Optuna storage directory")
    else:
        _probe_database(url, "Optuna storage", timeout)


def _probe_database(url: str, what: str, timeout: float) -> None:
    scheme = scheme_of(url)
    connect_args = {"connect_timeout": int(max(timeout, 1))} if scheme in ("postgresql", "mysql") else {}
    try:
        engine = sqlalchemy.create_engine(url, connect_args=connect_args, poolclass=sqlalchemy.pool.NullPool)
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT 1"))
        engine.dispose()
    except ModuleNotFoundError as err:
        raise UsageError(f"{what} {mask_uri(url)} needs the database driver {err.name!r} "
                         "(pip install -e .[cluster])") from None
    except Exception as err:  # sqlalchemy wraps every driver error; keep one masked line
        first = str(getattr(err, "orig", err)).strip().splitlines()
        detail = first[0] if first else type(err).__name__
        refused = any(s in detail.lower() for s in ("authentication failed", "access denied"))
        verdict = "refused the credentials" if refused else "is unreachable"
        raise UsageError(f"{what} {mask_uri(url)} {verdict} ({mask_uri(detail)[:200]})") from None


def preflight(stores: Stores, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Fail fast (UsageError) on anything unreachable or unwritable; creates nothing."""
    _check_writable_dir(stores.results_dir, "results directory")
    probe_mlflow(stores.mlflow_uri, timeout)
    if scheme_of(stores.mlflow_uri) == "sqlite":
        _check_writable_dir(sqlite_path(stores.mlflow_uri, "MLflow URI").parent, "MLflow store directory")
    probe_optuna(stores.optuna_url, timeout)
    if "://" not in stores.ray_storage:
        _check_writable_dir(Path(stores.ray_storage), "Ray storage path")
    if stores.ray_address is not None:  # `auto` too: resolved, then probed
        probe_ray(stores.ray_address, timeout)


# -- creation (driver only, once) ---------------------------------------------------------------


def optuna_storage(url: str) -> optuna.storages.BaseStorage:
    """The Optuna storage object for `url` (driver only). SQLite waits on locks instead of failing."""
    scheme = scheme_of(url)
    if scheme == "journal":
        return optuna.storages.JournalStorage(JournalFileBackend(str(sqlite_path(url, "Optuna storage"))))
    engine_kwargs = {"connect_args": {"timeout": 60}} if scheme == "sqlite" else {"pool_pre_ping": True}
    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)


def init_stores(stores: Stores) -> None:
    """Create the study directory and the MLflow and Optuna databases, once, in the driver."""
    stores.study_dir.mkdir(parents=True, exist_ok=True)
    for url in (stores.mlflow_uri, stores.optuna_url):
        if scheme_of(url) in ("sqlite", "journal"):
            sqlite_path(url, "store").parent.mkdir(parents=True, exist_ok=True)
    from study.stores.mlflow_client import MlflowStore  # see the module docstring

    MlflowStore(stores.mlflow_uri).search_experiments(max_results=1)  # creates/migrates the DB
    optuna_storage(stores.optuna_url)  # creates the tables
