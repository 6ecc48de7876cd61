"""Before a study starts: check everything it needs, write nothing, start nothing.

`prepare` checks the grid and the flags (through the grid's own models), every trial's
config, the metric, the data, the stores (servers are probed) and the resume state (the
plan's fingerprint, every trial's newest checkpoint). `--dry-run` stops after it.
"""


from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ddgan.checkpoint import load_checkpoint
from ddgan.config import Config
from ddgan.data import load_fashion_mnist, resolve_data_dir
from ddgan.errors import CheckpointError, DataError, UsageError
from ddgan.metrics.evaluator import metric_specs
from ddgan.metrics.inception import InceptionWeights, resolve_weights
from ddgan.paths import check_output_dir
from ddgan.strict import validate
from study.grid import Grid, Plan, expand, load_grid, pilot_grid
from study.pilot import CHOICE_FILE, read_choice
from study.stores import Stores, mask_uri, preflight, resolve_stores
from study.stores.uris import DEFAULT_STATE_DIR, chosen_cache_dir, node_local, node_local_message

STUDY_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
FLAGS = {"cpus_per_trial": ("resources", "cpus"), "gpus_per_trial": ("resources", "gpus"),
         "max_concurrent": ("max_concurrent",)}  # StudyOptions field -> the grid key it overrides


@dataclass
class StudyOptions:
    grid: str
    study: str | None = None
    dry_run: bool = False
    calibrate: bool = False  # --dry-run --calibrate: time a few steps here for the cost estimate
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
    results_dir: str = DEFAULT_STATE_DIR  # the run's state (--state-dir); curated reports live elsewhere
    cache_dir: str | None = None  # reference statistics; default $DDGAN_CACHE_DIR, else <state>/.cache
    allow_local: bool = False  # with --address: the user says every node sees the node-local defaults
    verbose: int = 1
    command: str | None = None  # the CLI line that started the study (recorded on the parent run)
    # A grid with a pilot runs in two stages (study.pilot): "pilot" (the study <study>-pilot), then
    # "main" at the rates it chose (`lr_choice`: method group -> lr). None: the grid as one study.
    stage: str | None = None
    lr_choice: dict[str, float] | None = None


@dataclass
class Prepared:
    options: StudyOptions
    plan: Plan
    stores: Stores
    data_dir: Path | None
    fid_weights: str | None  # absolute: trials run in other working directories, maybe on other nodes
    notes: list[str] = field(default_factory=list)
    fid_weights_sha256: str | None = None  # the content every trial's file must have
    pilot: Prepared | None = None  # a grid with a pilot: its first stage (the pilot study)
    # --resume: phase -> trial key -> the checkpoint file it continues from (`resume_checkpoints`,
    # chosen once here: each choice loads the file)
    resume_from: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def grid(self) -> Grid:
        return self.plan.grid


def _apply_flags(grid: Grid, options: StudyOptions) -> Grid:
    """--cpus-per-trial, --gpus-per-trial, --max-concurrent over the grid's values, validated by `Grid`."""
    for name, path in FLAGS.items():
        value = getattr(options, name)
        if value is None:
            continue
        raw = grid.model_dump()
        node = raw
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        try:
            grid = validate(Grid, raw, f"--{name.replace('_', '-')} {value}")
        except UsageError as err:
            raise UsageError(str(err).replace(f": {'.'.join(path)}:", ":", 1)) from None
    return grid


def _find_weights(grid: Grid, fid_weights: str | None) -> InceptionWeights | None:
    """The Inception weights, resolved once here when the grid scores with Inception: --fid-weights,
    $DDGAN_FID_WEIGHTS or a copy found on this machine (absolute path, sha256; loaded and probed).
    None when none is here (no download here: the reference task downloads on its node)."""
    if not any(m.endswith("_inception") for m in (*grid.eval.metrics, *grid.eval.final_metrics)):
        return None
    try:
        return resolve_weights(fid_weights, "cpu", allow_download=False)[0]
    except UsageError as err:  # missing, not TorchScript, not Inception
        if fid_weights:
            raise UsageError(f"--fid-weights: {err}") from None
        return None


def _inception_note(grid: Grid, weights: InceptionWeights | None, notes: list[str]) -> None:
    """No Inception weights on this machine: the study keeps its Inception metrics (the reference
    task downloads clean-fid's file on its node, and fails before any trial with the way out when
    it cannot); the note says so."""
    wanted = [m for m in (*grid.eval.metrics, *grid.eval.final_metrics) if m.endswith("_inception")]
    if wanted and weights is None:
        notes.append(f"no Inception weights on this machine for {', '.join(wanted)}: the reference task downloads "
                     "clean-fid's file on its node (internet needed there), else pass --fid-weights")


