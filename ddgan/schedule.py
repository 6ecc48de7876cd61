"""Diffusion schedules: a small immutable value and the Gaussian math on it.

Time index convention: x_0 is data, x_k for k = 1..T are noisy; every `t` tensor is
int64 (B,) with values in 1..T, and per-step arrays are (T,) with index k-1 holding
step k, e.g. `alphas_cumprod[k-1] = prod_{j<=k} (1 - beta_j)`.

Everything here is a pure function of its arguments: noise is passed in, never drawn.
Training (DDGAN pairs, DDPM targets), sampling and evaluation all use this one file.
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

SCHEDULE_KINDS = ("vp", "linear", "cosine")
_VP_EPS = 1e-3  # DDGAN's smallest continuous time t_0


def _f64(values) -> torch.Tensor:
    return torch.as_tensor(values, dtype=torch.float64).detach().clone()


@dataclass(frozen=True, eq=False)
class Schedule:
    """A discrete forward process q(x_k | x_{k-1}) = N(sqrt(1 - beta_k) x_{k-1}, beta_k I).

    Fields: `kind`, `T`, `betas` float64 (T,), `model_timesteps` int64 (T,), the step
    index the network is conditioned on at each step (1..T, or the original indices
    after `respace`). Derived float64 (T,) arrays (Ho et al. 2020, eq. 4, 6-7):
    `alphas`, `alphas_cumprod`, `alphas_cumprod_prev` (1 at k=1), their square roots,
    `posterior_variance`, `posterior_log_variance_clipped`, `posterior_mean_coef1/2`.
    Build one with `Schedule.vp`, `.linear`, `.cosine` or `build_schedule`.
    """

    kind: str
    T: int
    betas: torch.Tensor = field(repr=False)
    model_timesteps: torch.Tensor | None = field(default=None, repr=False)
    _tables: dict = field(default_factory=dict, init=False, repr=False)  # device/dtype copies

    def __post_init__(self) -> None:
        _check_T(self.T)
        betas = _f64(self.betas).cpu()
        if betas.shape != (self.T,):
            raise ValueError(f"betas must have shape ({self.T},), got {tuple(betas.shape)}")
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("every beta must lie in (0, 1)")
        steps = torch.arange(1, self.T + 1) if self.model_timesteps is None else self.model_timesteps
        steps = torch.as_tensor(steps, dtype=torch.int64).detach().clone().cpu()
        if steps.shape != (self.T,):
            raise ValueError(f"model_timesteps must have shape ({self.T},), got {tuple(steps.shape)}")
        alphas = 1.0 - betas
        abar = torch.cumprod(alphas, 0)
        abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
        # Posterior q(x_{k-1} | x_k, x_0) (Ho et al. 2020, eq. 6-7).
        post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
        # Zero at k=1; like improved-diffusion, take k=2's value there. With T=1 there is
        # no k=2: use log(beta_1), the upper bound of the reverse variance (never sampled).
        head = post_var[1:2] if self.T > 1 else betas[:1]
        derived = {
            "T": int(self.T),
            "betas": betas,
            "model_timesteps": steps,
            "alphas": alphas,
            "alphas_cumprod": abar,
            "alphas_cumprod_prev": abar_prev,
            "sqrt_alphas": alphas.sqrt(),
            "sqrt_betas": betas.sqrt(),
            "sqrt_alphas_cumprod": abar.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1.0 - abar).sqrt(),
            "sqrt_alphas_cumprod_prev": abar_prev.sqrt(),
            "sqrt_one_minus_alphas_cumprod_prev": (1.0 - abar_prev).sqrt(),
            "sqrt_recip_alphas_cumprod": abar.rsqrt(),
            "sqrt_recipm1_alphas_cumprod": (1.0 / abar - 1.0).sqrt(),
            "posterior_variance": post_var,
            "posterior_log_variance_clipped": torch.log(torch.cat([head, post_var[1:]])),
            "posterior_mean_coef1": betas * abar_prev.sqrt() / (1.0 - abar),
            "posterior_mean_coef2": (1.0 - abar_prev) * alphas.sqrt() / (1.0 - abar),
        }
        # Noise scale for sampling: exp(log_var / 2), and exactly 0 at k=1 (return the mean).
        std = torch.exp(0.5 * derived["posterior_log_variance_clipped"])
        derived["_posterior_sample_std"] = torch.cat([std.new_zeros(1), std[1:]])
        for name, value in derived.items():
            object.__setattr__(self, name, value)

    # ----- constructors -------------------------------------------------------------

    @classmethod
    def vp(cls, T: int, beta_min: float = 0.1, beta_max: float = 20.0) -> Schedule:
        """DDGAN's variance-preserving discretisation (Xiao et al. 2021), valid for any T >= 1.

        t_k = (k/T)(1 - 1e-3) + 1e-3 for k = 0..T;
        log_mean(t) = -1/4 t^2 (beta_max - beta_min) - 1/2 t beta_min;
        abar_vp(t) = exp(2 log_mean(t)); beta_k = 1 - abar_vp(t_k) / abar_vp(t_{k-1}).
        Hence alphas_cumprod[k-1] = abar_vp(t_k) / abar_vp(t_0) (telescoping product), so
        alphas_cumprod[-1] ~ 4.3e-5 for every T with the default beta range.
        """
        _check_T(T)
        if not 0 <= beta_min < beta_max:
            raise ValueError(f"need 0 <= beta_min < beta_max, got {beta_min}, {beta_max}")
        t = torch.arange(T + 1, dtype=torch.float64) / T * (1.0 - _VP_EPS) + _VP_EPS  # (T+1,)
        log_mean = -0.25 * t**2 * (beta_max - beta_min) - 0.5 * t * beta_min
        abar_vp = torch.exp(2.0 * log_mean)
        return cls("vp", T, 1.0 - abar_vp[1:] / abar_vp[:-1])

    @classmethod
    def linear(cls, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Schedule:
        """Ho et al. (2020) linear betas, scaled by 1000/T as in improved-diffusion.

        beta_k = linspace(s beta_start, s beta_end, T) with s = 1000/T. Small T pushes
        betas to 1 or above; that raises ValueError (use the vp schedule instead).
        """
        _check_T(T)
        scale = 1000.0 / T
        betas = torch.linspace(scale * beta_start, scale * beta_end, T, dtype=torch.float64)
        if not bool((betas < 1).all()):
            raise ValueError(
                f"linear schedule with T={T} gives betas >= 1 (max {betas.max().item():.3g}); "
                "use the 'vp' schedule for small T"
            )
        return cls("linear", T, betas)

    @classmethod
    def cosine(cls, T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> Schedule:
        """Nichol & Dhariwal (2021) eq. 17: abar(u) = cos((u + s)/(1 + s) pi/2)^2,
        beta_k = min(1 - abar(k/T) / abar((k-1)/T), max_beta)."""
        _check_T(T)
        u = torch.arange(T + 1, dtype=torch.float64) / T  # (T+1,)
        abar = torch.cos((u + s) / (1.0 + s) * math.pi / 2) ** 2
        return cls("cosine", T, (1.0 - abar[1:] / abar[:-1]).clamp(max=max_beta))

    # ----- respacing ----------------------------------------------------------------

    def respace(self, steps: int | Sequence[int]) -> Schedule:
        """Sample this trained schedule with S <= T steps (Nichol & Dhariwal 2021, sec. 4).

        `steps` is S (keeps round(linspace(1, T, S)), always including T) or the kept
        step indices themselves (must include T). New betas keep alphas_cumprod at the
        kept indices: beta_i = 1 - abar_{k_i} / abar_{k_{i-1}} (abar_{k_0} = 1), and
        `model_timesteps` maps each new step to the index the network was trained on.
        """
        kept = _kept_steps(steps, self.T)  # (S,) int64, sorted, 1-based
        if kept.numel() == self.T:
            return self
        abar = self.alphas_cumprod[kept - 1]
        abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
        kind = self.kind if self.kind.endswith("-respaced") else f"{self.kind}-respaced"
        return Schedule(kind, kept.numel(), 1.0 - abar / abar_prev, self.model_timesteps[kept - 1])

    # ----- the Gaussian math --------------------------------------------------------

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t ~ q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) (Ho et al. 2020, eq. 4).

        x0, noise: (B, ...); t: int64 (B,) in 1..T. Returns x_t (B, ...).
        """
        a, s = self._coefs(t, x0, "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod")
        return a * x0 + s * noise

    def q_sample_pair(
        self, x0: torch.Tensor, t: torch.Tensor, noise_prev: torch.Tensor, noise_step: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """DDGAN's real pair (Xiao et al. 2021): x_{t-1} ~ q(x_{t-1} | x_0) (x_0 itself at
        t=1), then x_t = sqrt(alpha_t) x_{t-1} + sqrt(beta_t) noise_step, so x_t has the
        marginal q(x_t | x_0). All tensors (B, ...); t int64 (B,). Returns (x_prev, x_t)."""
        a_prev, s_prev, a, s = self._coefs(
            t, x0, "sqrt_alphas_cumprod_prev", "sqrt_one_minus_alphas_cumprod_prev",
            "sqrt_alphas", "sqrt_betas",
        )
        x_prev = a_prev * x0 + s_prev * noise_prev
        return x_prev, a * x_prev + s * noise_step

    def q_posterior(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q(x_{t-1} | x_t, x_0) = N(mean, variance I) (Ho et al. 2020, eq. 6-7):
        mean = beta_t sqrt(abar_{t-1}) / (1 - abar_t) x_0 + (1 - abar_{t-1}) sqrt(alpha_t) / (1 - abar_t) x_t,
        variance = (1 - abar_{t-1}) / (1 - abar_t) beta_t.

        x0, x_t: (B, ...); t int64 (B,). Returns (mean, variance, log_variance_clipped),
        each (B, ...) (the last two are expanded views).
        """
        c1, c2, var, log_var = self._coefs(
            t, x_t, "posterior_mean_coef1", "posterior_mean_coef2",
            "posterior_variance", "posterior_log_variance_clipped",
        )
        return c1 * x0 + c2 * x_t, var.expand_as(x_t), log_var.expand_as(x_t)

    def sample_posterior(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        """x_{t-1} = mean + exp(log_variance_clipped / 2) noise, from q(x_{t-1} | x_t, x_0);
        where t == 1 the mean itself (which equals x_0). All (B, ...); t int64 (B,)."""
        c1, c2, std = self._coefs(
            t, x_t, "posterior_mean_coef1", "posterior_mean_coef2", "_posterior_sample_std"
        )
        return c1 * x0 + c2 * x_t + std * noise

    def predict_x0_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Invert eq. 4: x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t). (B, ...) -> (B, ...)."""
        r, rm1 = self._coefs(t, x_t, "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod")
        return r * x_t - rm1 * eps

    def predict_eps_from_x0(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """eps = (x_t - sqrt(abar_t) x_0) / sqrt(1 - abar_t). (B, ...) -> (B, ...)."""
        r, rm1 = self._coefs(t, x_t, "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod")
        return (r * x_t - x0) / rm1

    def ddim_step(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Deterministic DDIM step, eta = 0 (Song et al. 2021, eq. 12):
        x_{t-1} = sqrt(abar_{t-1}) x_0 + sqrt(1 - abar_{t-1}) eps; x_0 exactly at t=1."""
        a_prev, s_prev = self._coefs(
            t, x0, "sqrt_alphas_cumprod_prev", "sqrt_one_minus_alphas_cumprod_prev"
        )
        return a_prev * x0 + s_prev * eps

    # ----- helpers ------------------------------------------------------------------

    def _coefs(self, t: torch.Tensor, x: torch.Tensor, *names: str) -> list[torch.Tensor]:
        """Gather per-step arrays at steps t (B,), shaped (B, 1, ..., 1) in x's dtype/device."""
        if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
            raise ValueError(f"t must be an integer tensor of step indices, got {t.dtype}")
        if t.dim() != 1 or t.shape[0] != x.shape[0]:
            raise ValueError(f"t must have shape ({x.shape[0]},), got {tuple(t.shape)}")
        if t.device.type == "cpu" and t.numel() and not 1 <= int(t.min()) <= int(t.max()) <= self.T:
            raise ValueError(f"t must lie in 1..{self.T}, got {int(t.min())}..{int(t.max())}")
        index = (t - 1).to(x.device)  # no range check on accelerators: it would synchronise
        shape = (-1,) + (1,) * (x.dim() - 1)
        return [self._table(name, x.device, x.dtype)[index].reshape(shape) for name in names]

    def _table(self, name: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        key = (name, device, dtype)
        table = self._tables.get(key)
        if table is None:
            # Ordinary (non-inference) tensors, so a first call under inference_mode
            # does not poison later autograd use of the same schedule.
            with torch.inference_mode(False), torch.no_grad():
                table = getattr(self, name).to(dtype).to(device)
            self._tables[key] = table
        return table

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Schedule):
            return NotImplemented
        return (
            self.kind == other.kind
            and self.T == other.T
            and torch.equal(self.betas, other.betas)
            and torch.equal(self.model_timesteps, other.model_timesteps)
        )

    def __hash__(self) -> int:
        return hash((self.kind, self.T, tuple(self.betas.tolist())))


def build_schedule(kind: str, T: int, beta_min: float = 0.1, beta_max: float = 20.0) -> Schedule:
    """Schedule by name. `beta_min`/`beta_max` are the continuous VP beta range; for
    `linear` they map to beta_start = beta_min/1000, beta_end = beta_max/1000 at T=1000
    (the defaults give Ho et al.'s 1e-4..0.02). `cosine` ignores them."""
    _check_T(T)
    if kind == "vp":
        return Schedule.vp(T, beta_min, beta_max)
    if kind == "linear":
        return Schedule.linear(T, beta_min / 1000.0, beta_max / 1000.0)
    if kind == "cosine":
        return Schedule.cosine(T)
    raise ValueError(f"unknown schedule {kind!r}; valid: {', '.join(SCHEDULE_KINDS)}")


def _check_T(T: int) -> None:
    if isinstance(T, bool) or not isinstance(T, numbers.Integral) or T < 1:
        raise ValueError(f"T must be an integer >= 1, got {T!r}")


def _kept_steps(steps: int | Sequence[int], T: int) -> torch.Tensor:
    """Sorted 1-based step indices to keep: (S,) int64, unique, in 1..T, last == T."""
    if isinstance(steps, numbers.Integral) and not isinstance(steps, bool):
        steps = int(steps)
        if not 1 <= steps <= T:
            raise ValueError(f"respace: steps must be in 1..{T}, got {steps}")
        # floor(x + 1/2), not round-half-to-even: spacing >= 1 keeps the indices distinct.
        grid = torch.linspace(1, T, steps, dtype=torch.float64) if steps > 1 else torch.tensor([T * 1.0])
        return torch.floor(grid + 0.5).to(torch.int64)
    kept = sorted({operator.index(k) for k in steps})
    if len(kept) != len(steps) or not kept or kept[0] < 1 or kept[-1] != T:
        raise ValueError(f"respace: need distinct step indices in 1..{T} that include {T}, got {list(steps)}")
    return torch.tensor(kept, dtype=torch.int64)
