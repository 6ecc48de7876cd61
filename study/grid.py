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
    # Other T for some objectives (e.g. {ns: [1, 2, 4]} with T: [2]): a design that is not a full
    # losses x T product; the losses not named here take `T`.
    T_by_loss: dict[str, tuple[StepCount, ...]] = {}

    @model_validator(mode="after")
    def _named_losses(self) -> DDGANAxes:
        unknown = sorted(set(self.T_by_loss) - set(self.losses))
        if unknown:
            raise ValueError(f"T_by_loss names {unknown}, not among losses {list(self.losses)}")
        if any(not ts for ts in self.T_by_loss.values()):
            raise ValueError("T_by_loss: every objective needs at least one T")
        return self

    def T_of(self, loss: str) -> tuple[int, ...]:
        """The T an objective trains with."""
        return self.T_by_loss.get(loss, self.T)


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
    # Sample only the models of these seeds at every S (default: every seed of the grid; [] none).
    # The models of the other seeds still train and are scored at training time (train_eval), as
    # in a learning-rate pilot.
    seeds: tuple[StrictInt, ...] | None = None

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
    contrast's own cells ("contrast"; a two-cell contrast is then the paired t-test), or one
    variance per group of cells that scatter alike ("groups": each DDGAN objective at every T, the
    DDPM training cells, each DDPM sampler; study/report/claims.py:variance_group)."""

    variance: Literal["study", "contrast", "groups"] = "study"
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


class Pilot(Strict):
    """The learning-rate pilot: `ddgan.lr` and `ddpm.lr` are its candidates, and one rate per method
    (each DDGAN objective, and DDPM) is chosen once from it, on its own seeds, before the reported
    trials start. It is a study of its own (`<study>-pilot`): its trials never enter the report's
    analysis, and the pruner acts only there (see `choose_lr`)."""

    seeds: tuple[StrictInt, ...] = Field(min_length=1)  # none of the grid's seeds
    budget: Budget | None = None  # default: the grid's
    ddgan_T: tuple[StepCount, ...] | None = Field(default=None, min_length=1)  # default: the grid's T
    ddpm_T: tuple[StepCount, ...] | None = Field(default=None, min_length=1)  # default: the DDPM models' T
    pruner: Pruner = Pruner()


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
    pilot: Pilot | None = None  # the learning rate chosen on a pilot study (then one rate per method)

    @model_validator(mode="after")
    def _methods(self) -> Grid:
        if self.ddgan is None and self.ddpm is None:
            raise ValueError("a grid needs a ddgan or a ddpm section")
        if self.pilot is not None:
            shared = sorted(set(self.pilot.seeds) & set(self.seeds))
            if shared:
                raise ValueError(f"pilot.seeds {shared} are also the grid's seeds: the pilot's trials must "
                                 "not be the reported ones (give the pilot its own seeds)")
            if self.pruner.kind != "none":
                raise ValueError("with a pilot the pruner acts only inside it (pilot.pruner): set the grid's "
                                 "pruner to {kind: none}, so no reported trial is stopped")
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
        cells += [f"ddgan-{loss}-T{T}" for loss in grid.ddgan.losses for T in grid.ddgan.T_of(loss)]
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

    def __init__(self, grid: Grid, path: Path, lr_choice: dict[str, float] | None = None):
        self.grid, self.path = grid, path
        self.lr_choice = lr_choice or {}
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

    def rates(self, group: str, candidates: tuple[float, ...]) -> list[tuple[float, str]]:
        """(lr, its part of the trial key) for each rate a method trains with: every candidate, or,
        with a pilot, the one it chose (the first candidate stands in until the pilot has run, e.g.
        in a dry-run; the key then names no rate, so it does not change when the choice is made)."""
        if self.grid.pilot is None:
            return [(lr, f"-lr{lr:g}") for lr in candidates]
        return [(self.lr_choice.get(group, candidates[0]), "")]

    def ddgan(self, axes: DDGANAxes) -> None:
        for loss in axes.losses:
            for T in axes.T_of(loss):
                for lr, lr_key in self.rates(f"ddgan-{loss}", axes.lr):
                    for seed in self.grid.seeds:
                        key = f"ddgan-{loss}-T{T}{lr_key}-s{seed}"
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
            for lr, lr_key in self.rates("ddpm", axes.lr):
                for seed in self.grid.seeds:
                    key = f"ddpm-T{T}{lr_key}-s{seed}"
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


def method_groups(grid: Grid) -> list[str]:
    """The groups that each get one learning rate from a pilot: `ddgan-<loss>` per objective, `ddpm`."""
    return ([f"ddgan-{loss}" for loss in grid.ddgan.losses] if grid.ddgan else []) + (["ddpm"] if grid.ddpm else [])


def pilot_grid(grid: Grid) -> Grid:
    """The pilot of a grid as a grid of its own: the candidate rates x the pilot's T x its seeds, its
    budget and pruner, no sampling phase, no final metrics (nothing of it is reported)."""
    pilot = grid.pilot
    if pilot is None:
        raise ValueError(f"grid {grid.name!r} has no pilot")
    ddgan = ddpm = None
    if grid.ddgan is not None:
        ddgan = grid.ddgan if pilot.ddgan_T is None else grid.ddgan.model_copy(update={"T": pilot.ddgan_T,
                                                                                         "T_by_loss": {}})
    if grid.ddpm is not None:
        respaced = grid.ddpm.respaced
        model_Ts = pilot.ddpm_T or grid.ddpm.T or (respaced.T,)
        if respaced is not None:  # its model trains, scored as in the study (train_eval); none is sampled
            respaced = respaced.model_copy(update={"seeds": ()}) if respaced.T in model_Ts else None
        ddpm = grid.ddpm.model_copy(update={"T": tuple(model_Ts), "respaced": respaced, "budget": None})
    raw = grid.model_dump(exclude={"pilot", "contrasts", "ddgan", "ddpm", "trial_overrides"})
    raw.update(name=f"{grid.name}-pilot", description=f"learning-rate pilot of grid {grid.name}",
               seeds=pilot.seeds, budget=(pilot.budget or grid.budget).model_dump(exclude_none=True),
               pruner=pilot.pruner.model_dump(), eval={**raw["eval"], "final_metrics": (), "final_n_samples": None},
               ddgan=ddgan.model_dump() if ddgan else None, ddpm=ddpm.model_dump() if ddpm else None)
    cells = set(grid_cells(validate(Grid, raw, f"grid {grid.name}: pilot")))
    raw["trial_overrides"] = {k: v for k, v in grid.trial_overrides.items() if k in cells}
    return validate(Grid, raw, f"grid {grid.name}: pilot")


def expand(grid: Grid, path: Path, lr_choice: dict[str, float] | None = None) -> Plan:
    """All trials of `grid` in run order (DDGAN, then DDPM, then the sampling phase). With a pilot,
    `lr_choice` (method group -> rate, from `study.pilot.choose_lr`) sets each method's rate."""
    if lr_choice:
        groups = method_groups(grid)
        unknown, missing = sorted(set(lr_choice) - set(groups)), [g for g in groups if g not in lr_choice]
        if unknown or missing or grid.pilot is None:
            raise ConfigError(f"grid {path.name}: learning rates chosen for {sorted(lr_choice)}, but its pilot "
                              f"chooses one for each of {groups}" if grid.pilot else
                              f"grid {path.name} has no pilot: its learning rates are not chosen")
        candidates = {g: (grid.ddgan.lr if g.startswith("ddgan-") else grid.ddpm.lr) for g in groups}
        foreign = {g: lr for g, lr in lr_choice.items() if lr not in candidates[g]}
        if foreign:
            raise ConfigError(f"grid {path.name}: chosen rates {foreign} are not among the candidates "
                              f"{ {g: list(c) for g, c in candidates.items() if g in foreign} }")
    expander = _Expander(grid, path, lr_choice)
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
