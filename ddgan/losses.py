"""Adversarial objectives as pure functions of discriminator outputs, plus R1 and GP.

The discriminator returns raw outputs v (shape (B,)), larger meaning "more real".
An f-GAN objective (Nowozin et al. 2016, eq. 6 and Table 2) passes v through an
output activation g_f and forms the variational lower bound

    F(v) = E_real[g_f(v)] - E_fake[f*(g_f(v))]  <=  D_f(P_real || P_fake),

which the discriminator maximises (its loss is -F); equality holds at the optimal
output v*, where g_f(v*) = f'(p_real / p_fake). The seed (DDGAN, section 2.4) flips
the sign of v, which is equivalent. Real pairs are (x_{t-1} from the posterior,
x_t); fake pairs are (x_{t-1} from the generator, x_t).

The generator has three forms (`objective.generator_form`; Nowozin et al. 2016, 3.2):
  * ``minimax``:       minimise F, i.e. loss -E_fake[f*(g_f(v))];
  * ``nonsaturating``: maximise E_fake[g_f(v)], i.e. loss -E_fake[g_f(v)] (Nowozin et
    al.'s heuristic, the paper's form: same fixed point, other gradient);
  * ``log``:           the nonsaturating batch objective through a log. Where g_f is
    unbounded below (ns, hellinger, rkl) the loss is log E_fake[s - g_f(v)], s = sup g_f;
    where g_f is bounded below (tv) it is -log E_fake[g_f(v) - i], i = inf g_f.
    log is increasing and E_fake[g_f(v)] enters it monotonically, so the minimisers and
    the DIRECTION of the parameter gradient are those of ``nonsaturating``; only the
    length changes: grad log E[h] = grad E[h] / E[h]. For hellinger and rkl
    (s - g_f(v) = e^{-v}) the per-sample weights become softmax(-v) over the batch:
    the e^{-v} growth cancels and there is no clamp. For tv (g_f(v) - i = sigmoid(2v))
    the vanishing gain is divided out: the gradient tends to 2 per sample as v -> -inf.

Which form each objective uses unless told (`DEFAULT_GENERATOR_FORMS`), chosen so that
the generator's gradient neither vanishes nor explodes where the discriminator
confidently rejects the fakes (v -> -inf), with no dead zone from a clamp. Gradient
dL/dv per sample for a batch of B equal outputs v:

  ns         nonsaturating  softplus(-v)              -sigmoid(-v) / B   -> -1/B
  hellinger  log            logmeanexp(-v)             -1 / B
  rkl        minimax        1 - v                      -1 / B  (f*(g_f(v)) = v - 1 is linear:
                                                        1 - E_fake[v*] = 1 + KL(fake || real))
  tv         log            -log mean sigmoid(2v)      -2 sigmoid(-2v) / B -> -2/B
  wgan-gp, hinge  (their one form)  -v                 -1 / B

The paper's forms stay selectable by name: nonsaturating hellinger and rkl grow as
e^{-v} (2.2e4 at v = -10) and are clamped (zero gradient below v = -30); tv's
nonsaturating and minimax forms coincide, -tanh(v)/2, whose gradient sech^2(v)/2
vanishes once |v| > 3. As functions of v the nonsaturating hellinger and rkl losses
differ only by a constant (e^{-v} - 1 vs e^{-v}), and so do their log forms: the two
objectives differ through the discriminator's bound (v* = r/2 vs r).

Exponentials in the bound F are taken of outputs clamped to [-30, 30] (softplus for
ns), so F and its gradients stay finite for any finite v; beyond the clamp the
gradient of that term is zero. The log forms use log-sum-exp and need no clamp.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

GENERATOR_FORMS = ("nonsaturating", "minimax", "log")
_EXP_CLAMP = 30.0  # exp(30) ~ 1e13: finite in float32 and float16-safe after .float()


def _exp(v: torch.Tensor) -> torch.Tensor:
    """exp(v) of the clamped output: finite for every finite v."""
    return torch.exp(v.clamp(-_EXP_CLAMP, _EXP_CLAMP))


def _log_mean_exp(x: torch.Tensor) -> torch.Tensor:
    """log((1/B) sum_i exp(x_i)) over all B elements of x: exact and finite for every finite x."""
    x = x.reshape(-1)  # (B,); a 0-d tensor is a batch of one
    return torch.logsumexp(x, dim=0) - math.log(x.shape[0])


def _log_softplus(x: torch.Tensor) -> torch.Tensor:
    """log(softplus(x)), finite for every finite x (softplus(x) = e^x (1 + O(e^x)) below -20)."""
    small = x < -20.0
    safe = torch.where(small, torch.zeros_like(x), x)  # no log(0) in the branch not taken
    return torch.where(small, x, torch.log(F.softplus(safe)))


@dataclass(frozen=True)
class Objective:
    """An f-GAN objective: `real_term(v)` = g_f(v), `fake_term(v)` = f*(g_f(v)), elementwise.

    `generator_form` None means the objective's default (`DEFAULT_GENERATOR_FORMS`).
    """

    name: ClassVar[str]
    default_generator_form: ClassVar[str] = "nonsaturating"
    generator_form: str | None = None

    def __post_init__(self) -> None:
        if self.generator_form is None:
            object.__setattr__(self, "generator_form", self.default_generator_form)
        if self.generator_form not in GENERATOR_FORMS:
            raise ValueError(
                f"unknown generator_form {self.generator_form!r}; valid: {', '.join(GENERATOR_FORMS)}"
            )
        if self.generator_form == "log" and type(self).log_generator_loss is Objective.log_generator_loss:
            raise ValueError(f"generator_form 'log' is not defined for {self.name} (g_f unbounded both ways)")

    def real_term(self, v: torch.Tensor) -> torch.Tensor:
        """g_f(v), applied to real pairs; (B,) -> (B,)."""
        raise NotImplementedError

    def fake_term(self, v: torch.Tensor) -> torch.Tensor:
        """f*(g_f(v)), applied to fake pairs; (B,) -> (B,)."""
        raise NotImplementedError

    def log_generator_loss(self, v_fake: torch.Tensor) -> torch.Tensor:
        """The ``log`` form (module docstring); (B,) -> scalar."""
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
        """minimax: -E_fake[f*(g_f(v))]; nonsaturating: -E_fake[g_f(v)]; log: see module doc.
        (B,) -> scalar."""
        if self.generator_form == "minimax":
            return -self.fake_term(v_fake).mean()
        if self.generator_form == "log":
            return self.log_generator_loss(v_fake)
        return -self.real_term(v_fake).mean()


@dataclass(frozen=True)
class NonSaturating(Objective):
    """``ns``: the GAN of Goodfellow et al. 2014 as used by DDGAN; D_f = 2 JSD - log 4.

    f(u) = u log u - (u + 1) log(u + 1);  f*(t) = -log(1 - exp(t));
    g_f(v) = -softplus(-v) = log sigmoid(v), so f*(g_f(v)) = softplus(v).
    Real pairs: -softplus(-v); fake pairs: softplus(v). D loss: softplus(-v_real)
    + softplus(v_fake) (batch means). v* = log(p_real / p_fake).
    Generator: nonsaturating softplus(-v_fake) = -log D(G(z)) (default, DDGAN's: its
    gradient -sigmoid(-v) tends to -1 as v -> -inf, bounded, never zero); minimax
    -softplus(v_fake) = log(1 - D(G(z))), the saturating original; log
    log E_fake[softplus(-v)] (sup g_f = 0).
    """

    name: ClassVar[str] = "ns"

    def log_generator_loss(self, v_fake: torch.Tensor) -> torch.Tensor:
        return _log_mean_exp(_log_softplus(-v_fake))

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
    Generator: log (default) log E_fake[exp(-v)] = log(1 + nonsaturating loss), the
    nonsaturating direction with per-sample weights softmax(-v) (sup g_f = 1, so
    1 - g_f(v) = exp(-v)); nonsaturating exp(-v_fake) - 1, whose gradient grows as
    e^{-v} and is zero beyond the clamp; minimax 1 - exp(v_fake), whose gradient
    vanishes as v_fake -> -inf.
    """

    name: ClassVar[str] = "hellinger"
    default_generator_form: ClassVar[str] = "log"

    def log_generator_loss(self, v_fake: torch.Tensor) -> torch.Tensor:
        return _log_mean_exp(-v_fake)

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
    Generator: minimax 1 - v_fake (default): f*(g_f(v)) = v - 1 is linear, so the
    minimax loss never saturates (gradient -1 per sample for every v), and at v* it is
    1 + KL(P_fake || P_real), the divergence itself; nonsaturating exp(-v_fake) (the
    paper's heuristic, growing as e^{-v}, zero beyond the clamp); log log E_fake[exp(-v)]
    (sup g_f = 0).
    """

    name: ClassVar[str] = "rkl"
    default_generator_form: ClassVar[str] = "minimax"

    def log_generator_loss(self, v_fake: torch.Tensor) -> torch.Tensor:
        return _log_mean_exp(-v_fake)

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
    p_real < p_fake (0 where equal).
    Generator: log (default) -log E_fake[sigmoid(2v)]: g_f is bounded below by
    i = -1/2 and g_f(v) - i = (1 + tanh v) / 2 = sigmoid(2v), the discriminator's soft
    "real" probability; the gradient -2 sigmoid(-2v) softmax(log sigmoid(2v)) tends to
    -2 per sample as v -> -inf. nonsaturating = minimax = -E_fake[tanh(v) / 2] (the
    paper's), whose gradient sech^2(v) / 2 is ~0 once |v| > 3 (1.2e-8 at v = -10).
    """

    name: ClassVar[str] = "tv"
    default_generator_form: ClassVar[str] = "log"

    def log_generator_loss(self, v_fake: torch.Tensor) -> torch.Tensor:
        return -_log_mean_exp(F.logsigmoid(2.0 * v_fake))

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
DEFAULT_GENERATOR_FORMS: dict[str, str] = {name: cls.default_generator_form for name, cls in _OBJECTIVES.items()}


def objective_names() -> list[str]:
    """The registered objective names, in a fixed order."""
    return list(_OBJECTIVES)


def default_generator_form(name: str) -> str:
    """The generator form `name` uses unless told; ValueError listing the valid names if unknown."""
    return get_objective(name).generator_form


def get_objective(name: str, generator_form: str | None = None) -> Objective:
    """The objective called `name` (its default generator form when None); ValueError
    listing the valid names if unknown."""
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
