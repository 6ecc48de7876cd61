"""Grid files: a strict schema, validation, and expansion into cells and trials.

A grid file (`configs/grids/<name>.yaml`) names the base config of each method,
the axes of the study, the metric the pruner watches, the pruner, the evaluation
cadence and training budget, and the resources of one trial. `load_grid` parses
it (unknown keys are errors that list the valid ones); `expand` turns it into
`TrialSpec`s and resolves every trial's config through `ddgan.config`, so a bad
value in any trial is reported before anything starts.

Cells are what the study measures and what the pruner compares within:
  ddgan-<loss>-T<T>          DDGAN with one objective and T steps (axes: lr x seed)
  ddpm-T<T>                  one DDPM model trained with T steps
  ddpm-<sampler>-S<S>        the T=respaced.T DDPM model sampled with S respaced steps
The respaced cells are a second phase ("sample"): they evaluate the finished
model of their source trial and never train.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, StrictInt, model_validator

from ddgan.config import CONFIG_DIR, Config, parse_override, read_yaml, resolve_config
from ddgan.errors import ConfigError, UsageError
from ddgan.metrics.evaluator import count_label
from ddgan.schedule import build_schedule
from ddgan.strict import Strict, validate

GRID_DIR = CONFIG_DIR / "grids"
PHASES = ("train", "sample")


StepCount = Annotated[StrictInt, Field(ge=1, le=10_000)]  # T, S: integers 1..10,000 (2.5 and "3" are errors)
LearningRate = Annotated[float, Field(gt=0, le=1.0, allow_inf_nan=False)]  # finite: .inf and .nan are errors


class Budget(Strict):
    """Training length: optimiser steps, or images seen (steps = images / batch size)."""

    steps: StrictInt | None = Field(default=None, ge=1, le=10_000_000)
    images: StrictInt | None = Field(default=None, ge=1, le=10**11)

    @model_validator(mode="after")
    def _one(self) -> Budget:
        if (self.steps is None) == (self.images is None):
            raise ValueError("give exactly one of steps or images")
        return self


class EvalPlan(Strict):
    """Evaluation cadence and cost (maps onto the config's `eval` section)."""

    every: StrictInt = Field(ge=1, le=10_000_000)
    n_samples: StrictInt = Field(default=2000, ge=1, le=100_000)
    batch_size: StrictInt | None = Field(default=None, ge=1, le=4096)
    metrics: tuple[str, ...] = ("fd_fmnist",)
    final_metrics: tuple[str, ...] = ()
    final_n_samples: StrictInt | None = Field(default=None, ge=1, le=100_000)
    grid_size: StrictInt | None = Field(default=None, ge=1, le=32)
    reference_split: Literal["train", "test"] | None = None
    reference_n: StrictInt | None = Field(default=None, ge=2, le=60_000)  # first N reference images (default: the split)


class Pruner(Strict):
    """Optuna pruner per cell; see study/tuning/pruning.py for what each kind does in a parallel grid."""

    kind: Literal["median", "percentile", "successive_halving", "hyperband", "none"] = "median"
    include_running: bool = True  # median/percentile: also compare with running trials (see study/tuning/pruning.py)
    percentile: float = Field(default=50.0, gt=0, lt=100)  # percentile only
    n_startup_trials: StrictInt = Field(default=1, ge=0)  # median/percentile: trials needed to compare
    n_warmup_steps: StrictInt = Field(default=0, ge=0)  # no pruning before this step
    n_min_trials: StrictInt = Field(default=1, ge=1)
    min_resource: StrictInt | None = Field(default=None, ge=1)  # SHA/hyperband: first rung (steps)
    max_resource: StrictInt | None = Field(default=None, ge=1)  # hyperband
    reduction_factor: StrictInt = Field(default=2, ge=2)
    min_early_stopping_rate: StrictInt = Field(default=0, ge=0)


class Faults(Strict):
    """Fault injection for one trial (`fault.<key>=value` in `trial_overrides`; see study/FAULTS.md)."""

    nan_at_step: StrictInt | None = Field(default=None, ge=1)  # that step's batch is NaN: the losses diverge
    exit_at_step: StrictInt | None = Field(default=None, ge=1)  # the trial process dies at that step, once
    exit_marker: str | None = None  # created by the first injected exit, so a retry does not die again


class Resources(Strict):
    cpus: float = Field(default=1.0, gt=0, le=1024, allow_inf_nan=False)  # finite: NaN CPUs would wait forever
    gpus: float = Field(default=0.0, ge=0, le=64, allow_inf_nan=False)


class DDGANAxes(Strict):
    losses: tuple[str, ...] = Field(min_length=1)
    T: tuple[StepCount, ...] = Field(min_length=1)
    lr: tuple[LearningRate, ...] = Field(min_length=1)
    overrides: tuple[str, ...] = ()  # dotted overrides for every DDGAN trial


class Respaced(Strict):
    """One DDPM model with T steps, sampled with each S and sampler (a second phase)."""

    T: StrictInt = Field(ge=1, le=10_000)
    steps: tuple[StepCount, ...] = Field(min_length=1)
    samplers: tuple[Literal["ancestral", "ddim"], ...] = Field(default=("ancestral", "ddim"), min_length=1)
    # The respaced model's schedule: by default the VP discretisation every per-T DDPM model
    # uses (one schedule family along the FID-vs-T curve; at T=1000 its betas run
    # 1.0e-4..0.0198, within 2.3e-4 of Ho et al.'s linear 1e-4..0.02); linear and cosine
    # (Nichol & Dhariwal) stay selectable.
    schedule: Literal["linear", "cosine", "vp"] = "vp"
    # How the source model is evaluated while it trains (sampling all T steps at every
    # evaluation would cost more than the training): by default DDIM with the smallest S.
    train_eval: tuple[str, ...] | None = None
    # Fewer evaluation images for some S (e.g. {1000: 500}: all 1000 ancestral steps cost
    # S x the 1-step time per image). The count is in the metric's name (eval/fd_fmnist_500)
    # and the time per image is measured as for every S.
    n_samples: dict[StrictInt, StrictInt] = {}
    # Sample only the models of these seeds at every S (default: every seed of the grid). The
    # models of the other seeds still train and are scored at training time (train_eval).
    seeds: tuple[StrictInt, ...] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _steps(self) -> Respaced:
        if any(s < 1 or s > self.T for s in self.steps):
            raise ValueError(f"respaced.steps must be in 1..{self.T}")
        unknown = sorted(set(self.n_samples) - set(self.steps))
        if unknown:
            raise ValueError(f"respaced.n_samples names steps {unknown} that are not in respaced.steps")
        if any(not 2 <= n <= 1_000_000 for n in self.n_samples.values()):
            raise ValueError("respaced.n_samples: each count must be in 2..1000000")
        return self


class DDPMAxes(Strict):
    T: tuple[StepCount, ...] = ()  # one model per T
    lr: tuple[LearningRate, ...] = Field(min_length=1)
    respaced: Respaced | None = None
    budget: Budget | None = None  # default: the grid's budget
    overrides: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _something(self) -> DDPMAxes:
        if not self.T and self.respaced is None:
            raise ValueError("needs T (one model per T) or respaced (or both)")
        return self


ContrastKind = Literal["objective_at_T", "T_at_equal_images", "T_at_equal_updates", "ddgan_vs_ddpm_at_equal_nfe",
                       "other"]


class PlannedContrast(Strict):
    """One planned comparison: the mean of the cells `a` minus the mean of the cells `b`."""

    name: str = Field(min_length=1, max_length=200)
    kind: ContrastKind = "other"  # the question it answers (groups the report's claims)
    a: tuple[str, ...] = Field(min_length=1)
    b: tuple[str, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _sides(self) -> PlannedContrast:
        for side in (self.a, self.b):
            if len(set(side)) != len(side):
                raise ValueError(f"contrast {self.name!r}: a cell is repeated in {list(side)}")
        both = sorted(set(self.a) & set(self.b))
        if both:
            raise ValueError(f"contrast {self.name!r}: cells {both} are on both sides")
        return self


class Contrasts(Strict):
    """The study's planned contrasts and how the report tests them (study/report/stats.py).

    `planned` absent: defaults from the axes (study/report/contrasts.py). `variance`: the residual
    variance of the fit y ~ cell + seed over every analysed cell ("study", pooled) or over each
    contrast's own cells ("contrast"; a two-cell contrast is then the paired t-test)."""

    variance: Literal["study", "contrast"] = "study"
    alpha: float = Field(default=0.05, gt=0, lt=0.5)  # Holm's family-wise level
    power: float = Field(default=0.8, gt=0, lt=1)  # for the smallest detectable difference
    planned: tuple[PlannedContrast, ...] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _names(self) -> Contrasts:
        names = [c.name for c in self.planned or ()]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"contrast names must be unique: {repeated}")
        return self


class Grid(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    base: dict[Literal["ddgan", "ddpm"], str]  # method -> base config path (relative to the grid file)
    overrides: tuple[str, ...] = ()  # dotted overrides for every trial
    seeds: tuple[StrictInt, ...] = Field(default=(0,), min_length=1)
    ddgan: DDGANAxes | None = None
    ddpm: DDPMAxes | None = None
    budget: Budget
    eval: EvalPlan
    metric: str = Field(pattern=r"^(eval|train)/.+")  # the reported value the pruner and Optuna see
    mode: Literal["min", "max"] = "min"
    pruner: Pruner = Pruner()
    resources: Resources = Resources()
    max_concurrent: StrictInt | None = Field(default=None, ge=1, le=10_000)
    max_failures: StrictInt = Field(default=2, ge=0, le=100)  # retries of a crashed trial (from its checkpoint)
    # Extra dotted overrides for one cell or one trial key, applied last (e.g. a smaller batch
    # for one expensive cell); `fault.<key>=value` items set the trial's `Faults` instead.
    trial_overrides: dict[str, tuple[str, ...]] = {}
    contrasts: Contrasts = Contrasts()  # analysis only: not part of the plan's fingerprint

    @model_validator(mode="after")
    def _methods(self) -> Grid:
        if self.ddgan is None and self.ddpm is None:
            raise ValueError("a grid needs a ddgan or a ddpm section")
        respaced = self.ddpm.respaced if self.ddpm is not None else None
        if respaced is not None and respaced.seeds is not None:
            unknown = sorted(set(respaced.seeds) - set(self.seeds))
            if unknown:
                raise ValueError(f"ddpm.respaced.seeds {unknown} are not among the grid's seeds {list(self.seeds)}")
        for method in ("ddgan", "ddpm"):
            if getattr(self, method) is not None and method not in self.base:
                raise ValueError(f"base: no base config for method {method!r}")
        cells = set(grid_cells(self))
        for contrast in self.contrasts.planned or ():
            unknown = [c for c in (*contrast.a, *contrast.b) if c not in cells]
            if unknown:
                raise ValueError(f"contrasts: {contrast.name!r} names no cell of this grid: {unknown} "
                                 f"(cells: {', '.join(sorted(cells))})")
        return self


def grid_cells(grid: Grid) -> list[str]:
    """The cells a grid's axes make, named as `expand` names them (without resolving any config)."""
    cells = []
    if grid.ddgan is not None:
        cells += [f"ddgan-{loss}-T{T}" for loss in grid.ddgan.losses for T in grid.ddgan.T]
    if grid.ddpm is not None:
        respaced = grid.ddpm.respaced
        model_Ts = list(grid.ddpm.T) + ([respaced.T] if respaced and respaced.T not in grid.ddpm.T else [])
        cells += [f"ddpm-T{T}" for T in model_Ts]
        if respaced is not None:
            cells += [f"ddpm-{sampler}-S{S}" for sampler in respaced.samplers for S in respaced.steps]
    return cells


@dataclass(frozen=True)
class TrialSpec:
    """One trial: a cell, a base config and the dotted overrides that make its config."""

    key: str  # unique within the study; names the MLflow run and the Optuna trial
    cell: str
    phase: str  # "train" | "sample"
    method: str
    loss: str  # DDGAN objective; "mse" for DDPM
    T: int  # DDGAN/DDPM steps; for sample trials the model's T
    lr: float
    seed: int
    base: str  # absolute path of the base config
    overrides: tuple[str, ...]
    sampling_steps: int | None = None  # sample trials: S
    sampler: str | None = None  # DDPM sampler
    source: str | None = None  # sample trials: the key of the trial that trained the model
    total_steps: int = 0
    faults: dict[str, Any] = field(default_factory=dict)  # Faults fields that are set (tests only)
    # The metric this trial is scored by when it is not the grid's: a sample trial evaluated on
    # fewer images (respaced.n_samples) reports e.g. eval/fd_fmnist_250, never under the 2k name.
    metric: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Plan:
    grid: Grid
    path: Path
    trials: list[TrialSpec]
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> resolved config

    def cells(self) -> dict[str, list[TrialSpec]]:
        out: dict[str, list[TrialSpec]] = {}
        for spec in self.trials:
            out.setdefault(spec.cell, []).append(spec)
        return out

    def phase(self, name: str) -> list[TrialSpec]:
        return [t for t in self.trials if t.phase == name]

    def fingerprint(self) -> str:
        """Hash of what defines the study's trials (a changed grid must not be resumed)."""
        items = [(t.key, t.cell, t.overrides, self.configs.get(t.key), t.faults or None) for t in self.trials]
        blob = json.dumps([self.grid.metric, self.grid.mode, items], sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def grid_names() -> list[str]:
    return sorted(p.stem for p in GRID_DIR.glob("*.yaml"))


def find_grid(name_or_path: str) -> Path:
    """`smoke` -> configs/grids/smoke.yaml; a path is used as is."""
    looks_like_path = "/" in name_or_path or name_or_path.endswith((".yaml", ".yml"))
    if looks_like_path:
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise UsageError(f"grid file {str(path)!r} not found")
        return path.resolve()
    path = GRID_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise UsageError(f"unknown grid {name_or_path!r}; valid: {', '.join(grid_names())} (or a path to a YAML file)")
    return path.resolve()


def load_grid(name_or_path: str) -> tuple[Grid, Path]:
    path = find_grid(name_or_path)
    return validate(Grid, read_yaml(path), f"grid {path.name}"), path


# -- expansion ----------------------------------------------------------------------------


def _yaml_list(values: tuple[str, ...]) -> str:
    return "[" + ", ".join(values) + "]"


def _eval_overrides(plan: EvalPlan) -> list[str]:
    out = [f"eval.every={plan.every}", f"eval.n_samples={plan.n_samples}",
           f"eval.metrics={_yaml_list(plan.metrics)}", f"eval.final_metrics={_yaml_list(plan.final_metrics)}"]
    for name in ("batch_size", "final_n_samples", "grid_size", "reference_split", "reference_n"):
        value = getattr(plan, name)
        if value is not None:
            out.append(f"eval.{name}={value}")
    return out


def _resolve(base: dict[str, Any], overrides: list[str], where: str) -> Config:
    try:
        cfg = resolve_config(base, overrides)
    except ConfigError as err:
        raise ConfigError(f"trial {where}: {err}") from None
    d = cfg.diffusion
    try:  # e.g. linear betas >= 1 at small T: refused now, not when the trial builds it
        build_schedule(d.schedule, d.T, beta_min=d.beta_min, beta_max=d.beta_max)
    except ValueError as err:
        raise ConfigError(f"trial {where}: diffusion: {err}") from None
    return cfg


def _with_budget(base: dict[str, Any], overrides: list[str], budget: Budget, where: str) -> list[str]:
    """Append `train.steps=N` (from images seen, the batch size is the resolved one)."""
    if budget.steps is not None:
        return [*overrides, f"train.steps={budget.steps}"]
    batch = _resolve(base, overrides, where).train.batch_size
    return [*overrides, f"train.steps={-(-budget.images // batch)}"]


class _Expander:
    """Builds the trial list of one grid; every config is resolved (validated) on the way."""

    def __init__(self, grid: Grid, path: Path):
        self.grid, self.path = grid, path
        self.bases = {m: self._base_path(p) for m, p in grid.base.items()}
        self.raw = {m: read_yaml(p) for m, p in self.bases.items()}
        self.trials: list[TrialSpec] = []
        self.configs: dict[str, dict[str, Any]] = {}

    def _base_path(self, text: str) -> Path:
        path = Path(text).expanduser()
        path = path if path.is_absolute() else (self.path.parent / path)
        if not path.is_file():
            raise ConfigError(f"grid {self.path.name}: base config {text!r} not found (relative to the grid file)")
        return path.resolve()

    def add(self, spec: TrialSpec) -> TrialSpec:
        if any(t.key == spec.key for t in self.trials):
            raise ConfigError(f"grid {self.path.name}: two trials have the key {spec.key!r} (repeated axis value?)")
        extra = (*self.grid.trial_overrides.get(spec.cell, ()), *self.grid.trial_overrides.get(spec.key, ()))
        faults = {path[1]: value for path, value in map(parse_override, extra) if path[0] == "fault" and len(path) == 2}
        extra = tuple(o for o in extra if not o.strip().startswith("fault."))
        if extra or faults:
            spec = TrialSpec(**{**spec.to_dict(), "overrides": (*spec.overrides, *extra),
                                "faults": self._faults(faults, spec.key)})
        cfg = _resolve(self.raw[spec.method], list(spec.overrides), spec.key)
        spec = TrialSpec(**{**spec.to_dict(), "total_steps": cfg.train.steps})
        self.trials.append(spec)
        self.configs[spec.key] = cfg.to_dict()
        return spec

    def _faults(self, values: dict[str, Any], key: str) -> dict[str, Any]:
        faults = validate(Faults, values, f"grid {self.path.name}: trial_overrides of {key}: fault")
        return faults.model_dump(exclude_defaults=True)

    def common(self, extra: tuple[str, ...]) -> list[str]:
        """Grid-wide overrides, the eval plan, then the method's own (the more specific wins)."""
        return [*self.grid.overrides, *_eval_overrides(self.grid.eval), *extra]

    def ddgan(self, axes: DDGANAxes) -> None:
        for loss in axes.losses:
            for T in axes.T:
                for lr in axes.lr:
                    for seed in self.grid.seeds:
                        key = f"ddgan-{loss}-T{T}-lr{lr:g}-s{seed}"
                        own = [f"objective.loss={loss}", f"diffusion.T={T}", f"train.lr_g={lr!r}", f"train.seed={seed}"]
                        overrides = self.common(axes.overrides) + own
                        overrides = _with_budget(self.raw["ddgan"], overrides, self.grid.budget, key)
                        self.add(TrialSpec(key, f"ddgan-{loss}-T{T}", "train", "ddgan", loss, T, lr, seed,
                                           str(self.bases["ddgan"]), tuple(overrides)))

    def ddpm(self, axes: DDPMAxes) -> None:
        respaced = axes.respaced
        model_Ts = list(axes.T) + ([respaced.T] if respaced and respaced.T not in axes.T else [])
        budget = axes.budget or self.grid.budget
        for T in model_Ts:
            for lr in axes.lr:
                for seed in self.grid.seeds:
                    key = f"ddpm-T{T}-lr{lr:g}-s{seed}"
                    own = [f"diffusion.T={T}", f"train.lr_g={lr!r}", f"train.seed={seed}"]
                    if respaced and T == respaced.T:
                        own.append(f"diffusion.schedule={respaced.schedule}")
                        own += list(respaced.train_eval if respaced.train_eval is not None
                                    else (f"eval.respaced_steps={min(respaced.steps)}", "eval.sampler=ddim"))
                    overrides = _with_budget(self.raw["ddpm"], self.common(axes.overrides) + own, budget, key)
                    source = self.add(TrialSpec(key, f"ddpm-T{T}", "train", "ddpm", "mse", T, lr, seed,
                                                str(self.bases["ddpm"]), tuple(overrides)))
                    if respaced and T == respaced.T:
                        self.sample_trials(source, respaced)

    def sample_trials(self, source: TrialSpec, respaced: Respaced) -> None:
        if respaced.seeds is not None and source.seed not in respaced.seeds:
            return
        for sampler in respaced.samplers:
            for S in respaced.steps:
                own = (f"eval.respaced_steps={S}", f"eval.sampler={sampler}")
                metric = None
                if S in respaced.n_samples:
                    own += (f"eval.n_samples={respaced.n_samples[S]}",)
                    metric = metric_at_count(self.grid.metric, self.grid.eval.n_samples, respaced.n_samples[S])
                self.add(TrialSpec(
                    f"ddpm-{sampler}-S{S}-of-{source.key}", f"ddpm-{sampler}-S{S}", "sample", "ddpm", "mse",
                    source.T, source.lr, source.seed, source.base, (*source.overrides, *own),
                    sampling_steps=S, sampler=sampler, source=source.key, metric=metric))


def metric_at_count(metric: str, n: int, new_n: int) -> str:
    """The grid's metric name for `new_n` evaluation images: eval/fd_fmnist_2k -> eval/fd_fmnist_250.
    A metric whose name does not end in the count of `n` is returned unchanged."""
    base, _, label = metric.rpartition("_")
    return f"{base}_{count_label(new_n)}" if base and label == count_label(n) else metric


def expand(grid: Grid, path: Path) -> Plan:
    """All trials of `grid` in run order (DDGAN, then DDPM, then the sampling phase)."""
    expander = _Expander(grid, path)
    if grid.ddgan is not None:
        expander.ddgan(grid.ddgan)
    if grid.ddpm is not None:
        expander.ddpm(grid.ddpm)
    trials = [t for t in expander.trials if t.phase == "train"] + [t for t in expander.trials if t.phase == "sample"]
    names = {t.key for t in trials} | {t.cell for t in trials}
    unknown = sorted(set(grid.trial_overrides) - names)
    if unknown:
        raise ConfigError(f"grid {path.name}: trial_overrides names no cell or trial: {', '.join(unknown)} "
                          f"(cells: {', '.join(sorted({t.cell for t in trials}))})")
    return Plan(grid, path, trials, expander.configs)


def load_plan(name_or_path: str) -> Plan:
    grid, path = load_grid(name_or_path)
    return expand(grid, path)
