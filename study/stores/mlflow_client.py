"""The one way the study reaches MLflow: `MlflowStore`, public `MlflowClient` calls that retry.

SQLite allows one writer at a time, so every client call made through a store retries
with jittered backoff while the database reports a lock (8 trials at once lose no
point). Besides the client's own methods (delegated, each one retried) a store

* pages through runs (`search_all`) and turns them into the frame the report reads
  (`runs_frame`: run_id, status, tags.*, params.*, metrics.*), so nothing needs MLflow's
  fluent API and its process-wide tracking URI and active experiment;
* probes a tracking server (`probe`): one authenticated request with a short timeout and
  no retries, so an unreachable server or refused credentials fail within seconds.

URIs with credentials are shown masked, and MLflow's own "View run ... at <URI>" lines
are switched off for them (`quiet_run_urls`).
"""

from __future__ import annotations

import functools
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import pandas as pd
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ddgan.errors import UsageError
from study.stores.uris import mask_uri

T = TypeVar("T")
_RETRIES = 12
_LOCKED = ("locked", "busy", "could not serialize")


def with_retry(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call `fn`, retrying with jittered backoff while SQLite reports a lock."""
    for attempt in range(_RETRIES):
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # MlflowException wraps sqlalchemy's OperationalError
            if attempt == _RETRIES - 1 or not any(s in str(err).lower() for s in _LOCKED):
                raise
            time.sleep(min(0.05 * 2**attempt, 2.0) * (0.5 + random.random()))
    raise AssertionError("unreachable")


def quiet_run_urls(uri: str) -> None:
    """MLflow prints "View run ... at: <tracking URI>" when a run ends, password included:
    turn that off for a URI with credentials (the study prints its own, masked)."""
    if mask_uri(uri) != uri:
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"


def quiet_downloads() -> None:
    """No tqdm bars from MLflow artifact downloads in the study's output."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


class MlflowStore:
    """An `MlflowClient` on one tracking URI whose every method retries on a locked database."""

    def __init__(self, uri: str):
        self.uri = uri
        quiet_run_urls(uri)
        self.client = MlflowClient(tracking_uri=uri)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.client, name)
        return functools.partial(with_retry, attr) if callable(attr) else attr

    def search_all(self, experiment_ids: Sequence[str], filter_string: str = "") -> list[Run]:
        """Every run that matches, oldest first (all pages)."""
        runs, token = [], None
        while True:
            page = self.search_runs(list(experiment_ids), filter_string, max_results=1000, page_token=token,
                                    order_by=["attributes.start_time ASC"])
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def runs_frame(self, experiment_id: str, filter_string: str) -> pd.DataFrame:
        """One row per matching run: run_id, status, start_time, end_time (ms since the epoch, None
        while running), then tags.*, params.*, metrics.* columns."""
        rows = []
        for run in self.search_all([experiment_id], filter_string):
            row: dict[str, Any] = {"run_id": run.info.run_id, "status": run.info.status,
                                   "start_time": run.info.start_time, "end_time": run.info.end_time}
            for prefix, values in (("metrics", run.data.metrics), ("params", run.data.params),
                                   ("tags", run.data.tags)):
                row.update({f"{prefix}.{k}": v for k, v in values.items()})
            rows.append(row)
        return pd.DataFrame(rows)

    def probe(self, what: str, timeout: float) -> None:
        """One search with the client's credentials (URL user:password, $MLFLOW_TRACKING_USERNAME/
        PASSWORD or $MLFLOW_TRACKING_TOKEN), no retries: a UsageError with the masked URI if it fails.
        (`/health` is open even on servers with auth, so it would not catch bad credentials.)"""
        try:
            with _http_limits(timeout):
                self.client.search_experiments(max_results=1)
        except MlflowException as err:
            text = str(err)
            code = next((c for c in (401, 403, 404) if f"error code {c}" in text), None)
            if code in (401, 403):
                raise UsageError(f"{what} {mask_uri(self.uri)} refused the credentials (HTTP {code})") from None
            if code == 404:
                raise UsageError(f"{what} {mask_uri(self.uri)} answered HTTP 404 "
                                 "(not an MLflow tracking server?)") from None
            reason = text.rpartition("failed with exception ")[2] or text
            raise UsageError(f"{what} {mask_uri(self.uri)} is unreachable ({mask_uri(reason)[:300]})") from None


@contextmanager
def _http_limits(timeout: float) -> Iterator[None]:
    """MLflow's documented environment variables for its HTTP client, set for one call."""
    wanted = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, int(timeout)))}
    saved = {name: os.environ.get(name) for name in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
