"""The study driver: validate everything, create the stores, then run Ray Tune phase by phase.

`prepare` checks the grid, every trial's config, the data, the stores (servers are
probed) and the resume state, and writes nothing; `--dry-run` stops there. `run_study`
then creates the databases and the plan file, computes the reference statistics once,
finds or creates the Optuna trials and MLflow runs of every trial, and runs the
"train" phase and then the "sample" phase (respaced DDPM cells) as Ray Tune experiments
under the Ray storage path, each resumable with `Tuner.restore`.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ddgan.errors import DataError, UsageError
from study.grid import Grid, Plan, TrialSpec, expand, load_grid
from study.stores import Stores, preflight, resolve_stores

REPO_ROOT = Path(__file__).resolve().parents[1]
STUDY_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


@dataclass
class StudyOptions:
    grid: str
    study: str | None = None
    dry_run: bool = False
    resume: bool = False
    address: str | None = None
    storage_path: str | None = None
    mlflow_uri: str | None = None
    optuna_storage: str | None = None
    gpus_per_trial: float | None = None
    cpus_per_trial: float | None = None
    max_concurrent: int | None = None
    data_dir: str | None = None
    fid_weights: str | None = None
    results_dir: str = "results"
    cache_dir: str | None = None  # reference statistics; default $DDGAN_CACHE_DIR, else <results>/.cache
    verbose: int = 1
    command: str | None = None  # the CLI line that started the study (recorded on the parent run)


@dataclass
class Prepared:
    options: StudyOptions
    plan: Plan
    stores: Stores
    data_dir: Path | None
    fid_weights: str | None
    notes: list[str] = field(default_factory=list)

    @property
    def grid(self) -> Grid:
        return self.plan.grid


def _apply_flags(grid: Grid, options: StudyOptions) -> Grid:
    resources = grid.resources
    if options.cpus_per_trial is not None:
        if options.cpus_per_trial <= 0:
            raise UsageError(f"--cpus-per-trial must be > 0, got {options.cpus_per_trial}")
        resources = resources.model_copy(update={"cpus": options.cpus_per_trial})
    if options.gpus_per_trial is not None:
        if options.gpus_per_trial < 0:
            raise UsageError(f"--gpus-per-trial must be >= 0, got {options.gpus_per_trial}")
        resources = resources.model_copy(update={"gpus": options.gpus_per_trial})
    update: dict[str, Any] = {"resources": resources}
    if options.max_concurrent is not None:
        if options.max_concurrent < 1:
            raise UsageError(f"--max-concurrent must be >= 1, got {options.max_concurrent}")
        update["max_concurrent"] = options.max_concurrent
    return grid.model_copy(update=update)


def _inception_available(fid_weights: str | None) -> bool:
    try:
        from ddgan.metrics.inception import resolve_weights

        resolve_weights(fid_weights, "cpu", allow_download=False)
        return True
    except Exception:
        return False


def _final_metrics(grid: Grid, fid_weights: str | None, notes: list[str]) -> Grid:
    """Drop Inception final metrics when no weights are present (the grid still runs)."""
    wanted = grid.eval.final_metrics
    inception = [m for m in wanted if m.endswith("_inception")]
    if not inception or _inception_available(fid_weights):
        return grid
    if fid_weights:
        from ddgan.metrics.inception import resolve_weights

        try:  # again, for the precise reason (missing, not TorchScript, not Inception)
            resolve_weights(fid_weights, "cpu", allow_download=False)
        except UsageError as err:
            raise UsageError(f"--fid-weights: {err}") from None
        raise UsageError(f"--fid-weights {fid_weights!r}: not a usable TorchScript Inception file")
    notes.append(f"no Inception weights found: final metrics {', '.join(inception)} skipped (pass --fid-weights)")
    kept = tuple(m for m in wanted if m not in inception)
    return grid.model_copy(update={"eval": grid.eval.model_copy(update={"final_metrics": kept})})


def expected_metrics(config: dict[str, Any]) -> set[str]:
    """The metric names one intermediate evaluation of this config reports."""
    from ddgan.config import Config
    from ddgan.metrics.evaluator import metric_specs

    eval_cfg = Config.from_dict(config).eval
    return {s.name for s in metric_specs(eval_cfg, final=False)} | {"eval/nfe", "eval/sample_ms_per_image"}


def _check_metric(plan: Plan) -> None:
    metric = plan.grid.metric
    if not metric.startswith("eval/"):
        return
    for spec in plan.trials:
        names = expected_metrics(plan.configs[spec.key])
        if metric not in names:
            raise UsageError(f"grid {plan.path.name}: metric {metric!r} is not reported by trial {spec.key} "
                             f"(its evaluations report: {', '.join(sorted(names))})")


def _check_data(data_dir: str | None, plan: Plan) -> Path:
    from ddgan.data import load_fashion_mnist, resolve_data_dir

    path = resolve_data_dir(data_dir)
    if not path.is_dir():
        raise DataError(f"data directory {str(path)!r} not found")
    splits = {"train"} | {c["eval"]["reference_split"] for c in plan.configs.values()}
    for split in sorted(splits):
        load_fashion_mnist(path, split)  # validates headers, sizes and label counts
    return path.resolve()


def _check_resume(stores: Stores, plan: Plan, resume: bool) -> None:
    exists = stores.plan_file.is_file()
    if resume and not exists:
        raise UsageError(f"--resume: no previous study {stores.study!r} under {str(stores.results_dir)!r}")
    if not resume and exists:
        raise UsageError(f"study {stores.study!r} already exists in {str(stores.study_dir)!r}: "
                         "pass --resume to continue it, or --study NAME for a new one")
    if resume:
        try:
            saved = json.loads(stores.plan_file.read_text())
        except (OSError, ValueError):
            raise UsageError(f"--resume: {str(stores.plan_file)!r} is unreadable") from None
        if saved.get("fingerprint") != plan.fingerprint():
            raise UsageError(f"--resume: the grid changed since study {stores.study!r} started "
                             "(trials or their configs differ); use --study NAME to start a new study")
        _check_resume_checkpoints(stores)


def _check_resume_checkpoints(stores: Stores) -> None:
    """--resume: the newest Ray checkpoint of every trial must open (`weights_only`, memory-mapped,
    so cheap: a truncated or garbage file is refused here instead of failing its trial on every retry)."""
    if "://" in stores.ray_storage:
        return  # remote storage: the trial checks it when it restores
    import torch

    from ddgan.errors import CheckpointError

    for trial_dir in sorted(p for p in Path(stores.ray_storage).glob("*/*") if p.is_dir()):
        saved = sorted(trial_dir.glob("checkpoint_*"))
        files = sorted(saved[-1].glob("ckpt_*.pt")) if saved else []
        if saved and not files:
            raise CheckpointError(f"--resume: Ray checkpoint {str(saved[-1])!r} holds no ckpt_*.pt file")
        if not files:
            continue
        try:
            torch.load(files[-1], map_location="cpu", weights_only=True, mmap=True)
        except Exception as err:  # truncated zip, garbage bytes, disallowed pickle globals
            raise CheckpointError(f"--resume: checkpoint {str(files[-1])!r} is unreadable or corrupt "
                                  f"({type(err).__name__}); restore it or start a new study with --study NAME") from None


def _check_gpus(grid: Grid, options: StudyOptions) -> None:
    if grid.resources.gpus > 0 and options.address is None:
        import torch

        if torch.cuda.device_count() == 0:
            raise UsageError(f"{grid.resources.gpus} GPU(s) per trial requested but this machine has no GPU "
                             "(use --gpus-per-trial 0, or --address to join a cluster with GPUs)")


def prepare(options: StudyOptions) -> Prepared:
    """Validate everything the study needs; write nothing, start nothing."""
    import re

    grid, path = load_grid(options.grid)
    grid = _apply_flags(grid, options)
    notes: list[str] = []
    grid = _final_metrics(grid, options.fid_weights, notes)
    plan = expand(grid, path)
    _check_metric(plan)
    study = options.study or grid.name
    if not re.match(STUDY_NAME, study):
        raise UsageError(f"--study {study!r}: use letters, digits, '.', '_' or '-'")
    stores = resolve_stores(study, options.results_dir, mlflow_uri=options.mlflow_uri,
                            optuna_storage=options.optuna_storage, storage_path=options.storage_path,
                            address=options.address)
    _check_gpus(grid, options)
    data_dir = _check_data(options.data_dir, plan)
    preflight(stores)
    _check_resume(stores, plan, options.resume)
    return Prepared(options, plan, stores, data_dir, options.fid_weights, notes)


# -- helpers the run uses ----------------------------------------------------------------------


def git_commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def study_command(options: StudyOptions) -> str:
    """The command that started this study, passwords masked (recorded on the parent run)."""
    from study.stores import mask_uri

    if options.command is None:
        return "study.driver.run_study (library call, no command line)"
    return " ".join(mask_uri(part) if "://" in part else part for part in shlex.split(options.command))


def rerun_command(spec: TrialSpec, prep: Prepared) -> str:
    """The command that reruns this one trial outside the study."""
    data = ["--data-dir", str(prep.data_dir)] if prep.data_dir else []
    if spec.phase == "sample":
        return shlex.join(["python", "-m", "ddgan.sample", "--checkpoint", f"<model/ of trial {spec.source}>",
                           "--steps", str(spec.sampling_steps), "--sampler", str(spec.sampler), "--n", "64",
                           "--out", f"{spec.key}.png"])
    out = prep.stores.study_dir / "rerun" / spec.key
    sets = [arg for override in spec.overrides for arg in ("--set", override)]
    return shlex.join(["python", "-m", "ddgan.train", "--config", spec.base, *sets, "--out", str(out), *data])


def trial_tags(spec: TrialSpec, prep: Prepared, commit: str, optuna_number: int) -> dict[str, Any]:
    return {"study": prep.stores.study, "cell": spec.cell, "phase": spec.phase, "method": spec.method,
            "loss": spec.loss, "T": spec.T, "lr": spec.lr, "seed": spec.seed, "sampler": spec.sampler,
            "sampling_steps": spec.sampling_steps, "source_trial": spec.source, "total_steps": spec.total_steps,
            "metric": prep.grid.metric, "optuna_study": f"{prep.stores.study}/{spec.cell}",
            "optuna_trial_number": optuna_number, "git_commit": commit, "rerun_command": rerun_command(spec, prep)}


def write_plan_file(prep: Prepared) -> None:
    plan = prep.plan
    doc = {"study": prep.stores.study, "grid": str(plan.path), "fingerprint": plan.fingerprint(),
           "metric": plan.grid.metric, "mode": plan.grid.mode, "stores": prep.stores.describe(),
           "trials": [t.to_dict() for t in plan.trials]}
    tmp = prep.stores.plan_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=str))
    tmp.replace(prep.stores.plan_file)


def prepare_references(prep: Prepared) -> None:
    """Reference statistics for every distinct eval config, computed once before any trial."""
    from ddgan.config import Config
    from ddgan.metrics.evaluator import prepare_reference

    seen = set()
    for config in prep.plan.configs.values():
        eval_cfg = Config.from_dict(config).eval
        key = (eval_cfg.metrics, eval_cfg.final_metrics, eval_cfg.n_samples, eval_cfg.final_n_samples,
               eval_cfg.reference_split, eval_cfg.reference_n)
        if key in seen or not (eval_cfg.metrics or eval_cfg.final_metrics):
            continue
        seen.add(key)
        prepare_reference(eval_cfg, prep.data_dir, "cpu", cache_dir=cache_dir(prep), fid_weights=prep.fid_weights)


def cache_dir(prep: Prepared) -> str:
    """--cache-dir, else $DDGAN_CACHE_DIR, else `<results>/.cache` (shared storage on a cluster)."""
    given = prep.options.cache_dir or os.environ.get("DDGAN_CACHE_DIR")
    return str(Path(given).expanduser().resolve()) if given else str(prep.stores.cache_dir)


# -- the run -------------------------------------------------------------------------------------


def run_study(options: StudyOptions) -> str:
    """Run (or resume) a study; returns the end-of-run summary text. `--dry-run`: the plan only."""
    import time

    from study import summary

    prep = prepare(options)
    if options.dry_run:
        return summary.describe_plan(prep)
    start = time.perf_counter()
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Ray's CLIReporter table (cell, step, metric, status)
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    from study import stores as stores_mod

    stores_mod.init_stores(prep.stores)
    write_plan_file(prep)
    for note in prep.notes:
        print(f"note: {note}")
    prepare_references(prep)
    hooks, context = _bookkeeping(prep)
    from study.pruning import register_driver
    from study.tuning import init_ray, run_phase

    register_driver(prep.stores.study, hooks)
    init_ray(options.address, prep.grid.resources.gpus)
    resources = {"cpu": prep.grid.resources.cpus, "gpu": prep.grid.resources.gpus}
    for phase in ("train", "sample"):
        specs = prep.plan.phase(phase)
        if phase == "sample":
            specs = _runnable_sample_trials(specs, hooks)
        if specs:
            run_phase(phase, [{"key": s.key, "cell": s.cell} for s in specs], context,
                      storage=prep.stores.ray_storage, resources=resources,
                      max_concurrent=prep.grid.max_concurrent, max_failures=prep.grid.max_failures,
                      resume=options.resume, verbose=options.verbose)
            hooks.reconcile([s.key for s in specs])
    text, counts = summary.summarize(prep, hooks.book, time.perf_counter() - start)
    hooks.tracker.finish_parent(hooks.parent_run_id, counts, {
        "wall_minutes": f"{(time.perf_counter() - start) / 60:.1f}", "machine": machine_description()})
    return text


def machine_description() -> str:
    import platform

    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.machine()} {os.cpu_count()} cores, {gpu}, torch {torch.__version__}"


def _runnable_sample_trials(specs: list[TrialSpec], hooks) -> list[TrialSpec]:
    """Sample trials whose source model finished; the others fail at once, with the reason."""
    from optuna.trial import TrialState

    runnable = []
    for spec in specs:
        source_state = hooks.book.frozen(spec.source).state
        if source_state == TrialState.COMPLETE:
            runnable.append(spec)
        elif not hooks.book.frozen(spec.key).state.is_finished():
            hooks.on_skipped(spec.key, f"source trial {spec.source} ended {source_state.name}: no model to sample")
    return runnable


def _bookkeeping(prep: Prepared):
    """Optuna trials and MLflow runs for every trial (found or created), and the trials' context."""
    from study.pruning import CellBook, build_pruner
    from study.stores import optuna_storage
    from study.tracking import Tracker
    from study.trainable import TrialContext
    from study.tuning import DriverHooks

    plan, stores = prep.plan, prep.stores
    book = CellBook(optuna_storage(stores.optuna_url), stores.study, plan.grid.mode,
                    build_pruner(plan.grid.pruner, plan.grid.eval.every))
    refs = book.ensure(plan)
    tracker = Tracker(stores.mlflow_uri, stores.artifact_root)
    experiment = tracker.experiment(stores.study)
    commit = git_commit()
    parent = tracker.parent_run(experiment, stores.study, {
        "grid": str(plan.path), "fingerprint": plan.fingerprint(), "metric": plan.grid.metric,
        "mode": plan.grid.mode, "pruner": plan.grid.pruner.kind, "git_commit": commit, "command": study_command(prep.options),
        "trials": len(plan.trials), "cells": len(plan.cells())})
    run_ids = tracker.trial_runs(experiment, parent, [
        (s.key, trial_tags(s, prep, commit, refs[s.key].number), plan.configs[s.key]) for s in plan.trials])
    hooks = DriverHooks(book, tracker, parent, run_ids, plan.grid.metric, {s.key: s.total_steps for s in plan.trials})
    context = TrialContext(
        study=stores.study, metric=plan.grid.metric, mlflow_uri=stores.mlflow_uri, run_ids=run_ids,
        optuna_numbers={k: r.number for k, r in refs.items()}, specs={s.key: s.to_dict() for s in plan.trials},
        configs=plan.configs, data_dir=str(prep.data_dir) if prep.data_dir else None, cache_dir=cache_dir(prep),
        fid_weights=prep.fid_weights, cpus_per_trial=plan.grid.resources.cpus)
    return hooks, context
