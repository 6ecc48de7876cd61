"""Where a study keeps its state: MLflow, Optuna, Ray storage. Defaults, validation, preflight.

Embedded default (no servers), everything under `--results-dir` (default `results/`):

    results/mlflow.db                  MLflow backend store (one experiment per study)
    results/mlartifacts/<study>/       MLflow artifacts (sample grids, models, configs)
    results/<study>/optuna.db          Optuna: one study per (study, cell), written by the driver only
    results/<study>/ray/               Ray Tune experiments ("train", "sample") and trial checkpoints
    results/<study>/plan.json          the expanded grid (checked by --resume)

Every path is made absolute here, in the driver: Ray runs a trial in its own working
directory, where a relative `sqlite:///mlflow.db` would silently create a new store.
On a cluster the same code takes `--mlflow-uri http://...`, `--optuna-storage
postgresql://...` and `--storage-path` (a shared filesystem or s3://).

`preflight` checks every store is reachable and writable *before* anything is
started (servers are probed with a short timeout); `init_stores` then creates the
databases once, in the driver (concurrent first-time migrations from trials fail).
URIs are shown with their passwords masked everywhere (`mask_uri`).
"""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from ddgan.errors import UsageError

PROBE_TIMEOUT_S = 5.0
MLFLOW_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql")
OPTUNA_SCHEMES = ("sqlite", "postgresql", "mysql", "journal")
REMOTE_STORAGE_SCHEMES = ("s3", "gs", "gcs", "hdfs", "abfs", "az")


@dataclass(frozen=True)
class Stores:
    study: str
    results_dir: Path  # absolute
    mlflow_uri: str
    artifact_root: str | None  # file:// root for the embedded store; None lets a server decide
    optuna_url: str
    ray_storage: str  # absolute path or a remote URI
    ray_address: str | None = None

    @property
    def study_dir(self) -> Path:
        return self.results_dir / self.study

    @property
    def plan_file(self) -> Path:
        return self.study_dir / "plan.json"

    @property
    def cache_dir(self) -> Path:
        return self.results_dir / ".cache"

    def describe(self) -> dict[str, str]:
        """For printing: every URI with its password masked."""
        return {
            "mlflow": mask_uri(self.mlflow_uri),
            "artifacts": self.artifact_root or "(server default)",
            "optuna": mask_uri(self.optuna_url),
            "ray storage": mask_uri(self.ray_storage),
            "ray cluster": self.ray_address or "local (started by this command)",
        }


# user:password@ after a scheme, anywhere in the text (`--flag=URI`, an error message). Greedy to
# the last '@': an unencoded '/' or '@' in a password (SQLAlchemy accepts both) is masked too.
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*):(\S*)@")
_SECRET_QUERY = re.compile(r"(?i)(password|passwd|pwd|token|secret)=[^&\s]*")


def mask_uri(uri: str) -> str:
    """`postgresql://user:secret@host/db` -> `postgresql://user:***@host/db` (also `password=` in queries)."""
    return _SECRET_QUERY.sub(r"\1=***", _USERINFO.sub(r"\1:***@", uri))


def _scheme(uri: str) -> str:
    return uri.split("://", 1)[0].split("+", 1)[0].lower() if "://" in uri else ""


def _sqlite_path(uri: str, what: str) -> Path:
    """sqlite:///rel.db -> absolute Path; sqlite:////abs.db -> Path."""
    path = uri.split("://", 1)[1]
    if not path.startswith("/") or path in ("/", "/:memory:"):
        raise UsageError(f"malformed {what} {mask_uri(uri)!r}: use sqlite:///path/to/file.db")
    path = path[1:].split("?", 1)[0]
    if not path:
        raise UsageError(f"malformed {what} {mask_uri(uri)!r}: no database file")
    return Path(path).expanduser().resolve()


def _check_server_uri(uri: str, what: str) -> None:
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError:  # not the parser's message: it may quote part of a password
        raise UsageError(f"malformed {what} {mask_uri(uri)!r}: bad host or port (percent-encode '/', '@' "
                         "and ':' in a password, e.g. %2F)") from None
    if not parts.hostname:
        raise UsageError(f"malformed {what} {mask_uri(uri)!r}: no host")


