"""Optuna decides, within a cell: a Ray Tune scheduler that asks one Optuna pruner per (loss, T).

Ray's `OptunaSearch` runs its study with a no-op pruner, so pruning is not free:
`OptunaPrunerScheduler` (a Tune `TrialScheduler`) hands each trial's intermediate
metric to the Optuna pruner of the trial's cell and stops the trial when it says so.
Trials are compared only with trials of the same cell (learning rates x seeds): a T=1
trial is never pruned because T=8 trials have lower FID, since the study exists to
measure every cell. `CellBook` keeps one Optuna study per cell, named
`<study>/<cell>`, in the configured storage; only the driver writes it.

Resume. A resumed phase builds a new scheduler (Ray's pickled state is never read back,
see study.tuning.phases), so the scheduler holds no state of its own: every report goes to Optuna storage at once
and the decision is read back from there. A step already in the Optuna trial's
intermediate values is a replay (Ray restarted the trial from an earlier checkpoint
after a crash or a driver restart): it is neither reported nor counted again.

Pruners in a parallel grid. Optuna's MedianPruner/PercentilePruner compare only with
COMPLETE trials, so in a grid that starts every trial of a cell at once they prune
nothing until those finish. The grids therefore default to `median` with
`include_running: true` (`CellPercentilePruner` below): a trial is compared with every
other trial of its cell that has reported, running or finished, using each one's best
value up to the same step. Comparing with others at an earlier step can only favour the
trial being judged, so this is a conservative rule. `successive_halving` also prunes in
parallel (it compares at rungs, whoever got there first); `hyperband` splits a cell
into brackets and needs many trials per cell; `none` only records.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
from optuna.pruners import BasePruner
from optuna.trial import FrozenTrial, TrialState
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from study.grid import Plan, Pruner, TrialSpec

optuna.logging.set_verbosity(optuna.logging.WARNING)


class CellPercentilePruner(BasePruner):
    """Prune when this trial's best value is worse than the given percentile of the other
    trials of the cell (running, complete or pruned), each taken at its best up to this step."""

    def __init__(self, percentile: float = 50.0, n_warmup_steps: int = 0, n_min_trials: int = 1):
        self.percentile, self.n_warmup_steps, self.n_min_trials = percentile, n_warmup_steps, n_min_trials

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or step < self.n_warmup_steps:
            return False
        minimize = study.direction == optuna.study.StudyDirection.MINIMIZE
        own = [v for v in trial.intermediate_values.values() if not math.isnan(v)]
        if not own:
            return True  # only NaN so far
        best = min(own) if minimize else max(own)
        states = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.PRUNED)
        others = [_best_up_to(t, step, minimize) for t in study.get_trials(deepcopy=False, states=states)
                  if t.number != trial.number]
        others = [v for v in others if v is not None]
        if len(others) < self.n_min_trials:
            return False
        threshold = float(np.percentile(others, self.percentile if minimize else 100 - self.percentile))
        return best > threshold if minimize else best < threshold


def _best_up_to(trial: FrozenTrial, step: int, minimize: bool) -> float | None:
    values = [v for s, v in trial.intermediate_values.items() if s <= step and not math.isnan(v)]
    if not values:
        return None
    return min(values) if minimize else max(values)


def build_pruner(spec: Pruner, first_eval: int) -> BasePruner:
    """The Optuna pruner a grid's `pruner:` section asks for (`first_eval`: the first evaluation step)."""
    if spec.kind in ("median", "percentile"):
        percentile = 50.0 if spec.kind == "median" else spec.percentile
        if spec.include_running:
            return CellPercentilePruner(percentile, spec.n_warmup_steps, max(spec.n_min_trials, spec.n_startup_trials))
        return optuna.pruners.PercentilePruner(percentile, n_startup_trials=spec.n_startup_trials,
                                               n_warmup_steps=spec.n_warmup_steps, n_min_trials=spec.n_min_trials)
    if spec.kind == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=spec.min_resource or first_eval, reduction_factor=spec.reduction_factor,
            min_early_stopping_rate=spec.min_early_stopping_rate)
    if spec.kind == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=spec.min_resource or first_eval, max_resource=spec.max_resource or "auto",
            reduction_factor=spec.reduction_factor)
    return optuna.pruners.NopPruner()


# -- the Optuna side: one study per cell, one trial per study trial --------------------------


@dataclass(frozen=True)
class OptunaTrialRef:
    cell: str
    study_name: str
    trial_id: int  # the storage's id (`BaseStorage.get_trial`), unique across studies
    number: int  # within its cell's study


