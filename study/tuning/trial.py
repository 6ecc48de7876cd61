"""The Ray Tune function: one trial = `ddgan.trainer.train` with a callback that reports.

Only `ray.tune.report / get_checkpoint / get_context` are used inside the trial (the
`ray.train.*` versions raise in Ray 2.60). Everything the trial needs that is not a
hyper-parameter (store URIs, run ids, resolved configs, the data directory) comes in a
`TrialContext` through `tune.with_parameters`, so it is never written into Ray's
result files (no secrets in logs) and is rebuilt by each invocation of the driver.

A trial:
  1. reopens its MLflow run (created by the driver) and learns which steps are logged;
  2. restores Ray's latest checkpoint for it, if any, into its working directory;
  3. trains; at every evaluation it logs metrics and sample grids to MLflow, then
     reports the metrics and the checkpoint file to Ray (the scheduler may stop it);
  4. at the last step logs the final EMA model (an export directory) and ends its run.
Sample trials (the respaced DDPM cells, `ddpm-<sampler>-S<S>`) train nothing: they run
after the training phase, download the final EMA model that their source trial logged
to MLflow (an export directory verified against its sha256 manifest), sample it with
`schedule.respace(S)` and score it with the same evaluator and noise as every trial.
Faults asked for by the grid (`study.tuning.faults`) are installed around the trainer.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from ddgan.callbacks import Callback, TrainInfo
from ddgan.checkpoint import latest_checkpoint
from ddgan.config import Config, save_config
from ddgan.errors import CheckpointError, ConfigError, TrainingDiverged
from ddgan.export import export_checkpoint, load_for_sampling
from ddgan.methods import schedule_for
from ddgan.metrics.evaluator import build_evaluator
from ddgan.sampler import sample_ddpm
from ddgan.trainer import pick_device, train
from study.stores.tracking import TrialRun
from study.tuning.faults import install_faults
from study.tuning.project import check_same_project

FINISHED = ("completed", "pruned")


@dataclass
class TrialContext:
    """What every trial of a study shares (built by the driver on each invocation)."""

    study: str
    metric: str
    mlflow_uri: str
    run_ids: dict[str, str]
    optuna_numbers: dict[str, int]
    specs: dict[str, dict[str, Any]]
    configs: dict[str, dict[str, Any]]
    data_dir: str | None = None
    cache_dir: str | None = None
    fid_weights: str | None = None  # absolute path (the driver resolved it)
    fid_weights_sha256: str | None = None  # the file's content must match (same features on every node)
    cpus_per_trial: float = 1.0
    # --resume (never `Tuner.restore`, see study.tuning.phases): the newest checkpoint file of each
    # unfinished trial found in the previous session's Ray storage, and the trials whose end the
    # stores already hold (key -> completed | pruned | failed): those tell Ray and touch nothing.
    resume_from: dict[str, str] = field(default_factory=dict)
    ended: dict[str, str] = field(default_factory=dict)
    project: dict[str, str] = field(default_factory=dict)  # the driver's code (study.tuning.project)


def make_evaluator(cfg: Config, ctx: TrialContext, device: torch.device):
    data_dir = Path(ctx.data_dir) if ctx.data_dir else None
    return build_evaluator(cfg.eval, data_dir, device, cache_dir=ctx.cache_dir, fid_weights=ctx.fid_weights,
                           fid_weights_sha256=ctx.fid_weights_sha256)


def protocol_tags(evaluator) -> dict[str, str]:
    """Each metric's protocol (extractor, weights sha256, sample count, reference set) as run tags."""
    return evaluator.protocol_tags() if hasattr(evaluator, "protocol_tags") else {}