def postgres_driver(url: str) -> str:
    """`postgresql://` -> `postgresql+psycopg2://` when psycopg2 is installed and psycopg 3 is
    not: SQLAlchemy 2.1 maps the bare scheme to psycopg 3, the `cluster` extra installs psycopg2."""
    import importlib.util

    if not url.lower().startswith("postgresql://") or importlib.util.find_spec("psycopg") is not None:
        return url
    if importlib.util.find_spec("psycopg2") is None:
        return url  # preflight names the missing driver
    return "postgresql+psycopg2://" + url.split("://", 1)[1]


def normalize_mlflow_uri(uri: str) -> str:
    """Validate an MLflow tracking URI; make sqlite paths absolute."""
    scheme = _scheme(uri)
    if scheme not in MLFLOW_SCHEMES:
        hint = " (MLflow 3 refuses new file stores; use sqlite:///path.db)" if uri.startswith(("file:", "/", ".")) else ""
        raise UsageError(f"malformed MLflow URI {mask_uri(uri)!r}: scheme must be one of "
                         f"{', '.join(MLFLOW_SCHEMES)}{hint}")
    if scheme == "sqlite":
        return f"sqlite:///{_sqlite_path(uri, 'MLflow URI')}"
    _check_server_uri(uri, "MLflow URI")
    return postgres_driver(uri)


def normalize_optuna_url(url: str) -> str:
    """Validate an Optuna storage URL (RDB or `journal:///path.log`); make file paths absolute."""
    scheme = _scheme(url)
    if scheme not in OPTUNA_SCHEMES:
        raise UsageError(f"malformed Optuna storage {mask_uri(url)!r}: scheme must be one of "
                         f"{', '.join(OPTUNA_SCHEMES)} (e.g. postgresql://user:pass@host/db)")
    if scheme in ("sqlite", "journal"):
        return f"{scheme}:///{_sqlite_path(url, 'Optuna storage')}"
    _check_server_uri(url, "Optuna storage")
    return postgres_driver(url)


def normalize_storage_path(path: str) -> str:
    if "://" in path:
        scheme = path.split("://", 1)[0].lower()
        if scheme == "file":
            return str(Path(path.split("://", 1)[1]).resolve())
        if scheme not in REMOTE_STORAGE_SCHEMES:
            raise UsageError(f"malformed --storage-path {mask_uri(path)!r}: a directory or one of "
                             f"{', '.join(s + '://' for s in REMOTE_STORAGE_SCHEMES)}")
        return path
    return str(Path(path).expanduser().resolve())


def resolve_stores(study: str, results_dir: str | Path = "results", *, mlflow_uri: str | None = None,
                   optuna_storage: str | None = None, storage_path: str | None = None,
                   address: str | None = None) -> Stores:
    """The study's stores: flags where given, embedded defaults under `results_dir` otherwise."""
    results = Path(results_dir).expanduser().resolve()
    study_dir = results / study
    mlflow = normalize_mlflow_uri(mlflow_uri) if mlflow_uri else f"sqlite:///{results / 'mlflow.db'}"
    artifact_root = (results / "mlartifacts").as_uri() if _scheme(mlflow) not in ("http", "https") else None
    optuna_url = normalize_optuna_url(optuna_storage) if optuna_storage else f"sqlite:///{study_dir / 'optuna.db'}"
    ray_storage = normalize_storage_path(storage_path) if storage_path else str(study_dir / "ray")
    if address is not None and not (address == "auto" or re.match(r"^(ray://)?[\w.-]+:\d+$", address)):
        raise UsageError(f"malformed --address {address!r}: use auto, host:port or ray://host:port")
    return Stores(study, results, mlflow, artifact_root, optuna_url, ray_storage, address)


# -- preflight --------------------------------------------------------------------------------


