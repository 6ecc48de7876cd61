"""Frechet distance against closed forms, KID, grids, metric names, and the evaluator end to end
with the deterministic test extractor (no weights, no network)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from netguard import refuse_network
from PIL import Image
from scipy import linalg

from ddgan.config import EvalConfig
from ddgan.data import load_fashion_mnist, to_model_range
from ddgan.errors import ConfigError, TrainingDiverged
from ddgan.metrics import (
    TestExtractor,
    build_evaluator,
    feature_stats,
    frechet_distance,
    get_extractor,
    kernel_distance,
    metric_name,
    prepare_reference,
    reference_stats,
    save_grid,
)
from ddgan.metrics.evaluator import count_label, parse_metric, valid_metric_specs
from ddgan.metrics.kid import mmd2_polynomial
from ddgan.metrics.reference import default_cache_dir


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to reach the network fails the test (see tests/netguard.py)."""
    yield from refuse_network(monkeypatch)


def random_rotation(dim: int, seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(dim, dim)))
    return q * np.sign(np.diag(r))  # (D, D) orthogonal


# --- Frechet distance ---------------------------------------------------------------------


def test_frechet_1d_closed_form():
    # W2^2(N(m1, s1^2), N(m2, s2^2)) = (m1 - m2)^2 + (s1 - s2)^2
    assert frechet_distance([1.0], [[4.0]], [-2.0], [[9.0]]) == pytest.approx(9.0 + 1.0)


def test_frechet_diagonal_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=16), rng.normal(size=16)
    d1, d2 = rng.uniform(0.1, 3.0, 16), rng.uniform(0.1, 3.0, 16)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(d1) - np.sqrt(d2)) ** 2)
    assert frechet_distance(mu1, np.diag(d1), mu2, np.diag(d2)) == pytest.approx(expected, rel=1e-10)


def test_frechet_rotated_commuting_closed_form():
    # S1 = R D1 R^T, S2 = R D2 R^T commute: tr sqrt(S1 S2) = sum sqrt(d1 d2).
    rng = np.random.default_rng(1)
    rot = random_rotation(12, seed=2)
    d1, d2 = rng.uniform(0.1, 3.0, 12), rng.uniform(0.1, 3.0, 12)
    s1, s2 = rot @ np.diag(d1) @ rot.T, rot @ np.diag(d2) @ rot.T
    mu1, mu2 = rng.normal(size=12), rng.normal(size=12)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(d1) - np.sqrt(d2)) ** 2)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_frechet_non_commuting_2x2_closed_form():
    # For 2x2 M = S1 S2 with positive eigenvalues: tr sqrt(M) = sqrt(tr M + 2 sqrt(det M)).
    s1 = np.array([[2.0, 0.3], [0.3, 0.5]])
    rot = np.array([[np.cos(0.7), -np.sin(0.7)], [np.sin(0.7), np.cos(0.7)]])
    s2 = rot @ np.diag([3.0, 0.2]) @ rot.T
    mu1, mu2 = np.array([0.5, -1.0]), np.array([0.0, 2.0])
    product = s1 @ s2
    tr_sqrt = np.sqrt(np.trace(product) + 2 * np.sqrt(np.linalg.det(product)))
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-10)


def test_frechet_matches_scipy_sqrtm_on_random_covariances():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(40, 20)), rng.normal(size=(40, 20)) * 2 + 1
    (mu1, s1), (mu2, s2) = feature_stats(a), feature_stats(b)
    covmean = linalg.sqrtm(s1 @ s2)
    assert np.abs(np.imag(covmean)).max() < 1e-6
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(np.real(covmean))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("n", [500, 30])  # 30 < D = 64: a singular covariance
def test_frechet_of_a_set_with_itself_is_zero(n):
    features = np.random.default_rng(4).normal(size=(n, 64)) * 3 + 5
    mu, sigma = feature_stats(features)
    value = frechet_distance(mu, sigma, mu, sigma)
    assert 0.0 <= value < 1e-6 * np.trace(sigma)


