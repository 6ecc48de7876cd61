"""CLI: `python -m study.ui [--results-dir results] [--port 5000]` opens MLflow's UI on the study store.

It runs `mlflow ui` with the embedded backend store (`sqlite:///<results>/mlflow.db`,
an absolute path) bound to 127.0.0.1, so the UI is not exposed to the network unless
you pass `--host` yourself. Equivalent command:

    mlflow ui --backend-store-uri sqlite:///$PWD/results/mlflow.db --host 127.0.0.1 --port 5000
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ddgan.cli import run_cli
from ddgan.errors import UsageError
from study.stores import mask_uri, normalize_mlflow_uri


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m study.ui", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results-dir", default="results", help="where study.run kept its stores (default: results)")
    p.add_argument("--mlflow-uri", default=None, help="another backend store (default: <results-dir>/mlflow.db)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--print-command", action="store_true", help="print the mlflow command instead of running it")
    return p.parse_args(argv)


def ui_command(results_dir: str | Path, mlflow_uri: str | None, host: str, port: int) -> list[str]:
    """The `mlflow ui` command line for the study's backend store (checked to exist)."""
    if mlflow_uri is None:
        db = Path(results_dir).expanduser().resolve() / "mlflow.db"
        if not db.is_file():
            raise UsageError(f"no MLflow store at {str(db)!r}: run `python -m study.run` first or pass --results-dir")
        uri = f"sqlite:///{db}"
        artifacts = ["--default-artifact-root", (db.parent / "mlartifacts").as_uri()]
    else:
        uri, artifacts = normalize_mlflow_uri(mlflow_uri), []
        if not uri.startswith("sqlite:"):
            raise UsageError(f"{mask_uri(uri)} is a server already: open it in a browser")
    if not 0 < port < 65536:
        raise UsageError(f"--port must be in 1..65535, got {port}")
    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, *artifacts,
            "--host", host, "--port", str(port)]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    command = ui_command(args.results_dir, args.mlflow_uri, args.host, args.port)
    if args.print_command:
        print(" ".join(command[1:]).replace("-m mlflow", "mlflow", 1))
        return 0
    print(f"MLflow UI on http://{args.host}:{args.port} (Ctrl-C to stop)", flush=True)
    os.execv(command[0], command)  # replaces this process: Ctrl-C goes straight to mlflow
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
