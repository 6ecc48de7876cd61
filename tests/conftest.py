"""Shared fixtures: where the real Fashion-MNIST files are."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
FMNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def find_fmnist_dir() -> Path | None:
    """$DDGAN_DATA_DIR, else ../shared/data/fashion-mnist next to the repo (as on CI)."""
    candidates = [os.environ.get("DDGAN_DATA_DIR"), REPO_ROOT.parent / "shared" / "data" / "fashion-mnist"]
    for candidate in candidates:
        if not candidate:
            continue
        path = Path(candidate).expanduser()
        if all((path / f"{n}.gz").is_file() or (path / n).is_file() for n in FMNIST_FILES):
            return path
    return None


@pytest.fixture(scope="session")
def fmnist_dir() -> Path:
    """The directory holding the four real Fashion-MNIST IDX files; skips the test if absent."""
    path = find_fmnist_dir()
    if path is None:
        pytest.skip("Fashion-MNIST not found: set DDGAN_DATA_DIR or provide ../shared/data/fashion-mnist")
    return path
