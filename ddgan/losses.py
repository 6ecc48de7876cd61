"""Adversarial objectives as pure functions of discriminator outputs, plus R1 and GP.

The discriminator returns raw outputs v (shape (B,)), larger meaning "more real".
An f-GAN objective (Nowozin et al. 2016, eq. 6 and Table 2) passes v through an
output activation g_f and forms the variational lower bound

    F(v) = E_real[g_f(v)] - E_fake[f*(g_f(v))]  <=  D_f(P_real || P_fake),

which the discriminator maximises (its loss is -F); equality holds at the optimal
output v*, where g_f(v*) = f'(p_real / p_fake). The seed (DDGAN, section 2.4) flips
the sign of v, which is equivalent. Real pairs are (x_{t-1} from the posterior,
x_t); fake pairs are (x_{t-1} from the generator, x_t).

The generator has two forms (Nowozin et al. 2016, section 3.2):
  * ``minimax``:       minimise F, i.e. loss -E_fake[f*(g_f(v))];
  * ``nonsaturating``: maximise E_fake[g_f(v)], i.e. loss -E_fake[g_f(v)] (default:
    it keeps gradients when the discriminator confidently rejects the fakes).
They give different losses for ns (minimax is Goodfellow's saturating
log(1 - D)), hellinger and rkl; they coincide for tv (f*(t) = t), and for
wgan-gp and hinge, which are not f-GANs and use -E_fake[v] in both forms.

Exponentials are taken of outputs clamped to [-30, 30] (softplus for ns), so
losses and gradients stay finite for any finite v; beyond the clamp the gradient
of that term is zero.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

GENERATOR_FORMS = ("nonsaturating", "minimax")
_EXP_CLAMP = 30.0  # exp(30) ~ 1e13: finite in float32 and float16-safe after .float()


def _exp(v: torch.Tensor) -> torch.Tensor:
    """exp(v) of the clamped output: finite for every finite v."""
    return torch.exp(v.clamp(-_EXP_CLAMP, _EXP_CLAMP))


@dataclass(frozen=True)
class Objective:
    """An f-GAN objective: `real_term(v)` = g_f(v), `fake_term(v)` = f*(g_f(v)), elementwise."""

    name: ClassVar[str]
    generator_form: str = "nonsaturating"

    def __post_init__(self) -> None:
        if self.generator_form not in GENERATOR_FORMS:
            raise ValueError(
                f"unknown generator_form {self.generator_form!r}; valid: {', '.join(GENERATOR_FORMS)}"
            )

    def real_term(self, v: torch.Tensor) -> torch.Tensor:
        """g_f(v), applied to real pairs; (B,) -> (B,)."""
        raise NotImplementedError

    def fake_term(self, v: torch.Tensor) -> torch.Tensor:
        """f*(g_f(v)), applied to fake pairs; (B,) -> (B,)."""
        raise NotImplementedError

    def optimal_output(self, log_ratio: torch.Tensor) -> torch.Tensor:
        """v* for log(p_real / p_fake), from g_f(v*) = f'(p_real / p_fake); same shape."""
        raise NotImplementedError(f"{self.name} has no pointwise optimal output")

    def variational_bound(self, v_real: torch.Tensor, v_fake: torch.Tensor) -> torch.Tensor:
        """Batch estimate of F = E_real[g_f(v)] - E_fake[f*(g_f(v))]; (B,), (B,) -> scalar."""
        return self.real_term(v_real).mean() - self.fake_term(v_fake).mean()

    def discriminator_loss(self, v_real: torch.Tensor, v_fake: torch.Tensor) -> torch.Tensor:
        """-F: the discriminator maximises the bound; (B,), (B,) -> scalar."""
        return -self.variational_bound(v_real, v_fake)

    def generator_loss(self, v_fake: torch.Tensor) -> torch.Tensor:
        """minimax: -E_fake[f*(g_f(v))]; nonsaturating: -E_fake[g_f(v)]; (B,) -> scalar."""
        if self.generator_form == "minimax":
            return -self.fake_term(v_fake).mean()
        return -self.real_term(v_fake).mean()