def _check_writable_dir(path: Path, what: str) -> None:
    """The nearest existing ancestor must be a writable directory (nothing is created)."""
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"{what} {str(path)!r} is not writable")


def _http_request(uri: str, path: str) -> urllib.request.Request:
    """GET `uri + path` with the credentials MLflow's client would send (URL user:password,
    else $MLFLOW_TRACKING_USERNAME/PASSWORD or $MLFLOW_TRACKING_TOKEN); urllib itself cannot
    parse a user:password in the URL."""
    import base64
    from urllib.parse import unquote

    parts = urlsplit(uri)
    headers = {}
    user, password = parts.username, parts.password
    if user is None and os.environ.get("MLFLOW_TRACKING_USERNAME"):
        user, password = os.environ["MLFLOW_TRACKING_USERNAME"], os.environ.get("MLFLOW_TRACKING_PASSWORD", "")
    elif user is not None:
        user, password = unquote(user), unquote(password or "")
    if user is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    elif os.environ.get("MLFLOW_TRACKING_TOKEN"):
        headers["Authorization"] = f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}"
    base = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2])).rstrip("/")
    return urllib.request.Request(base + path, headers=headers)


def _probe_http(uri: str, what: str, timeout: float) -> None:
    """One authenticated GET (`/health` is open even on servers with auth, so it would not
    catch bad credentials): unreachable, refused credentials and non-MLflow servers fail here."""
    request = _http_request(uri, "/api/2.0/mlflow/experiments/search?max_results=1")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (http(s) only)
            response.read(64)
    except urllib.error.HTTPError as err:
        if err.code in (401, 403):
            raise UsageError(f"{what} {mask_uri(uri)} refused the credentials (HTTP {err.code})") from None
        hint = " (not an MLflow tracking server?)" if err.code == 404 else ""
        raise UsageError(f"{what} {mask_uri(uri)} answered HTTP {err.code}{hint}") from None
    except (TimeoutError, urllib.error.URLError, ConnectionError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise UsageError(f"{what} {mask_uri(uri)} is unreachable ({reason})") from None


def _probe_database(url: str, what: str, timeout: float) -> None:
    import sqlalchemy

    scheme = _scheme(url)
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
    scheme = _scheme(stores.mlflow_uri)
    if scheme == "sqlite":
        _check_writable_dir(_sqlite_path(stores.mlflow_uri, "MLflow URI").parent, "MLflow store directory")
    elif scheme in ("http", "https"):
        _probe_http(stores.mlflow_uri, "MLflow server", timeout)
    else:
        _probe_database(stores.mlflow_uri, "MLflow database", timeout)
    scheme = _scheme(stores.optuna_url)
    if scheme in ("sqlite", "journal"):
        _check_writable_dir(_sqlite_path(stores.optuna_url, "Optuna storage").parent, "Optuna storage directory")
    else:
        _probe_database(stores.optuna_url, "Optuna storage", timeout)
    if "://" not in stores.ray_storage:
        _check_writable_dir(Path(stores.ray_storage), "Ray storage path")


# -- creation (driver only, once) ---------------------------------------------------------------


def optuna_storage(url: str):
    """The Optuna storage object for `url` (driver only). SQLite waits on locks instead of failing."""
    import optuna

    scheme = _scheme(url)
    if scheme == "journal":
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(str(_sqlite_path(url, "Optuna storage"))))
    engine_kwargs = {"connect_args": {"timeout": 60}} if scheme == "sqlite" else {"pool_pre_ping": True}
    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)


def init_stores(stores: Stores) -> None:
    """Create the study directory and the MLflow and Optuna databases, once, in the driver."""
    stores.study_dir.mkdir(parents=True, exist_ok=True)
    for url in (stores.mlflow_uri, stores.optuna_url):
        if _scheme(url) in ("sqlite", "journal"):
            _sqlite_path(url, "store").parent.mkdir(parents=True, exist_ok=True)
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri=stores.mlflow_uri).search_experiments(max_results=1)  # creates/migrates the DB
    optuna_storage(stores.optuna_url)  # creates the tables
