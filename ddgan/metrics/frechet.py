"""Frechet distance between Gaussians fitted to feature sets (the "F" of FID).

    d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))      (Heusel et al. 2017, eq. 6)

The trace term is computed from eigenvalues: for any factor S1 = A A^T (Cholesky,
or the symmetric square root when S1 is singular), A^T S2 A is symmetric positive
semi-definite with the eigenvalues of S1 S2, so tr((S1 S2)^(1/2)) = sum_i
sqrt(lambda_i(A^T S2 A)). Symmetric eigenvalue problems only: no complex arithmetic,
no `scipy.linalg.sqrtm(disp=False)` (which clean-fid's own `frechet_distance` calls
and which breaks on scipy >= 1.18).
"""

from __future__ import annotations

import numpy as np


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """features (N, D) -> (mu (D,), sigma (D, D)) in float64; sigma with the N - 1 denominator."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"feature_stats needs (N >= 2, D) features, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("feature_stats: features contain NaN or inf")
    return x.mean(axis=0), np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix (negative round-off eigenvalues -> 0)."""
    eigenvalues, eigenvectors = np.linalg.eigh((sigma + sigma.T) / 2)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T


def _factor(sigma1: np.ndarray, sigma2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(A, S_other) with A A^T equal to one of the two matrices and S_other the other one."""
    for first, second in ((sigma1, sigma2), (sigma2, sigma1)):
        try:
            return np.linalg.cholesky(first), second  # (D, D) lower triangular
        except np.linalg.LinAlgError:
            continue
    return _psd_sqrt(sigma1), sigma2


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr((S1 S2)^(1/2)) for symmetric PSD S1, S2 (D, D).

    With any factor S_a = A A^T, A^T S_b A is symmetric PSD and has the spectrum of
    S_a S_b. A Cholesky factor is cheap (one `eigvalsh` of D = 2048 takes ~1 s on two
    cores); when neither matrix is positive definite (fewer samples than dimensions)
    the symmetric square root from `eigh` serves as A instead.
    """
    factor, other = _factor(sigma1, sigma2)
    middle = factor.T @ other @ factor  # (D, D), symmetric PSD
    eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2)
    return float(np.sqrt(np.clip(eigenvalues, 0.0, None)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Squared Frechet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2).

    mu: (D,), sigma: (D, D). Returns a float >= 0 (tiny negative round-off is clipped).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    dim = mu1.shape[0]
    if mu1.shape != (dim,) or mu2.shape != (dim,) or sigma1.shape != (dim, dim) or sigma2.shape != (dim, dim):
        raise ValueError(
            f"frechet_distance: shapes do not match: mu {mu1.shape} / {mu2.shape}, "
            f"sigma {sigma1.shape} / {sigma2.shape}"
        )
    for name, value in (("mu1", mu1), ("mu2", mu2), ("sigma1", sigma1), ("sigma2", sigma2)):
        if not np.isfinite(value).all():
            raise ValueError(f"frechet_distance: {name} contains NaN or inf")
    diff = mu1 - mu2
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2)
    return max(float(value), 0.0)
