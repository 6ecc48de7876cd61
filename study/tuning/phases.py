"""Ray Tune wiring: the driver's hooks, one Tune experiment per phase.

Ray keeps its state under `<ray storage>/<phase>` ("train", then "sample"). `--resume`
never calls `Tuner.restore`: that unpickles `tuner.pkl` and the cloudpickled trial state
in `experiment_state-*.json`, so whoever can write the storage path (a shared file system,
a copied study folder) would run code in the driver. A resumed phase is a new Tune
experiment over the same trials, built from the project's own state (study/FAULTS.md):
trials whose end Optuna and MLflow hold report it to Ray and stop at once (failed ones
stay failed), the others continue from their newest checkpoint file (`resume_from`,
loaded with `weights_only=True`). The scheduler and callbacks carry only the study name
and look up the live `DriverHooks` of this invocation (see study.tuning.pruning).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import ray
from optuna.trial import TrialState
from ray import tune

from ddgan.errors import UsageError
from study.stores.tracking import Tracker
from study.tuning.pruning import CellBook, OptunaPrunerScheduler, driver_for
from study.tuning.trial import TrialContext, run_trial


class DriverHooks:
    """What the driver does when Ray says a trial was pruned, completed or failed."""

    def __init__(self, book: CellBook, tracker: Tracker, parent_run_id: str, run_ids: dict[str, str],
                 metrics: dict[str, str], totals: dict[str, int]):
        self.book, self.tracker, self.parent_run_id = book, tracker, parent_run_id
        self.run_ids, self.metrics, self.totals = run_ids, metrics, totals  # key -> its scoring metric
        self.events: list[tuple[str, str]] = []

    def on_pruned(self, key: str, step: int, value: float) -> None:
        self.events.append((key, "pruned"))
        self.tracker.mark(self.run_ids[key], "pruned", "KILLED", pruned_at_step=step, pruned_value=value)

    def on_complete(self, key: str, result: dict[str, Any] | None) -> None:
        frozen = self.book.frozen(key)
        if frozen.state.is_finished():
            return
        tags = self.tracker.tags(self.run_ids[key])
        if tags.get("status") == "failed":  # the trial recorded its own failure
            self.book.finish(key, TrialState.FAIL, fail_reason=tags.get("failure_reason", "failed"))
            return
        value = (result or {}).get(self.metrics[key])
        if value is None:
            value = frozen.intermediate_values.get(self.totals[key])
        self.book.finish(key, TrialState.COMPLETE, None if value is None else float(value))
        self.events.append((key, "completed"))

    def reconcile(self, keys: list[str]) -> None:
        """After a phase: give Optuna the final state MLflow holds for any trial it missed
        (e.g. the driver died between Ray finishing a trial and the Optuna update)."""
        for key in keys:
            if self.book.frozen(key).state.is_finished():
                continue
            run = self.tracker.client.get_run(self.run_ids[key])
            status = run.data.tags.get("status")
            if status == "completed":
                self.book.finish(key, TrialState.COMPLETE, run.data.metrics.get(self.metrics[key]))
            elif status == "pruned":
                self.book.finish(key, TrialState.PRUNED, pruned_at_step=int(run.data.tags.get("pruned_at_step", 0)))
            elif status == "failed":
                self.book.finish(key, TrialState.FAIL, fail_reason=run.data.tags.get("failure_reason", "failed"))

    def on_skipped(self, key: str, reason: str) -> None:
        """A trial that cannot run (e.g. its source model was pruned): failed, never started."""
        self.book.finish(key, TrialState.FAIL, fail_reason=reason)
        self.tracker.mark(self.run_ids[key], "failed", "FAILED", failure_reason=reason)
        self.events.append((key, "failed"))

    def on_error(self, key: str, error_file: str | None) -> None:
        tags = self.tracker.tags(self.run_ids[key])
        reason = tags.get("failure_reason") or _last_line(error_file) or "the trial process failed"
        attrs = {"fail_reason": reason}
        if tags.get("failed_step"):
            attrs["failed_step"] = int(tags["failed_step"])
        self.book.finish(key, TrialState.FAIL, **attrs)
        self.tracker.mark(self.run_ids[key], "failed", "FAILED", failure_reason=reason)
        self.events.append((key, "failed"))


def _last_line(path: str | None) -> str | None:
    if not path or not Path(path).is_file():
        return None
    lines = [line.strip() for line in Path(path).read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:500] if lines else None


class StudyCallback(tune.Callback):
    """Forwards Ray's final trial events to the registered `DriverHooks`."""

    def __init__(self, study: str):
        self.study_key = study

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        driver_for(self.study_key).on_complete(trial.config["trial"]["key"], trial.last_result)
        self._progress(trials, force=True)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        driver_for(self.study_key).on_error(trial.config["trial"]["key"], trial.error_file)
        self._progress(trials, force=True)

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        progress = getattr(driver_for(self.study_key), "progress", None)
        if progress is not None:
            progress.on_result(trial.config["trial"]["key"], result.get("step"))

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        self._progress(trials)

    def _progress(self, trials: list, force: bool = False) -> None:
        """The study's one overall progress line (study.progress), when the driver asked for it."""
        progress = getattr(driver_for(self.study_key), "progress", None)
        if progress is not None:
            progress.on_loop([t.config["trial"]["key"] for t in trials if t.status == "RUNNING"], force=force)


def init_ray(address: str | None, num_gpus_needed: float) -> None:
    if ray.is_initialized():
        return
    if address is None:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=True,
                 configure_logging=True, logging_level="WARNING")
    else:
        ray.init(address=address, log_to_driver=True, logging_level="WARNING")
    gpus = ray.cluster_resources().get("GPU", 0)
    if num_gpus_needed > 0 and gpus == 0:
        raise UsageError(f"{num_gpus_needed} GPU(s) per trial requested but the Ray cluster has no GPU")


def trial_name(trial) -> str:
    """Ray's name and directory for a trial: its study key (not run_trial_<hash>_<n>)."""
    return trial.config["trial"]["key"]


def _reporter(metric: str):
    reporter = tune.CLIReporter(
        metric_columns={"step": "step", metric: metric.split("/", 1)[-1]},
        parameter_columns={"trial/cell": "cell"}, max_report_frequency=15, max_progress_rows=40,
        sort_by_metric=False)
    return reporter


def run_phase(phase: str, keys: list[dict[str, str]], context: TrialContext, *, storage: str,
              resources: dict[str, float], max_concurrent: int | None, max_failures: int,
              verbose: int) -> Any:
    """Run the Tune experiment of one phase (resumed: see the module docstring); returns Ray's ResultGrid."""
    trainable = tune.with_resources(tune.with_parameters(run_trial, context=context), resources)
    tuner = tune.Tuner(
        trainable,
        param_space={"trial": tune.grid_search(keys)},
        tune_config=tune.TuneConfig(scheduler=OptunaPrunerScheduler(context.study, context.metric),
                                    max_concurrent_trials=max_concurrent, reuse_actors=True,
                                    trial_name_creator=trial_name, trial_dirname_creator=trial_name),
        run_config=tune.RunConfig(
            name=phase, storage_path=storage, callbacks=[StudyCallback(context.study)],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            failure_config=tune.FailureConfig(max_failures=max_failures),
            progress_reporter=_reporter(context.metric) if verbose else None, verbose=min(verbose, 2),
            log_to_file=True),
    )
    return tuner.fit()
