"""The pruning scheduler's decisions, against real Optuna storage (SQLite), without Ray trials."""

from __future__ import annotations

import pickle

import optuna
import pytest
from optuna.trial import TrialState
from ray.tune.schedulers import TrialScheduler

from study.grid import Plan, Pruner, TrialSpec
from study.stores import optuna_storage
from study.tuning.pruning import CellBook, OptunaPrunerScheduler, build_pruner, register_driver

METRIC = "eval/fd_test_64"


def spec(key: str, cell: str, lr: float) -> TrialSpec:
    return TrialSpec(key, cell, "train", "ddgan", "ns", 1, lr, 0, "base.yaml", (), total_steps=40)


class FakeDriver:
    def __init__(self, book):
        self.book, self.pruned = book, []

    def on_pruned(self, key, step, value):
        self.pruned.append((key, step))


def make_book(tmp_path, pruner: Pruner, specs, study="s"):
    class _Grid:
        metric, mode = METRIC, "min"

    plan = Plan(_Grid(), tmp_path / "g.yaml", list(specs))
    book = CellBook(optuna_storage(f"sqlite:///{tmp_path}/optuna.db"), study, "min", build_pruner(pruner, 10))
    book.ensure(plan)
    driver = FakeDriver(book)
    register_driver(study, driver)
    return book, driver, OptunaPrunerScheduler(study, METRIC)


SPECS = [spec("a-good", "A", 1e-3), spec("a-bad", "A", 1e-7), spec("b-bad", "B", 1e-7)]


def result(step, value=None):
    return {"step": step, "total_steps": 40, **({METRIC: value} if value is not None else {})}


def test_a_worse_trial_is_pruned_within_its_cell_only(tmp_path):
    book, driver, scheduler = make_book(tmp_path, Pruner(kind="median"), SPECS)
    assert scheduler.decide("a-good", result(10, 1.0)) == TrialScheduler.CONTINUE
    assert scheduler.decide("b-bad", result(10, 50.0)) == TrialScheduler.CONTINUE  # alone in cell B
    assert scheduler.decide("a-bad", result(10, 40.0)) == TrialScheduler.STOP
    assert book.frozen("a-bad").state == TrialState.PRUNED
    assert book.frozen("a-bad").user_attrs["pruned_at_step"] == 10
    assert driver.pruned == [("a-bad", 10)]
    assert book.frozen("a-good").state == TrialState.RUNNING
    assert scheduler.decide("b-bad", result(20, 60.0)) == TrialScheduler.CONTINUE


def test_comparison_uses_cell_mates_best_value_up_to_the_step(tmp_path):
    book, driver, scheduler = make_book(tmp_path, Pruner(kind="median"), SPECS)
    assert scheduler.decide("a-bad", result(10, 40.0)) == TrialScheduler.CONTINUE  # nobody to compare with yet
    assert scheduler.decide("a-good", result(10, 1.0)) == TrialScheduler.CONTINUE
    assert scheduler.decide("a-bad", result(20, 39.0)) == TrialScheduler.STOP  # vs a-good at step 10


def test_replayed_steps_are_not_counted_twice(tmp_path):
    book, driver, scheduler = make_book(tmp_path, Pruner(kind="median"), SPECS)
    scheduler.decide("a-good", result(10, 1.0))
    scheduler.decide("a-good", result(20, 0.5))
    # After a restore Ray replays from the step-10 checkpoint: step 20 comes again.
    assert scheduler.decide("a-good", result(20, 0.7)) == TrialScheduler.CONTINUE
    assert book.frozen("a-good").intermediate_values == {10: 1.0, 20: 0.5}


def test_a_trial_pruned_before_a_restart_is_stopped_at_its_first_result(tmp_path):
    book, driver, scheduler = make_book(tmp_path, Pruner(kind="median"), SPECS)
    scheduler.decide("a-good", result(10, 1.0))
    scheduler.decide("a-bad", result(10, 40.0))
    assert scheduler.decide("a-bad", result(0)) == TrialScheduler.STOP  # the start report of the retry


def test_no_pruning_during_warmup_or_at_the_last_step(tmp_path):
    book, driver, scheduler = make_book(tmp_path, Pruner(kind="median", n_warmup_steps=20), SPECS)
    scheduler.decide("a-good", result(10, 1.0))
    assert scheduler.decide("a-bad", result(10, 40.0)) == TrialScheduler.CONTINUE  # warm-up
    scheduler.decide("a-good", result(40, 1.0))
    assert scheduler.decide("a-bad", result(40, 40.0)) == TrialScheduler.CONTINUE  # last step: nothing to save
    assert book.frozen("a-bad").intermediate_values[40] == 40.0


def test_completed_only_median_prunes_nothing_while_all_trials_run(tmp_path):
    """The trap the grids avoid: Optuna's MedianPruner waits for COMPLETE trials."""
    book, driver, scheduler = make_book(tmp_path, Pruner(kind="median", include_running=False), SPECS)
    scheduler.decide("a-good", result(10, 1.0))
    assert scheduler.decide("a-bad", result(10, 40.0)) == TrialScheduler.CONTINUE


def test_successive_halving_prunes_in_parallel(tmp_path):
    book, driver, scheduler = make_book(tmp_path, Pruner(kind="successive_halving", min_resource=10), SPECS)
    assert scheduler.decide("a-good", result(10, 1.0)) == TrialScheduler.CONTINUE
    assert scheduler.decide("a-bad", result(10, 40.0)) == TrialScheduler.STOP


def test_optuna_trials_are_found_again_not_duplicated(tmp_path):
    book, _, _ = make_book(tmp_path, Pruner(), SPECS)
    numbers = {k: r.number for k, r in book.refs.items()}
    again, _, _ = make_book(tmp_path, Pruner(), SPECS)
    assert {k: r.number for k, r in again.refs.items()} == numbers
    storage = optuna_storage(f"sqlite:///{tmp_path}/optuna.db")
    summaries = {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(storage)}
    assert summaries == {"s/A": 2, "s/B": 1}


def test_finish_is_once_and_complete_needs_a_value(tmp_path):
    book, _, _ = make_book(tmp_path, Pruner(), SPECS)
    assert book.finish("a-good", TrialState.COMPLETE, 0.5)
    assert not book.finish("a-good", TrialState.FAIL)
    assert book.frozen("a-good").value == 0.5
    assert book.finish("b-bad", TrialState.COMPLETE, None)
    assert book.frozen("b-bad").state == TrialState.FAIL


def test_scheduler_pickles_without_connections(tmp_path):
    book, driver, scheduler = make_book(tmp_path, Pruner(), SPECS)
    blob = pickle.dumps(scheduler)
    assert b"optuna.db" not in blob
    restored = pickle.loads(blob)
    assert restored.decide("a-good", result(10, 1.0)) == TrialScheduler.CONTINUE


@pytest.mark.parametrize("kind", ["median", "percentile", "successive_halving", "hyperband", "none"])
def test_every_pruner_kind_builds(kind):
    assert isinstance(build_pruner(Pruner(kind=kind), 10), optuna.pruners.BasePruner)


@pytest.mark.parametrize(("kind", "says"), [("none", "no pruning (pruner: none)"), ("median", "Optuna")])
def test_ray_status_line_names_the_pruner_that_acts(tmp_path, kind, says):
    """Before: 'Optuna pruning within each cell' also for a grid with `pruner: none`."""
    _, _, scheduler = make_book(tmp_path, Pruner(kind=kind), SPECS, study=f"status-{kind}")
    line = scheduler.debug_string()
    assert line.startswith(says) and METRIC in line
    assert ("within each cell" in line) == (kind != "none")
