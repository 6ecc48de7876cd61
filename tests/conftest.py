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
    return Path(path).resolve()  # absolute: CI sets DDGAN_DATA_DIR=../shared/..., tests symlink it and change cwd


# Real PostgreSQL and `mlflow server` on 127.0.0.1 (session-scoped; see tests/servers.py).
from servers import mlflow_server_uri, postgres_server, postgres_url  # noqa: E402, F401


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray cluster (2 CPUs) for every study test; yields its GCS address.

    Study runs in the test process reuse it; subprocess drivers join it with --address.
    """
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="session")
def reference_cache(tmp_path_factory) -> Path:
    """A reference-statistics cache shared by the study tests (computed once per session)."""
    return tmp_path_factory.mktemp("reference-cache")
