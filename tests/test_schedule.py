"""Diffusion schedules against closed forms: every expected value is recomputed here
independently (Python floats or plain Gaussian algebra), never read from the module."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from ddgan.schedule import Schedule, build_schedule

SMALL_T = (1, 2, 4, 8, 10)


def vp_log_mean(t: float, beta_min: float = 0.1, beta_max: float = 20.0) -> float:
    return -0.25 * t**2 * (beta_max - beta_min) - 0.5 * t * beta_min


def vp_time(k: int, T: int) -> float:
    return k / T * (1 - 1e-3) + 1e-3


def steps(T: int, B: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(1, T + 1, (B,), generator=generator)


SCHEDULES = {
    "vp1": lambda: Schedule.vp(1),
    "vp4": lambda: Schedule.vp(4),
    "vp10": lambda: Schedule.vp(10, beta_min=0.2, beta_max=15.0),
    "linear1000": lambda: Schedule.linear(1000),
    "cosine1000": lambda: Schedule.cosine(1000),
    "respaced": lambda: Schedule.linear(1000).respace(25),
}


@pytest.fixture(params=sorted(SCHEDULES))
def schedule(request) -> Schedule:
    return SCHEDULES[request.param]()


# ----- the arrays ---------------------------------------------------------------------


def test_alphas_cumprod_is_product_of_one_minus_beta(schedule):
    expected = 1.0
    for k in range(schedule.T):
        expected *= 1.0 - schedule.betas[k].item()
        assert schedule.alphas_cumprod[k].item() == pytest.approx(expected, rel=1e-12)
    assert schedule.alphas_cumprod_prev[0].item() == 1.0
    assert torch.equal(schedule.alphas_cumprod_prev[1:], schedule.alphas_cumprod[:-1])
    assert schedule.betas.dtype == torch.float64 and schedule.model_timesteps.dtype == torch.int64


@pytest.mark.parametrize("T", (1, 3, 10, 1000))
@pytest.mark.parametrize(("beta_min", "beta_max"), ((0.1, 20.0), (0.5, 8.0)))
def test_vp_betas_match_the_closed_form(T, beta_min, beta_max):
    schedule = Schedule.vp(T, beta_min, beta_max)
    abar_vp = [math.exp(2 * vp_log_mean(vp_time(k, T), beta_min, beta_max)) for k in range(T + 1)]
    for k in range(1, T + 1):
        assert schedule.betas[k - 1].item() == pytest.approx(1 - abar_vp[k] / abar_vp[k - 1], rel=1e-10)
        # Documented consequence: the product telescopes to abar_vp(t_k) / abar_vp(t_0).
        assert schedule.alphas_cumprod[k - 1].item() == pytest.approx(abar_vp[k] / abar_vp[0], rel=1e-9)
    assert torch.equal(schedule.model_timesteps, torch.arange(1, T + 1))


@pytest.mark.parametrize("T", SMALL_T)
def test_vp_small_T_is_valid_and_ends_near_pure_noise(T):
    schedule = Schedule.vp(T)
    assert bool(((schedule.betas > 0) & (schedule.betas <= 1)).all())
    # abar_T = exp(2 log_mean(1) - 2 log_mean(1e-3)) = 4.319e-5 for every T; the signal
    # left at step T, sqrt(abar_T) = 0.0066, is negligible next to unit noise.
    closed_form = math.exp(2 * vp_log_mean(1.0) - 2 * vp_log_mean(1e-3))
    assert schedule.alphas_cumprod[-1].item() == pytest.approx(closed_form, rel=1e-9)
    assert 4.3e-5 < schedule.alphas_cumprod[-1].item() < 4.4e-5
    assert torch.isfinite(schedule.posterior_log_variance_clipped).all()


def test_linear_golden_numbers():
    schedule = Schedule.linear(1000)
    assert schedule.betas[0].item() == pytest.approx(1e-4, rel=1e-12)
    assert schedule.betas[-1].item() == pytest.approx(0.02, rel=1e-12)
    assert schedule.betas[499].item() == pytest.approx(1e-4 + 499 * (0.02 - 1e-4) / 999, rel=1e-12)
    assert schedule.alphas_cumprod[-1].item() == pytest.approx(4.0358e-5, rel=1e-4)
    assert build_schedule("linear", 1000) == schedule  # default VP range maps to 1e-4..0.02
    other = build_schedule("linear", 500, beta_min=0.2, beta_max=10.0)  # beta(t)/T, as the VP limit
    assert other.betas[0].item() == pytest.approx(0.2 / 500) and other.betas[-1].item() == pytest.approx(10.0 / 500)


def test_linear_rescales_with_T_and_refuses_betas_of_one():
    schedule = Schedule.linear(100)  # improved-diffusion: scale 1000/T
    assert schedule.betas[0].item() == pytest.approx(1e-3) and schedule.betas[-1].item() == pytest.approx(0.2)
    Schedule.linear(21)  # largest beta 20/21 < 1
    with pytest.raises(ValueError, match="vp"):
        Schedule.linear(20)
    with pytest.raises(ValueError, match="vp"):
        build_schedule("linear", 10)


def test_cosine_matches_formula_and_clips_at_max_beta():
    def abar(u: float, s: float = 0.008) -> float:
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    schedule = Schedule.cosine(1000)
    assert schedule.betas[0].item() == pytest.approx(1 - abar(1e-3) / abar(0.0), rel=1e-9)
    assert schedule.betas[-1].item() == 0.999  # 1 - abar(1)/abar(1 - 1/T) ~ 1, clipped
    assert schedule.betas.max().item() == 0.999
    clipped = Schedule.cosine(1000, max_beta=0.1)
    assert clipped.betas.max().item() == 0.1
    assert torch.equal(clipped.betas[:500], schedule.betas[:500])  # early steps untouched


# ----- q(x_t | x_0) and the DDGAN pair --------------------------------------------------


def test_pair_is_q_sample_with_the_combined_noise():
    schedule, gen = Schedule.vp(8), torch.Generator().manual_seed(0)
    x0, n1, n2 = (torch.randn(64, 1, 4, 4, dtype=torch.float64, generator=gen) for _ in range(3))
    t = steps(8, 64, gen)
    x_prev, x_t = schedule.q_sample_pair(x0, t, n1, n2)
    abar, abar_prev = schedule.alphas_cumprod[t - 1], schedule.alphas_cumprod_prev[t - 1]
    alpha = (1 - schedule.betas[t - 1]).view(-1, 1, 1, 1)
    abar, abar_prev = abar.view(-1, 1, 1, 1), abar_prev.view(-1, 1, 1, 1)
    combined = (alpha.sqrt() * (1 - abar_prev).sqrt() * n1 + (1 - alpha).sqrt() * n2) / (1 - abar).sqrt()
    torch.testing.assert_close(x_t, schedule.q_sample(x0, t, combined), rtol=0, atol=1e-12)
    torch.testing.assert_close(x_prev, abar_prev.sqrt() * x0 + (1 - abar_prev).sqrt() * n1)
    first = t == 1
    assert first.any() and torch.equal(x_prev[first], x0[first])


@pytest.mark.parametrize("k", (1, 2, 5, 10))
def test_pair_has_the_marginal_of_q_sample_monte_carlo(k):
    schedule, gen, n = Schedule.vp(10), torch.Generator().manual_seed(k), 200_000
    x0 = torch.full((n, 1), 0.7, dtype=torch.float64)
    t = torch.full((n,), k)
    noise = [torch.randn(n, 1, dtype=torch.float64, generator=gen) for _ in range(2)]
    x_prev, x_t = schedule.q_sample_pair(x0, t, *noise)
    abar = schedule.alphas_cumprod[k - 1].item()
    mean, var = math.sqrt(abar) * 0.7, 1 - abar
    # Standard errors of the sample mean and sample variance of a Gaussian.
    assert abs(x_t.mean().item() - mean) < 5 * math.sqrt(var / n)
    assert abs(x_t.var().item() - var) < 5 * var * math.sqrt(2 / (n - 1))
    # The pair is a step of the chain: Cov(x_prev, x_t) = sqrt(alpha_k) Var(x_prev).
    var_prev = 1 - schedule.alphas_cumprod_prev[k - 1].item()
    cov = ((x_prev - x_prev.mean()) * (x_t - x_t.mean())).mean().item()
    assert cov == pytest.approx(math.sqrt(1 - schedule.betas[k - 1].item()) * var_prev, abs=5 * math.sqrt(2 / n))


# ----- the posterior --------------------------------------------------------------------


@pytest.mark.parametrize("make", (lambda: Schedule.vp(10), lambda: Schedule.cosine(50), lambda: Schedule.vp(1)))
def test_posterior_equals_gaussian_conditioning(make):
    schedule = make()
    x0 = torch.tensor([[0.3, -1.2]], dtype=torch.float64)
    x_t = torch.tensor([[1.1, 0.4]], dtype=torch.float64)
    for k in range(1, schedule.T + 1):
        mean, var, log_var = schedule.q_posterior(x0, x_t, torch.tensor([k]))
        abar_prev = math.prod(1 - b for b in schedule.betas[: k - 1].tolist())
        beta = schedule.betas[k - 1].item()
        if k == 1:  # x_0 is known exactly: a point mass
            expect_mean, expect_var = x0, 0.0
        else:
            # Prior x_{k-1} | x_0 ~ N(sqrt(abar_prev) x0, 1 - abar_prev); likelihood
            # x_k | x_{k-1} ~ N(sqrt(1 - beta) x_{k-1}, beta): precisions add.
            expect_var = 1 / (1 / (1 - abar_prev) + (1 - beta) / beta)
            expect_mean = expect_var * (
                math.sqrt(abar_prev) * x0 / (1 - abar_prev) + math.sqrt(1 - beta) * x_t / beta
            )
        torch.testing.assert_close(mean, expect_mean, rtol=1e-9, atol=1e-12)
        assert var.shape == x_t.shape
        assert var[0, 0].item() == pytest.approx(expect_var, rel=1e-9, abs=1e-15)
        if k >= 2:
            assert log_var[0, 0].item() == pytest.approx(math.log(expect_var), rel=1e-9)
    log_var = schedule.posterior_log_variance_clipped
    expected_head = schedule.posterior_variance[1] if schedule.T > 1 else schedule.betas[0]
    assert log_var[0].item() == pytest.approx(math.log(expected_head.item()), rel=1e-12)


def test_sample_posterior_adds_noise_except_at_the_first_step():
    schedule, gen = Schedule.vp(4), torch.Generator().manual_seed(1)
    x0, x_t, noise = (torch.randn(8, 1, 3, 3, dtype=torch.float64, generator=gen) for _ in range(3))
    t = torch.tensor([1, 2, 3, 4, 1, 2, 3, 4])
    mean, var, _ = schedule.q_posterior(x0, x_t, t)
    x_prev = schedule.sample_posterior(x0, x_t, t, noise)
    first = t == 1
    torch.testing.assert_close(x_prev[first], mean[first], rtol=0, atol=0)
    torch.testing.assert_close(x_prev[first], x0[first], rtol=0, atol=1e-12)
    torch.testing.assert_close(x_prev[~first], mean[~first] + var[~first].sqrt() * noise[~first])
    torch.testing.assert_close(schedule.sample_posterior(x0, x_t, t, torch.zeros_like(noise)), mean)


# ----- epsilon / x_0 conversions and DDIM ----------------------------------------------------


def test_predict_x0_and_eps_invert_q_sample(schedule):
    gen = torch.Generator().manual_seed(2)
    x0, eps = (torch.randn(16, 1, 5, 5, dtype=torch.float64, generator=gen) for _ in range(2))
    t = steps(schedule.T, 16, gen)
    x_t = schedule.q_sample(x0, t, eps)
    torch.testing.assert_close(schedule.predict_x0_from_eps(x_t, t, eps), x0, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(schedule.predict_eps_from_x0(x_t, t, x0), eps, rtol=1e-7, atol=1e-7)


def test_ddim_is_deterministic_and_exact_with_the_true_eps():
    schedule, gen = Schedule.linear(1000).respace(10), torch.Generator().manual_seed(3)
    x0, eps = (torch.randn(10, 1, 4, 4, generator=gen) for _ in range(2))
    t = torch.arange(1, 11)
    x_t = schedule.q_sample(x0, t, eps)
    eps_hat = schedule.predict_eps_from_x0(x_t, t, x0)
    first = schedule.ddim_step(x0, eps_hat, t)
    assert torch.equal(first, schedule.ddim_step(x0, eps_hat, t))
    assert torch.equal(first[0], x0[0])  # t = 1: abar_prev = 1, so x_0 exactly
    # eta = 0 keeps the same noise: x_{t-1} = q_sample(x0, t-1, eps) for t >= 2.
    torch.testing.assert_close(first[1:], schedule.q_sample(x0[1:], t[1:] - 1, eps[1:]), rtol=1e-4, atol=1e-4)


# ----- respacing ----------------------------------------------------------------------------


@pytest.mark.parametrize("spec", (10, 1, 999, [1, 10, 500, 1000], [1000]))
def test_respace_preserves_alphas_cumprod_at_kept_steps(spec):
    base = Schedule.linear(1000)
    spaced = base.respace(spec)
    kept = spaced.model_timesteps
    assert spaced.kind == "linear-respaced" and len(kept) == spaced.T
    assert kept[-1].item() == 1000 and bool((kept[1:] > kept[:-1]).all())
    if isinstance(spec, int) and spec > 1:
        assert kept[0].item() == 1
        assert kept.tolist() == [math.floor(1 + i * 999 / (spec - 1) + 0.5) for i in range(spec)]
    # 1 - (1 - abar) loses ~eps/abar ~ 1e-16 / 4e-5 relative accuracy at the noisiest step.
    torch.testing.assert_close(spaced.alphas_cumprod, base.alphas_cumprod[kept - 1], rtol=1e-9, atol=0)


def test_respace_twice_maps_to_original_steps_and_full_respace_is_identity():
    base = Schedule.cosine(100)
    twice = base.respace([10, 50, 70, 100]).respace([2, 4])
    assert twice.model_timesteps.tolist() == [50, 100]
    torch.testing.assert_close(twice.alphas_cumprod, base.alphas_cumprod[[49, 99]], rtol=1e-9, atol=0)
    assert base.respace(100) == base and base.respace(list(range(1, 101))) == base


@pytest.mark.parametrize("spec", (0, 11, [1, 5], [3, 3, 10], [0, 10], []))
def test_respace_rejects_bad_steps(spec):
    with pytest.raises(ValueError):
        Schedule.vp(10).respace(spec)


# ----- validation, immutability, dtype and device handling ----------------------------------------


def test_build_schedule_dispatches_and_rejects_bad_input():
    assert build_schedule("vp", 4, 0.2, 10.0) == Schedule.vp(4, 0.2, 10.0)
    assert build_schedule("cosine", 30) == Schedule.cosine(30)
    with pytest.raises(ValueError, match="vp, linear, cosine"):
        build_schedule("sigmoid", 10)
    for T in (0, -3, 2.0, True):
        with pytest.raises(ValueError, match="T must be"):
            build_schedule("vp", T)


@pytest.mark.parametrize(
    "betas", (torch.tensor([0.1, 0.0]), torch.tensor([0.1, 1.0]), torch.tensor([0.1, float("nan")]), torch.tensor([0.1]))
)
def test_schedule_rejects_bad_betas(betas):
    with pytest.raises(ValueError):
        Schedule("custom", 2, betas)


def test_bad_timesteps_raise():
    schedule, x = Schedule.vp(4), torch.zeros(2, 1, 3, 3)
    for t in (torch.tensor([0, 1]), torch.tensor([1, 5]), torch.tensor([1.0, 2.0]), torch.tensor([1, 2, 3])):
        with pytest.raises(ValueError, match="t must"):
            schedule.q_sample(x, t, x)


def test_schedule_is_immutable_and_owns_its_arrays():
    betas = torch.full((3,), 0.1, dtype=torch.float64)
    schedule = Schedule("custom", 3, betas)
    betas.fill_(0.5)
    assert schedule.betas.tolist() == [0.1, 0.1, 0.1]
    with pytest.raises(dataclasses.FrozenInstanceError):
        schedule.T = 4
    assert hash(schedule) == hash(Schedule("custom", 3, [0.1, 0.1, 0.1]))
    assert Schedule.vp(4) != Schedule.vp(5) and Schedule.vp(4) != Schedule.linear(100)


def test_outputs_follow_x_dtype_and_shape_and_survive_inference_mode():
    schedule, gen = Schedule.vp(4), torch.Generator().manual_seed(4)
    x0 = torch.randn(3, 1, 28, 28, generator=gen)
    t = torch.tensor([1, 2, 4])
    with torch.inference_mode():  # first use builds the cached float32 tables
        schedule.q_sample(x0, t, x0)
    x0 = x0.clone().requires_grad_(True)
    x_prev, x_t = schedule.q_sample_pair(x0, t, torch.randn_like(x0), torch.randn_like(x0))
    out = schedule.sample_posterior(x0, x_t, t, torch.randn_like(x0))
    assert out.dtype == torch.float32 and out.shape == x0.shape and x_prev.shape == x0.shape
    out.sum().backward()  # the cached tables are ordinary tensors, usable under autograd
    assert x0.grad is not None and torch.isfinite(x0.grad).all()
    half = schedule.q_sample(x0.detach().bfloat16(), t, x0.detach().bfloat16())
    assert half.dtype == torch.bfloat16