class StudyReporter(Callback):
    """Trainer callback: MLflow logging from inside the trial, then `tune.report` to Ray."""

    def __init__(self, run: TrialRun, metric: str, total_steps: int, work_dir: Path):
        self.run, self.metric, self.total_steps, self.work_dir = run, metric, total_steps, work_dir
        self.pending: dict[int, dict[str, float]] = {}  # train/* metrics awaiting the next evaluation
        self.last_train: dict[str, float] = {}
        self.last_eval: dict[str, float] = {}
        self.eval_every = 1  # from the config at on_train_start

    def on_train_start(self, info: TrainInfo) -> None:
        # Where each attempt started: 0, then the checkpoint step of every resume.
        starts = self.run.client.get_run(self.run.run_id).data.tags.get("start_steps")
        self.run.set_tags(start_steps=f"{starts},{info.start_step}" if starts else str(info.start_step))
        # A first result at once lets the driver stop a trial that it pruned before a restart.
        tune.report({"step": info.start_step, "total_steps": self.total_steps})
        self.eval_every = int(info.config["eval"]["every"])

    def on_train_step(self, step: int, metrics: dict[str, float]) -> None:
        self.pending[step] = dict(metrics)
        self.last_train = dict(metrics)
        # The step alone (no metric: the pruner ignores it), so the driver's progress line and
        # Ray's table follow a running trial between its evaluations. Not at an evaluation step:
        # its report (with the checkpoint) follows at once, so a saved result at step s >= an
        # evaluation step e always comes after e's checkpoint.
        if step % self.eval_every and step < self.total_steps:
            tune.report({"step": step, "total_steps": self.total_steps})

    def on_eval(self, step, metrics, artifacts, checkpoint) -> None:
        if self.metric.startswith("eval/") and self.metric not in metrics:
            raise ConfigError(f"the grid's metric {self.metric!r} was not produced; the evaluator gave: "
                              f"{', '.join(sorted(metrics)) or 'nothing'}")
        for train_step, values in sorted(self.pending.items()):
            self.run.log_metrics(train_step, values)
        self.pending.clear()
        self.run.log_metrics(step, metrics)
        for path in artifacts.values():
            self.run.log_artifact(path, "samples")
        if step >= self.total_steps and checkpoint is not None:
            self._log_final_model(checkpoint, metrics)
        self.last_eval = dict(metrics)
        result = {"step": step, "total_steps": self.total_steps, **self.last_train, **metrics}
        if checkpoint is None:
            tune.report(result)
            return
        # Ray persists a directory: stage the one file (a hard link). The previous stage is
        # removed only now, once Ray has certainly finished copying it.
        staged_root = self.work_dir / "to_ray"
        shutil.rmtree(staged_root, ignore_errors=True)
        staged = staged_root / f"step_{step:07d}"
        staged.mkdir(parents=True)
        _link_or_copy(Path(checkpoint), staged / Path(checkpoint).name)
        tune.report(result, checkpoint=tune.Checkpoint.from_directory(str(staged)))

    def _log_final_model(self, checkpoint: Path, metrics: dict[str, float]) -> None:
        export_dir = self.work_dir / "export"
        shutil.rmtree(export_dir, ignore_errors=True)
        export_checkpoint(checkpoint, export_dir, metrics=metrics)
        self.run.log_artifact(export_dir, "model")

    def on_train_end(self, step: int, status: str, error: BaseException | None = None) -> None:
        if isinstance(error, (SystemExit, KeyboardInterrupt)):
            return  # Ray stopped the trial (pruned): the driver records that
        if status == "completed":
            self.run.finish("completed", "FINISHED", final_step=step)
        elif isinstance(error, TrainingDiverged):
            self.run.finish("failed", "FAILED", failure_reason=str(error), diverged_step=error.step,
                            diverged_quantity=error.quantity, failed_step=error.step)
        elif status == "failed":
            reason = f"{type(error).__name__}: {error}".splitlines()[0][:500] if error else "failed"
            self.run.finish("failed", "FAILED", failure_reason=reason, failed_step=step)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _restore_from_ray(work_dir: Path) -> Path | None:
    """Put Ray's latest checkpoint for this trial (if any) into `work_dir/checkpoints`; return it."""
    ckpt_dir = work_dir / "checkpoints"
    ray_checkpoint = tune.get_checkpoint()
    if ray_checkpoint is None:
        shutil.rmtree(ckpt_dir, ignore_errors=True)  # leftovers of a crashed attempt are not Ray's truth
        return None
    staging = work_dir / "from_ray"
    shutil.rmtree(staging, ignore_errors=True)
    ray_checkpoint.to_directory(str(staging))
    found = latest_checkpoint(staging)
    if found is None:
        raise CheckpointError(f"Ray checkpoint {ray_checkpoint.path!r} holds no ckpt_*.pt file")
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    ckpt_dir.mkdir(parents=True)
    target = ckpt_dir / found.name
    shutil.move(str(found), target)
    shutil.rmtree(staging, ignore_errors=True)
    return target


def _restore_from_previous_session(work_dir: Path, source: str | None) -> Path | None:
    """--resume: copy the checkpoint file the driver chose (and verified, on local storage) into
    `work_dir/checkpoints`; the trainer loads it with `weights_only=True` and checks it again."""
    if source is None:
        return None
    import pyarrow.fs  # a Ray dependency: local paths and remote URIs alike

    ckpt_dir = work_dir / "checkpoints"
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    ckpt_dir.mkdir(parents=True)
    target = ckpt_dir / source.rstrip("/").rsplit("/", 1)[-1]
    pyarrow.fs.copy_files(source, str(target))
    return target


class TrialEndedBefore(RuntimeError):
    """--resume: a trial the stores record as failed stays failed (Ray records ERROR, nothing reruns)."""


def _report_ended(key: str, status: str, total: int) -> None:
    if status == "failed":
        raise TrialEndedBefore(f"trial {key} had failed before this --resume; it stays failed")
    tune.report({"step": total, "total_steps": total})  # no metric: nothing reaches Optuna again


def _replay_finished(run: TrialRun, previous: dict[str, str], total: int) -> None:
    """The run already ended (driver restarted before Ray saved that): report its last values."""
    latest = run.client.get_run(run.run_id).data.metrics
    tune.report({"step": int(previous.get("final_step", total)), "total_steps": total, **latest})
    status = previous["status"]
    run.finish(status, "FINISHED" if status == "completed" else "KILLED")


