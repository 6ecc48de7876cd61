"""The GPU bundle (benchmarks/gpu_bundle.py): which distributions travel, the IDX writer, the
zeroed and re-randomised Inception graph, and the carry-size check. Building a whole bundle
needs a package index and is not done here; tests/test_benchmarks.py runs gpu_check.sh's dry
path through a small bundle of the same layout."""

from __future__ import annotations

import importlib.metadata as md
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from benchmarks import gpu_bundle
from ddgan.data import read_idx
from ddgan.metrics.inception import load_torchscript, resolve_weights

REPO = Path(__file__).resolve().parents[1]


class SmallInception(nn.Module):
    """fid-helper's layout (forward(x), 299x299 -> 2048) with real layers: conv, batch norm, linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 64, 3, stride=8)
        self.bn = nn.BatchNorm2d(64)
        self.fc = nn.Linear(64, 2048)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3))
        return self.fc(h)


def save_script(module: nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is "deprecated"; the weights format is TorchScript
        torch.jit.script(module.eval()).save(str(path))
    return path


def jit_state(path: Path) -> dict[str, torch.Tensor]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path)).state_dict()


def test_bundle_carries_what_the_device_image_lacks_at_the_versions_installed_here():
    closure = gpu_bundle.requirement_closure()
    pins = gpu_bundle.bundled(closure)
    for needed in ("ray", "optuna", "mlflow", "mlflow-skinny", "pydantic", "pydantic-core", "clean-fid",
                   "sqlalchemy", "alembic", "cryptography"):  # cryptography: MLflow's SQL store imports it
        assert needed in pins, needed
        assert pins[needed] == md.version(needed)
    assert not set(pins) & gpu_bundle.DEVICE_HAS  # torch, numpy, pandas ... are the image's own
    assert not set(pins) & gpu_bundle.SERVER_ONLY
    assert {"torch", "numpy", "flask"} <= set(closure)  # in the closure, left out on purpose


def test_idx_files_written_for_the_bundle_read_back_identically(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=7, dtype=np.uint8)
    gpu_bundle.write_idx(tmp_path / "images", images)
    gpu_bundle.write_idx(tmp_path / "labels", labels)
    assert np.array_equal(read_idx(tmp_path / "images"), images)
    assert np.array_equal(read_idx(tmp_path / "labels"), labels)
    assert (tmp_path / "images").stat().st_size == 16 + images.size  # magic + 3 dims, then the bytes


def test_zeroed_graph_then_random_weights_keep_the_network_and_never_its_weights(tmp_path):
    torch.manual_seed(1)
    real = save_script(SmallInception(), tmp_path / "real.pt")
    zeroed = tmp_path / "zeroed.pt"
    source = gpu_bundle.zeroed_inception(str(real), zeroed)
    assert "real.pt" in source
    assert all(not t.any() for t in jit_state(zeroed).values())

    timing = gpu_bundle.timing_inception(zeroed, tmp_path / "device")
    assert timing.name == gpu_bundle.TIMING_NAME and "TIMING-ONLY" in timing.name
    state, original = jit_state(timing), jit_state(real)
    assert state.keys() == original.keys()
    for name, tensor in state.items():
        assert tensor.shape == original[name].shape and tensor.dtype == original[name].dtype
    for name in ("conv.weight", "fc.weight"):  # He scale: N(0, 2 / fan_in)
        fan_in = state[name][0].numel()
        assert state[name].mean().abs() < 0.1 * (2 / fan_in) ** 0.5
        assert state[name].std().item() == pytest.approx((2 / fan_in) ** 0.5, rel=0.05)
    assert torch.equal(state["bn.running_var"], torch.ones(64)) and torch.equal(state["bn.weight"], torch.ones(64))
    for name in ("conv.bias", "bn.bias", "bn.running_mean", "fc.bias"):
        assert not state[name].any(), name
    assert not torch.equal(state["conv.weight"], original["conv.weight"])

    weights, network = resolve_weights(timing)  # the study accepts it as a weights file
    assert weights.sha256 != resolve_weights(real)[0].sha256
    assert weights.path.name == gpu_bundle.TIMING_NAME  # the name every table prints
    x = torch.rand(2, 3, 299, 299) * 255
    features = network(x)
    assert features.shape == (2, 2048) and torch.isfinite(features).all()
    assert not torch.allclose(features[0], features[1])  # ordinary numbers, not a constant
    assert load_torchscript(timing).layout == "fid-helper"


def test_carry_size_check_refuses_what_one_device_call_cannot_take(tmp_path):
    (tmp_path / "bundle.tar.xz").write_bytes(b"x" * 4096)
    carried, tree = gpu_bundle.check_size(tmp_path, REPO)
    assert carried == 4096 and tree > 0
    with pytest.raises(SystemExit, match="exceed the device tool's"):
        gpu_bundle.check_size(tmp_path, REPO, limit=tree + 4095)
    assert gpu_bundle.check_size(tmp_path, REPO, limit=tree + 4096) == (carried, tree)
