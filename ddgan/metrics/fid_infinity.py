"""FID-infinity: the Frechet distance extrapolated to infinitely many samples.

FID's estimate is biased upward, and the bias falls as 1/N with a slope that depends on the
model (Chong & Forsyth, "Effectively Unbiased FID and Inception Score and where to find
them", CVPR 2020, eq. 4). Two models scored on the same N can therefore rank differently
at another N. Their remedy: compute FID on several sample counts N_i of one pool of
generated features (reference statistics fixed), fit

    FID_N = FID_inf + k / N

by least squares and report the intercept FID_inf (the value at 1/N = 0) beside FID_N.

Inception FID needs at least `MIN_FID_SAMPLES` = 2048 samples, its feature dimension:
below it the sample covariance is rank-deficient. KID (`kid_inception`) is unbiased at
any N and is the metric to use below that.

numpy only (and `ddgan.metrics.frechet`, numpy only).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ddgan.metrics.frechet import feature_stats, frechet_distance

MIN_FID_SAMPLES = 2048  # Inception pool3 feature dimension: fewer samples, rank-deficient covariance


@dataclass(frozen=True)
class FidInfinity:
    """FID_N = fid_inf + slope / N fitted to `points` ((N, FID_N), ascending N)."""

    fid_inf: float
    slope: float
    points: tuple[tuple[int, float], ...]

    @property
    def counts(self) -> tuple[int, ...]:
        return tuple(n for n, _ in self.points)


def fit_fid_infinity(counts: Sequence[int], fids: Sequence[float]) -> FidInfinity:
    """Least-squares fit of FID_N = FID_inf + k / N to (counts[i], fids[i]).

    Needs at least two distinct counts, each an integer >= 2, and finite FIDs; a
    ValueError names the problem otherwise.
    """
    if len(counts) != len(fids):
        raise ValueError(f"fid_infinity: {len(counts)} sample counts but {len(fids)} FIDs")
    if any(int(n) != n or n < 2 for n in counts):
        raise ValueError(f"fid_infinity: every sample count must be an integer >= 2, got {list(counts)}")
    if len(set(counts)) < 2:
        raise ValueError(f"fid_infinity: needs FIDs at >= 2 distinct sample counts, got {sorted(set(counts))}")
    y = np.asarray(fids, dtype=np.float64)
    if not np.isfinite(y).all():
        raise ValueError(f"fid_infinity: FIDs must be finite, got {list(fids)}")
    x = 1.0 / np.asarray(counts, dtype=np.float64)
    design = np.stack([np.ones_like(x), x], axis=1)  # (P, 2): intercept, 1/N
    (fid_inf, slope), *_ = np.linalg.lstsq(design, y, rcond=None)
    points = tuple(sorted((int(n), float(f)) for n, f in zip(counts, fids, strict=True)))
    return FidInfinity(float(fid_inf), float(slope), points)


def extrapolation_counts(n: int, minimum: int, points: int = 3) -> tuple[int, ...]:
    """The sample counts FID is computed on, from a pool of n: `points` counts evenly spaced
    from n/2 to n (3: n/2, 3n/4, n), or (n,) alone when n/2 < minimum (no extrapolation)."""
    if n < minimum:
        raise ValueError(f"fid_infinity: a pool of {n} samples is below the minimum {minimum}")
    if points < 2:
        raise ValueError(f"fid_infinity: needs >= 2 points to extrapolate, got {points}")
    if n // 2 < minimum:
        return (n,)
    return tuple(sorted({int(c) for c in np.linspace(n // 2, n, points).round()}))


def fid_at_counts(features: np.ndarray, mu_ref: np.ndarray, sigma_ref: np.ndarray,
                  counts: Sequence[int]) -> list[float]:
    """Frechet distance of the first `c` rows of features (N, D) to the reference, for each c.

    The samples are i.i.d., so nested prefixes of one pool serve as the subsets.
    """
    if max(counts) > len(features):
        raise ValueError(f"fid_infinity: count {max(counts)} exceeds the {len(features)} features")
    return [frechet_distance(*feature_stats(features[:c]), mu_ref, sigma_ref) for c in counts]
