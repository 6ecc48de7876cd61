"""Seed-blocked statistics for a study: y ~ cell + seed, planned contrasts, Holm, detectable differences.

Pure numpy/scipy (no MLflow, no pandas): tests check every number against a closed form.

The design. Every cell trains with the same seeds, and a seed fixes both the initial weights
and the data order, so a seed is a *block*: the analysis is the two-way additive model
    y[cell, seed] = alpha[cell] + beta[seed] + e,   e ~ N(0, sigma^2)
fitted by least squares over the observed (cell, seed) pairs. A planned contrast is a weight
vector w over cells with sum(w) = 0 (e.g. +1 on one cell and -1 on another, or +1/k on each of k
cells and -1/k on each of k others); its estimate is w . alpha_hat, with variance
sigma^2 w' (X'X)^-1 w and a t-interval on the fit's residual degrees of freedom.

Choices (each tested in tests/test_report_stats.py):
  * **Which residual variance.** `fit_additive` is run over the cells the caller passes. With
    the study's analysed cells ("study" variance, the default of a grid's `contrasts:`) the
    residual variance is pooled over the whole design, df = (cells - 1)(seeds - 1) when
    complete; with only the contrast's own cells ("contrast" variance) a two-cell contrast is
    exactly the paired t-test over seeds. Pooling buys degrees of freedom (power under Holm) and
    assumes the seed-to-seed scatter is alike in every cell; the contrast-only fit assumes that
    only within the cells it compares. "groups" variance sits between them: one residual
    variance per *variance group* (cells expected to scatter alike, e.g. one objective at every
    T), each from the fit y ~ cell + seed over that group's cells; a contrast is then the paired
    mean over its complete seeds, sum_c w_c y[c, s], with variance sum_c w_c^2 sigma_g(c)^2 / n
    (the seed effect cancels because sum(w) = 0) and Welch-Satterthwaite degrees of freedom.
    It keeps the pooled fit's degrees of freedom where cells are alike and does not let a noisy
    group (tv, or DDPM at one step) widen or narrow the intervals of the others.
  * **Missing seeds.** The least-squares fit takes the unbalanced design as it is: no block is
    dropped. For a two-cell fit, a seed observed in only one cell carries no information on the
    difference (its own beta absorbs it), so the result equals the paired t over the complete
    seeds. A contrast whose cells are not connected through shared seeds is not estimable.
  * **Multiplicity.** Holm's step-down adjustment over the study's planned contrasts that have a
    p-value; "resolved" means Holm-adjusted p < alpha, never non-overlapping intervals.
  * **Detectable difference.** The smallest |difference| that a two-sided t-test at level
    alpha / m (Holm's first step, m planned contrasts) rejects with probability `power`, from the
    noncentral t with the contrast's standard error and df. Any p < alpha / m is rejected by
    Holm whatever the other p-values, so this is a guarantee for the Holm procedure too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats


@dataclass(frozen=True)
class AdditiveFit:
    """y ~ cell + seed by least squares. `cells`/`seeds` index the rows/columns of `values`."""

    cells: tuple[str, ...]
    seeds: tuple[int, ...]
    values: np.ndarray  # (cells, seeds), NaN where not observed
    coef: np.ndarray  # alpha (one per cell) then beta (seeds[1:]; beta of seeds[0] is 0)
    cov_unscaled: np.ndarray  # (X'X)^+ of those coefficients (the inverse when the design is connected)
    residual_var: float  # sigma^2 hat; NaN with no residual degrees of freedom
    df: int  # residual degrees of freedom: observations - rank
    rank: int  # rank of the design; cells + seeds - 1 when every cell is linked to every other by seeds
    row_space: np.ndarray  # X^+ X: a contrast w is estimable iff row_space @ w == w

    def seeds_of(self, cell: str) -> tuple[int, ...]:
        row = self.values[self.cells.index(cell)]
        return tuple(s for s, v in zip(self.seeds, row, strict=True) if np.isfinite(v))


def _design(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """X (observations x (cells + seeds - 1)) and y for the observed entries of `values`."""
    n_cells, n_seeds = values.shape
    rows, ys = [], []
    for i in range(n_cells):
        for j in range(n_seeds):
            if np.isfinite(values[i, j]):
                x = np.zeros(n_cells + n_seeds - 1)
                x[i] = 1.0
                if j > 0:
                    x[n_cells + j - 1] = 1.0
                rows.append(x)
                ys.append(values[i, j])
    return np.array(rows).reshape(len(rows), n_cells + n_seeds - 1), np.array(ys, dtype=float)


def fit_additive(values: np.ndarray | list, cells: list[str] | tuple[str, ...],
                 seeds: list[int] | tuple[int, ...]) -> AdditiveFit:
    """Least-squares fit of y ~ cell + seed to `values` (cells x seeds, NaN = missing).

    Cells without any observation and seeds without any observation are dropped first."""
    values = np.asarray(values, dtype=float).reshape(len(cells), len(seeds))
    keep_c = np.isfinite(values).any(axis=1)
    keep_s = np.isfinite(values).any(axis=0)
    cells = tuple(c for c, k in zip(cells, keep_c, strict=True) if k)
    seeds = tuple(s for s, k in zip(seeds, keep_s, strict=True) if k)
    values = values[keep_c][:, keep_s]
    if not cells:
        return AdditiveFit(cells, seeds, values, np.zeros(0), np.zeros((0, 0)), math.nan, 0, 0, np.zeros((0, 0)))
    X, y = _design(values)
    # Cells in parts of the design that share no seed cannot be compared: the pseudo-inverse fits
    # each connected part, and estimate_contrast refuses a contrast outside the row space.
    pinv = np.linalg.pinv(X)
    rank = int(np.linalg.matrix_rank(X))
    coef = pinv @ y
    df = len(y) - rank
    residual = y - X @ coef
    var = float(residual @ residual / df) if df > 0 else math.nan
    return AdditiveFit(cells, seeds, values, coef, pinv @ pinv.T, var, df, rank, pinv @ X)


def seed_block_test(fit: AdditiveFit) -> tuple[float, int, int, float]:
    """(F, df1, df2, p) of the seed block: cell-only model against cell + seed."""
    df1 = fit.rank - len(fit.cells)  # what the seeds add to the cell-only model's rank
    if fit.df <= 0 or df1 <= 0:
        return math.nan, 0, 0, math.nan
    sse_full = fit.residual_var * fit.df
    sse_cells = float(sum(np.nansum((row - np.nanmean(row)) ** 2) for row in fit.values))
    if sse_full <= 0:
        return math.inf, df1, fit.df, 0.0
    F = (sse_cells - sse_full) / df1 / (sse_full / fit.df)
    return float(F), df1, fit.df, float(stats.f.sf(F, df1, fit.df))


def equal_scatter_p(groups: list[list[float]]) -> float:
    """Bartlett's test that every group (a cell's values over seeds) scatters alike; NaN with fewer
    than two groups of three or more values. The seed effect adds the same variance to every cell,
    so equal residual variances mean equal variances here."""
    groups = [g for g in groups if len(g) >= 3]
    if len(groups) < 2 or any(np.std(g) == 0 for g in groups):
        return math.nan
    return float(stats.bartlett(*groups).pvalue)


@dataclass(frozen=True)
class ContrastEstimate:
    estimate: float  # w . alpha_hat: the difference
    se: float
    df: float  # residual degrees of freedom (Welch-Satterthwaite, not an integer, with "groups" variance)
    low: float  # 95% (1 - alpha) t-interval
    high: float
    t: float
    p: float  # two-sided, unadjusted
    seeds: int  # seeds observed in every cell of the contrast (complete blocks)

    @property
    def has_interval(self) -> bool:
        return math.isfinite(self.se) and self.df > 0


def contrast_weights(a: list[str] | tuple[str, ...], b: list[str] | tuple[str, ...]) -> dict[str, float]:
    """mean over cells `a` minus mean over cells `b`."""
    weights = {cell: 1.0 / len(a) for cell in a}
    for cell in b:
        weights[cell] = weights.get(cell, 0.0) - 1.0 / len(b)
    return weights


def estimate_contrast(fit: AdditiveFit, weights: dict[str, float], alpha: float = 0.05) -> ContrastEstimate:
    """The contrast sum_c w_c alpha_c of `fit`, its t-interval and two-sided p. NaN where a cell of
    the contrast has no observation, its cells share no seeds (not estimable), or no residual df is left."""
    if abs(sum(weights.values())) > 1e-9:
        raise ValueError(f"contrast weights must sum to 0, got {sum(weights.values()):g}")
    nan = ContrastEstimate(math.nan, math.nan, 0, math.nan, math.nan, math.nan, math.nan, 0)
    used = [c for c, w in weights.items() if w != 0]
    if any(c not in fit.cells for c in used):
        return nan
    w = np.zeros(len(fit.coef))
    for cell in used:
        w[fit.cells.index(cell)] = weights[cell]
    if not np.allclose(fit.row_space @ w, w, atol=1e-9):  # cells in parts of the design that share no seed
        return nan
    estimate = float(w @ fit.coef)
    complete = len(set.intersection(*(set(fit.seeds_of(c)) for c in used)))
    if fit.df <= 0 or not math.isfinite(fit.residual_var):
        return ContrastEstimate(estimate, math.nan, 0, math.nan, math.nan, math.nan, math.nan, complete)
    se = math.sqrt(fit.residual_var * float(w @ fit.cov_unscaled @ w))
    return _t_test(estimate, se, fit.df, alpha, complete)


def _t_test(estimate: float, se: float, df: float, alpha: float, complete: int) -> ContrastEstimate:
    half = float(stats.t.ppf(1 - alpha / 2, df)) * se
    if se == 0:
        t, p = (0.0, 1.0) if estimate == 0 else (math.copysign(math.inf, estimate), 0.0)
    else:
        t = estimate / se
        p = float(2 * stats.t.sf(abs(t), df))
    return ContrastEstimate(estimate, se, df, estimate - half, estimate + half, t, p, complete)


def estimate_grouped_contrast(values: np.ndarray | list, cells: list[str] | tuple[str, ...],
                              weights: dict[str, float], group_fits: dict[str, AdditiveFit],
                              group_of: dict[str, str], alpha: float = 0.05) -> ContrastEstimate:
    """The contrast as the paired mean over the seeds observed in all of its cells (`values`: cells
    x seeds), with variance sum_c w_c^2 sigma_g(c)^2 / n from each cell's group fit and
    Welch-Satterthwaite df. No interval where a group has no residual df (one cell, one seed)."""
    if abs(sum(weights.values())) > 1e-9:
        raise ValueError(f"contrast weights must sum to 0, got {sum(weights.values()):g}")
    values = np.asarray(values, dtype=float).reshape(len(cells), -1)
    used = [c for c, w in weights.items() if w != 0]
    nan = ContrastEstimate(math.nan, math.nan, 0, math.nan, math.nan, math.nan, math.nan, 0)
    if any(c not in cells for c in used):
        return nan
    rows = values[[list(cells).index(c) for c in used]]
    complete = np.isfinite(rows).all(axis=0)
    n = int(complete.sum())
    if n == 0:
        return nan
    w = np.array([weights[c] for c in used])
    estimate = float(np.mean(w @ rows[:, complete]))
    parts: dict[str, float] = {}  # group -> sum of w_c^2 over its cells, / n
    for cell, wc in zip(used, w, strict=True):
        parts[group_of[cell]] = parts.get(group_of[cell], 0.0) + wc**2 / n
    fits = {g: group_fits[g] for g in parts}
    if any(f.df <= 0 or not math.isfinite(f.residual_var) for f in fits.values()):
        return ContrastEstimate(estimate, math.nan, 0, math.nan, math.nan, math.nan, math.nan, n)
    terms = {g: k * fits[g].residual_var for g, k in parts.items()}
    var = sum(terms.values())
    denominator = sum(term**2 / fits[g].df for g, term in terms.items())
    df = float(var**2 / denominator) if denominator > 0 else float(min(f.df for f in fits.values()))
    return _t_test(estimate, math.sqrt(float(var)), df, alpha, n)


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values. NaN entries (no test) stay NaN and are not counted in m."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(len(p), math.nan)
    index = np.flatnonzero(np.isfinite(p))
    m = len(index)
    running = 0.0
    for rank, i in enumerate(index[np.argsort(p[index], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def power_two_sided(difference: float, se: float, df: float, alpha: float) -> float:
    """Probability that a two-sided t-test at level `alpha` rejects when the true contrast is
    `difference` (noncentral t with noncentrality difference / se)."""
    critical = stats.t.ppf(1 - alpha / 2, df)
    ncp = difference / se
    # the lower tail P(T < -c) as sf(c) at -ncp: scipy's nct.cdf far in the tail returns NaN
    return float(stats.nct.sf(critical, df, ncp) + stats.nct.sf(critical, df, -ncp))


def detectable_difference(se: float, df: float, alpha: float, power: float = 0.8) -> float:
    """Smallest |difference| the test at level `alpha` detects with probability `power`."""
    if not (math.isfinite(se) and se > 0 and df > 0):
        return math.nan
    if power <= alpha:
        return 0.0
    high = se
    while power_two_sided(high, se, df, alpha) < power:
        high *= 2
    return float(optimize.brentq(lambda d: power_two_sided(d, se, df, alpha) - power, 0.0, high, xtol=1e-10 * se))
