"""Exponential moving average of a network's weights.

A short implementation of our own (tested in tests/test_training.py): the
averaged copy lives in `EMA.module`, is never trained, and is what evaluation,
sampling and export use.

Warm-up: at update k (1-based) the decay is min(decay, (1 + k) / (10 + k)), the
schedule of Keras/TF's ExponentialMovingAverage `num_updates` and diffusers'
EMAModel. Without it a 0.999 average after 600 steps still holds 0.999^600 = 55 %
of the random initial weights, which is what short (CPU-scale) runs sample from.
The decay depends only on the training step, so resume needs no extra state.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float, warmup: bool = False):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.module = copy.deepcopy(_unwrap(model)).eval().requires_grad_(False)

    def decay_at(self, step: int) -> float:
        """The decay of update number `step` (1-based): the warm-up ramp, capped at `decay`."""
        return min(self.decay, (1 + step) / (10 + step)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """ema <- d * ema + (1 - d) * model with d = decay_at(step), every parameter; buffers are copied."""
        source = _unwrap(model)
        ema_params = list(self.module.parameters())
        params = [p.detach() for p in source.parameters()]
        torch._foreach_lerp_(ema_params, params, 1.0 - self.decay_at(step))
        for ema_buf, buf in zip(self.module.buffers(), source.buffers(), strict=True):
            ema_buf.copy_(buf)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)


def _unwrap(model: nn.Module) -> nn.Module:
    """The module under torch.compile's wrapper, so state-dict keys never carry `_orig_mod.`."""
    return getattr(model, "_orig_mod", model)
