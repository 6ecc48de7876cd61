"""Timed study runs for the study-overhead and packing benchmarks.

`derive_grid` writes a grid YAML cut down from a named grid (one DDGAN cell, a chosen
number of seeds, budget, cadence and resources) so a benchmark runs the real product
path: `study.driver.run_study` with Ray Tune, per-cell Optuna and MLflow. `timed_study`
starts Ray itself first (so its start-up is measured apart and excluded) and times each
Ray Tune phase by wrapping `study.tuning.run_phase` for the length of the call.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ddgan.metrics.evaluator import metric_name, parse_metric
from study.grid import load_grid


def derive_grid(source: str, out_path: Path, *, name: str, seeds: int = 1, steps: int | None = None,
                eval_every: int | None = None, eval_changes: dict[str, Any] | None = None,
                overrides: tuple[str, ...] = (), cpus: float | None = None, gpus: float | None = None,
                max_concurrent: int | None = None) -> Path:
    """A one-cell DDGAN grid from `source` (first loss, T and lr); `seeds` trials; no pruning.

    eval_changes: keys of the grid's `eval` section to replace (e.g. n_samples, reference_n).
    The metric is renamed to the new sample count when `n_samples` changes.
    """
    grid, path = load_grid(source)
    raw = grid.model_dump(mode="json", exclude_none=True)
    raw["name"] = name
    raw["base"] = {m: str((path.parent / p).resolve()) for m, p in grid.base.items()}
    raw["overrides"] = [*raw.get("overrides", []), *overrides]
    raw["seeds"] = list(range(seeds))
    axes = grid.ddgan
    if axes is None:
        raise ValueError(f"grid {source!r} has no ddgan section")
    raw["ddgan"] = {"losses": [axes.losses[0]], "T": [axes.T_of(axes.losses[0])[0]], "lr": [axes.lr[0]],
                    "overrides": list(axes.overrides)}
    # contrasts may name cells this one-cell grid drops; a pilot would run a whole study first
    for key in ("ddpm", "trial_overrides", "contrasts", "pilot"):
        raw.pop(key, None)
    if steps is not None:
        raw["budget"] = {"steps": steps}
    raw["eval"] = {**raw["eval"], **(eval_changes or {})}
    if eval_every is not None:
        raw["eval"]["every"] = eval_every
    if "n_samples" in (eval_changes or {}) and raw["metric"].startswith("eval/") and grid.eval.metrics:
        kind, extractor = parse_metric(grid.eval.metrics[0])
        raw["metric"] = metric_name(kind, extractor, raw["eval"]["n_samples"])
    raw["pruner"] = {"kind": "none"}
    raw["resources"] = {"cpus": grid.resources.cpus if cpus is None else cpus,
                        "gpus": grid.resources.gpus if gpus is None else gpus}
    raw["max_concurrent"] = max_concurrent
    raw["max_failures"] = 0
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    load_grid(str(out_path))  # validate now: a bad derived grid is this script's bug
    return out_path


def start_ray(address: str | None, gpus_per_trial: float) -> float:
    """Start (or join) Ray exactly as the driver does; returns the seconds it took."""
    from study.tuning import init_ray

    start = time.perf_counter()
    init_ray(address, gpus_per_trial)
    return time.perf_counter() - start


@dataclass
class StudyTiming:
    total_s: float  # run_study wall (Ray already started)
    phase_s: dict[str, float] = field(default_factory=dict)  # Ray Tune experiment wall per phase
    trial_status: dict[str, str] = field(default_factory=dict)  # trial key -> error | ok
    summary: str = ""

    @property
    def setup_s(self) -> float:
        """Driver work outside the Tune phases: validation, stores, plan, references, MLflow/Optuna rows."""
        return self.total_s - sum(self.phase_s.values())


def timed_study(options) -> StudyTiming:
    """Run `study.driver.run_study(options)` (Ray already started) and time its phases."""
    import study.tuning as tuning
    from study.driver import run_study

    original = tuning.run_phase
    timing = StudyTiming(total_s=0.0)

    def timed_phase(phase, keys, context, **kwargs):
        start = time.perf_counter()
        results = original(phase, keys, context, **kwargs)
        timing.phase_s[phase] = time.perf_counter() - start
        for result in results:
            timing.trial_status[result.config["trial"]["key"]] = "error" if result.error else "ok"
        return results

    tuning.run_phase = timed_phase
    start = time.perf_counter()
    try:
        timing.summary = run_study(options)
    finally:
        tuning.run_phase = original
    timing.total_s = time.perf_counter() - start
    if "train" not in timing.phase_s:
        raise RuntimeError("study.driver.run_study no longer calls study.tuning.run_phase: update benchmarks/study_timing.py")
    failed = sorted(k for k, s in timing.trial_status.items() if s != "ok")
    if failed:
        raise RuntimeError(f"trials failed: {', '.join(failed)}; the timing would be meaningless\n{timing.summary}")
    return timing
