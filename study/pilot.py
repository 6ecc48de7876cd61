"""The learning-rate pilot: one rate per method, chosen once, from trials the report never sees.

A grid with a `pilot:` section runs in two studies. First `<study>-pilot` (`study.grid.pilot_grid`):
every candidate rate of `ddgan.lr` / `ddpm.lr` x the pilot's T x the pilot's own seeds, on the
pilot's budget, with the pilot's pruner. Then `choose_lr` picks one rate per method group
(`ddgan-<loss>` for each objective, `ddpm`) and the study itself runs every reported cell at that
rate on the grid's seeds, with no pruner. The reported numbers therefore come from seeds that took
no part in the choice, so picking the best rate does not bias them (no winner's curse), and no
reported trial is stopped early.

The rule (`choose_lr`): first the rates whose pilot trials all completed (a trial the pruner
stopped, or that failed, lost: a rate is never scored on the seeds that happened to survive), then,
among those (or, if every rate lost some trial, the rates that lost the fewest), the best mean of
the completed trials' final metric, averaged over seeds within each pilot cell and then over the
cells. Every trial must have ended: a pilot interrupted before its end chooses nothing. The choice is written to `lr_choice.json` in the pilot's state folder and read from there on
`--resume`, so it is made once.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ddgan.errors import UsageError

CHOICE_FILE = "lr_choice.json"


@dataclass(frozen=True)
class PilotResult:
    """One pilot trial's outcome."""

    group: str  # method group: ddgan-<loss> | ddpm
    cell: str
    lr: float
    seed: int
    state: str  # completed | pruned | failed | unfinished
    value: float | None  # its final metric (completed trials)


def group_of(method: str, loss: str) -> str:
    return f"ddgan-{loss}" if method == "ddgan" else "ddpm"


def choose_lr(results: Iterable[PilotResult], mode: str) -> dict[str, dict[str, Any]]:
    """group -> {"lr": chosen rate, "scores": {lr: score or None}, "completed": {lr: n}, "cells": n}.

    Raises UsageError when a trial has not ended, or a group has no rate with a completed trial in
    every one of its cells."""
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be min or max, not {mode!r}")
    by_group: dict[str, list[PilotResult]] = {}
    for r in results:
        by_group.setdefault(r.group, []).append(r)
    unfinished = sorted({r.group for rows in by_group.values() for r in rows if r.state == "unfinished"})
    if unfinished:
        raise UsageError(f"the learning-rate pilot has unfinished trials ({', '.join(unfinished)}): resume it "
                         "(--resume) before a rate is chosen")
    out: dict[str, dict[str, Any]] = {}
    for group, rows in sorted(by_group.items()):
        cells = sorted({r.cell for r in rows})
        scores: dict[float, float | None] = {}
        completed: dict[float, int] = {}
        lost: dict[float, int] = {}
        for lr in sorted({r.lr for r in rows}):
            mine = [r for r in rows if r.lr == lr]
            done = [r for r in mine if r.state == "completed" and r.value is not None and math.isfinite(r.value)]
            completed[lr], lost[lr] = len(done), len(mine) - len(done)
            per_cell = [[r.value for r in done if r.cell == c] for c in cells]
            scores[lr] = (sum(sum(v) / len(v) for v in per_cell) / len(cells)) if all(per_cell) else None
        eligible = {lr: s for lr, s in scores.items() if s is not None}
        if not eligible:
            raise UsageError(f"the learning-rate pilot has no rate of {group} with a completed trial in each of "
                             f"its cells ({', '.join(cells)}): nothing to choose from; look at the pilot study's "
                             "failures, then start a new one (--study NAME, or remove its state folder)")
        fewest = min(lost[lr] for lr in eligible)
        eligible = {lr: s for lr, s in eligible.items() if lost[lr] == fewest}
        sign = 1.0 if mode == "min" else -1.0
        best = min(eligible, key=lambda lr: (sign * eligible[lr], lr))  # a tie: the smaller rate
        out[group] = {"lr": best, "scores": {f"{lr:g}": s for lr, s in scores.items()},
                      "completed": {f"{lr:g}": n for lr, n in completed.items()},
                      "lost": {f"{lr:g}": n for lr, n in lost.items()}, "cells": len(cells)}
    return out


def write_choice(path: Path, choice: dict[str, dict[str, Any]], pilot_study: str, metric: str) -> None:
    doc = {"pilot_study": pilot_study, "metric": metric, "rule": "among the rates that lost (pruned, failed) "
           "the fewest trials, the best mean over cells of the mean over seeds of completed trials' final metric",
           "groups": choice}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    tmp.replace(path)


def read_choice(path: Path) -> dict[str, float] | None:
    """group -> lr from a pilot's choice file; None when the pilot has not chosen yet."""
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
        return {group: float(entry["lr"]) for group, entry in doc["groups"].items()}
    except (OSError, ValueError, KeyError, TypeError):
        raise UsageError(f"{str(path)!r} is unreadable: remove it to choose the rates again from the pilot "
                         "study's trials") from None


def describe(choice: dict[str, dict[str, Any]], metric: str) -> list[str]:
    """Lines for the run's output: the rate chosen per method and every candidate's score."""
    lines = [f"learning rates chosen by the pilot (fewest pruned/failed trials, then {metric}, mean over cells "
             "of the seed means):"]
    for group, entry in choice.items():
        scores = ", ".join(f"{lr}: {'-' if s is None else f'{s:.4g}'} ({entry['completed'][lr]} done, "
                           f"{entry['lost'][lr]} pruned/failed)" for lr, s in entry["scores"].items())
        lines.append(f"  {group:<18} lr {entry['lr']:g}   [{scores}]")
    return lines
