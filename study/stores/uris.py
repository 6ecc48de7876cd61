"""Where a study keeps its state: MLflow, Optuna, Ray storage. Defaults and validation.

Embedded default (no servers): a run's state lives under `--state-dir` (default
`results/runs/`, ignored by git), apart from the curated reports that `study.report`
writes to `results/<study>/` (committed ones, like results/cpu, are never a run's state):

    results/runs/mlflow.db             MLflow backend store (one experiment per study)
    results/runs/mlartifacts/<study>/  MLflow artifacts (sample grids, models, configs)
    results/runs/<study>/optuna.db     Optuna: one study per (study, cell), written by the driver only
    results/runs/<study>/ray/          Ray Tune experiments ("train", "sample") and trial checkpoints
    results/runs/<study>/plan.json     the expanded grid (checked by --resume)
    results/runs/<study>/history.json  when each invocation ran and for how long

Every path is made absolute here, in the driver: Ray runs a trial in its own working
directory, where a relative `sqlite:///mlflow.db` would silently create a new store.
On a cluster the same code takes `--mlflow-uri http://...`, `--optuna-storage
postgresql://...` and `--storage-path` (a shared filesystem or s3://). With `--address`,
`node_local` names what a trial on another node would not see (the MLflow SQLite file, a
Ray storage path or reference cache left at its default under the state directory):
`study.prepare` refuses it unless `--allow-local` says every node sees these paths.

Nothing here touches a store (`study.stores.connect` does). URIs are shown with their
passwords masked everywhere (`mask_uri`).
"""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ddgan.errors import UsageError

MLFLOW_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql")
OPTUNA_SCHEMES = ("sqlite", "postgresql", "mysql", "journal")
REMOTE_STORAGE_SCHEMES = ("s3", "gs", "gcs", "hdfs", "abfs", "az")
CACHE_ENV = "DDGAN_CACHE_DIR"  # the reference-statistics cache when --cache-dir is not given
DEFAULT_STATE_DIR = "results/runs"  # a run's state (the CLIs' --state-dir, alias --results-dir)
REPORTS_DIR = "results"  # curated reports: results/<study>/ (study.report --out)


@dataclass(frozen=True)
class Stores:
    study: str
    results_dir: Path  # absolute: the state directory (--state-dir), never a curated report folder
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
    def history_file(self) -> Path:
        return self.study_dir / "history.json"

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


def scheme_of(uri: str) -> str:
    return uri.split("://", 1)[0].split("+", 1)[0].lower() if "://" in uri else ""


def sqlite_path(uri: str, what: str) -> Path:
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
    if not url.lower().startswith("postgresql://") or importlib.util.find_spec("psycopg") is not None:
        return url
    if importlib.util.find_spec("psycopg2") is None:
        return url  # preflight names the missing driver
    return "postgresql+psycopg2://" + url.split("://", 1)[1]


def normalize_mlflow_uri(uri: str) -> str:
    """Validate an MLflow tracking URI; make sqlite paths absolute."""
    scheme = scheme_of(uri)
    if scheme not in MLFLOW_SCHEMES:
        hint = " (MLflow 3 refuses new file stores; use sqlite:///path.db)" if uri.startswith(("file:", "/", ".")) else ""
        raise UsageError(f"malformed MLflow URI {mask_uri(uri)!r}: scheme must be one of "
                         f"{', '.join(MLFLOW_SCHEMES)}{hint}")
    if scheme == "sqlite":
        return f"sqlite:///{sqlite_path(uri, 'MLflow URI')}"
    _check_server_uri(uri, "MLflow URI")
    return postgres_driver(uri)


def normalize_optuna_url(url: str) -> str:
    """Validate an Optuna storage URL (RDB or `journal:///path.log`); make file paths absolute."""
    scheme = scheme_of(url)
    if scheme not in OPTUNA_SCHEMES:
        raise UsageError(f"malformed Optuna storage {mask_uri(url)!r}: scheme must be one of "
                         f"{', '.join(OPTUNA_SCHEMES)} (e.g. postgresql://user:pass@host/db)")
    if scheme in ("sqlite", "journal"):
        return f"{scheme}:///{sqlite_path(url, 'Optuna storage')}"
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


