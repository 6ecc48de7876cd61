"""What a plan will cost: wall-clock and GPU-hours where its trials run.

Per-step figures come from `configs/costs.yaml`: each set names the machine its numbers
come from (measured by a benchmark or a committed study run, or a labelled estimate), or,
with `--dry-run --calibrate`, from `calibrate`: a short timed probe of each (preset,
method) of the plan on this machine's CPU and, where CUDA is present, its GPU.

The GPU set may carry a FLOP model instead of measured tables: a step costs
max(FLOPs / sustained rate, aten ops x host time per op); the FLOPs are counted on the real
`train_step` per preset and method (benchmarks/flops.py: forward, backward, DDGAN's fresh
generator draw and R1 amortised), and the op floor is dropped when `train.compile` is on.
Packing k trials on one GPU (the grid's `gpus` < 1): their aggregate throughput is
min(k x solo, peak), peak being the GPU-busy (FLOP) part alone, unless measured ratios
(`packing`, from benchmarks/gpu_check.sh) are given.

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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import yaml

from ddgan.config import CONFIG_DIR, Config
from ddgan.methods import build_method
from study.grid import Plan, TrialSpec

COSTS_FILE = CONFIG_DIR / "costs.yaml"


@dataclass(frozen=True)
class FlopModel:
    """Step and sampling time from counted FLOPs and aten ops (configs/costs.yaml `flops`)."""

    sustained_tflops: float
    host_us_per_op: float
    train: dict[str, dict[str, dict[str, float]]]  # preset -> method -> {gflop_per_image, ops_per_step}
    sample: dict[str, dict[str, dict[str, float]]]  # preset -> method -> {gflop_per_image, ops}

    def step_s(self, config: dict[str, Any]) -> tuple[float, float]:
        """(seconds per step alone on the GPU, of which the GPU is busy) at the config's batch."""
        row = _row(self.train, config)
        busy = row["gflop_per_image"] * config["train"]["batch_size"] / self.sustained_tflops / 1000
        floor = 0.0 if config["train"].get("compile") else row["ops_per_step"] * self.host_us_per_op / 1e6
        return max(busy, floor), busy

    def nfe_ms(self, config: dict[str, Any]) -> tuple[float, float]:
        """(ms per image per network evaluation alone, of which the GPU is busy) at the eval batch."""
        row = _row(self.sample, config)
        busy = row["gflop_per_image"] / self.sustained_tflops  # GFLOP / (TFLOP/s) = ms
        floor = row["ops"] * self.host_us_per_op / 1000 / config["eval"]["batch_size"]
        return max(busy, floor), busy


def _row(table: dict[str, dict[str, Any]], config: dict[str, Any]) -> Any:
    preset = config["model"].get("preset") or "small"
    row = table.get(preset) or table["paper"]  # an unknown preset: the largest known (an upper bound)
    return row[config["method"]]


@dataclass(frozen=True)
class Figures:
    """Per-step costs on one kind of device (see configs/costs.yaml for the fields).

    A (preset, method) in `train_step_s` / `nfe_ms_per_image` is a measured solo figure; one
    missing there comes from `model` (counted FLOPs and ops). `packing`: measured aggregate
    throughput of k trials sharing one device, relative to one alone."""

    name: str
    source: str
    batch: int
    train_step_s: dict[str, dict[str, float]]  # preset -> method -> seconds per step at `batch`
    nfe_ms_per_image: dict[str, dict[str, float]]  # preset -> method -> ms per image per network evaluation
    eval_overhead_s: float
    trial_startup_s: float
    study_startup_s: float
    inception_ms_per_image: float
    model: FlopModel | None = None
    packing: dict[int, float] = field(default_factory=dict)

    def lookup(self, table: dict[str, dict[str, float]], config: dict[str, Any]) -> float:
        return _row(table, config)

    def _measured(self, table: dict[str, dict[str, float]], config: dict[str, Any]) -> float | None:
        preset = config["model"].get("preset") or "small"
        if self.model is not None and preset not in table:
            return None
        try:
            return _row(table, config)
        except KeyError:
            if self.model is None:
                raise
            return None

    def step_s(self, config: dict[str, Any]) -> tuple[float, float]:
        """(seconds per training step of one trial alone, of which the device is busy)."""
        measured = self._measured(self.train_step_s, config)
        if measured is None:
            return self.model.step_s(config)
        solo = measured * config["train"]["batch_size"] / self.batch
        return solo, min(solo, self.model.step_s(config)[1]) if self.model else solo

    def nfe_ms(self, config: dict[str, Any]) -> tuple[float, float]:
        measured = self._measured(self.nfe_ms_per_image, config)
        if measured is None:
            return self.model.nfe_ms(config)
        return measured, min(measured, self.model.nfe_ms(config)[1]) if self.model else measured

    def packed(self, k: int, solo: float, busy: float) -> float:
        """One trial's time for `solo` of work when k trials share the device: the measured ratio
        k / packing[k], else max(solo, k x busy), i.e. aggregate throughput min(k x solo, peak)."""
        if k <= 1:
            return solo
        if k in self.packing:
            return solo * k / self.packing[k]
        return max(solo, k * busy)


