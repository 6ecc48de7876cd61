"""The training loop: cadence, evaluation, checkpoints, resume, divergence guard.

`train(cfg, out_dir)` is the one entry point. It knows nothing of Ray, MLflow
or Optuna: it reports through `ddgan.callbacks.Callback` hooks, and any hook
can stop it cleanly. Resume is exact: networks, EMA, optimisers, LR schedulers
and every RNG (global, the method's noise generator, the batch sampler) are
saved and restored, so N steps + resume + M steps equals N + M steps.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ddgan.callbacks import Callback, CallbackList, TrainInfo
from ddgan.checkpoint import (
    capture_rng_state,
    checkpoint_path,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    restore_rng_state,
    save_checkpoint,
)
from ddgan.config import Config, save_config
from ddgan.errors import CheckpointError, TrainingDiverged, UsageError
from ddgan.methods import Method, build_method
from ddgan.nets import count_parameters


@dataclass
class TrainResult:
    step: int
    status: str  # completed | stopped
    last_metrics: dict[str, float] = field(default_factory=dict)
    checkpoint: Path | None = None


def pick_device(name: str) -> torch.device:
    """`auto` -> CUDA when present, else CPU; an explicit CUDA request without CUDA is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"train.device={name!r} but no CUDA device is available; use 'auto' or 'cpu'")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def default_data(cfg: Config, device: torch.device, data_dir: Path | None) -> Iterator[torch.Tensor]:
    from ddgan.data import RandomBatches, load_training_tensor

    data_cfg = cfg.data if data_dir is None else cfg.data.model_copy(update={"dir": str(data_dir)})
    images = load_training_tensor(data_cfg, device)  # (N, 1, 28, 28) in [-1, 1], on the training device
    return RandomBatches(images, cfg.train.batch_size, seed=cfg.train.seed)


def default_evaluator(cfg: Config, device: torch.device, data_dir: Path | None):
    from ddgan.metrics.evaluator import build_evaluator

    return build_evaluator(cfg.eval, data_dir, device)


class _Loop:
    """State of one run of the loop; `train()` below is the public entry point."""

    def __init__(self, cfg: Config, out_dir: Path, method: Method, data, callbacks: CallbackList, evaluator):
        self.cfg, self.out_dir, self.method, self.data = cfg, out_dir, method, data
        self.callbacks, self.evaluator = callbacks, evaluator
        self.ckpt_dir = out_dir / "checkpoints"
        self.step = 0
        self.last_metrics: dict[str, float] = {}
        self.last_checkpoint: Path | None = None
        self._pending: list[dict[str, torch.Tensor]] = []

    # -- checkpoints ----------------------------------------------------------------
    def state(self) -> dict:
        data_state = self.data.state_dict() if hasattr(self.data, "state_dict") else None
        rng = {**capture_rng_state(), "data": data_state}
        return {"step": self.step, "config": self.cfg.to_dict(), **self.method.state_dict(), "rng": rng,
                "metrics": dict(self.last_metrics)}

    def save(self) -> Path:
        path = save_checkpoint(checkpoint_path(self.ckpt_dir, self.step), self.state())
        prune_checkpoints(self.ckpt_dir, self.cfg.checkpoint.keep)
        self.last_checkpoint = path
        self.callbacks.on_checkpoint(self.step, path)
        return path

    def restore(self, path: Path, state: dict | None = None) -> None:
        state = load_checkpoint(path) if state is None else state  # on the CPU: load_state_dict moves weights
        saved = Config.from_dict(state["config"]).to_dict()
        for section in ("method", "model", "diffusion", "objective"):
            if saved[section] != self.cfg.to_dict()[section]:
                raise CheckpointError(f"checkpoint {str(path)!r} was trained with a different {section} config")
        self.method.load_state_dict(state)
        restore_rng_state({k: v for k, v in state["rng"].items() if k != "data"})
        if state["rng"].get("data") is not None and hasattr(self.data, "load_state_dict"):
            self.data.load_state_dict(state["rng"]["data"])
        self.step = int(state["step"])
        self.last_metrics = dict(state.get("metrics", {}))
        self.last_checkpoint = Path(path)

    # -- the guard --------------------------------------------------------------------
    def flush(self, elapsed: float, steps: int) -> dict[str, float]:
        """Check the buffered per-step losses (one device sync) and average them."""
        if not self._pending:
            return {}
        keys = list(self._pending[0])
        values = torch.stack([torch.stack([m[k].float() for k in keys]) for m in self._pending]).cpu()
        first_step = self.step - len(self._pending) + 1
        bad = (~torch.isfinite(values)).nonzero()
        self._pending.clear()
        if len(bad):
            row, col = bad[0].tolist()
            raise TrainingDiverged(first_step + row, keys[col], float(values[row, col]))
        metrics = dict(zip(keys, values.mean(0).tolist(), strict=True))
        metrics["train/img_per_s"] = steps * self.cfg.train.batch_size / max(elapsed, 1e-9)
        metrics["train/lr_g"] = next(iter(self.method.lr_schedulers.values())).get_last_lr()[0]
        return metrics

    def evaluate(self, final: bool) -> bool:
        bad = self.method.nonfinite_weight()
        if bad:
            raise TrainingDiverged(self.step, bad)
        eval_dir = self.out_dir / "samples"
        metrics, artifacts = self.evaluator(self.method.sample, self.step, eval_dir, final=final)
        self.last_metrics.update(metrics)
        checkpoint = self.save()
        return bool(self.callbacks.on_eval(self.step, metrics, artifacts, checkpoint))

    # -- the loop ---------------------------------------------------------------------
    def run(self) -> str:
        cfg = self.cfg
        total, log_every, eval_every = cfg.train.steps, cfg.train.log_every, cfg.eval.every
        ckpt_every = cfg.checkpoint.every
        timer, steps_since = time.perf_counter(), 0
        while self.step < total:
            self.step += 1
            batch = next(self.data)  # (B, 1, 28, 28) in [-1, 1]
            self._pending.append(self.method.train_step(batch, self.step))
            steps_since += 1
            last = self.step == total
            is_eval = self.step % eval_every == 0 or last
            stop = False
            if self.step % log_every == 0 or is_eval:
                metrics = self.flush(time.perf_counter() - timer, steps_since)
                timer, steps_since = time.perf_counter(), 0
                self.last_metrics.update(metrics)
                stop = bool(self.callbacks.on_train_step(self.step, metrics))
            # train/img_per_s counts training only: the clock skips evaluations and checkpoints
            if is_eval:
                stop = self.evaluate(final=last) or stop
                timer = time.perf_counter()  # flushed just above: the next window starts here
            elif ckpt_every and self.step % ckpt_every == 0:
                paused = time.perf_counter()
                self.save()
                timer += time.perf_counter() - paused
            if stop and not last:
                if self.last_checkpoint != checkpoint_path(self.ckpt_dir, self.step):
                    self.flush(1.0, 1)
                    self.save()
                return "stopped"
        return "completed"