def expected_metrics(config: dict[str, Any]) -> set[str]:
    """The metric names one intermediate evaluation of this config reports."""
    eval_cfg = Config.from_dict(config).eval
    return {s.name for s in metric_specs(eval_cfg, final=False)} | {"eval/nfe", "eval/sample_ms_per_image"}


def _check_metric(plan: Plan) -> None:
    if not plan.grid.metric.startswith("eval/"):
        return
    for spec in plan.trials:
        metric = spec.metric or plan.grid.metric
        names = expected_metrics(plan.configs[spec.key])
        if metric not in names:
            raise UsageError(f"grid {plan.path.name}: metric {metric!r} is not reported by trial {spec.key} "
                             f"(its evaluations report: {', '.join(sorted(names))})")


def _check_data(data_dir: str | None, plan: Plan) -> Path:
    path = resolve_data_dir(data_dir)
    if not path.is_dir():
        raise DataError(f"data directory {str(path)!r} not found")
    splits = {"train"} | {c["eval"]["reference_split"] for c in plan.configs.values()}
    for split in sorted(splits):
        load_fashion_mnist(path, split)  # validates headers, sizes and label counts
    return path.resolve()


def _check_resume(stores: Stores, plan: Plan, resume: bool, notes: list[str], after_pilot: bool = False,
                  chosen: bool = True) -> dict[str, dict[str, str]]:
    """-> what each phase's trials continue from (`resume_checkpoints`; empty without --resume).
    after_pilot: the study of a grid with a pilot, which starts only once its pilot has chosen
    (so `--resume` may find its pilot interrupted and no plan of its own yet)."""
    exists = stores.plan_file.is_file()
    if after_pilot and exists and not chosen:
        raise UsageError(f"study {stores.study!r} has started, but the choice of its pilot is missing "
                         f"({CHOICE_FILE} of the pilot study {stores.study}-pilot): restore it, or start a new study "
                         "with --study NAME")
    if resume and not exists and after_pilot:
        return {}
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
        return {phase: resume_checkpoints(stores.ray_storage, phase, notes) for phase in ("train", "sample")}
    return {}


def saved_checkpoints(ray_storage: str, phase: str) -> dict[str, list[str]]:
    """trial key -> its `ckpt_*.pt` files under `<ray storage>/<phase>/<key>/checkpoint_*/`, newest
    (highest step) first.

    What `--resume` continues from: plain files listed by name, never Ray's saved experiment
    state (pickles, see study.tuning.phases). A local path or a remote URI (through pyarrow)."""
    import pyarrow.fs

    root = f"{ray_storage.rstrip('/')}/{phase}"
    fs, base = pyarrow.fs.FileSystem.from_uri(root) if "://" in root else (pyarrow.fs.LocalFileSystem(), root)
    try:
        found = fs.get_file_info(pyarrow.fs.FileSelector(base, recursive=True, allow_not_found=True))
    except OSError as err:
        raise UsageError(f"--resume: cannot list {mask_uri(root)!r} ({err})") from None
    saved: dict[str, list[tuple[int, str]]] = {}
    for info in found:
        parts = info.path[len(base.rstrip("/")) + 1:].split("/")  # <key>/checkpoint_NNNNNN/ckpt_SSSSSSS.pt
        match = re.fullmatch(r"ckpt_(\d+)\.pt", parts[-1])
        if info.type != pyarrow.fs.FileType.File or len(parts) != 3 or not match or \
                not parts[1].startswith("checkpoint_"):
            continue
        where = f"{root}/{'/'.join(parts)}" if "://" in root else info.path
        saved.setdefault(parts[0], []).append((int(match.group(1)), where))
    return {key: [where for _, where in sorted(files, reverse=True)] for key, files in saved.items()}


