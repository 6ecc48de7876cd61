"""The study's argument types (the flag classes of ddgan/cli.py): the grid, and the stores.

`GridRef` (class "name"): --grid, a grid name in configs/grids or a YAML file that exists.

Stores (class "store"): while the command line is parsed, each type checks its URI's syntax (`study.stores.uris`); once
it parsed, `after_parse` reaches the store with a bounded timeout (`study.stores.connect`), so
a server that does not answer is one line naming the flag and the masked URI within seconds,
on every command that takes it, before the command writes anything:

  MlflowUri      --mlflow-uri      sqlite file (not a directory) or a server that answers a search
  OptunaStorage  --optuna-storage  sqlite/journal file in a writable directory, or a database's SELECT 1
  RayAddress     --address         auto ($RAY_ADDRESS or the cluster `ray start` recorded), host:port,
                                   ray://host:port: one TCP connect
  StoragePath    --storage-path    a writable directory (class "path-out") or s3://, gs://, ...

`add_store_args` adds --state-dir and --mlflow-uri to the commands that read a finished study.
"""

from __future__ import annotations

import argparse
import re

from ddgan.cli import InputPath, OutputDir
from ddgan.errors import UsageError
from study.grid import find_grid
from study.stores import connect
from study.stores.uris import (
    DEFAULT_STATE_DIR,
    normalize_mlflow_uri,
    normalize_optuna_url,
    normalize_storage_path,
)

ADDRESS = re.compile(r"auto|(ray://)?[\w.-]+:\d{1,5}")


class GridRef:
    """--grid of every command that takes one: a grid name or a YAML file that exists."""

    flag_class = "name"
    example = "smoke"

    def __call__(self, text: str) -> str:
        try:
            find_grid(text)
        except UsageError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
        return text


class _Store:
    flag_class = "store"
    store = ""

    def __call__(self, text: str) -> str:
        try:
            self.normalize(text)
        except UsageError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
        return text  # the command normalizes it again where it resolves its stores

    def normalize(self, text: str) -> str:
        return text


class MlflowUri(_Store):
    store = "mlflow"

    def normalize(self, text: str) -> str:
        return normalize_mlflow_uri(text)

    def after_parse(self, value: str) -> None:
        connect.probe_mlflow(normalize_mlflow_uri(value))


class OptunaStorage(_Store):
    store = "optuna"

    def normalize(self, text: str) -> str:
        return normalize_optuna_url(text)

    def after_parse(self, value: str) -> None:
        connect.probe_optuna(normalize_optuna_url(value))


class RayAddress(_Store):
    store = "ray"

    def normalize(self, text: str) -> str:
        if not ADDRESS.fullmatch(text):
            raise UsageError(f"malformed --address {text!r}: use auto, host:port or ray://host:port")
        return text

    def after_parse(self, value: str) -> None:
        connect.probe_ray(value)


class StoragePath(OutputDir):
    """--storage-path: Ray's storage, a local directory (checked as an output directory) or a remote URI."""

    def __init__(self):
        super().__init__(remote=True)

    def __call__(self, text: str) -> str:
        if "://" in text:
            try:
                normalize_storage_path(text)
            except UsageError as err:
                raise argparse.ArgumentTypeError(str(err)) from None
            return text
        return super().__call__(text)


def add_store_args(parser) -> None:
    """--state-dir (alias --results-dir) and --mlflow-uri: where a finished study's stores are."""
    parser.add_argument("--state-dir", "--results-dir", dest="results_dir", default=DEFAULT_STATE_DIR,
                        type=InputPath("dir", missing_ok=True),
                        help=f"where study.run kept the run's state (default: {DEFAULT_STATE_DIR})")
    parser.add_argument("--mlflow-uri", default=None, type=MlflowUri(),
                        help="MLflow tracking URI (default: sqlite:///<state-dir>/mlflow.db)")