@dataclass(frozen=True)
class NonSaturating(Objective):
    """``ns``: the GAN of Goodfellow et al. 2014 as used by DDGAN; D_f = 2 JSD - log 4.

    f(u) = u log u - (u + 1) log(u + 1);  f*(t) = -log(1 - exp(t));
    g_f(v) = -softplus(-v) = log sigmoid(v), so f*(g_f(v)) = softplus(v).
    Real pairs: -softplus(-v); fake pairs: softplus(v). D loss: softplus(-v_real)
    + softplus(v_fake) (batch means). v* = log(p_real / p_fake).
    Generator: nonsaturating softplus(-v_fake) = -log D(G(z)) (default, DDGAN's);
    minimax -softplus(v_fake) = log(1 - D(G(z))), the saturating original.
    """

    name: ClassVar[str] = "ns"

    def real_term(self, v: torch.Tensor) -> torch.Tensor:
        return -F.softplus(-v)

    def fake_term(self, v: torch.Tensor) -> torch.Tensor:
        return F.softplus(v)

    def optimal_output(self, log_ratio: torch.Tensor) -> torch.Tensor:
        return log_ratio


@dataclass(frozen=True)
class Hellinger(Objective):
    """``hellinger``: squared Hellinger distance 2 (1 - int sqrt(p_real p_fake)).

    f(u) = (sqrt(u) - 1)^2;  f*(t) = t / (1 - t) for t < 1;
    g_f(v) = 1 - exp(-v), so f*(g_f(v)) = exp(v) - 1.
    Real pairs: 1 - exp(-v); fake pairs: exp(v) - 1. v* = log(p_real / p_fake) / 2.
    Generator: nonsaturating exp(-v_fake) - 1 (default); minimax 1 - exp(v_fake),
    whose gradient vanishes as v_fake -> -inf.
    """

    name: ClassVar[str] = "hellinger"

    def real_term(self, v: torch.Tensor) -> torch.Tensor:
        return 1.0 - _exp(-v)

    def fake_term(self, v: torch.Tensor) -> torch.Tensor:
        return _exp(v) - 1.0

    def optimal_output(self, log_ratio: torch.Tensor) -> torch.Tensor:
        return 0.5 * log_ratio


@dataclass(frozen=True)
class ReverseKL(Objective):
    """``rkl``: reverse KL, D_f(P_real || P_fake) = KL(P_fake || P_real).

    f(u) = -log u;  f*(t) = -1 - log(-t) for t < 0;
    g_f(v) = -exp(-v), so f*(g_f(v)) = v - 1.
    Real pairs: -exp(-v); fake pairs: v - 1. v* = log(p_real / p_fake).
    Generator: nonsaturating exp(-v_fake) (default); minimax 1 - v_fake.
    """

    name: ClassVar[str] = "rkl"

    def real_term(self, v: torch.Tensor) -> torch.Tensor:
        return -_exp(-v)

    def fake_term(self, v: torch.Tensor) -> torch.Tensor:
        return v - 1.0

    def optimal_output(self, log_ratio: torch.Tensor) -> torch.Tensor:
        return log_ratio


@dataclass(frozen=True)
class TotalVariation(Objective):
    """``tv``: total variation distance (1/2) int |p_real - p_fake| = sup_A |P(A) - Q(A)|.

    f(u) = |u - 1| / 2;  f*(t) = t for |t| <= 1/2;  g_f(v) = tanh(v) / 2.
    Real pairs: tanh(v) / 2; fake pairs: tanh(v) / 2. f'(u) = sign(u - 1) / 2 is
    reached only in the limit, so v* = +inf where p_real > p_fake, -inf where
    p_real < p_fake (0 where equal). Generator forms coincide: -E_fake[tanh(v) / 2].
    """

    name: ClassVar[str] = "tv"

    def real_term(self, v: torch.Tensor) -> torch.Tensor:
        return 0.5 * torch.tanh(v)

    def fake_term(self, v: torch.Tensor) -> torch.Tensor:
        return 0.5 * torch.tanh(v)

    def optimal_output(self, log_ratio: torch.Tensor) -> torch.Tensor:
        return torch.sign(log_ratio) * torch.where(log_ratio == 0, 0.0, math.inf)


