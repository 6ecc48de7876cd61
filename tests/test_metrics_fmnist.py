"""The committed Fashion-MNIST classifier: record, accuracy, and `fd_fmnist` ranking degraded images."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
import torchvision.transforms.functional as TF
from netguard import refuse_network

from ddgan.config import EvalConfig
from ddgan.data import load_fashion_mnist, to_model_range
from ddgan.errors import CheckpointError
from ddgan.metrics import build_evaluator, feature_stats, frechet_distance, get_extractor
from ddgan.metrics.digest import sha256_file
from ddgan.metrics.fmnist_classifier import (
    RECORD_FILE,
    WEIGHTS_DIR,
    WEIGHTS_FILE,
    load_classifier,
    read_record,
)
from ddgan.metrics.train_classifier import MIN_TEST_ACCURACY, accuracy, main, train


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to reach the network fails the test (see tests/netguard.py)."""
    yield from refuse_network(monkeypatch)


@pytest.fixture(scope="module")
def test_split(fmnist_dir):
    return load_fashion_mnist(fmnist_dir, "test")  # (10000, 28, 28) uint8, (10000,) int64


@pytest.fixture(scope="module")
def fmnist():
    return get_extractor("fmnist", "cpu", batch_size=500)


def test_committed_classifier_matches_its_record():
    record = read_record()
    weights = WEIGHTS_DIR / WEIGHTS_FILE
    assert weights.stat().st_size < 1_000_000, "the committed weights must stay small"
    assert sha256_file(weights) == record["sha256"]
    assert record["test_accuracy"] >= MIN_TEST_ACCURACY
    assert {"seed", "command", "epochs", "train_seconds"} <= set(record)
    assert record["command"].startswith("python -m ddgan.metrics.train_classifier")


def test_committed_classifier_reaches_its_recorded_accuracy(test_split):
    model, record = load_classifier("cpu")
    images, labels = test_split
    measured = accuracy(model, images, labels)
    assert measured >= MIN_TEST_ACCURACY
    assert measured == pytest.approx(record["test_accuracy"], abs=0.002)  # CPU kernels may flip a few


def test_tampered_weights_are_refused(tmp_path):
    shutil.copy(WEIGHTS_DIR / WEIGHTS_FILE, tmp_path / WEIGHTS_FILE)
    shutil.copy(WEIGHTS_DIR / RECORD_FILE, tmp_path / RECORD_FILE)
    load_classifier("cpu", tmp_path)  # an intact copy loads
    record = json.loads((tmp_path / RECORD_FILE).read_text())
    record["sha256"] = "0" * 64
    (tmp_path / RECORD_FILE).write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="sha256"):
        load_classifier("cpu", tmp_path)
    (tmp_path / RECORD_FILE).unlink()
    with pytest.raises(CheckpointError, match="train_classifier"):
        load_classifier("cpu", tmp_path)


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    if sigma == 0:
        return x
    size = 2 * math.ceil(3 * sigma) + 1
    return TF.gaussian_blur(x, [size, size], [sigma, sigma])


@pytest.fixture(scope="module")
def reference_and_real(fmnist_dir, test_split, fmnist):
    train_images, _ = load_fashion_mnist(fmnist_dir, "train")
    mu, sigma = feature_stats(fmnist.features(train_images[:2000].unsqueeze(1)))  # (128,), (128, 128)
    return mu, sigma, to_model_range(test_split[0][:1000])  # 1,000 real test images in [-1, 1]


def _fd(fmnist, images, mu, sigma) -> float:
    return frechet_distance(*feature_stats(fmnist.features(images)), mu, sigma)


def test_fd_fmnist_grows_with_added_noise(fmnist, reference_and_real):
    mu, sigma, real = reference_and_real
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(real.shape, generator=generator)
    distances = [_fd(fmnist, (real + level * noise).clamp(-1, 1), mu, sigma) for level in (0.0, 0.1, 0.2, 0.4, 0.8)]
    assert all(a < b for a, b in zip(distances, distances[1:], strict=False)), distances
    assert distances[1] > 1.5 * distances[0]


def test_fd_fmnist_grows_with_blur(fmnist, reference_and_real):
    mu, sigma, real = reference_and_real
    distances = [_fd(fmnist, _blur(real, s), mu, sigma) for s in (0.0, 0.7, 1.0, 1.5, 2.5)]
    assert all(a < b for a, b in zip(distances, distances[1:], strict=False)), distances
    assert distances[1] > 1.5 * distances[0]


def test_evaluator_names_fd_fmnist_with_the_classifier_sha(fmnist_dir, test_split, tmp_path):
    cfg = EvalConfig(metrics=("fd_fmnist",), n_samples=2000, batch_size=500, grid_size=2, reference_n=2000)
    evaluator = build_evaluator(cfg, fmnist_dir, "cpu", cache_dir=tmp_path)
    pool = to_model_range(test_split[0])
    sample_fn = lambda n, g: (pool[torch.randint(len(pool), (n,), generator=g)], 2)  # noqa: E731
    metrics, _ = evaluator(sample_fn, 1, tmp_path)
    assert set(metrics) == {"eval/nfe", "eval/sample_ms_per_image", "eval/fd_fmnist_2k"}
    assert 0 <= metrics["eval/fd_fmnist_2k"] < 5.0
    entry = evaluator.protocol()["metrics"]["eval/fd_fmnist_2k"]
    assert entry["weights_sha256"] == read_record()["sha256"] and entry["extractor"] == "fmnist"


def test_training_is_seeded(test_split):
    images, labels = test_split[0][:512], test_split[1][:512]
    first = train(images, labels, epochs=1, batch_size=64, lr=3e-3, seed=3, log=lambda _: None)
    second = train(images, labels, epochs=1, batch_size=64, lr=3e-3, seed=3, log=lambda _: None)
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_train_classifier_cli_bad_data_dir(tmp_path, capsys):
    assert main(["--data-dir", str(tmp_path / "missing"), "--out", str(tmp_path / "out")]) == 2
    assert "error:" in capsys.readouterr().err
    assert not (tmp_path / "out" / WEIGHTS_FILE).exists()
