"""Fault injection for the reliability tests, installed around the trainer from outside.

A grid asks for faults per cell or trial key with `trial_overrides` (`fault.nan_at_step=15`);
`study.grid` takes the `fault.*` keys out of the config overrides into `TrialSpec.faults`,
and the trial wraps its training batches with `FaultyBatches`. The library has no test
hooks: the trainer only sees a batch iterator and a callback.

  nan_at_step   the batch of that step is NaN, so every loss of the step is non-finite and
                the trainer's divergence guard fails the trial (`TrainingDiverged(step, quantity)`)
  exit_at_step  the trial process dies (`os._exit(1)`, like an OOM kill) when it draws that
                step's batch, once: it first creates `exit_marker` (default
                `<trial dir>/.fault_exit_done`), so Ray's retry goes past that step
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ddgan.callbacks import Callback, TrainInfo
from ddgan.config import Config
from ddgan.trainer import default_data
from study.grid import Faults


class FaultyBatches(Callback):
    """The trainer's batch iterator with faults at given steps (a Callback to learn the start step)."""

    def __init__(self, data: Iterator[torch.Tensor], faults: Faults, work_dir: Path):
        self.data, self.faults, self.step = data, faults, 0
        self.exit_marker = Path(faults.exit_marker) if faults.exit_marker else work_dir / ".fault_exit_done"

    def on_train_start(self, info: TrainInfo) -> None:
        self.step = info.start_step  # the trainer draws one batch per step from here

    def __iter__(self) -> FaultyBatches:
        return self

    def __next__(self) -> torch.Tensor:
        self.step += 1
        if self.step == self.faults.exit_at_step and not self.exit_marker.exists():
            self.exit_marker.parent.mkdir(parents=True, exist_ok=True)
            self.exit_marker.write_text(f"injected exit at step {self.step}\n")
            os._exit(1)
        batch = next(self.data)  # (B, 1, 28, 28)
        return torch.full_like(batch, float("nan")) if self.step == self.faults.nan_at_step else batch

    def state_dict(self) -> dict[str, Any]:  # exact resume: the wrapped sampler's state
        return self.data.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.data.load_state_dict(state)


def install_faults(faults: dict[str, Any], cfg: Config, device: torch.device, data_dir: Path | None,
                   work_dir: Path) -> tuple[FaultyBatches | None, list[Callback]]:
    """(data, callbacks) for `train()`: (None, []) when the trial asks for no fault."""
    spec = Faults(**faults)
    if spec == Faults():
        return None, []
    batches = FaultyBatches(default_data(cfg, device, data_dir), spec, work_dir)
    return batches, [batches]