@dataclass(frozen=True)
class WassersteinGP(Objective):
    """``wgan-gp``: Wasserstein critic (Gulrajani et al. 2017); not an f-GAN.

    Bound E_real[v] - E_fake[v] (= W1 for the best 1-Lipschitz critic); real and
    fake terms are both v. D loss E_fake[v] - E_real[v]; add `gradient_penalty`.
    Generator forms coincide: -E_fake[v]. The optimum is a constrained critic, not
    a pointwise function of the density ratio, so `optimal_output` is undefined.
    """

    name: ClassVar[str] = "wgan-gp"

    def real_term(self, v: torch.Tensor) -> torch.Tensor:
        return v

    def fake_term(self, v: torch.Tensor) -> torch.Tensor:
        return v

    def generator_loss(self, v_fake: torch.Tensor) -> torch.Tensor:
        return -v_fake.mean()


@dataclass(frozen=True)
class Hinge(Objective):
    """``hinge`` (Lim & Ye 2017; Miyato et al. 2018); not an f-GAN.

    D loss: E_real[relu(1 - v)] + E_fake[relu(1 + v)]. Its minimum is 2 - 2 TV,
    so the bound reported is 1 - D_loss / 2 <= TV (real term 1 - relu(1 - v) / 2,
    fake term relu(1 + v) / 2), tight at v* = sign(log(p_real / p_fake)).
    Generator forms coincide: -E_fake[v].
    """

    name: ClassVar[str] = "hinge"

    def real_term(self, v: torch.Tensor) -> torch.Tensor:
        return 1.0 - 0.5 * F.relu(1.0 - v)

    def fake_term(self, v: torch.Tensor) -> torch.Tensor:
        return 0.5 * F.relu(1.0 + v)

    def optimal_output(self, log_ratio: torch.Tensor) -> torch.Tensor:
        return torch.sign(log_ratio)

    def discriminator_loss(self, v_real: torch.Tensor, v_fake: torch.Tensor) -> torch.Tensor:
        return F.relu(1.0 - v_real).mean() + F.relu(1.0 + v_fake).mean()

    def generator_loss(self, v_fake: torch.Tensor) -> torch.Tensor:
        return -v_fake.mean()


_OBJECTIVES: dict[str, type[Objective]] = {
    cls.name: cls for cls in (NonSaturating, Hellinger, ReverseKL, TotalVariation, WassersteinGP, Hinge)
}


def objective_names() -> list[str]:
    """The registered objective names, in a fixed order."""
    return list(_OBJECTIVES)


def get_objective(name: str, generator_form: str = "nonsaturating") -> Objective:
    """The objective called `name`; ValueError listing the valid names if unknown."""
    if name not in _OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; valid: {', '.join(_OBJECTIVES)}")
    return _OBJECTIVES[name](generator_form=generator_form)


def r1_penalty(v_real: torch.Tensor, x_real: torch.Tensor, gamma: float) -> torch.Tensor:
    """R1 (Mescheder et al. 2018, eq. 9): gamma / 2 * E_batch ||grad_x D(x_real)||^2.

    v_real: (B,) outputs computed from x_real (B, ...), which must require grad.
    The graph is kept (create_graph=True) so the penalty trains the discriminator.
    Applied lazily (every k steps) it is not rescaled, as in DDGAN's reference code.
    """
    (grad,) = torch.autograd.grad(v_real.sum(), x_real, create_graph=True)  # (B, ...)
    return 0.5 * gamma * grad.pow(2).flatten(1).sum(dim=1).mean()


def gradient_penalty(
    critic_fn: Callable[[torch.Tensor], torch.Tensor],
    real: torch.Tensor,
    fake: torch.Tensor,
    weight: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """WGAN-GP (Gulrajani et al. 2017, eq. 3): weight * E[(||grad_x critic(x_hat)|| - 1)^2].

    x_hat = eps * real + (1 - eps) * fake with eps ~ U[0, 1] per sample, drawn
    from `generator` (on real's device). real, fake: (B, ...); critic_fn: (B, ...) -> (B,).
    """
    shape = (real.shape[0],) + (1,) * (real.dim() - 1)  # (B, 1, ..., 1)
    eps = torch.rand(shape, generator=generator, device=real.device, dtype=real.dtype)
    x_hat = (eps * real.detach() + (1 - eps) * fake.detach()).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic_fn(x_hat).sum(), x_hat, create_graph=True)
    norm = torch.sqrt(grad.pow(2).flatten(1).sum(dim=1) + 1e-12)  # (B,); eps: finite grad at 0
    return weight * (norm - 1.0).pow(2).mean()
