"""What a plan will cost: wall-clock on this machine and GPU-hours on a reference GPU.

Per-step figures come from `configs/costs.yaml` (each set says where its numbers come
from: measured by a benchmark or a committed study run, or a labelled estimate) or, with
`--dry-run --calibrate`, from `calibrate`: a short timed probe of each (preset, method)
of the plan on this machine.

A trial costs start-up + steps x step time + its evaluations (sampling n images x NFE,
plus a fixed overhead; the final one adds Inception when the grid asks for FID). Pruning
makes a range: at most every trial runs to its end; at least, in every cell with more
than one trial, all but one stop at the first evaluation where the pruner may act.
Phases run one after the other, each spread over the slots that run at once.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import yaml

from ddgan.config import CONFIG_DIR, Config
from ddgan.methods import build_method
from study.grid import Plan, TrialSpec

COSTS_FILE = CONFIG_DIR / "costs.yaml"


@dataclass(frozen=True)
class Figures:
    """Per-step costs on one kind of device (see configs/costs.yaml for the fields)."""

    name: str
    source: str
    batch: int
    train_step_s: dict[str, dict[str, float]]  # preset -> method -> seconds per step at `batch`
    nfe_ms_per_image: dict[str, dict[str, float]]  # preset -> method -> ms per image per network evaluation
    eval_overhead_s: float
    trial_startup_s: float
    study_startup_s: float
    inception_ms_per_image: float

    def lookup(self, table: dict[str, dict[str, float]], config: dict[str, Any]) -> float:
        preset = config["model"].get("preset") or "small"
        row = table.get(preset) or table["paper"]  # an unknown preset: the largest known (an upper bound)
        return row[config["method"]]


def load_figures(path: Path = COSTS_FILE) -> dict[str, Figures]:
    """{'cpu': ..., 'gpu': ...} from the committed figures file."""
    raw = yaml.safe_load(Path(path).read_text())
    return {kind: Figures(**values) for kind, values in raw.items()}


@dataclass(frozen=True)
class TrialCost:
    spec: TrialSpec
    full_s: float  # run to its last step
    pruned_s: float  # stopped at the first evaluation where the pruner may act (= full_s if it cannot)


def _nfe(config: dict[str, Any], sampling_steps: int | None) -> int:
    if sampling_steps is not None:
        return sampling_steps
    if config["method"] == "ddpm" and config["eval"].get("respaced_steps"):
        return int(config["eval"]["respaced_steps"])
    return int(config["diffusion"]["T"])


def _evaluation_s(config: dict[str, Any], figures: Figures, nfe: int, final: bool) -> float:
    ev = config["eval"]
    n = (ev.get("final_n_samples") or ev["n_samples"]) if final and ev.get("final_metrics") else ev["n_samples"]
    seconds = figures.eval_overhead_s + n * nfe * figures.lookup(figures.nfe_ms_per_image, config) / 1000
    if final and any(m.endswith("inception") for m in ev.get("final_metrics") or ()):
        seconds += n * figures.inception_ms_per_image / 1000
    return seconds


def _first_prune_step(plan: Plan, total: int) -> int | None:
    """The first evaluation step at which the grid's pruner may stop a trial (None: never)."""
    pruner, every = plan.grid.pruner, plan.grid.eval.every
    if pruner.kind == "none":
        return None
    earliest = max(pruner.n_warmup_steps, pruner.min_resource or 1, 1)
    step = math.ceil(earliest / every) * every
    return step if step < total else None  # no trial is pruned at its last step


def trial_cost(spec: TrialSpec, config: dict[str, Any], plan: Plan, figures: Figures) -> TrialCost:
    nfe = _nfe(config, spec.sampling_steps)
    if spec.phase == "sample":
        seconds = figures.trial_startup_s + _evaluation_s(config, figures, nfe, final=True)
        return TrialCost(spec, seconds, seconds)
    total, every = spec.total_steps, config["eval"]["every"]
    step_s = figures.lookup(figures.train_step_s, config) * config["train"]["batch_size"] / figures.batch
    one_eval = _evaluation_s(config, figures, nfe, final=False)

    def cost(steps: int, reaches_end: bool) -> float:
        evaluations = steps // every + (1 if reaches_end and steps % every else 0)
        final_extra = _evaluation_s(config, figures, nfe, final=True) - one_eval if reaches_end else 0.0
        return figures.trial_startup_s + steps * step_s + evaluations * one_eval + final_extra

    prune_at = _first_prune_step(plan, total)
    full = cost(total, True)
    return TrialCost(spec, full, cost(prune_at, False) if prune_at else full)


@dataclass(frozen=True)
class Estimate:
    figures: Figures
    slots: int
    trial_s: tuple[float, float]  # summed trial time: (most pruning, no pruning)
    wall_s: tuple[float, float]  # with `slots` trials at a time, start-up included

    @property
    def saving(self) -> float:
        return 1 - self.trial_s[0] / self.trial_s[1] if self.trial_s[1] else 0.0


def estimate(plan: Plan, figures: Figures, slots: int) -> Estimate:
    """Trial time and wall-clock for `plan` at `figures`, `slots` trials at a time."""
    slots = max(1, slots)
    costs = [trial_cost(s, plan.configs[s.key], plan, figures) for s in plan.trials]
    low = {c.spec.key: c.full_s for c in costs}
    for specs in plan.cells().values():  # at least: all but one trial per cell pruned early
        cell = sorted((c for c in costs if c.spec.cell == specs[0].cell), key=lambda c: c.full_s)
        if len(cell) > 1 and cell[0].spec.phase == "train":
            for c in cell[1:]:
                low[c.spec.key] = c.pruned_s
    high = {c.spec.key: c.full_s for c in costs}

    def wall(per_trial: dict[str, float]) -> float:
        seconds = figures.study_startup_s
        for phase in ("train", "sample"):
            times = [per_trial[s.key] for s in plan.phase(phase)]
            if times:
                seconds += max(sum(times) / slots, max(times))
        return seconds

    return Estimate(figures, slots, (sum(low.values()), sum(high.values())), (wall(low), wall(high)))


