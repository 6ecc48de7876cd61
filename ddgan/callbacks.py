"""The trainer's reporting interface.

The trainer knows nothing of Ray, MLflow or Optuna: it calls these hooks, and
the study plugs in callbacks that forward to them. Any hook may return a truthy
value to stop training cleanly after the current step (the study's pruner does
this); the trainer then saves a final checkpoint and ends with status "stopped".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class TrainInfo:
    """What a callback learns when training starts."""

    config: dict[str, Any]  # the resolved config (Config.to_dict())
    out_dir: Path
    device: str
    start_step: int  # > 0 when resumed from a checkpoint
    total_steps: int
    parameter_counts: dict[str, int] = field(default_factory=dict)


class Callback:
    """Base class: override what you need. Returning True from a hook stops training."""

    def on_train_start(self, info: TrainInfo) -> None:
        pass

    def on_train_step(self, step: int, metrics: dict[str, float]) -> bool | None:
        """Called every `train.log_every` steps with `train/*` metrics (losses, img/s)."""
        return None

    def on_eval(
        self, step: int, metrics: dict[str, float], artifacts: dict[str, Path], checkpoint: Path | None
    ) -> bool | None:
        """Called after each evaluation; `checkpoint` is the file saved at this step."""
        return None

    def on_checkpoint(self, step: int, path: Path) -> None:
        pass

    def on_train_end(self, step: int, status: str, error: BaseException | None = None) -> None:
        """status: "completed" | "stopped" | "diverged" | "failed"."""


class CallbackList(Callback):
    """Fans each hook out to several callbacks; stop if any asks to."""

    def __init__(self, callbacks: list[Callback] | tuple[Callback, ...] = ()):
        self.callbacks = list(callbacks)

    def on_train_start(self, info: TrainInfo) -> None:
        for cb in self.callbacks:
            cb.on_train_start(info)

    def on_train_step(self, step: int, metrics: dict[str, float]) -> bool:
        return any([bool(cb.on_train_step(step, metrics)) for cb in self.callbacks])

    def on_eval(self, step, metrics, artifacts, checkpoint) -> bool:
        return any([bool(cb.on_eval(step, metrics, artifacts, checkpoint)) for cb in self.callbacks])

    def on_checkpoint(self, step: int, path: Path) -> None:
        for cb in self.callbacks:
            cb.on_checkpoint(step, path)

    def on_train_end(self, step: int, status: str, error: BaseException | None = None) -> None:
        for cb in self.callbacks:
            cb.on_train_end(step, status, error)


class ConsoleProgress(Callback):
    """The standalone default: a tqdm bar with step, img/s and losses; eval lines below it."""

    def __init__(self, disable: bool = False):
        self.disable = disable
        self.bar = None
        self._last = 0

    def on_train_start(self, info: TrainInfo) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=info.total_steps, initial=info.start_step, disable=self.disable, unit="step")
        self._last = info.start_step

    def on_train_step(self, step: int, metrics: dict[str, float]) -> None:
        if self.bar is None:
            return
        self.bar.update(step - self._last)
        self._last = step
        shown = {k.split("/", 1)[-1]: f"{v:.3g}" for k, v in metrics.items()}
        self.bar.set_postfix(shown, refresh=False)

    def on_eval(self, step, metrics, artifacts, checkpoint) -> None:
        text = "  ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()))
        (self.bar.write if self.bar is not None else print)(f"[eval step {step}] {text}")

    def on_train_end(self, step: int, status: str, error: BaseException | None = None) -> None:
        if self.bar is not None:
            self.bar.close()
        print(f"training {status} at step {step}" + (f": {error}" if error else ""))


class StopAfter(Callback):
    """Stops training once `step` is reached (used by tests and by resume checks)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_step(self, step: int, metrics: dict[str, float]) -> bool:
        return step >= self.step