def load_figures(path: Path = COSTS_FILE) -> dict[str, Figures]:
    """{'cpu': ..., 'gpu': ...} from the committed figures file (its `flops` feed each set's `model`)."""
    raw = yaml.safe_load(Path(path).read_text())
    flops = raw.pop("flops", None)
    out = {}
    for kind, values in raw.items():
        values = dict(values)
        model = values.pop("model", None)
        if model is not None:
            if flops is None:
                raise ValueError(f"{path}: {kind}.model needs the `flops` counts (python -m benchmarks.flops)")
            model = FlopModel(float(model["sustained_tflops"]), float(model["host_us_per_op"]),
                              flops["train"], flops["sample"])
        values["packing"] = {int(k): float(v) for k, v in (values.get("packing") or {}).items()}
        values["train_step_s"] = values.get("train_step_s") or {}
        values["nfe_ms_per_image"] = values.get("nfe_ms_per_image") or {}
        out[kind] = Figures(**values, model=model)
    return out


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


def _evaluation_s(config: dict[str, Any], figures: Figures, nfe: int, final: bool, k: int = 1) -> float:
    ev = config["eval"]
    n = (ev.get("final_n_samples") or ev["n_samples"]) if final and ev.get("final_metrics") else ev["n_samples"]
    solo, busy = figures.nfe_ms(config)
    seconds = figures.eval_overhead_s + figures.packed(k, n * nfe * solo / 1000, n * nfe * busy / 1000)
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


def trial_cost(spec: TrialSpec, config: dict[str, Any], plan: Plan, figures: Figures, k: int = 1) -> TrialCost:
    """One trial's time with `k` trials sharing its device (Figures.packed)."""
    nfe = _nfe(config, spec.sampling_steps)
    if spec.phase == "sample":
        seconds = figures.trial_startup_s + _evaluation_s(config, figures, nfe, final=True, k=k)
        return TrialCost(spec, seconds, seconds)
    total, every = spec.total_steps, config["eval"]["every"]
    solo, busy = figures.step_s(config)
    step_s = figures.packed(k, solo, busy)
    one_eval = _evaluation_s(config, figures, nfe, final=False, k=k)

    def cost(steps: int, reaches_end: bool) -> float:
        evaluations = steps // every + (1 if reaches_end and steps % every else 0)
        final_extra = _evaluation_s(config, figures, nfe, final=True, k=k) - one_eval if reaches_end else 0.0
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
    per_device: int = 1  # trials sharing one device

    @property
    def saving(self) -> float:
        return 1 - self.trial_s[0] / self.trial_s[1] if self.trial_s[1] else 0.0


def trials_per_gpu(gpus_per_trial: float) -> int:
    """k trials packed on one GPU for a fractional request (0.25 -> 4); 1 for a whole GPU or more."""
    return max(1, int(1 / gpus_per_trial + 1e-9)) if 0 < gpus_per_trial < 1 else 1


def estimate(plan: Plan, figures: Figures, slots: int, per_device: int = 1) -> Estimate:
    """Trial time and wall-clock for `plan` at `figures`, `slots` trials at a time, `per_device`
    of them sharing one device (each trial's time from Figures.packed)."""
    slots = max(1, slots)
    costs = [trial_cost(s, plan.configs[s.key], plan, figures, per_device) for s in plan.trials]
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

    return Estimate(figures, slots, (sum(low.values()), sum(high.values())), (wall(low), wall(high)), per_device)


