"""The study driver: create the stores, then run Ray Tune phase by phase.

`run_study` validates everything first (`study.prepare`; `--dry-run` stops there), then
creates the databases and the plan file, computes the reference statistics once, finds or
creates the Optuna trials and MLflow runs of every trial, and runs the "train" phase and
then the "sample" phase (respaced DDPM cells) as Ray Tune experiments under the Ray
storage path. `--resume` reads only the project's own state (plan.json, the Optuna and
MLflow stores, checkpoint files loaded with weights_only), never Ray's pickles.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shlex
import subprocess
import time
from pathlib import Path
from typing import Any

import torch
from optuna.trial import TrialState

from ddgan.errors import UsageError
from study import cost, pilot, stores, summary, tuning
from study.grid import TrialSpec
from study.prepare import Prepared, StudyOptions, prepare
from study.progress import Progress
from study.stores import history
from study.stores.tracking import Tracker
from study.stores.uris import chosen_cache_dir
from study.tuning.project import this_project
from study.tuning.pruning import CellBook, build_pruner, register_driver
from study.tuning.references import distinct_eval_configs, run_reference_task
from study.tuning.speed import log_speed
from study.tuning.trial import TrialContext

REPO_ROOT = Path(__file__).resolve().parents[1]
__all__ = ["Prepared", "StudyOptions", "prepare", "run_study", "write_plan_file"]


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
    if options.command is None:
        return "study.driver.run_study (library call, no command line)"
    return " ".join(stores.mask_uri(part) if "://" in part else part for part in shlex.split(options.command))


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
            "metric": spec.metric or prep.grid.metric, "optuna_study": f"{prep.stores.study}/{spec.cell}",
            "optuna_trial_number": optuna_number, "git_commit": commit, "rerun_command": rerun_command(spec, prep)}


def write_plan_file(prep: Prepared) -> None:
    plan = prep.plan
    doc = {"study": prep.stores.study, "grid": str(plan.path), "fingerprint": plan.fingerprint(),
           "metric": plan.grid.metric, "mode": plan.grid.mode, "stores": prep.stores.describe(),
           "trials": [t.to_dict() for t in plan.trials]}
    tmp = prep.stores.plan_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=str))
    tmp.replace(prep.stores.plan_file)


def prepare_references(prep: Prepared) -> Prepared:
    """Reference statistics for every distinct eval config, computed once before any trial, as one
    Ray task with a trial's resources on the trials' device (`study.tuning.references`; Ray must be
    up). Returns `prep` with the Inception weights that task used (absolute path, sha256)."""
    configs = distinct_eval_configs(prep.plan.configs)
    if not configs:
        return prep
    done = run_reference_task(configs, data_dir=str(prep.data_dir) if prep.data_dir else None,
                              cache_dir=cache_dir(prep), fid_weights=prep.fid_weights,
                              fid_weights_sha256=prep.fid_weights_sha256, cpus_per_trial=prep.grid.resources.cpus,
                              gpus_per_trial=prep.grid.resources.gpus)
    return dataclasses.replace(prep, fid_weights=done["fid_weights"], fid_weights_sha256=done["fid_weights_sha256"])


def cache_dir(prep: Prepared) -> str:
    """--cache-dir, else $DDGAN_CACHE_DIR, else `<results>/.cache` (shared storage on a cluster)."""
    given = chosen_cache_dir(prep.options.cache_dir)
    return str(Path(given).expanduser().resolve()) if given else str(prep.stores.cache_dir)


# -- the run -------------------------------------------------------------------------------------


class StudyInterrupted(Exception):
    """The run returned with trials unfinished (Ctrl-C: Ray stops its trials and returns); `text`
    is the summary so far. `study.run` prints it and exits 130; `--resume` continues."""

    def __init__(self, text: str):
        super().__init__("interrupted: run the same command with --resume to continue")
        self.text = text


def run_study(options: StudyOptions) -> str:
    """Run (or resume) a study; returns the end-of-run summary text. `--dry-run`: the plan only.

    A grid with a pilot (study.pilot): its pilot study first, unless it has already chosen; then the
    study at the chosen rates (a new one, or resumed when `--resume` finds it started). Raises
    StudyInterrupted when a stage returns with trials unfinished."""
    prep = prepare(options)
    if options.dry_run:
        return summary.describe_plan(prep)
    if prep.pilot is None:
        text, _, finished = _run(prep)
        if not finished:
            raise StudyInterrupted(text)
        return text
    texts = []
    choice_file = prep.pilot.stores.study_dir / pilot.CHOICE_FILE
    choice = pilot.read_choice(choice_file)
    if choice is None:
        text, hooks, finished = _run(prep.pilot)
        texts.append(text)
        if not finished:  # no choice from a half-run pilot, and no study yet
            raise StudyInterrupted("\n\n".join(texts))
        texts.append("\n".join(_choose(prep.pilot, hooks, choice_file)))
        choice = pilot.read_choice(choice_file)
    if choice is None:
        raise UsageError(f"the pilot study {prep.pilot.stores.study!r} made no choice ({str(choice_file)!r} missing)")
    resume = options.resume and prep.stores.plan_file.is_file()
    main = dataclasses.replace(prepare(dataclasses.replace(options, stage="main", lr_choice=choice, resume=resume)),
                               pilot=prep.pilot)
    text, _, finished = _run(main)
    texts.append(text)
    if not finished:
        raise StudyInterrupted("\n\n".join(texts))
    return "\n\n".join(texts)


def _choose(prep: Prepared, hooks, choice_file: Path) -> list[str]:
    """The pilot's choice of one rate per method, from its trials' final states (study.pilot); called
    once every pilot trial has ended (`_run` returned finished)."""
    names = {TrialState.COMPLETE: "completed", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}
    results = []
    for spec in prep.plan.trials:
        frozen = hooks.book.frozen(spec.key)
        results.append(pilot.PilotResult(pilot.group_of(spec.method, spec.loss), spec.cell, spec.lr, spec.seed,
                                         names.get(frozen.state, "unfinished"), frozen.value))
    choice = pilot.choose_lr(results, prep.grid.mode)
    pilot.write_choice(choice_file, choice, prep.stores.study, prep.grid.metric)
    hooks.tracker.client.log_dict(hooks.parent_run_id, {"groups": choice}, "lr_choice.json")
    return pilot.describe(choice, prep.grid.metric)


def _run(prep: Prepared) -> tuple[str, Any, bool]:
    """Run (or resume) one study: (summary text, its hooks, whether every trial has ended). A phase
    that returns with trials unfinished (Ctrl-C: Ray stops its trials and returns) ends the run
    there: the next phase, which depends on it, is left to `--resume`."""
    options = prep.options
    start = time.perf_counter()
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Ray's CLIReporter table (cell, step, metric, status)
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    stores.init_stores(prep.stores)
    write_plan_file(prep)
    invocation = history.start(prep.stores.history_file, study_command(options))
    for note in prep.notes:
        print(f"note: {note}")
    figures = cost.load_figures()["gpu" if prep.grid.resources.gpus > 0 and torch.cuda.is_available() else "cpu"]
    if options.verbose:
        print(f"{len(prep.plan.trials)} trials; " + cost.describe(prep.plan, figures, cost.load_figures()["gpu"])[2].strip())
    tuning.init_ray(options.address, prep.grid.resources.gpus)
    prep = prepare_references(prep)  # on the cluster, where the trials run
    hooks, context = _bookkeeping(prep)
    if options.verbose:  # one overall progress line (trials, steps, ETA) beside Ray's per-phase table
        hooks.progress = Progress(prep.plan, hooks.book, figures, cost.local_slots(prep.plan))
    register_driver(prep.stores.study, hooks)
    resources = {"cpu": prep.grid.resources.cpus, "gpu": prep.grid.resources.gpus}
    finished = True
    for phase in ("train", "sample"):
        specs = prep.plan.phase(phase)
        if phase == "sample":
            specs = _runnable_sample_trials(specs, hooks)
        if specs:
            phase_context = _resumed(context, hooks, specs, prep, phase) if options.resume else context
            if len(phase_context.ended) == len(specs):
                continue  # --resume: every trial of this phase has ended; Ray's record stays as it was
            tuning.run_phase(phase, [{"key": s.key, "cell": s.cell} for s in specs], phase_context,
                      storage=prep.stores.ray_storage, resources=resources,
                      max_concurrent=prep.grid.max_concurrent, max_failures=prep.grid.max_failures,
                      verbose=options.verbose)
            hooks.reconcile([s.key for s in specs])
            if any(not hooks.book.frozen(s.key).state.is_finished() for s in specs):
                finished = False
                break
    if finished and options.stage != "pilot":  # speed/*: every configuration timed alone (trials ran packed)
        log_speed(prep.plan, hooks.tracker.client, hooks.run_ids, prep.grid.resources.cpus, prep.grid.resources.gpus)
    runs = history.finish(prep.stores.history_file, invocation, time.perf_counter() - start)
    text, counts = summary.summarize(prep, hooks.book, time.perf_counter() - start, runs)
    if not finished:
        text += ("\n\ninterrupted: some trials have not ended; run the same command with --resume to continue "
                 "(a later phase or stage starts only when this one has ended)")
    hooks.tracker.finish_parent(hooks.parent_run_id, counts, {
        "wall_minutes": f"{(time.perf_counter() - start) / 60:.1f}", "machine": machine_description()},
        status="FINISHED" if finished else "KILLED")
    return text, hooks, finished


def machine_description() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.machine()} {os.cpu_count()} cores, {gpu}, torch {torch.__version__}"


def _resumed(context: TrialContext, hooks, specs: list[TrialSpec], prep: Prepared, phase: str) -> TrialContext:
    """The context of a resumed phase: which trials ended (Optuna, after `reconcile` with MLflow)
    and which checkpoint file each other trial continues from. Ray's saved state is not read."""
    keys = [s.key for s in specs]
    hooks.reconcile(keys)
    names = {TrialState.COMPLETE: "completed", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}
    ended = {k: names[hooks.book.frozen(k).state] for k in keys if hooks.book.frozen(k).state in names}
    final = {"completed": "FINISHED", "pruned": "KILLED", "failed": "FAILED"}
    for key, status in ended.items():  # a driver killed mid-update may have left MLflow a step behind
        run = hooks.tracker.client.get_run(hooks.run_ids[key])
        if (run.data.tags.get("status"), run.info.status) != (status, final[status]):
            hooks.tracker.mark(hooks.run_ids[key], status, final[status])
    found = prep.resume_from.get(phase, {})  # chosen by prepare(), which noted any file it skipped
    return dataclasses.replace(context, ended=ended, resume_from={k: found[k] for k in keys if k in found and k not in ended})