def test_frechet_rejects_bad_input():
    with pytest.raises(ValueError, match="shapes"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.zeros(2), np.eye(2) * np.nan, np.zeros(2), np.eye(2))
    with pytest.raises(ValueError):
        feature_stats(np.zeros((1, 5)))


# --- KID ----------------------------------------------------------------------------------


def test_kid_unbiased_estimator_matches_explicit_sums():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(6, 3)), rng.normal(size=(6, 3)) + 0.5
    k = lambda a, b: (a @ b / 3 + 1) ** 3  # noqa: E731
    m = 6
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / m**2
    assert mmd2_polynomial(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-10)


def test_kid_zero_for_identical_sets_positive_for_shifted_and_seeded():
    rng = np.random.default_rng(6)
    features = rng.normal(size=(600, 32))
    same = kernel_distance(features, features, num_subsets=20, subset_size=200, seed=0)
    shifted = kernel_distance(features, features + 0.5, num_subsets=20, subset_size=200, seed=0)
    # The unbiased estimator on one set is O(1/m) (here ~ -0.03), not exactly zero.
    assert abs(same) < 0.05 * shifted
    assert shifted > 0.5
    other = kernel_distance(features, rng.normal(size=(600, 32)), num_subsets=20, subset_size=200, seed=0)
    assert abs(other) < 0.05 * shifted  # a second sample of the same distribution
    assert kernel_distance(features, features + 0.5, num_subsets=20, subset_size=200, seed=0) == shifted


# --- grids and names ------------------------------------------------------------------------


def test_save_grid_writes_an_8x8_png(tmp_path):
    images = torch.linspace(-1, 1, 64).reshape(64, 1, 1, 1).expand(64, 1, 28, 28)  # float in [-1, 1]
    path = save_grid(images, tmp_path / "grid.png", nrow=8)
    picture = np.asarray(Image.open(path))
    assert picture.shape == (8 * 30 + 2, 8 * 30 + 2) and picture.dtype == np.uint8
    assert picture[2, 2] == 0 and picture[-3, -3] == 255  # first image -1 -> 0, last +1 -> 255


def test_metric_names_carry_extractor_and_count():
    assert metric_name("fid", "inception", 10_000) == "eval/fid_inception_10k"
    assert metric_name("fd", "fmnist", 2000) == "eval/fd_fmnist_2k"
    assert metric_name("kid", "inception", 10_000) == "eval/kid_inception_10k"
    assert metric_name("fd", "test-extractor", 256) == "eval/fd_test-extractor_256"
    assert count_label(2500) == "2500"
    for spec in valid_metric_specs():
        if "test-extractor" in spec:
            assert "fid" not in spec and "inception" not in spec


@pytest.mark.parametrize("spec", ["fid_fmnist", "fid_test-extractor", "fd_inception", "fd_mnist", "psnr"])
def test_unknown_or_mislabelled_metrics_are_config_errors(spec):
    with pytest.raises(ConfigError, match="valid"):
        parse_metric(spec)


def test_unknown_extractor_is_a_usage_error():
    from ddgan.errors import UsageError

    with pytest.raises(UsageError, match="valid: inception, fmnist, test-extractor"):
        get_extractor("vgg")


# --- evaluator end to end with the test extractor -----------------------------------------


@pytest.fixture(scope="module")
def test_images(fmnist_dir):
    images, _ = load_fashion_mnist(fmnist_dir, "test")
    return to_model_range(images)  # (10000, 1, 28, 28) in [-1, 1]


def real_sampler(pool: torch.Tensor, nfe: int = 4, calls: list | None = None):
    """sample_fn drawing real test images by generator-chosen index: a perfect 'model'."""

    def sample_fn(n, torch_generator):
        index = torch.randint(len(pool), (n,), generator=torch_generator)
        if calls is not None:
            calls.append(index)
        return pool[index], nfe

    return sample_fn


