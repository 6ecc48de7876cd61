"""A whole sampler as one `nn.Module`: noise batch in, images out (what the Model Registry serves).

The registered model is the *sampler*, not the bare network: a network alone is one
step (`generator(x_t, t, z)`) and is useless without the schedule, the step loop and the
posterior sampling. `NoiseToImages` unrolls the T (or S) steps of `ddgan.sampler` over a
fixed schedule, so `torch.export` (MLflow's "pt2" format) captures a plain graph and a
served model maps noise to images with no ddgan code installed.

All randomness is an input, so a served model is deterministic and testable. One row of
the input holds every draw the sampler would make, in the order `ddgan.sampler` draws
them from its `torch.Generator` (so `draw_noise(n, generator)` followed by `forward`
equals `sample_ddgan` / `sample_ddpm` with that generator):

    DDGAN:            x_T (784) | for k = T..1: z_k (z_dim), then eps_k (784) if k > 1
    DDPM ancestral:   x_T (784) | for k = S..1: eps_k (784)
    DDPM DDIM:        x_T (784)

Per-step coefficients come from the schedule's own methods, probed once at build time
(each is linear in its tensor arguments), so the Gaussian math still lives only in
`ddgan.schedule`; the exported graph holds Python floats, not data-dependent indexing.
"""

from __future__ import annotations

import torch
from torch import nn

from ddgan.config import Config
from ddgan.methods import schedule_for
from ddgan.sampler import IMAGE_SHAPE
from ddgan.schedule import Schedule

PIXELS = IMAGE_SHAPE[0] * IMAGE_SHAPE[1] * IMAGE_SHAPE[2]  # 784


def _linear_coefficients(fn, k: int, n_args: int) -> list[float]:
    """Coefficients c of fn(a_1..a_n, t=k) = sum_i c_i a_i, read off with unit inputs."""
    t = torch.tensor([k], dtype=torch.long)
    coefficients = []
    for i in range(n_args):
        args = [torch.full((1, 1), 1.0 if j == i else 0.0) for j in range(n_args)]
        coefficients.append(float(fn(*args, t)))
    return coefficients


def _step_table(schedule: Schedule, method: str, sampler: str) -> list[dict[str, float]]:
    """Per step k = T..1: the coefficients the unrolled loop needs (floats)."""
    def posterior(x0, x_t, noise, t):
        return schedule.sample_posterior(x0, x_t, t, noise)

    def x0_from_eps(x_t, eps, t):
        return schedule.predict_x0_from_eps(x_t, t, eps)

    def eps_from_x0(x_t, x0, t):
        return schedule.predict_eps_from_x0(x_t, t, x0)

    def ddim(x0, eps, t):
        return schedule.ddim_step(x0, eps, t)

    table = []
    for k in range(schedule.T, 0, -1):
        row = {"k": k, "t_model": int(schedule.model_timesteps[k - 1])}
        row["post_x0"], row["post_xt"], row["post_noise"] = _linear_coefficients(posterior, k, 3)
        if method == "ddpm":
            row["x0_xt"], row["x0_eps"] = _linear_coefficients(x0_from_eps, k, 2)
            if sampler == "ddim":
                row["eps_xt"], row["eps_x0"] = _linear_coefficients(eps_from_x0, k, 2)
                row["ddim_x0"], row["ddim_eps"] = _linear_coefficients(ddim, k, 2)
        table.append(row)
    return table


class NoiseToImages(nn.Module):
    """(B, noise_dim) float32 -> (B, 1, 28, 28) images in [-1, 1]; see the module docstring."""

    def __init__(self, network: nn.Module, cfg: Config, *, steps: int | None = None, sampler: str = "ancestral"):
        super().__init__()
        if cfg.method not in ("ddgan", "ddpm"):
            raise ValueError(f"unknown method {cfg.method!r}")
        schedule = schedule_for(cfg)
        if cfg.method == "ddpm" and steps is not None and steps < schedule.T:
            schedule = schedule.respace(steps)
        self.network = network.eval()
        self.method, self.sampler = cfg.method, sampler if cfg.method == "ddpm" else "ddgan"
        self.z_dim = int(cfg.model.z_dim)
        self.steps = schedule.T
        self.table = _step_table(schedule, cfg.method, self.sampler)

    @property
    def noise_dim(self) -> int:
        if self.method == "ddgan":
            return PIXELS + self.steps * self.z_dim + (self.steps - 1) * PIXELS
        return PIXELS * (1 + self.steps) if self.sampler == "ancestral" else PIXELS

    def draw_noise(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """(n, noise_dim): the draws `ddgan.sampler` makes from `generator`, in its order."""
        def image():
            return torch.randn((n, *IMAGE_SHAPE), generator=generator).reshape(n, PIXELS)

        parts = [image()]
        for row in self.table:
            if self.method == "ddgan":
                parts.append(torch.randn((n, self.z_dim), generator=generator))
                if row["k"] > 1:
                    parts.append(image())
            elif self.sampler == "ancestral":
                parts.append(image())
        return torch.cat(parts, dim=1)

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        n = noise.shape[0]
        x = noise[:, :PIXELS].reshape(n, *IMAGE_SHAPE)  # x_T, (n, 1, 28, 28)
        offset = PIXELS
        for row in self.table:
            t_model = torch.full((n,), row["t_model"], dtype=torch.long, device=noise.device)
            if self.method == "ddgan":
                z = noise[:, offset:offset + self.z_dim]  # (n, z_dim)
                offset += self.z_dim
                x0 = self.network(x, t_model, z).float()
                if row["k"] == 1:
                    x = x0
                    continue
            else:
                eps_hat = self.network(x, t_model).float()
                x0 = (row["x0_xt"] * x + row["x0_eps"] * eps_hat).clamp(-1.0, 1.0)
                if self.sampler == "ddim":
                    eps = row["eps_xt"] * x + row["eps_x0"] * x0
                    x = row["ddim_x0"] * x0 + row["ddim_eps"] * eps
                    continue
            eps = noise[:, offset:offset + PIXELS].reshape(n, *IMAGE_SHAPE)
            offset += PIXELS
            x = row["post_x0"] * x0 + row["post_xt"] * x + row["post_noise"] * eps
        return x.clamp(-1.0, 1.0)