def resolve_stores(study: str, results_dir: str | Path = DEFAULT_STATE_DIR, *, mlflow_uri: str | None = None,
                   optuna_storage: str | None = None, storage_path: str | None = None,
                   address: str | None = None) -> Stores:
    """The study's stores: flags where given, embedded defaults under `results_dir` otherwise."""
    results = Path(results_dir).expanduser().resolve()
    study_dir = results / study
    mlflow = normalize_mlflow_uri(mlflow_uri) if mlflow_uri else f"sqlite:///{results / 'mlflow.db'}"
    artifact_root = (results / "mlartifacts").as_uri() if scheme_of(mlflow) not in ("http", "https") else None
    optuna_url = normalize_optuna_url(optuna_storage) if optuna_storage else f"sqlite:///{study_dir / 'optuna.db'}"
    # one folder per study under --storage-path: two studies (a grid's pilot and its study, or two
    # --study names) never share a Ray experiment folder ("<storage>/train" would hold both)
    ray_storage = f"{normalize_storage_path(storage_path).rstrip('/')}/{study}" if storage_path else str(study_dir / "ray")
    if address is not None and not (address == "auto" or re.match(r"^(ray://)?[\w.-]+:\d+$", address)):
        raise UsageError(f"malformed --address {address!r}: use auto, host:port or ray://host:port")
    return Stores(study, results, mlflow, artifact_root, optuna_url, ray_storage, address)


def chosen_cache_dir(flag: str | None) -> str | None:
    """--cache-dir, else $DDGAN_CACHE_DIR; None when neither names one (the study's default:
    `<state-dir>/.cache`, `Stores.cache_dir`)."""
    return flag or os.environ.get(CACHE_ENV) or None


def node_local(stores: Stores, *, storage_path: str | None, cache_dir: str | None) -> list[str]:
    """With --address: the stores a trial on another node would not see, one `--flag (why)` each.

    `storage_path` and `cache_dir` are what the user named (None: the default under the state
    directory on this node). The Optuna storage is not listed: only the driver reads and writes
    it, like plan.json. Empty without --address."""
    if stores.ray_address is None:
        return []
    found = []
    if scheme_of(stores.mlflow_uri) == "sqlite":
        found.append(f"--mlflow-uri ({mask_uri(stores.mlflow_uri)} is a file on this node)")
    elif stores.artifact_root is not None:  # a database URI: artifacts go to a file:// root here
        found.append(f"--mlflow-uri (a database URI: artifacts would go to {stores.artifact_root} "
                     "on each node; use an MLflow server, http://...)")
    if storage_path is None:
        found.append(f"--storage-path (default {stores.ray_storage})")
    if cache_dir is None:
        found.append(f"--cache-dir (default {stores.cache_dir})")
    return found


def node_local_message(found: list[str]) -> str:
    """One line: what to name with --address, or --allow-local."""
    return (f"with --address, trials on other nodes cannot reach {'; '.join(found)}: name stores every "
            "node reaches, or pass --allow-local if every node sees these paths (one machine, a shared mount)")


def mlflow_uri_for(results_dir: str | Path, mlflow_uri: str | None) -> str:
    """The given URI, else the embedded store `<results_dir>/mlflow.db` (which must exist)."""
    if mlflow_uri:
        return normalize_mlflow_uri(mlflow_uri)
    db = Path(results_dir).expanduser().resolve() / "mlflow.db"
    if not db.is_file():
        raise UsageError(f"no MLflow store at {str(db)!r}: run `python -m study.run` first, "
                         "or pass --state-dir / --mlflow-uri")
    return f"sqlite:///{db}"


def add_store_args(parser) -> None:
    """--state-dir (alias --results-dir) and --mlflow-uri: where a finished study's stores are."""
    parser.add_argument("--state-dir", "--results-dir", dest="results_dir", default=DEFAULT_STATE_DIR,
                        help=f"where study.run kept the run's state (default: {DEFAULT_STATE_DIR})")
    parser.add_argument("--mlflow-uri", default=None,
                        help="MLflow tracking URI (default: sqlite:///<state-dir>/mlflow.db)")