def local_slots(plan: Plan) -> int:
    """How many trials run at once on this machine (cores / CPUs per trial, capped by the grid)."""
    resources = plan.grid.resources
    slots = max(1, int((os.cpu_count() or 1) // resources.cpus))
    if resources.gpus > 0 and torch.cuda.is_available():
        slots = min(slots, int(torch.cuda.device_count() // resources.gpus))
    return min(slots, plan.grid.max_concurrent or slots)


# -- calibration: a short timed probe on this machine ---------------------------------------------


def _probe(config: dict[str, Any], device: torch.device, steps: int) -> tuple[float, float]:
    """(seconds per training step at the config's batch, ms per image per network evaluation)."""
    cfg = Config.from_dict(config)
    method = build_method(cfg, device)
    batch = torch.rand(cfg.train.batch_size, 1, 28, 28, device=device) * 2 - 1  # cost does not depend on content
    times = []
    for step in range(1, steps + 2):  # the first step warms up
        start = time.perf_counter()
        losses = method.train_step(batch, step)
        _ = [float(v) for v in losses.values()]  # one sync, as a log step does
        times.append(time.perf_counter() - start)
    n = min(cfg.eval.batch_size, 64)
    start = time.perf_counter()
    _, nfe = method.sample(n, torch.Generator(device=device).manual_seed(0))
    sample_ms = (time.perf_counter() - start) * 1000 / n / max(nfe, 1)
    return sorted(times[1:])[len(times[1:]) // 2], sample_ms


def _probe_config(config: dict[str, Any], device: str) -> dict[str, Any]:
    """The trial's model and batch with few sampling steps (the cost per step is the same)."""
    out = {**config, "train": {**config["train"], "device": device, "compile": False},
           "eval": {**config["eval"]}, "diffusion": {**config["diffusion"]}}
    if out["method"] == "ddgan":
        out["diffusion"]["T"] = 2
    else:
        out["eval"]["respaced_steps"] = 2
    return out


def calibrate(plan: Plan, base: Figures, device: str = "cpu", steps: int = 3) -> Figures:
    """`base` with the train and sampling figures of every (preset, method) in `plan` measured here."""
    threads = max(1, int(plan.grid.resources.cpus))
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    train = {k: dict(v) for k, v in base.train_step_s.items()}
    sample = {k: dict(v) for k, v in base.nfe_ms_per_image.items()}
    try:
        seen = set()
        for spec in plan.trials:
            config = plan.configs[spec.key]
            key = (config["model"].get("preset") or "small", config["method"])
            if key in seen:
                continue
            seen.add(key)
            step_s, ms = _probe(_probe_config(config, device), torch.device(device), steps)
            train.setdefault(key[0], {})[key[1]] = step_s * base.batch / config["train"]["batch_size"]
            sample.setdefault(key[0], {})[key[1]] = ms
    finally:
        torch.set_num_threads(previous)
    what = torch.cuda.get_device_name(0) if device.startswith("cuda") else f"{os.cpu_count()}-core CPU"
    name = f"this machine ({what}, {threads} torch thread(s) per trial, one trial alone)"
    source = (f"calibrated just now: {steps} timed steps and one sampling batch per (preset, method) of the plan; "
              f"start-up and evaluation overhead from {COSTS_FILE.name}")
    return replace(base, name=name, source=source, train_step_s=train, nfe_ms_per_image=sample)


# -- what the plan prints ---------------------------------------------------------------------------


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"


def _hours(seconds: float) -> str:
    hours = seconds / 3600
    return f"{hours:.1f}" if hours >= 1 else f"{hours:.2f}"


def describe(plan: Plan, local: Figures, gpu: Figures) -> list[str]:
    """The plan's cost lines: this machine's wall-clock, the reference GPU's GPU-hours, the sources."""
    slots = local_slots(plan)
    here = estimate(plan, local, slots)
    lines = ["", "cost estimate (from no pruning down to all but one trial per cell stopped at its first chance):"]
    needs_gpu = plan.grid.resources.gpus > 0 and not torch.cuda.is_available()
    where = "this machine's CPU (with --gpus-per-trial 0)" if needs_gpu else "this machine"
    lines.append(f"  {where}: {duration(here.wall_s[1])} .. {duration(here.wall_s[0])} wall, "
                 f"{slots} trial(s) at a time (pruning saves up to {here.saving:.0%} of "
                 f"{duration(here.trial_s[1])} of trial time)")
    hint = " (--calibrate times this machine instead)" if local.name.startswith("reference") else ""
    lines.append(f"    per-step figures: {local.name}; {local.source}{hint}")
    ref = estimate(plan, gpu, 1)
    packing = (f"; {1 / plan.grid.resources.gpus:g} trials packed per GPU may take less"
               if 0 < plan.grid.resources.gpus < 1 else "")
    lines.append(f"  {gpu.name}: {_hours(ref.trial_s[1])} .. {_hours(ref.trial_s[0])} GPU-hours{packing}")
    lines.append(f"    per-step figures: {gpu.source}")
    return lines
