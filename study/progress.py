"""One overall progress line while a study runs: trials done / running / pending, training
steps done of the total, elapsed time and an ETA.

Ray's own table counts per phase ("2/5", then "2/2") and shows a trial's step only at its
evaluations; this line counts the whole study (both phases, earlier invocations included:
finished trials come from Optuna) and a running trial's step from its per-log-step report.
The ETA is the cost model's remaining trial time (study.cost) over the slots that run at
once, scaled by how fast this invocation has actually gone against the same model.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from optuna.trial import TrialState

from study.cost import Figures, duration, trial_cost
from study.grid import Plan

INTERVAL_S = 30.0  # at most one line per interval, plus one whenever a trial finishes


class Progress:
    """Fed by the driver's Ray callback (`on_result`, `on_loop`); prints with `emit`."""

    def __init__(self, plan: Plan, book, figures: Figures, slots: int, emit: Callable[[str], None] = print):
        self.plan, self.book, self.slots, self.emit = plan, book, max(1, slots), emit
        self.cost = {s.key: trial_cost(s, plan.configs[s.key], plan, figures).full_s for s in plan.trials}
        self.totals = {s.key: s.total_steps for s in plan.trials if s.phase == "train"}
        self.steps: dict[str, int] = {}
        self.start = time.monotonic()
        self.done_work_at_start: float | None = None
        self.last_line = 0.0

    def on_result(self, key: str, step: int | None) -> None:
        if step is not None and key in self.totals:
            self.steps[key] = max(self.steps.get(key, 0), int(step))

    def _finished(self, key: str) -> tuple[bool, int | None]:
        """(finished?, the step it stopped at if it ended early)."""
        frozen = self.book.frozen(key)
        if not frozen.state.is_finished():
            return False, None
        if frozen.state == TrialState.COMPLETE:
            return True, None
        stopped = frozen.user_attrs.get("pruned_at_step") or frozen.user_attrs.get("failed_step")
        return True, int(stopped) if stopped is not None else self.steps.get(key, 0)

    def snapshot(self, running_keys: list[str]) -> dict[str, float]:
        running = sum(not self._finished(key)[0] for key in set(running_keys))  # Ray may lag behind Optuna
        done, steps_done, steps_total, work_done, work_left = 0, 0, 0, 0.0, 0.0
        for spec in self.plan.trials:
            finished, stopped = self._finished(spec.key)
            total = self.totals.get(spec.key)
            if finished:
                done += 1
                work_done += self.cost[spec.key]
                if total is not None:
                    steps_done += stopped if stopped is not None else total
                    steps_total += stopped if stopped is not None else total
                continue
            fraction = self.steps.get(spec.key, 0) / total if total else 0.0
            work_done += fraction * self.cost[spec.key]
            work_left += (1 - fraction) * self.cost[spec.key]
            if total is not None:
                steps_done += self.steps.get(spec.key, 0)
                steps_total += total
        return {"done": done, "running": running, "pending": len(self.plan.trials) - done - running,
                "steps_done": steps_done, "steps_total": steps_total, "work_done": work_done, "work_left": work_left}

    def line(self, running_keys: list[str]) -> str:
        snap = self.snapshot(running_keys)
        if self.done_work_at_start is None:
            self.done_work_at_start = snap["work_done"]
        elapsed = time.monotonic() - self.start
        predicted = (snap["work_done"] - self.done_work_at_start) / self.slots
        speed = elapsed / predicted if predicted > 30 else 1.0  # this invocation against the cost model
        eta = snap["work_left"] / self.slots * speed
        share = snap["steps_done"] / snap["steps_total"] if snap["steps_total"] else 1.0
        return (f"progress: {snap['done']} done, {snap['running']} running, {snap['pending']} pending "
                f"of {len(self.plan.trials)} trials; {snap['steps_done']:,} of {snap['steps_total']:,} training steps "
                f"({share:.0%}); {duration(elapsed)} elapsed, ETA ~{duration(eta)}")

    def on_loop(self, running_keys: list[str], force: bool = False) -> None:
        """Print the line every INTERVAL_S seconds, or now (`force`: a trial just finished)."""
        now = time.monotonic()
        if force or now - self.last_line >= INTERVAL_S:
            self.last_line = now
            self.emit(self.line(running_keys))
