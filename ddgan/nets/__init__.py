"""Networks for 28x28 Fashion-MNIST at native resolutions 28 / 14 / 7.

`build_networks(model_cfg, method)` returns the networks a method trains:
`{"generator", "discriminator"}` for DDGAN, `{"denoiser"}` for DDPM. Sizes come
from `configs/presets/{tiny,small,paper}.yaml`; `python -m ddgan.params` prints
their parameter counts.
"""

from __future__ import annotations

from torch import nn

from ddgan.config import ModelConfig
from ddgan.nets.discriminator import Discriminator
from ddgan.nets.unet import Denoiser, Generator, UNet

__all__ = ["Denoiser", "Discriminator", "Generator", "UNet", "build_networks", "count_parameters"]


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
