"""Samplers: pure functions of (network, schedule, randomness).

Each takes a `torch.Generator` and returns `(images, nfe)`: images (n, 1, 28, 28)
in [-1, 1] and the number of network evaluations per image. Noise is drawn by the
generator on the generator's device, one `randn` call per tensor (the whole batch), in
a fixed order (x_T, then per step z and/or the posterior noise; `ddgan.serving` relies
on it). Give it a generator on the sampling device (`torch.Generator(device=device)`,
as the evaluator and `ddgan.sample` do): nothing is then copied between host and device
during sampling. A generator elsewhere still works; its draws are copied every step.

Determinism is per (seed, device type): one seed gives the same images on every run
on one device type, but CPU and CUDA generators produce different streams, so CPU and
CUDA samples of one seed differ (a study scores all its trials on one device type, so
they still compare on the same noise). On CUDA with `sampling_numerics` (cuDNN
benchmark on) the network's arithmetic may vary at float rounding between processes.

`sampling_numerics(device, precision, compile)` sets how the network runs while
sampling: "fp32" (default; TF32 off), "tf32" (TF32 convolutions and matmuls) or
"bf16" (autocast); `compile=True` runs the network through `torch.compile`.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch
from torch import nn

from ddgan.schedule import Schedule

IMAGE_SHAPE = (1, 28, 28)
SAMPLE_PRECISIONS = ("fp32", "tf32", "bf16")
_COMPILE = contextvars.ContextVar("ddgan_compile_sampling_network", default=False)


@contextlib.contextmanager
def sampling_numerics(device: torch.device | str, precision: str = "fp32", compile: bool = False) -> Iterator[None]:
    """The numerics of the sampling network inside the block (restored after).

    precision: "fp32" (TF32 off), "tf32" or "bf16" (autocast on `device`; the samplers'
    schedule arithmetic stays fp32). On CUDA cuDNN's benchmark mode is on (fixed shapes,
    many steps). compile: the samplers wrap the network in `torch.compile`.
    """
    if precision not in SAMPLE_PRECISIONS:
        raise ValueError(f"unknown sampling precision {precision!r}; valid: {', '.join(SAMPLE_PRECISIONS)}")
    device = torch.device(device)
    backends = torch.backends
    saved = backends.cudnn.benchmark, backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32
    token = _COMPILE.set(bool(compile))
    try:
        backends.cudnn.benchmark = saved[0] or device.type == "cuda"
        backends.cudnn.allow_tf32 = backends.cuda.matmul.allow_tf32 = precision == "tf32"
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            yield
    finally:
        _COMPILE.reset(token)
        backends.cudnn.benchmark, backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32 = saved


def _for_sampling(network: nn.Module) -> nn.Module:
    """The network, or its `torch.compile` wrapper inside `sampling_numerics(..., compile=True)`
    (Dynamo caches the compiled code by the forward's code, so re-wrapping reuses it)."""
    return torch.compile(network, dynamic=False) if _COMPILE.get() else network


def _randn(shape: tuple[int, ...], generator: torch.Generator, device: torch.device | str) -> torch.Tensor:
    """One draw of `shape` on the generator's device; a no-op `.to` when that is `device`."""
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
    generator = _for_sampling(generator)
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
    denoiser = _for_sampling(denoiser)
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