def train(
    cfg: Config,
    out_dir: str | Path,
    *,
    data: Iterator[torch.Tensor] | None = None,
    callbacks: Sequence[Callback] = (),
    evaluator=None,
    resume_from: str | Path | None = None,
    data_dir: str | Path | None = None,
) -> TrainResult:
    """Train `cfg.method` for `cfg.train.steps` steps, writing to `out_dir`.

    data: an iterator of (B, 1, 28, 28) batches in [-1, 1] (default: Fashion-MNIST from cfg.data).
    evaluator: `evaluator(sample_fn, step, out_dir, final) -> (metrics, artifacts)`
    (default: `ddgan.metrics.evaluator.build_evaluator(cfg.eval, ...)`).
    resume_from: a checkpoint file, or a run directory (its latest checkpoint is used).
    Raises TrainingDiverged on a non-finite loss or weight; checkpoints already written stay.
    """
    out_dir = Path(out_dir).resolve()
    _check_writable(out_dir)
    device = pick_device(cfg.train.device)
    data_dir = data_dir if data_dir is not None else cfg.data.dir
    data_dir = Path(data_dir) if data_dir is not None else None
    # A corrupt checkpoint is refused before the data, networks and evaluator are built.
    resume_path = _resume_path(resume_from)
    resume_state = load_checkpoint(resume_path) if resume_path is not None else None
    seed_everything(cfg.train.seed)
    method = build_method(cfg, device)
    if data is None:
        data = default_data(cfg, device, data_dir)
    if evaluator is None:
        evaluator = default_evaluator(cfg, device, data_dir)
    cbs = CallbackList(list(callbacks))
    loop = _Loop(cfg, out_dir, method, iter(data) if not hasattr(data, "__next__") else data, cbs, evaluator)
    if resume_path is not None:
        loop.restore(resume_path, resume_state)
    save_config(cfg, out_dir / "config.yaml")
    counts = {name: count_parameters(net) for name, net in method.networks.items()}
    cbs.on_train_start(TrainInfo(cfg.to_dict(), out_dir, str(device), loop.step, cfg.train.steps, counts))
    try:
        status = loop.run() if loop.step < cfg.train.steps else "completed"
    except TrainingDiverged as err:
        cbs.on_train_end(err.step, "diverged", err)
        raise
    except BaseException as err:
        cbs.on_train_end(loop.step, "failed", err)
        raise
    cbs.on_train_end(loop.step, status)
    return TrainResult(loop.step, status, dict(loop.last_metrics), loop.last_checkpoint)


def _resume_path(resume_from: str | Path | None) -> Path | None:
    """A checkpoint file, or a run directory's latest checkpoint (None: nothing to resume)."""
    if resume_from is None:
        return None
    path = Path(resume_from)
    if not path.is_dir():
        return path
    return latest_checkpoint(path / "checkpoints") or latest_checkpoint(path)


def _check_writable(out_dir: Path) -> None:
    probe = out_dir
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK):
        raise UsageError(f"output directory {str(out_dir)!r} is not writable")