def resume_checkpoints(ray_storage: str, phase: str, notes: list[str] | None = None) -> dict[str, str]:
    """trial key -> the checkpoint file `--resume` continues it from: on local storage the newest
    that loads as a checkpoint of this project (`load_checkpoint`: weights_only, its config and
    weights fit together). A newer file that does not (a copy cut short by the kill that ended the
    previous session) is skipped, and said in `notes`: the trial repeats those steps, nothing
    else is lost. A trial none of whose files loads is refused (CheckpointError), not restarted
    from step 0 behind the user's back. On remote storage the newest file; the trainer checks it
    when it loads it."""
    chosen = {}
    for key, files in saved_checkpoints(ray_storage, phase).items():
        if "://" in ray_storage:
            chosen[key] = files[0]
            continue
        errors = []
        for path in files:
            try:
                load_checkpoint(path)
            except CheckpointError as err:
                errors.append(str(err))
                continue
            chosen[key] = path
            if errors and notes is not None:
                notes.append(f"--resume: trial {key}: its newest checkpoint that loads is {path!r} (an unfinished "
                             f"trial continues from it); skipped {len(errors)} newer: {'; '.join(errors)}")
            break
        else:
            raise CheckpointError(f"--resume: {errors[0]}; restore it or start a new study with --study NAME")
    return chosen


def _check_gpus(grid: Grid, options: StudyOptions, notes: list[str]) -> None:
    """A run needs the GPUs here (or a cluster); a dry-run plans anyway and says what is missing."""
    if grid.resources.gpus > 0 and options.address is None and torch.cuda.device_count() == 0:
        what = f"{grid.resources.gpus:g} GPU(s) per trial requested but this machine has no GPU"
        if not options.dry_run:
            raise UsageError(f"{what} (use --gpus-per-trial 0, or --address to join a cluster with GPUs)")
        notes.append(f"{what}: a run here needs --gpus-per-trial 0, or --address to join a cluster with GPUs")


def _check_data_or_note(options: StudyOptions, plan: Plan, notes: list[str]) -> Path | None:
    """The data must be here for a run; a dry-run (a plan for another machine, maybe) notes its absence."""
    try:
        return _check_data(options.data_dir, plan)
    except (DataError, UsageError) as err:
        if not options.dry_run:
            raise
        notes.append(f"no usable Fashion-MNIST here ({err}); a run needs --data-dir or $DDGAN_DATA_DIR")
        return None


def _check_shared(stores: Stores, options: StudyOptions, notes: list[str]) -> None:
    """With --address, a store or folder only this node sees is refused (one line naming the flags),
    unless --allow-local; a dry-run notes it."""
    found = [] if options.allow_local else node_local(
        stores, storage_path=options.storage_path, cache_dir=chosen_cache_dir(options.cache_dir))
    if not found:
        return
    if not options.dry_run:
        raise UsageError(node_local_message(found))
    notes.append(node_local_message(found))


def prepare(options: StudyOptions) -> Prepared:
    """Validate everything the study needs; write nothing, start nothing. A grid with a pilot:
    the study (at the rates the pilot chose, once it has) with its pilot study in `.pilot`."""
    grid, path = load_grid(options.grid)
    if grid.pilot is not None and options.stage is None:
        pilot = prepare(replace(options, stage="pilot"))
        choice = read_choice(pilot.stores.study_dir / CHOICE_FILE)
        return replace(prepare(replace(options, stage="main", lr_choice=choice)), pilot=pilot)
    if options.stage == "pilot":
        grid = pilot_grid(grid)
    grid = _apply_flags(grid, options)
    notes: list[str] = []
    weights = _find_weights(grid, options.fid_weights)
    _inception_note(grid, weights, notes)
    plan = expand(grid, path, options.lr_choice if options.stage == "main" else None)
    _check_metric(plan)
    study = options.study or grid.name
    if not re.match(STUDY_NAME, study):
        raise UsageError(f"--study {study!r}: use letters, digits, '.', '_' or '-'")
    if options.stage == "pilot" and options.study:
        study = f"{options.study}-pilot"
    for flag, value in (("--results-dir", options.results_dir), ("--cache-dir", options.cache_dir),
                        ("--storage-path", options.storage_path)):
        if value and "://" not in str(value):
            check_output_dir(value, flag)  # a symlink loop, a file in the way, no write permission
    stores = resolve_stores(study, options.results_dir, mlflow_uri=options.mlflow_uri,
                            optuna_storage=options.optuna_storage, storage_path=options.storage_path,
                            address=options.address)
    _check_gpus(grid, options, notes)
    data_dir = _check_data_or_note(options, plan, notes)
    preflight(stores)
    _check_shared(stores, options, notes)
    resume_from = _check_resume(stores, plan, options.resume, notes, after_pilot=options.stage == "main",
                                chosen=bool(options.lr_choice))
    fid_weights = str(weights.path) if weights else options.fid_weights and str(Path(options.fid_weights).resolve())
    return Prepared(options, plan, stores, data_dir, fid_weights, notes, weights.sha256 if weights else None,
                    resume_from=resume_from)