def _runnable_sample_trials(specs: list[TrialSpec], hooks) -> list[TrialSpec]:
    """Sample trials whose source model finished; the others fail at once, with the reason."""
    runnable = []
    for spec in specs:
        source_state = hooks.book.frozen(spec.source).state
        if source_state == TrialState.COMPLETE:
            runnable.append(spec)
        elif not hooks.book.frozen(spec.key).state.is_finished():
            hooks.on_skipped(spec.key, f"source trial {spec.source} ended {source_state.name}: no model to sample")
    return runnable


def _pilot_params(prep: Prepared) -> dict[str, Any]:
    """The parent run's record of a pilot: its study and the rate it chose per method group."""
    if prep.options.stage != "main" or not prep.options.lr_choice:
        return {"pilot": "pilot" if prep.options.stage == "pilot" else "none"}
    pilot_study = prep.pilot.stores.study if prep.pilot is not None else f"{prep.stores.study}-pilot"
    return {"pilot": pilot_study, **{f"lr_chosen.{group}": repr(lr) for group, lr in prep.options.lr_choice.items()}}


def _bookkeeping(prep: Prepared):
    """Optuna trials and MLflow runs for every trial (found or created), and the trials' context."""
    plan, where = prep.plan, prep.stores
    book = CellBook(stores.optuna_storage(where.optuna_url), where.study, plan.grid.mode,
                    build_pruner(plan.grid.pruner, plan.grid.eval.every))
    refs = book.ensure(plan)
    tracker = Tracker(where.mlflow_uri, where.artifact_root)
    experiment = tracker.experiment(where.study)
    commit = git_commit()
    parent = tracker.parent_run(experiment, where.study, {
        "grid": str(plan.path), "fingerprint": plan.fingerprint(), "metric": plan.grid.metric,
        "mode": plan.grid.mode, "pruner": plan.grid.pruner.kind, "git_commit": commit, "command": study_command(prep.options),
        "trials": len(plan.trials), "cells": len(plan.cells()), **_pilot_params(prep)})
    run_ids = tracker.trial_runs(experiment, parent, [
        (s.key, trial_tags(s, prep, commit, refs[s.key].number), plan.configs[s.key]) for s in plan.trials])
    hooks = tuning.DriverHooks(book, tracker, parent, run_ids, {s.key: s.metric or plan.grid.metric for s in plan.trials},
                               {s.key: s.total_steps for s in plan.trials})
    context = TrialContext(
        study=where.study, metric=plan.grid.metric, mlflow_uri=where.mlflow_uri, run_ids=run_ids,
        optuna_numbers={k: r.number for k, r in refs.items()}, specs={s.key: s.to_dict() for s in plan.trials},
        configs=plan.configs, data_dir=str(prep.data_dir) if prep.data_dir else None, cache_dir=cache_dir(prep),
        fid_weights=prep.fid_weights, fid_weights_sha256=prep.fid_weights_sha256, cpus_per_trial=plan.grid.resources.cpus, project=this_project())
    return hooks, context
