"""CLI: `python -m study.ui [--state-dir results/runs] [--port 5000] [--optuna]` opens a study's UI.

Default: MLflow's UI (`mlflow ui`) on the embedded backend store
(`sqlite:///<state>/mlflow.db`, an absolute path). `--optuna`: Optuna's own dashboard
(optuna-dashboard, `optuna_dashboard.run_server`) on the study's Optuna storage: one Optuna
study per cell, `<study>/<cell>`, in `<state>/<study>/optuna.db` (or `--optuna-storage`).
Both bind to 127.0.0.1, so nothing is exposed to the network unless you pass `--host`.
Equivalent commands:

    mlflow ui --backend-store-uri sqlite:///$PWD/results/runs/mlflow.db --host 127.0.0.1 --port 5000
    optuna-dashboard sqlite:///$PWD/results/runs/smoke/optuna.db --host 127.0.0.1 --port 8080
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ddgan.cli import HOST, STUDY_NAME, ArgumentParser, InputPath, Number, run_cli
from ddgan.errors import UsageError
from study.flags import MlflowUri, OptunaStorage
from study.stores import mask_uri, normalize_mlflow_uri, normalize_optuna_url
from study.stores.uris import DEFAULT_STATE_DIR

OPTUNA_PORT = 8080


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m study.ui", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--state-dir", "--results-dir", dest="results_dir", default=DEFAULT_STATE_DIR,
                   type=InputPath("dir", missing_ok=True),
                   help=f"where study.run kept the run's state (default: {DEFAULT_STATE_DIR})")
    p.add_argument("--mlflow-uri", default=None, type=MlflowUri(), help="another backend store (default: <state-dir>/mlflow.db)")
    p.add_argument("--optuna", action="store_true", help="Optuna's dashboard instead of MLflow's UI")
    p.add_argument("--study", default=None, type=STUDY_NAME, help="--optuna: the study (default: the only one in --state-dir)")
    p.add_argument("--optuna-storage", default=None, type=OptunaStorage(), help="--optuna: another storage (default: <state-dir>/<study>/optuna.db)")
    p.add_argument("--host", default="127.0.0.1", type=HOST, help="bind address (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=Number(int, 1, 65535), default=None, help=f"default 5000 (MLflow), {OPTUNA_PORT} (--optuna)")
    p.add_argument("--print-command", action="store_true", help="print the equivalent command instead of running it")
    return p


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def _check_port(port: int) -> None:
    if not 0 < port < 65536:
        raise UsageError(f"--port must be in 1..65535, got {port}")


def ui_command(results_dir: str | Path, mlflow_uri: str | None, host: str, port: int) -> list[str]:
    """The `mlflow ui` command line for the study's backend store (checked to exist)."""
    if mlflow_uri is None:
        db = Path(results_dir).expanduser().resolve() / "mlflow.db"
        if not db.is_file():
            raise UsageError(f"no MLflow store at {str(db)!r}: run `python -m study.run` first or pass --state-dir")
        uri = f"sqlite:///{db}"
        artifacts = ["--default-artifact-root", (db.parent / "mlartifacts").as_uri()]
    else:
        uri, artifacts = normalize_mlflow_uri(mlflow_uri), []
        if not uri.startswith("sqlite:"):
            raise UsageError(f"{mask_uri(uri)} is a server already: open it in a browser")
    _check_port(port)
    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, *artifacts,
            "--host", host, "--port", str(port)]


def optuna_url(results_dir: str | Path, study: str | None, optuna_storage: str | None) -> str:
    """The Optuna storage of a study: --optuna-storage, else `<state>/<study>/optuna.db` (checked to exist)."""
    if optuna_storage is not None:
        return normalize_optuna_url(optuna_storage)
    state = Path(results_dir).expanduser().resolve()
    if study is None:
        found = sorted(p.parent.name for p in state.glob("*/optuna.db"))
        if len(found) != 1:
            what = f"studies {', '.join(found)}" if found else "no study"
            raise UsageError(f"--optuna: {str(state)!r} holds {what}: pass --study NAME (or --state-dir)")
        study = found[0]
    db = state / study / "optuna.db"
    if not db.is_file():
        raise UsageError(f"no Optuna storage at {str(db)!r}: run `python -m study.run` first or pass --state-dir")
    return f"sqlite:///{db}"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.optuna:
        url, port = optuna_url(args.results_dir, args.study, args.optuna_storage), args.port or OPTUNA_PORT
        _check_port(port)
        if args.print_command:
            print(f"optuna-dashboard {mask_uri(url)} --host {args.host} --port {port}")
            return 0
        import optuna_dashboard  # a dependency of this project (pyproject.toml)

        print(f"Optuna dashboard of {mask_uri(url)} on http://{args.host}:{port} (Ctrl-C to stop)", flush=True)
        optuna_dashboard.run_server(url, host=args.host, port=port)  # blocks until Ctrl-C
        return 0
    command = ui_command(args.results_dir, args.mlflow_uri, args.host, args.port or 5000)
    if args.print_command:
        print(" ".join(command[1:]).replace("-m mlflow", "mlflow", 1))
        return 0
    print(f"MLflow UI on http://{args.host}:{command[-1]} (Ctrl-C to stop)", flush=True)
    os.execv(command[0], command)  # replaces this process: Ctrl-C goes straight to mlflow
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
