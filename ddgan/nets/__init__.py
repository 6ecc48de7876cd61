"""Networks for 28x28 Fashion-MNIST at native resolutions 28 / 14 / 7.

`build_networks(model_cfg, method)` returns the networks a method trains:
`{"generator", "discriminator"}` for DDGAN, `{"denoiser"}` for DDPM. Sizes come
from `configs/presets/{tiny,small,paper}.yaml`; `python -m ddgan.params` prints
their parameter counts.
"""

from __future__ import annotations

import torch
from torch import nn

from ddgan.config import ModelConfig
from ddgan.nets.discriminator import Discriminator
from ddgan.nets.unet import Denoiser, Generator, UNet

__all__ = ["Denoiser", "Discriminator", "Generator", "UNet", "build_networks", "count_parameters",
           "memory_format_for"]


def build_networks(model_cfg: ModelConfig, method: str) -> dict[str, nn.Module]:
    """DDGAN: {"generator", "discriminator"}; DDPM: {"denoiser"}. Unknown method -> ValueError."""
    if method == "ddgan":
        return {"generator": Generator(model_cfg), "discriminator": Discriminator(model_cfg)}
    if method == "ddpm":
        return {"denoiser": Denoiser(model_cfg)}
    raise ValueError(f"unknown method {method!r}; valid: ddgan, ddpm")


def count_parameters(module: nn.Module) -> int:
    """Number of parameter elements (trainable or frozen)."""
    return sum(p.numel() for p in module.parameters())


def memory_format_for(channels_last: bool, device: torch.device | str) -> torch.memory_format:
    """The layout every network of a run takes on `device`: channels_last on CUDA when the config
    asks (`train.channels_last`), else the default. Training, evaluation, the sample phase and
    export all place networks through this, so a model is timed and scored in one layout."""
    return torch.channels_last if channels_last and torch.device(device).type == "cuda" else torch.preserve_format
