"""What a running study prints besides Ray's table: one overall progress line, an end-of-run
summary with the study's own time and the next commands, and no traceback from a worker that
Ray ends (`quiet_exit_hook`)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
from optuna.trial import TrialState

from study.cost import Figures
from study.grid import load_plan
from study.progress import Progress
from study.stores import history, resolve_stores
from study.summary import next_commands

REPO = Path(__file__).resolve().parents[1]


class Book:
    """CellBook's `frozen(key)` over a dict of states (the progress line only reads them)."""

    def __init__(self, states: dict[str, tuple[TrialState, dict]]):
        self.states = states

    def frozen(self, key):
        state, attrs = self.states.get(key, (TrialState.RUNNING, {}))
        return SimpleNamespace(state=state, user_attrs=attrs)


ONE_S_PER_STEP = Figures(name="t", source="t", batch=16, train_step_s={"tiny": {"ddgan": 1.0, "ddpm": 1.0}},
                         nfe_ms_per_image={"tiny": {"ddgan": 0.0, "ddpm": 0.0}}, eval_overhead_s=0.0,
                         trial_startup_s=0.0, study_startup_s=0.0, inception_ms_per_image=0.0)


def test_progress_line_counts_the_whole_study():
    """test_pruning: 3 trials of 40 steps. One completed, one pruned at step 10 (its 30 other steps
    leave the total), one running at step 20: 10 + 40 + 20 = 70 done of 10 + 40 + 40 = 90."""
    plan = load_plan("test_pruning")
    keys = [s.key for s in plan.trials]
    book = Book({keys[0]: (TrialState.COMPLETE, {}), keys[1]: (TrialState.PRUNED, {"pruned_at_step": 10})})
    lines: list[str] = []
    progress = Progress(plan, book, ONE_S_PER_STEP, slots=2, emit=lines.append)
    progress.on_result(keys[2], 20)
    progress.on_result(keys[2], 10)  # an older result never moves it back
    progress.on_loop([keys[2], keys[0]], force=True)  # Ray may still call a finished trial RUNNING
    assert lines[0].startswith("progress: 2 done, 1 running, 0 pending of 3 trials; 70 of 90 training steps (78%)")
    assert "ETA ~10 s" in lines[0]  # 20 steps left at 1 s, one trial running: the cost model's 20 s over 2 slots
    progress.on_loop([keys[2]])  # within the interval: nothing
    assert len(lines) == 1


def test_history_counts_every_invocation(tmp_path):
    path = tmp_path / "history.json"
    first = history.start(path, "python -m study.run --grid smoke")
    history.finish(path, first, 120.0)
    history.start(path, "python -m study.run --grid smoke --resume")  # killed: no end
    third = history.start(path, "python -m study.run --grid smoke --resume")
    runs = history.finish(path, third, 6.0)
    text = history.describe(runs, 6.0)
    assert text.startswith("2.1 min over 3 invocations since ") and "(this one 0.1 min; 1 interrupted, not counted)" in text
    assert history.describe([], 54.0) == "0.9 min"


def test_next_commands_find_this_study(tmp_path):
    default = resolve_stores("smoke")
    commands = [c for c, _ in next_commands(default)]
    assert commands[0] == "python -m study.report --study smoke"
    assert "python -m study.export --study smoke --top-k 1 --per loss --out exports/" in commands
    assert "python -m study.ui" in commands and "python -m study.ui --optuna --study smoke" in commands
    elsewhere = [c for c, _ in next_commands(resolve_stores("s", tmp_path))]
    assert all(f"--state-dir {tmp_path.resolve()}" in c for c in elsewhere)
    server = [c for c, _ in next_commands(resolve_stores("s", tmp_path, mlflow_uri="http://u:pw@mlflow:5000"))]
    assert all("--mlflow-uri 'http://u:***@mlflow:5000'" in c for c in server[:2]) and "pw" not in " ".join(server)


HOOKED = textwrap.dedent("""
    import os, signal, sys, weakref
    HOOK
    def on_term(signum, frame):  # what a Ray worker's SIGTERM handler does
        raise SystemExit(1)
    signal.signal(signal.SIGTERM, on_term)
    class Obj: pass
    def callback(ref):  # a garbage-collection callback, like WeakSet's _remove
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000): pass  # the handler runs here, inside the callback
    obj = Obj(); ref = weakref.ref(obj, callback); del obj
    def boom(ref): raise ValueError("a real error in a callback")
    obj2 = Obj(); ref2 = weakref.ref(obj2, boom); del obj2
    print("survived")
""")


@pytest.mark.parametrize("hooked", [False, True])
def test_sigterm_in_a_gc_callback_prints_no_traceback_with_the_hook(hooked):
    hook = "from study.tuning.trial import quiet_exit_hook; sys.unraisablehook = quiet_exit_hook" if hooked else ""
    done = subprocess.run([sys.executable, "-c", HOOKED.replace("HOOK", hook)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert "survived" in done.stdout
    assert ("SystemExit: 1" in done.stderr) is not hooked, done.stderr
    assert "ValueError: a real error in a callback" in done.stderr  # other unraisable errors still show
