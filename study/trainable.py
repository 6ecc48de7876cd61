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
Sample trials (the respaced DDPM cells) download the finished model of their source
trial from MLflow and evaluate it once with S steps.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from ray import tune

from ddgan.callbacks import Callback, TrainInfo
from ddgan.checkpoint import latest_checkpoint
from ddgan.config import Config
from ddgan.errors import CheckpointError, ConfigError, TrainingDiverged
from study.tracking import TrialRun, with_retry

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
    fid_weights: str | None = None
    cpus_per_trial: float = 1.0


def make_evaluator(cfg: Config, ctx: TrialContext, device: torch.device):
    from ddgan.metrics.evaluator import build_evaluator

    data_dir = Path(ctx.data_dir) if ctx.data_dir else None
    return build_evaluator(cfg.eval, data_dir, device, cache_dir=ctx.cache_dir, fid_weights=ctx.fid_weights)


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

    def on_train_start(self, info: TrainInfo) -> None:
        # Where each attempt started: 0, then the checkpoint step of every resume.
        starts = with_retry(self.run.client.get_run, self.run.run_id).data.tags.get("start_steps")
        self.run.set_tags(start_steps=f"{starts},{info.start_step}" if starts else str(info.start_step))
        # A first result at once lets the driver stop a trial that it pruned before a restart.
        tune.report({"step": info.start_step, "total_steps": self.total_steps})

    def on_train_step(self, step: int, metrics: dict[str, float]) -> None:
        self.pending[step] = dict(metrics)
        self.last_train = dict(metrics)

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
        from ddgan.export import export_checkpoint

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


def _replay_finished(run: TrialRun, previous: dict[str, str], total: int) -> None:
    """The run already ended (driver restarted before Ray saved that): report its last values."""
    latest = with_retry(run.client.get_run, run.run_id).data.metrics
    tune.report({"step": int(previous.get("final_step", total)), "total_steps": total, **latest})
    status = previous["status"]
    run.finish(status, "FINISHED" if status == "completed" else "KILLED")


def run_trial(config: dict[str, Any], context: TrialContext) -> None:
    """The Tune function. `config["trial"]["key"]` selects the trial; the rest is in `context`."""
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    key = config["trial"]["key"]
    spec, cfg = context.specs[key], Config.from_dict(context.configs[key])
    torch.set_num_threads(max(1, int(context.cpus_per_trial)))
    run = TrialRun(context.mlflow_uri, context.run_ids[key])
    tune_ctx = tune.get_context()
    import ray

    # ray_node_id: the node of the latest attempt (a retry after a lost node runs elsewhere).
    previous = run.open(ray_trial_id=tune_ctx.get_trial_id(), optuna_trial_number=context.optuna_numbers.get(key),
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
    reporter = StudyReporter(run, context.metric, total, work_dir)
    if spec["phase"] == "sample":
        from study.sampling import run_sample_trial

        run_sample_trial(spec, cfg, context, run, reporter, work_dir)
        return
    _train(cfg, context, run, reporter, work_dir)


def _train(cfg: Config, context: TrialContext, run: TrialRun, reporter: StudyReporter, work_dir: Path) -> None:
    from ddgan.trainer import pick_device, train

    resume = _restore_from_ray(work_dir)
    run.log_artifact(_write_config(cfg, work_dir), None)
    evaluator = make_evaluator(cfg, context, pick_device(cfg.train.device))
    run.set_tags(**protocol_tags(evaluator))
    data_dir = Path(context.data_dir) if context.data_dir else None
    train(cfg, work_dir, callbacks=[reporter], evaluator=evaluator, resume_from=resume, data_dir=data_dir)


def _write_config(cfg: Config, work_dir: Path) -> Path:
    from ddgan.config import save_config

    return save_config(cfg, work_dir / "config.yaml")