def quiet_exit_hook(unraisable, default=sys.__unraisablehook__) -> None:
    """`sys.unraisablehook` of a trial's worker: drop only a SystemExit raised where Python cannot
    propagate it. Ray ends a finished trial's worker with SIGTERM, whose handler raises
    SystemExit(1); when the signal lands while the worker runs a garbage-collection callback
    (e.g. a WeakSet's `_remove`), Python prints "Exception ignored in: <function WeakSet...>"
    and a traceback ending in `SystemExit: 1` although every trial succeeded. The worker is
    exiting as asked either way; anything else still goes to the default hook."""
    if isinstance(unraisable.exc_value, SystemExit):
        return
    default(unraisable)


def run_trial(config: dict[str, Any], context: TrialContext) -> None:
    """The Tune function. `config["trial"]["key"]` selects the trial; the rest is in `context`."""
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    sys.unraisablehook = quiet_exit_hook  # this worker process only (see quiet_exit_hook)
    key = config["trial"]["key"]
    if key in context.ended:  # --resume: its end is recorded already
        _report_ended(key, context.ended[key], int(context.specs[key]["total_steps"]))
        return
    check_same_project(context.project)  # a node with other code fails the trial, saying why
    spec, cfg = context.specs[key], Config.from_dict(context.configs[key])
    torch.set_num_threads(max(1, int(context.cpus_per_trial)))
    run = TrialRun(context.mlflow_uri, context.run_ids[key])
    tune_ctx = tune.get_context()
    # ray_node_id: the node of the latest attempt (a retry after a lost node runs elsewhere).
    previous = run.open(ray_trial=f"{tune_ctx.get_experiment_name()}/{tune_ctx.get_trial_name()}",
                        optuna_trial_number=context.optuna_numbers.get(key),
                        ray_node_id=ray.get_runtime_context().get_node_id())
    total = int(spec["total_steps"])
    if previous.get("status") in FINISHED:
        _replay_finished(run, previous, total)
        return
    if previous.get("diverged_step"):  # a deterministic failure: do not train into it again
        err = TrainingDiverged(int(previous["diverged_step"]), previous.get("diverged_quantity", "a loss"))
        run.finish("failed", "FAILED")
        raise err
    work_dir = Path(tune_ctx.get_trial_dir()) / "work"
    work_dir.mkdir(parents=True, exist_ok=True)
    reporter = StudyReporter(run, spec.get("metric") or context.metric, total, work_dir)
    if spec["phase"] == "sample":
        _sample(spec, cfg, context, run, reporter, work_dir)
    else:
        _train(spec, cfg, context, run, reporter, work_dir)


def _train(spec: dict[str, Any], cfg: Config, context: TrialContext, run: TrialRun, reporter: StudyReporter,
           work_dir: Path) -> None:
    resume = _restore_from_ray(work_dir) or _restore_from_previous_session(
        work_dir, context.resume_from.get(spec["key"]))
    run.log_artifact(save_config(cfg, work_dir / "config.yaml"), None)
    device = pick_device(cfg.train.device)
    evaluator = make_evaluator(cfg, context, device)
    run.set_tags(**protocol_tags(evaluator))
    data_dir = Path(context.data_dir) if context.data_dir else None
    data, faults = install_faults(spec.get("faults") or {}, cfg, device, data_dir, work_dir)
    train(cfg, work_dir, data=data, callbacks=[reporter, *faults], evaluator=evaluator, resume_from=resume,
          data_dir=data_dir)


def _sample(spec: dict[str, Any], cfg: Config, context: TrialContext, run: TrialRun, reporter: StudyReporter,
            work_dir: Path) -> None:
    """Evaluate the source trial's model once; log to MLflow and report to Ray as the final step."""
    try:
        model_dir = run.download(context.run_ids[spec["source"]], "model", work_dir / "source")
    except Exception as err:  # MLflow raises its own types for a missing artifact
        raise CheckpointError(f"trial {spec['source']!r} logged no final model (did it complete?): "
                              f"{type(err).__name__}") from None
    device = pick_device(cfg.train.device)
    model_cfg, denoiser = load_for_sampling(model_dir, device)
    schedule = schedule_for(model_cfg)
    steps = int(spec["sampling_steps"])
    if steps < schedule.T:
        schedule = schedule.respace(steps)

    def sample_fn(n, torch_generator):
        return sample_ddpm(denoiser, schedule, n, torch_generator=torch_generator, device=device,
                           method=spec["sampler"])

    evaluator = make_evaluator(cfg, context, device)
    run.set_tags(**protocol_tags(evaluator))
    step = int(spec["total_steps"])
    metrics, artifacts = evaluator(sample_fn, step, work_dir / "samples", final=True)
    reporter.on_eval(step, metrics, artifacts, None)
    reporter.on_train_end(step, "completed")
