"""MLflow: one parent run per study, exactly one nested run per trial, across retries and resume.

Ray's `MLflowLoggerCallback` creates a new run on every restore (leaving the old one
RUNNING) and logs every result key as a metric. Instead:

* the driver finds or creates the study's parent run and one nested run per trial,
  keyed by the tag `trial_key`, before any trial starts; params (the flattened
  resolved config) are logged once, when a run is created (MLflow params are
  immutable); the run waits as SCHEDULED;
* a trial reopens its run by id (`TrialRun`), learns which metric steps are already
  logged and skips them, so a retry or a resume from an earlier checkpoint adds no
  duplicate points; it logs its own metrics and artifacts (sample grids, the final
  EMA model, the resolved config), since only the trial sees its files;
* the driver sets the final status of runs whose trial cannot (pruned: Ray stops the
  actor; crashed beyond its retries).

Tags on every trial run: study, trial_key, cell, phase, method, loss, T, lr, seed,
status (pending | running | completed | pruned | failed), ray_trial, ray_node_id,
optuna_trial_number, git_commit, rerun_command; plus pruned_at_step / failure_reason.
Every call goes through `MlflowStore` (retries while SQLite is locked).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag

from ddgan.config import flatten
from study.stores.mlflow_client import MlflowStore

MAX_PARAM_CHARS = 6000


def _tags(values: dict[str, Any]) -> list[RunTag]:
    return [RunTag(k, str(v)) for k, v in values.items() if v is not None]


def _params(config: dict[str, Any]) -> list[Param]:
    return [Param(k, str(v)[:MAX_PARAM_CHARS]) for k, v in sorted(flatten(config).items())]


ENDED = ("completed", "pruned", "failed")  # a trial run's `status` tags that no later invocation changes


def appended(listed: list[str], item: str) -> str:
    """`listed` + `item` as a comma-separated tag value, `item` not repeated at the end."""
    return ",".join(listed if listed[-1:] == [item] else [*listed, item])


def _commits(tags: dict[str, str]) -> list[str]:
    """The commits a run records, oldest first (`git_commits`; before it, `git_commit` alone)."""
    listed = tags.get("git_commits") or tags.get("git_commit") or ""
    return [c for c in listed.split(",") if c]


class Tracker:
    """Driver-side MLflow access: experiment, parent run, trial runs, final statuses."""

    def __init__(self, uri: str, artifact_root: str | None = None):
        self.uri, self.artifact_root = uri, artifact_root
        self.client = MlflowStore(uri)

    def experiment(self, study: str) -> str:
        found = self.client.get_experiment_by_name(study)
        if found is not None:
            return found.experiment_id
        location = f"{self.artifact_root}/{study}" if self.artifact_root else None
        return self.client.create_experiment(study, artifact_location=location)

    def parent_run(self, experiment_id: str, study: str, tags: dict[str, Any]) -> str:
        found = self.client.search_all([experiment_id], "tags.role = 'study'")
        commit = tags.get("git_commit")
        if found:
            run_id = found[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            if commit:  # every invocation's commit, oldest first: a resumed study may span several
                tags = {**tags, "git_commits": appended(_commits(found[0].data.tags), str(commit))}
            self.client.log_batch(run_id, tags=_tags(tags))
            return run_id
        if commit:
            tags = {**tags, "git_commits": str(commit)}
        run = self.client.create_run(experiment_id, run_name=study,
                                     tags={"role": "study", "study": study, **{k: str(v) for k, v in tags.items()}})
        return run.info.run_id

    def trial_runs(self, experiment_id: str, parent_id: str, trials: Iterable[tuple[str, dict, dict]]) -> dict[str, str]:
        """Find or create one nested run per (key, tags, resolved config); returns key -> run id."""
        existing: dict[str, Any] = {}
        for run in self.client.search_all([experiment_id], "tags.role = 'trial'"):
            existing.setdefault(run.data.tags.get("trial_key"), run)  # oldest wins
        out = {}
        for key, tags, config in trials:
            found = existing.get(key)
            run_id = found.info.run_id if found is not None else None
            if run_id is None:
                run = self.client.create_run(experiment_id, run_name=key, tags={
                    "mlflow.parentRunId": parent_id, "role": "trial", "trial_key": key, "status": "pending",
                    **{k: str(v) for k, v in tags.items() if v is not None}})
                run_id = run.info.run_id
                params = _params(config)
                for i in range(0, len(params), 100):
                    self.client.log_batch(run_id, params=params[i:i + 100])
                self.client.update_run(run_id, status="SCHEDULED")
            elif found.data.tags.get("status") not in ENDED:  # an ended trial keeps the commit it ran at
                kept = {k: v for k, v in tags.items() if k in ("git_commit", "rerun_command")}
                if tags.get("git_commit") and found.data.tags.get("status") != "pending":
                    # a trial that had started and is continued by --resume ran at each of these
                    kept["git_commits"] = appended(_commits(found.data.tags), str(tags["git_commit"]))
                self.client.log_batch(run_id, tags=_tags(kept))
            out[key] = run_id
        return out

    def mark(self, run_id: str, status: str, run_status: str | None = None, **tags: Any) -> None:
        """Set `status` (+ tags) and, if given, end the run with `run_status` (FINISHED/FAILED/KILLED)."""
        self.client.log_batch(run_id, tags=_tags({"status": status, **tags}))
        if run_status is not None:
            self.client.set_terminated(run_id, status=run_status)

    def tags(self, run_id: str) -> dict[str, str]:
        return dict(self.client.get_run(run_id).data.tags)

    def finish_parent(self, run_id: str, counts: dict[str, int], extra: dict[str, Any] | None = None,
                      status: str = "FINISHED") -> None:
        """status: FINISHED, or KILLED for an interrupted run (`--resume` sets it RUNNING again)."""
        tags = {**{f"trials_{k}": v for k, v in counts.items()}, **(extra or {})}
        self.client.log_batch(run_id, tags=_tags(tags))
        self.client.set_terminated(run_id, status=status)


class TrialRun:
    """Trial-side MLflow access to the trial's own run (reopened by id on every attempt)."""

    def __init__(self, uri: str, run_id: str):
        self.client = MlflowStore(uri)
        self.run_id = run_id
        self.logged: dict[str, set[int]] = {}

    def open(self, **tags: Any) -> dict[str, str]:
        """Mark the run RUNNING, set tags, learn the logged steps; returns the run's previous tags."""
        run = self.client.get_run(self.run_id)
        previous = dict(run.data.tags)
        for key in run.data.metrics:
            history = self.client.get_metric_history(self.run_id, key)
            self.logged[key] = {m.step for m in history}
        attempt = int(previous.get("attempts", "0")) + 1
        # When the trial first started: MLflow's start_time is the run's creation by the driver,
        # before the trial waited in Ray's queue (the report's wall_min counts from this tag).
        started = previous.get("started_ms") or str(int(time.time() * 1000))
        self.client.update_run(self.run_id, status="RUNNING")
        self.client.log_batch(self.run_id, tags=_tags({"status": "running", "attempts": attempt,
                                                       "started_ms": started, **tags}))
        return previous

    def log_metrics(self, step: int, metrics: dict[str, float]) -> int:
        """Log the metrics not yet logged at `step`; returns how many were new."""
        now = int(time.time() * 1000)
        new = [Metric(k, float(v), now, step) for k, v in metrics.items() if step not in self.logged.get(k, set())]
        for i in range(0, len(new), 200):
            self.client.log_batch(self.run_id, metrics=new[i:i + 200])
        for m in new:
            self.logged.setdefault(m.key, set()).add(step)
        return len(new)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def download(self, run_id: str, artifact_path: str, dst: str | Path) -> Path:
        Path(dst).mkdir(parents=True, exist_ok=True)
        return Path(self.client.download_artifacts(run_id, artifact_path, str(dst)))

    def set_tags(self, **tags: Any) -> None:
        self.client.log_batch(self.run_id, tags=_tags(tags))

    def finish(self, status: str, run_status: str, **tags: Any) -> None:
        self.client.log_batch(self.run_id, tags=_tags({"status": status, **tags}))
        self.client.set_terminated(self.run_id, status=run_status)