class CellBook:
    """The driver's Optuna bookkeeping: find-or-create one Optuna trial per study trial (by key).

    Only public Optuna APIs: `create_study`, `Study.ask/tell/get_trials` and the storage's
    interface (`BaseStorage.get_trial`, `set_trial_intermediate_value`, ...); the pruner is
    asked through `BasePruner.prune(study, trial)`, as `Trial.should_prune` would.
    """

    def __init__(self, storage: optuna.storages.BaseStorage, study: str, mode: str, pruner: BasePruner):
        self.storage, self.study, self.pruner = storage, study, pruner
        self.direction = "minimize" if mode == "min" else "maximize"
        self.refs: dict[str, OptunaTrialRef] = {}
        self._studies: dict[str, optuna.Study] = {}

    def study_name(self, cell: str) -> str:
        return f"{self.study}/{cell}"

    def optuna_study(self, cell: str) -> optuna.Study:
        if cell not in self._studies:
            self._studies[cell] = optuna.create_study(
                storage=self.storage, study_name=self.study_name(cell), direction=self.direction,
                pruner=self.pruner, load_if_exists=True)
        return self._studies[cell]

    def ensure(self, plan: Plan) -> dict[str, OptunaTrialRef]:
        """Create the cell studies and one trial per spec; existing ones (resume) are reused."""
        for cell, specs in plan.cells().items():
            study = self.optuna_study(cell)
            study.set_user_attr("metric", plan.grid.metric)
            study_id = self.storage.get_study_id_from_name(study.study_name)
            existing = {t.user_attrs.get("trial_key"): t.number for t in study.get_trials(deepcopy=False)}
            for spec in specs:
                number = existing.get(spec.key)
                if number is None:
                    number = self._create(study, spec)
                trial_id = self.storage.get_trial_id_from_study_id_trial_number(study_id, number)
                self.refs[spec.key] = OptunaTrialRef(cell, study.study_name, trial_id, number)
        return self.refs

    @staticmethod
    def _create(study: optuna.Study, spec: TrialSpec) -> int:
        # Fixed one-point distributions: the grid, not a sampler, chooses the values.
        dists = {"lr": optuna.distributions.FloatDistribution(spec.lr, spec.lr),
                 "seed": optuna.distributions.IntDistribution(spec.seed, spec.seed)}
        trial = study.ask(dists)
        for name, value in (("trial_key", spec.key), ("cell", spec.cell), ("phase", spec.phase),
                            ("total_steps", spec.total_steps)):
            trial.set_user_attr(name, value)
        return trial.number

    def frozen(self, key: str) -> FrozenTrial:
        return self.storage.get_trial(self.refs[key].trial_id)

    def report(self, key: str, step: int, value: float) -> bool | None:
        """Report `value` at `step`; True: prune. None: a replayed step or a finished trial (ignored)."""
        frozen = self.frozen(key)
        if frozen.state.is_finished() or step in frozen.intermediate_values:
            return None
        self.storage.set_trial_intermediate_value(self.refs[key].trial_id, step, value)
        return self.pruner.prune(self.optuna_study(self.refs[key].cell), self.frozen(key))

    def finish(self, key: str, state: TrialState, value: float | None = None, **attrs: Any) -> bool:
        """Move the trial to a final state once; False when it already was final."""
        ref = self.refs[key]
        if self.frozen(key).state.is_finished():
            return False
        for name, attr in attrs.items():
            self.storage.set_trial_user_attr(ref.trial_id, name, attr)
        study = self.optuna_study(ref.cell)
        if state == TrialState.COMPLETE and (value is None or not math.isfinite(value)):
            state = TrialState.FAIL
            self.storage.set_trial_user_attr(ref.trial_id, "fail_reason", "no final metric value")
        study.tell(ref.number, value if state == TrialState.COMPLETE else None, state=state)
        return True


# -- the Ray side ---------------------------------------------------------------------------------

# The driver's live objects by study name. Ray pickles the scheduler into its tuner.pkl, so it
# carries only the study name and finds the current invocation's bookkeeping here (no
# connections or secrets in the pickle, which the project never unpickles).
_DRIVERS: dict[str, Any] = {}


def register_driver(study: str, driver: Any) -> None:
    _DRIVERS[study] = driver


def driver_for(study: str) -> Any:
    if study not in _DRIVERS:
        raise RuntimeError(f"no driver registered for study {study!r} (run it through study.run)")
    return _DRIVERS[study]


class OptunaPrunerScheduler(FIFOScheduler):
    """FIFO scheduling; on each result carrying the metric, ask the cell's Optuna pruner.

    The driver object (see `register_driver`) provides `book: CellBook` and
    `on_pruned(key, step, value)` (MLflow status); trials' configs hold `{"trial": {"key", ...}}`.
    """

    _supports_buffered_results = False

    def __init__(self, study: str, metric: str):
        super().__init__()
        # Not `self._metric`: Tune would then insist that every result (also the first,
        # metric-less one) carries the metric.
        self.study_key, self.watch_metric = study, metric

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return True

    def decide(self, key: str, result: dict[str, Any]) -> str:
        """CONTINUE or STOP for one result of trial `key` (the logic, without Ray)."""
        driver = driver_for(self.study_key)
        frozen = driver.book.frozen(key)
        if frozen.state == TrialState.PRUNED:  # pruned before a driver restart: stop the replay
            return TrialScheduler.STOP
        value, step = result.get(self.watch_metric), result.get("step")
        if value is None or step is None or not math.isfinite(float(value)):
            return TrialScheduler.CONTINUE
        total = result.get("total_steps")
        if total is not None and step >= total:  # the last evaluation: nothing left to save
            driver.book.report(key, int(step), float(value))
            return TrialScheduler.CONTINUE
        if driver.book.report(key, int(step), float(value)):
            driver.book.finish(key, TrialState.PRUNED, pruned_at_step=int(step))
            driver.on_pruned(key, int(step), float(value))
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        return self.decide(trial.config["trial"]["key"], result)

    def debug_string(self) -> str:
        """Ray's status line: which pruner acts (none, for a grid with `pruner: none`)."""
        try:
            pruner = driver_for(self.study_key).book.pruner
        except Exception:  # no live driver (e.g. Ray printing after the study ended)
            return f"cells scored on {self.watch_metric}"
        if isinstance(pruner, optuna.pruners.NopPruner):
            return f"no pruning (pruner: none); Optuna records each cell on {self.watch_metric}"
        return f"Optuna {type(pruner).__name__} within each cell on {self.watch_metric}"