def gpu_slots(plan: Plan, gpus: int) -> int:
    """Trials at a time on `gpus` GPUs: gpus / (GPUs per trial), capped by the grid's max_concurrent."""
    per_trial = plan.grid.resources.gpus
    slots = int(gpus / per_trial + 1e-9) if per_trial > 0 else gpus
    return max(1, min(slots, plan.grid.max_concurrent or slots))


def local_slots(plan: Plan) -> int:
    """How many trials run at once on this machine (cores / CPUs per trial, capped by the grid)."""
    resources = plan.grid.resources
    slots = max(1, int((os.cpu_count() or 1) // resources.cpus))
    if resources.gpus > 0 and torch.cuda.is_available():
        slots = min(slots, int(torch.cuda.device_count() // resources.gpus))
    return min(slots, plan.grid.max_concurrent or slots)


# -- calibration: a short timed probe on this machine ---------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_step(method, batch: torch.Tensor, step: int, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    method.train_step(batch, step)
    _sync(device)  # the kernels, not their launches
    return time.perf_counter() - start


def _probe(config: dict[str, Any], device: torch.device, steps: int) -> tuple[float, float]:
    """(seconds per training step at the config's batch, R1 amortised; ms per image per network
    evaluation at the eval batch: the grid's on CUDA, at most 64 on the CPU, where the cost per
    image does not depend on the batch)."""
    cfg = Config.from_dict(config)
    method = build_method(cfg, device)
    batch = torch.rand(cfg.train.batch_size, 1, 28, 28, device=device) * 2 - 1  # cost does not depend on content
    obj = cfg.objective
    every = obj.r1_interval if cfg.method == "ddgan" and obj.r1_gamma > 0 and obj.loss != "wgan-gp" else 0
    plain_steps = [s for s in range(1, 4 * steps + 3) if not every or s % every][: steps + 1]
    times = [_timed_step(method, batch, s, device) for s in plain_steps][1:]  # the first step warms up
    step_s = sorted(times)[len(times) // 2]
    if every:  # R1 (a double backward through D) every `every` steps: timed once, weighted
        step_s = ((every - 1) * step_s + _timed_step(method, batch, every, device)) / every
    n = cfg.eval.batch_size if device.type == "cuda" else min(cfg.eval.batch_size, 64)
    method.sample(min(n, 8), torch.Generator(device=device).manual_seed(0))  # warm-up (cuDNN, allocator)
    _sync(device)
    start = time.perf_counter()
    _, nfe = method.sample(n, torch.Generator(device=device).manual_seed(0))
    _sync(device)
    sample_ms = (time.perf_counter() - start) * 1000 / n / max(nfe, 1)
    return step_s, sample_ms


def _probe_config(config: dict[str, Any], device: str) -> dict[str, Any]:
    """The trial's model and batch with few sampling steps (the cost per step is the same)."""
    out = {**config, "train": {**config["train"], "device": device, "compile": False},
           "eval": {**config["eval"]}, "diffusion": {**config["diffusion"]}}
    if out["method"] == "ddgan":
        out["diffusion"]["T"] = 2
    else:
        out["eval"]["respaced_steps"] = 2
    return out


def machine_name(device: str) -> str:
    """The machine a calibration ran on, in words."""
    if device.startswith("cuda"):
        return f"this machine's GPU ({torch.cuda.get_device_name(0)})"
    return f"this machine's CPU ({os.cpu_count()} cores)"


def calibrate(plan: Plan, base: Figures, device: str = "cpu", steps: int = 3) -> Figures:
    """`base` with the train and sampling figures of every (preset, method) in `plan` measured here,
    named by the machine they come from."""
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
    name = f"{machine_name(device)}, {threads} torch thread(s) per trial, one trial alone"
    source = (f"calibrated just now: {steps} timed steps and one R1 step (weighted 1 in r1_interval) at the "
              f"grid's batch, one sampling batch per (preset, method) of the plan; start-up, evaluation "
              f"overhead and Inception from {COSTS_FILE.name} ({base.name})")
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


def _range(est: Estimate) -> str:
    return f"{duration(est.wall_s[1])} .. {duration(est.wall_s[0])} wall"


def _model_line(figures: Figures, k: int) -> str | None:
    if figures.model is None:
        return None
    m = figures.model
    packing = (f"; {k} trials per GPU: measured aggregate throughput x{figures.packing[k]:g} of one alone"
               if k in figures.packing else
               f"; {k} trials per GPU: aggregate throughput min({k} x solo, peak = FLOP time alone)" if k > 1 else "")
    return (f"    model: FLOPs counted on the real train_step (benchmarks/flops.py) at {m.sustained_tflops:g} TFLOP/s "
            f"sustained; floor {m.host_us_per_op:g} us of host time per aten op (eager; none with train.compile)"
            f"{packing}")


@dataclass(frozen=True)
class Priced:
    """A plan priced where it runs: `here` on this machine (None when the trials run on a Ray
    cluster), `gpu` on `gpus` of the target GPUs, and the GPU time that holds."""
    here: Estimate | None
    gpu: Estimate
    gpus: int
    gpu_s: tuple[float, float]  # GPU-seconds: (most pruning, no pruning)


def price(plan: Plan, local: Figures, gpu: Figures, gpus: int | None = None, address: str | None = None) -> Priced:
    here = None
    if address is None:
        on_gpu = local == gpu  # a run on this machine's GPU(s)
        here = estimate(plan, local, local_slots(plan), trials_per_gpu(plan.grid.resources.gpus) if on_gpu else 1)
    n = gpus or 1
    ref = estimate(plan, gpu, gpu_slots(plan, n), per_device=trials_per_gpu(plan.grid.resources.gpus))
    per_trial = plan.grid.resources.gpus or 1.0  # each trial holds `per_trial` GPUs
    return Priced(here, ref, n, (ref.trial_s[0] * per_trial, ref.trial_s[1] * per_trial))


def describe(plan: Plan, local: Figures, gpu: Figures, gpus: int | None = None, address: str | None = None,
             gpu_source: str | None = None, priced: Priced | None = None) -> list[str]:
    """The plan's cost lines: the CPU's wall-clock where the trials run here, and the wall-clock and
    GPU-hours of the GPUs the plan targets (`gpus` of them; `gpu_source` says where that count came
    from), each with the machine its figures come from; `priced`: `price` of the same arguments."""
    priced = priced or price(plan, local, gpu, gpus, address)
    lines = ["", "cost estimate (from no pruning down to all but one trial per cell stopped at its first chance):"]
    if priced.here is not None:
        here, on_gpu = priced.here, local == gpu
        if on_gpu:
            where = "here on the GPU"
        else:
            where = "here on the CPU" + (" (with --gpus-per-trial 0)" if plan.grid.resources.gpus > 0 else "")
        lines.append(f"  {where}: {_range(here)}, {here.slots} trial(s) at a time (pruning saves up to "
                     f"{here.saving:.0%} of {duration(here.trial_s[1])} of trial time)")
        hint = " (--calibrate times this machine instead)" if local.name.startswith("reference") else ""
        lines.append(f"    per-step figures: {local.name}; {local.source}{hint}")
    else:
        lines.append(f"  this machine's CPU: not priced (the trials run on the Ray cluster at {address})")
    ref, k = priced.gpu, priced.gpu.per_device
    count = gpu_source or ("--gpus" if gpus else "1 assumed: pass --gpus N for the cluster's count")
    lines.append(f"  {gpu.name} x {priced.gpus} ({count}): {_range(ref)}, {ref.slots} trial(s) at a time, {k} per GPU; "
                 f"{_hours(priced.gpu_s[1])} .. {_hours(priced.gpu_s[0])} GPU-hours")
    lines.append(f"    per-step figures: {gpu.source}")
    model = _model_line(gpu, k)
    if model:
        lines.append(model)
    return lines


def describe_total(stages: list[Priced], trials: int) -> list[str]:
    """One line for stages that run one after the other (a pilot, then the study): wall-clock and
    GPU time add up; no pruning first, as in describe."""

    def total(pairs: list[tuple[float, float]]) -> tuple[float, float]:
        return sum(p[0] for p in pairs), sum(p[1] for p in pairs)

    parts = []
    if all(s.here is not None for s in stages):
        low, high = total([s.here.wall_s for s in stages])
        parts.append(f"here {duration(high)} .. {duration(low)} wall")
    low, high = total([s.gpu.wall_s for s in stages])
    gpu_low, gpu_high = total([s.gpu_s for s in stages])
    parts.append(f"{stages[-1].gpu.figures.name.split(' (')[0]} x {stages[-1].gpus}: {duration(high)} .. "
                 f"{duration(low)} wall, {_hours(gpu_high)} .. {_hours(gpu_low)} GPU-hours")
    return [f"both stages, one after the other: {trials} trials; " + "; ".join(parts)]
