"""Fashion-MNIST reader: real files (counts, labels, pixel statistics) and synthetic broken ones."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from ddgan import data
from ddgan.config import DataConfig
from ddgan.data import (
    DEFAULT_DATA_ENV,
    RandomBatches,
    load_fashion_mnist,
    load_training_tensor,
    read_idx,
    resolve_data_dir,
    to_model_range,
)
from ddgan.errors import ConfigError, DataError

# --- real files -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_train(fmnist_dir):
    return load_fashion_mnist(fmnist_dir, "train")


def test_real_train_counts_and_labels(real_train):
    images, labels = real_train
    assert images.shape == (60_000, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (60_000,) and labels.dtype == torch.int64
    assert int(labels.min()) == 0 and int(labels.max()) == 9
    assert torch.bincount(labels).tolist() == [6_000] * 10


def test_real_test_counts_and_labels(fmnist_dir):
    images, labels = load_fashion_mnist(fmnist_dir, "test")
    assert images.shape == (10_000, 28, 28) and labels.shape == (10_000,)
    assert torch.bincount(labels).tolist() == [1_000] * 10


def test_real_pixel_statistics(real_train):
    x = real_train[0].double() / 255
    assert x.mean().item() == pytest.approx(0.2861, abs=1e-4)
    assert x.std().item() == pytest.approx(0.3528, abs=1e-4)


def test_model_range(real_train):
    x = to_model_range(real_train[0][:1000])
    assert x.shape == (1000, 1, 28, 28) and x.dtype == torch.float32
    assert x.min().item() == -1.0 and x.max().item() == 1.0
    edges = to_model_range(torch.tensor([0, 127, 255], dtype=torch.uint8).reshape(3, 1, 1).expand(3, 28, 28))
    assert edges[:, 0, 0, 0].tolist() == pytest.approx([-1.0, 127 / 127.5 - 1, 1.0])


def test_load_training_tensor_subset(fmnist_dir, monkeypatch):
    monkeypatch.delenv(DEFAULT_DATA_ENV, raising=False)
    x = load_training_tensor(DataConfig(dir=str(fmnist_dir), split="test", subset=100), "cpu")
    images, _ = load_fashion_mnist(fmnist_dir, "test")
    assert x.shape == (100, 1, 28, 28) and x.dtype == torch.float32
    assert torch.equal(x, to_model_range(images[:100]))
    with pytest.raises(ConfigError, match="subset"):
        load_training_tensor(DataConfig(dir=str(fmnist_dir), split="test", subset=10_001), "cpu")


# --- synthetic IDX files ----------------------------------------------------------------


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    magic = magic if magic is not None else (2051 if array.ndim == 3 else 2049)
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write(path: Path, payload: bytes) -> Path:
    path.write_bytes(gzip.compress(payload, compresslevel=1) if path.suffix == ".gz" else payload)
    return path


def test_read_idx_images_and_labels(tmp_path):
    images = np.arange(3 * 28 * 28, dtype=np.uint32).reshape(3, 28, 28) % 256
    got = read_idx(write(tmp_path / "a-images-idx3-ubyte.gz", idx_bytes(images)))
    assert got.shape == (3, 28, 28) and np.array_equal(got, images)
    labels = np.array([0, 9, 3])
    assert np.array_equal(read_idx(write(tmp_path / "a-labels-idx1-ubyte", idx_bytes(labels))), labels)


def _bad_files():
    images = np.zeros((4, 28, 28))
    good_gz = gzip.compress(idx_bytes(images))
    corrupt_gz = bytearray(good_gz)
    corrupt_gz[len(corrupt_gz) // 2 :] = b"\xff" * (len(corrupt_gz) - len(corrupt_gz) // 2)
    return {
        "wrong magic": ("x-images-idx3-ubyte", idx_bytes(images, magic=2052), "magic"),
        "truncated": ("x-images-idx3-ubyte", idx_bytes(images)[:-100], "truncated"),
        "truncated header": ("x-images-idx3-ubyte", idx_bytes(images)[:10], "truncated"),
        "truncated gzip": ("x-images-idx3-ubyte.gz", good_gz[: len(good_gz) // 2], "gzip"),
        "corrupt gzip": ("x-images-idx3-ubyte.gz", bytes(corrupt_gz), "gzip"),
        "not 28x28": ("x-images-idx3-ubyte", idx_bytes(np.zeros((4, 32, 32))), "28x28"),
        "label 11": ("x-labels-idx1-ubyte", idx_bytes(np.array([0, 11, 2])), "label 11"),
    }


@pytest.mark.parametrize(("name", "payload", "phrase"), _bad_files().values(), ids=list(_bad_files()))
def test_read_idx_rejects_broken_files(tmp_path, name, payload, phrase):
    path = tmp_path / name
    path.write_bytes(payload)
    with pytest.raises(DataError, match=phrase) as err:
        read_idx(path)
    assert str(path) in str(err.value)
    assert err.value.__cause__ is None and "\n" not in str(err.value)


def write_split(directory: Path, n_images: int = 10_000, n_labels: int = 10_000, gz: bool = True) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n_images, 28, 28))
    write(directory / f"t10k-images-idx3-ubyte{suffix}", idx_bytes(images))
    write(directory / f"t10k-labels-idx1-ubyte{suffix}", idx_bytes(np.arange(n_labels) % 10))
    return directory


def test_uncompressed_files_accepted(tmp_path):
    images, labels = load_fashion_mnist(write_split(tmp_path, gz=False), "test")
    assert images.shape == (10_000, 28, 28) and labels[:12].tolist() == [*range(10), 0, 1]


def test_missing_file_names_it(tmp_path):
    write_split(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz not found"):
        load_fashion_mnist(tmp_path, "test")
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        load_fashion_mnist(tmp_path, "train")
    with pytest.raises(DataError, match="does not exist"):
        load_fashion_mnist(tmp_path / "nowhere", "test")


def test_count_mismatch_names_files(tmp_path):
    write_split(tmp_path, n_labels=9_999)
    with pytest.raises(DataError, match="10000 images but .*t10k-labels-idx1-ubyte.gz holds 9999"):
        load_fashion_mnist(tmp_path, "test")


def test_wrong_split_size_names_file(tmp_path):
    write_split(tmp_path, n_images=100, n_labels=100)
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz .*100 items.*10000"):
        load_fashion_mnist(tmp_path, "test")


def test_labels_file_in_images_slot(tmp_path):
    write_split(tmp_path)
    labels_bytes = (tmp_path / "t10k-labels-idx1-ubyte.gz").read_bytes()
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(labels_bytes)
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz does not hold images"):
        load_fashion_mnist(tmp_path, "test")


# --- resolving the directory ------------------------------------------------------------


def test_resolve_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv(DEFAULT_DATA_ENV, str(tmp_path / "from-env"))
    assert resolve_data_dir(str(tmp_path / "from-flag")) == tmp_path / "from-flag"
    assert resolve_data_dir(None) == tmp_path / "from-env"
    monkeypatch.delenv(DEFAULT_DATA_ENV)
    with pytest.raises(DataError) as err:
        resolve_data_dir(None)
    for way_out in ("data.dir", DEFAULT_DATA_ENV, "shared/data/fashion-mnist", "data.download=true"):
        assert way_out in str(err.value)


def test_local_dir_never_goes_through_torchvision(tmp_path, monkeypatch):
    import torchvision.datasets

    def boom(*args, **kwargs):
        raise AssertionError("torchvision must not be called for a local directory")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", boom)
    for split in data.SPLITS:  # presence of the four names is what counts
        for stem in data._file_stems(split):
            (tmp_path / f"{stem}.gz").touch()
    assert resolve_data_dir(str(tmp_path), download=True) == tmp_path


def test_download_reads_raw_files_with_own_reader(tmp_path, monkeypatch):
    import torchvision.datasets

    calls = []

    def fake_fashion_mnist(root, train, download):  # writes what torchvision would
        calls.append(root)
        write_split(Path(root) / "FashionMNIST" / "raw")
        for stem in data._file_stems("train"):
            (Path(root) / "FashionMNIST" / "raw" / f"{stem}.gz").touch()

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", fake_fashion_mnist)
    monkeypatch.delenv(DEFAULT_DATA_ENV, raising=False)
    monkeypatch.setattr(data, "DEFAULT_CACHE_DIR", tmp_path / "cache")
    raw = resolve_data_dir(None, download=True)
    assert raw == tmp_path / "cache" / "FashionMNIST" / "raw" and len(calls) == 1
    assert load_fashion_mnist(raw, "test")[0].shape == (10_000, 28, 28)
    assert resolve_data_dir(None, download=True) == raw and len(calls) == 1  # cached


def test_download_failure_is_data_error(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried ...")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    with pytest.raises(DataError, match="failed .*Error downloading.*data.dir"):
        resolve_data_dir(str(tmp_path / "empty"), download=True)


# --- random batches ---------------------------------------------------------------------


def test_random_batches_deterministic_and_resumable():
    x = torch.arange(50, dtype=torch.float32).reshape(50, 1, 1, 1).expand(50, 1, 28, 28).contiguous()
    a, b = RandomBatches(x, 8, seed=3), RandomBatches(x, 8, seed=3)
    first = [next(a) for _ in range(3)]
    assert all(torch.equal(p, next(b)) for p in first)
    assert first[0].shape == (8, 1, 28, 28)
    assert not torch.equal(next(RandomBatches(x, 8, seed=4)), first[0])

    state = a.state_dict()
    expected = [next(a) for _ in range(4)]
    resumed = RandomBatches(x, 8, seed=999)
    resumed.load_state_dict(state)
    assert all(torch.equal(e, next(resumed)) for e in expected)
    assert iter(resumed) is resumed


def test_random_batches_state_survives_weights_only_load(tmp_path):
    x = torch.zeros(10, 1, 28, 28)
    batches = RandomBatches(x, 4, seed=0)
    torch.save(batches.state_dict(), tmp_path / "s.pt")
    batches.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
