"""Samplers: pure functions of (network, schedule, randomness).

Each takes a `torch.Generator` and returns `(images, nfe)`: images (n, 1, 28, 28)
in [-1, 1] and the number of network evaluations per image. Noise is drawn on
the generator's device and moved to `device`, so the same seed gives the same
noise on CPU and CUDA and every trial is scored on the same draws.
"""

from __future__ import annotations

import torch
from torch import nn

from ddgan.schedule import Schedule

IMAGE_SHAPE = (1, 28, 28)


def _randn(shape: tuple[int, ...], generator: torch.Generator, device: torch.device | str) -> torch.Tensor:
    return torch.randn(shape, generator=generator, device=generator.device).to(device)


def _steps(schedule: Schedule, n: int, k: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(index into the schedule, index the network was trained on), both (n,) int64."""
    t_step = torch.full((n,), k, dtype=torch.long, device=device)
    t_model = torch.full((n,), int(schedule.model_timesteps[k - 1]), dtype=torch.long, device=device)
    return t_step, t_model


@torch.inference_mode()
def sample_ddgan(
    generator: nn.Module,
    schedule: Schedule,
    n: int,
    *,
    z_dim: int,
    torch_generator: torch.Generator,
    device: torch.device | str = "cpu",
    x_T: torch.Tensor | None = None,
) -> tuple[torch.Tensor, int]:
    """DDGAN sampling (Xiao et al. 2021, Alg. 2): x_T ~ N(0, I); for k = T..1 draw z,
    predict x0 = G(x_k, k, z) and sample x_{k-1} ~ q(x_{k-1} | x_k, x0); the last step
    returns the prediction itself. NFE = T."""
    x = _randn((n, *IMAGE_SHAPE), torch_generator, device) if x_T is None else x_T.to(device)
    for k in range(schedule.T, 0, -1):
        t_step, t_model = _steps(schedule, n, k, device)
        z = _randn((n, z_dim), torch_generator, device)
        x0 = generator(x, t_model, z).float()  # (n, 1, 28, 28)
        if k > 1:
            x = schedule.sample_posterior(x0, x, t_step, _randn(x.shape, torch_generator, device))
        else:
            x = x0
    return x.clamp(-1.0, 1.0), schedule.T


@torch.inference_mode()
def sample_ddpm(
    denoiser: nn.Module,
    schedule: Schedule,
    n: int,
    *,
    torch_generator: torch.Generator,
    device: torch.device | str = "cpu",
    method: str = "ancestral",
    x_T: torch.Tensor | None = None,
) -> tuple[torch.Tensor, int]:
    """DDPM sampling with an epsilon-predicting denoiser.

    `ancestral`: x_{k-1} ~ q(x_{k-1} | x_k, x0_hat) with x0_hat clipped to [-1, 1]
    (Ho et al. 2020 eq. 6-7; respaced schedules as in Nichol & Dhariwal 2021).
    `ddim`: deterministic DDIM, eta = 0 (Song et al. 2021 eq. 12).
    Pass `schedule.respace(S)` to sample a T-step model with S steps. NFE = S.
    """
    if method not in ("ancestral", "ddim"):
        raise ValueError(f"unknown DDPM sampler {method!r}; valid: ancestral, ddim")
    x = _randn((n, *IMAGE_SHAPE), torch_generator, device) if x_T is None else x_T.to(device)
    for k in range(schedule.T, 0, -1):
        t_step, t_model = _steps(schedule, n, k, device)
        eps = denoiser(x, t_model).float()
        x0 = schedule.predict_x0_from_eps(x, t_step, eps).clamp(-1.0, 1.0)
        if method == "ddim":
            eps = schedule.predict_eps_from_x0(x, t_step, x0)
            x = schedule.ddim_step(x0, eps, t_step)
        else:
            x = schedule.sample_posterior(x0, x, t_step, _randn(x.shape, torch_generator, device))
    return x.clamp(-1.0, 1.0), schedule.T


def sample_in_batches(sample_one, n: int, batch_size: int) -> tuple[torch.Tensor, int]:
    """Run `sample_one(m) -> (images, nfe)` over chunks of at most `batch_size`; concatenate on CPU."""
    chunks, nfe = [], 0
    for start in range(0, n, batch_size):
        images, nfe = sample_one(min(batch_size, n - start))
        chunks.append(images.cpu())
    return torch.cat(chunks), nfe
