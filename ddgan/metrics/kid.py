"""Kernel Inception Distance: unbiased MMD^2 with the cubic polynomial kernel.

    k(x, y) = (x . y / d + 1)^3                                  (Binkowski et al. 2018)
    MMD^2_u = 1/(m(m-1)) sum_{i!=j} [k(x_i,x_j) + k(y_i,y_j)] - 2/m^2 sum_{i,j} k(x_i,y_j)

averaged over `num_subsets` subsets of size m, drawn without replacement from each
set by a seeded `numpy.random.Generator`, so the same features give the same value
(clean-fid draws with the global numpy RNG). Unbiased: ~0 (either sign) for
samples of one distribution.
"""

from __future__ import annotations

import numpy as np

DEFAULT_SUBSETS = 100
DEFAULT_SUBSET_SIZE = 1000


def mmd2_polynomial(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 between x (m, d) and y (m, d) with k(a, b) = (a . b / d + 1)^3."""
    m, dim = x.shape
    k_xx = (x @ x.T / dim + 1.0) ** 3  # (m, m)
    k_yy = (y @ y.T / dim + 1.0) ** 3  # (m, m)
    k_xy = (x @ y.T / dim + 1.0) ** 3  # (m, m)
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2.0 * k_xy.sum() / (m * m))


def kernel_distance(
    features1: np.ndarray,
    features2: np.ndarray,
    *,
    num_subsets: int = DEFAULT_SUBSETS,
    subset_size: int = DEFAULT_SUBSET_SIZE,
    seed: int = 0,
) -> float:
    """KID between feature sets (N1, D) and (N2, D): mean MMD^2 over seeded subsets."""
    x1, x2 = np.asarray(features1, np.float64), np.asarray(features2, np.float64)
    if x1.ndim != 2 or x2.ndim != 2 or x1.shape[1] != x2.shape[1]:
        raise ValueError(f"kernel_distance: feature shapes {x1.shape} and {x2.shape} do not match")
    m = min(len(x1), len(x2), subset_size)
    if m < 2:
        raise ValueError(f"kernel_distance needs at least 2 features per set, got {len(x1)} and {len(x2)}")
    rng = np.random.default_rng(seed)
    total = 0.0
    for _ in range(num_subsets):
        a = x1[rng.choice(len(x1), m, replace=False)]  # (m, D)
        b = x2[rng.choice(len(x2), m, replace=False)]  # (m, D)
        total += mmd2_polynomial(a, b)
    return total / num_subsets