def eval_cfg(**kw) -> EvalConfig:
    base = dict(metrics=("fd_test-extractor", "kid_test-extractor"), final_metrics=("fd_test-extractor",),
                n_samples=256, final_n_samples=512, batch_size=100, grid_size=8, seed=7)
    return EvalConfig(**{**base, **kw})


def test_evaluator_end_to_end_with_test_extractor(fmnist_dir, test_images, tmp_path, monkeypatch):
    calls = {"n": 0}
    original = TestExtractor._batch_features

    def counting(self, x):
        calls["n"] += len(x)
        return original(self, x)

    monkeypatch.setattr(TestExtractor, "_batch_features", counting)
    cfg = eval_cfg()
    protocol = prepare_reference(cfg, fmnist_dir, "cpu", cache_dir=tmp_path / "cache")
    assert calls["n"] == 60_000 + 10_000  # whole train split (stats) + 10k for KID
    evaluator = build_evaluator(cfg, fmnist_dir, "cpu", cache_dir=tmp_path / "cache")
    assert calls["n"] == 70_000, "the second build must read the cache, not recompute"
    assert all(ref["meta"]["from_cache"] for ref in evaluator.references.values())

    drawn = []
    metrics, artifacts = evaluator(real_sampler(test_images, calls=drawn), 120, tmp_path / "samples")
    assert set(metrics) == {"eval/nfe", "eval/sample_ms_per_image", "eval/fd_test-extractor_256",
                            "eval/kid_test-extractor_256"}
    assert metrics["eval/nfe"] == 4 and metrics["eval/sample_ms_per_image"] > 0
    assert [len(i) for i in drawn] == [100, 100, 56]  # eval.batch_size chunks
    grid = artifacts["samples_grid"]
    assert grid == tmp_path / "samples" / "samples_step0000120.png"
    assert Image.open(grid).size == (242, 242)

    noise = lambda n, g: (torch.rand((n, 1, 28, 28), generator=g) * 2 - 1, 4)  # noqa: E731
    bad, _ = evaluator(noise, 121, tmp_path / "samples")
    assert bad["eval/fd_test-extractor_256"] > 10 * metrics["eval/fd_test-extractor_256"]
    assert bad["eval/kid_test-extractor_256"] > 10 * abs(metrics["eval/kid_test-extractor_256"])

    final, _ = evaluator(real_sampler(test_images), 200, tmp_path / "samples", final=True)
    assert "eval/fd_test-extractor_512" in final and "eval/fd_test-extractor_256" in final

    entry = protocol["metrics"]["eval/fd_test-extractor_512"]
    assert entry["extractor"] == "test-extractor" and entry["n"] == 512 and entry["final_only"]
    assert entry["reference_split"] == "train" and entry["reference_n"] == 60_000
    assert entry["weights_sha256"] == TestExtractor.weights_sha256 and entry["mode"] == "avgpool4x4"
    assert protocol["eval_seed"] == 7
    tags = evaluator.protocol_tags()
    assert tags["eval/kid_test-extractor_256.reference_n"] == "10000"


