"""FID-infinity (Chong & Forsyth 2020): the 1/N fit, on exact lines and on Gaussian features."""

from __future__ import annotations

import numpy as np
import pytest

from ddgan.metrics.fid_infinity import extrapolation_counts, fid_at_counts, fit_fid_infinity

D = 16  # feature dimension of the synthetic features
COUNTS = (64, 96, 128, 192, 256)


def test_an_exact_line_gives_back_its_intercept_and_slope():
    counts = (1000, 2000, 5000, 10_000)
    fit = fit_fid_infinity(counts, [7.5 + 3000.0 / n for n in counts])
    assert fit.fid_inf == pytest.approx(7.5, abs=1e-9) and fit.slope == pytest.approx(3000.0, rel=1e-9)
    assert fit.points == tuple((n, 7.5 + 3000.0 / n) for n in counts) and fit.counts == counts


def test_two_points_are_enough_and_order_does_not_matter():
    fit = fit_fid_infinity([4000, 2000], [10.5, 11.0])  # 10 + 2000 / N
    assert (fit.fid_inf, fit.slope) == (pytest.approx(10.0), pytest.approx(2000.0))
    assert fit.counts == (2000, 4000)


def _pool(rng: np.random.Generator, shift: float) -> np.ndarray:
    return rng.standard_normal((max(COUNTS), D)) + shift  # (N, D)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_features_from_the_reference_distribution_extrapolate_towards_zero(seed):
    """Reference N(0, I) exactly; the pool from the same law: the true FID is 0, and the
    bias at small N is positive. The intercept is closer to 0 than FID at the smallest N."""
    fids = fid_at_counts(_pool(np.random.default_rng(seed), 0.0), np.zeros(D), np.eye(D), COUNTS)
    fit = fit_fid_infinity(COUNTS, fids)
    assert fids[0] > fids[-1] > 0  # the bias shrinks as N grows
    assert fit.slope > 0
    assert abs(fit.fid_inf) < 0.25 * fids[0]


def test_a_shifted_pool_extrapolates_towards_its_true_distance():
    """Control: a mean shift of 0.5 in every dimension, true FID = 16 * 0.25 = 4."""
    fids = fid_at_counts(_pool(np.random.default_rng(3), 0.5), np.zeros(D), np.eye(D), COUNTS)
    fit = fit_fid_infinity(COUNTS, fids)
    assert abs(fit.fid_inf - 4.0) < abs(fids[0] - 4.0)
    assert fit.fid_inf > 2.0  # not extrapolated to 0: the fit sees the shift


@pytest.mark.parametrize("counts, fids, match", [
    ([2048, 2048], [1.0, 2.0], r"needs FIDs at >= 2 distinct sample counts, got \[2048\]"),
    ([2048], [1.0], "needs FIDs at >= 2 distinct"),
    ([1, 4096], [1.0, 2.0], r"every sample count must be an integer >= 2"),
    ([2048.5, 4096], [1.0, 2.0], r"every sample count must be an integer >= 2"),
    ([2048, 4096], [1.0], "2 sample counts but 1 FIDs"),
    ([2048, 4096], [1.0, float("nan")], "FIDs must be finite"),
])
def test_bad_inputs_are_refused_with_the_problem_named(counts, fids, match):
    with pytest.raises(ValueError, match=match):
        fit_fid_infinity(counts, fids)


def test_extrapolation_counts_span_half_to_all_of_the_pool():
    assert extrapolation_counts(10_000, 2048) == (5000, 7500, 10_000)
    assert extrapolation_counts(4096, 2048) == (2048, 3072, 4096)
    assert extrapolation_counts(4095, 2048) == (4095,)  # n/2 below the minimum: FID at n only
    assert extrapolation_counts(32, 2, points=5) == (16, 20, 24, 28, 32)
    with pytest.raises(ValueError, match="below the minimum 2048"):
        extrapolation_counts(1000, 2048)
    with pytest.raises(ValueError, match=">= 2 points"):
        extrapolation_counts(10_000, 2048, points=1)


def test_counts_beyond_the_pool_are_refused():
    with pytest.raises(ValueError, match="count 300 exceeds the 256 features"):
        fid_at_counts(np.zeros((256, D)), np.zeros(D), np.eye(D), [128, 300])


# --- the run config refuses Inception FID below 2048 samples ------------------------------------


@pytest.mark.parametrize("overrides, key, n", [
    (["eval.final_metrics=[fid_inception]", "eval.final_n_samples=2047"], "final_n_samples", 2047),
    (["eval.final_metrics=[fid_inception]", "eval.n_samples=1000"], "final_n_samples", 1000),  # final N unset
    (["eval.metrics=[fid_inception]", "eval.n_samples=2000", "eval.final_n_samples=10000"], "n_samples", 2000),
])
def test_inception_fid_below_2048_samples_is_a_one_line_config_error(overrides, key, n):
    from ddgan.config import load_config
    from ddgan.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    message = str(err.value)
    assert message == (f"config: eval: fid_inception on {n} samples (eval.{key}): Inception FID needs >= 2048 "
                       "(its feature dimension); use kid_inception below that")


@pytest.mark.parametrize("overrides", [
    ["eval.final_metrics=[fid_inception]", "eval.final_n_samples=2048"],  # the boundary itself
    ["eval.metrics=[fid_inception]", "eval.n_samples=2048"],
    ["eval.final_metrics=[kid_inception]", "eval.final_n_samples=100"],  # KID: unbiased at any N
    ["eval.metrics=[fd_fmnist, kid_inception]", "eval.n_samples=256"],
])
def test_fid_on_2048_or_more_and_kid_or_fd_at_any_count_are_accepted(overrides):
    from ddgan.config import load_config

    load_config(None, overrides)