def test_evaluator_scores_every_call_on_the_same_noise(fmnist_dir, test_images, tmp_path):
    cfg = eval_cfg(metrics=("fd_test-extractor",), final_metrics=(), reference_split="test")
    evaluator = build_evaluator(cfg, fmnist_dir, "cpu", cache_dir=tmp_path)
    first, second = [], []
    m1, _ = evaluator(real_sampler(test_images, calls=first), 1, tmp_path)
    m2, _ = evaluator(real_sampler(test_images, calls=second), 2, tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert m1["eval/fd_test-extractor_256"] == m2["eval/fd_test-extractor_256"]
    assert evaluator.protocol()["metrics"]["eval/fd_test-extractor_256"]["reference_split"] == "test"


def test_evaluator_without_metrics_needs_no_data(tmp_path, monkeypatch):
    monkeypatch.delenv("DDGAN_DATA_DIR", raising=False)
    evaluator = build_evaluator(EvalConfig(grid_size=4), None, "cpu", cache_dir=tmp_path)
    sample_fn = lambda n, g: (torch.zeros(n, 1, 28, 28), 2)  # noqa: E731
    metrics, artifacts = evaluator(sample_fn, 5, tmp_path)
    assert set(metrics) == {"eval/nfe", "eval/sample_ms_per_image"}
    assert Image.open(artifacts["samples_grid"]).size == (4 * 30 + 2, 4 * 30 + 2)


def test_non_finite_samples_raise_training_diverged(tmp_path):
    evaluator = build_evaluator(EvalConfig(grid_size=2), None, "cpu", cache_dir=tmp_path)
    with pytest.raises(TrainingDiverged, match="step 9"):
        evaluator(lambda n, g: (torch.full((n, 1, 28, 28), float("nan")), 1), 9, tmp_path)


def test_reference_cache_dir_from_environment(fmnist_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("DDGAN_CACHE_DIR", str(tmp_path / "project-cache"))
    assert default_cache_dir() == tmp_path / "project-cache"
    mu, sigma, meta = reference_stats(TestExtractor(), fmnist_dir, "test", n=500)
    assert meta["path"].startswith(str(tmp_path / "project-cache")) and not meta["from_cache"]
    assert mu.shape == (49,) and sigma.shape == (49, 49) and meta["n"] == 500
    again = reference_stats(TestExtractor(), fmnist_dir, "test", n=500)
    assert again[2]["from_cache"] and np.array_equal(again[1], sigma)


def test_final_frechet_on_4096_samples_adds_half_n_and_fid_infinity(fmnist_dir, test_images, tmp_path):
    """A final Frechet metric on N >= 4,096 samples is also logged at N/2 and as the 1/N fit
    (Chong & Forsyth) of the same samples at N/2, 3N/4 and N; below 4,096 it is not."""
    from ddgan.metrics.fid_infinity import fid_at_counts, fit_fid_infinity

    cfg = eval_cfg(metrics=(), final_metrics=("fd_test-extractor",), final_n_samples=4096, reference_split="test",
                   batch_size=1024)
    evaluator = build_evaluator(cfg, fmnist_dir, "cpu", cache_dir=tmp_path)
    noisy = lambda n, g: ((torch.rand((n, 1, 28, 28), generator=g) * 2 - 1), 1)  # noqa: E731
    final, _ = evaluator(noisy, 9, tmp_path, final=True)
    assert {"eval/fd_test-extractor_4096", "eval/fd_test-extractor_2048", "eval/fd_test-extractor_inf"} <= set(final)
    images, _, _ = evaluator._sample(noisy, 9, 4096)  # the same noise: the evaluator reseeds every call
    features = evaluator.extractors["test-extractor"].features(images)
    ref = evaluator.references["eval/fd_test-extractor_4096"]
    fids = fid_at_counts(features, ref["mu"], ref["sigma"], (2048, 3072, 4096))
    assert final["eval/fd_test-extractor_2048"] == pytest.approx(fids[0], rel=1e-9)
    assert final["eval/fd_test-extractor_4096"] == pytest.approx(fids[2], rel=1e-9)
    assert final["eval/fd_test-extractor_inf"] == pytest.approx(fit_fid_infinity((2048, 3072, 4096), fids).fid_inf)
    assert final["eval/fd_test-extractor_inf"] < final["eval/fd_test-extractor_4096"] < final["eval/fd_test-extractor_2048"]
    protocol = evaluator.protocol()["metrics"]  # every logged metric has its protocol (MLflow tags)
    assert protocol["eval/fd_test-extractor_2048"]["n"] == 2048
    assert protocol["eval/fd_test-extractor_inf"]["fid_infinity_counts"] == "2048/3072/4096"
    small, _ = build_evaluator(eval_cfg(metrics=(), final_metrics=("fd_test-extractor",), final_n_samples=4000,
                                        reference_split="test"), fmnist_dir, "cpu", cache_dir=tmp_path)(noisy, 9, tmp_path, final=True)
    assert not any(k.endswith(("_inf", "_2k")) for k in small)
