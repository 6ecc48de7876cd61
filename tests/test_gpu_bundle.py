"""The GPU bundle (tools/gpu_bundle.py): which distributions travel, the IDX writer, the
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

from ddgan.data import read_idx
from ddgan.errors import UsageError
from ddgan.metrics.inception import load_torchscript, resolve_weights
from tools import gpu_bundle

REPO = Path(__file__).resolve().parents[1]


class FoldedConv(nn.Module):
    """fid-helper's conv block: parameters `weight`, `beta`, `mean`, `var` (a batch norm folded by name)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, 3, 3) * 0.1)
        self.beta, self.mean = nn.Parameter(torch.randn(cout)), nn.Parameter(torch.randn(cout))
        self.var = nn.Parameter(torch.rand(cout) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.nn.functional.conv2d(x, self.weight, padding=1)
        return torch.relu((h - self.mean[:, None, None]) / torch.sqrt(self.var[:, None, None] + 1e-3)
                          + self.beta[:, None, None])


class SmallInception(nn.Module):
    """fid-helper's layout (forward(x), 299x299 -> 2048) with real layers: conv, batch norm, its
    folded conv blocks, linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 64, 3, stride=8)
        self.bn = nn.BatchNorm2d(64)
        self.folded = nn.Sequential(*[FoldedConv(64, 64) for _ in range(6)])
        self.fc = nn.Linear(64, 2048)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.folded(torch.relu(self.bn(self.conv(x)))).mean(dim=(2, 3))
        return self.fc(h)


class UnknownNames(nn.Module):
    """A network whose 1-d parameter has a name timing_inception cannot place: zero divides."""

    def __init__(self):
        super().__init__()
        self.denominator = nn.Parameter(torch.ones(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x / self.denominator[None, :, None, None]).mean(dim=(2, 3)).repeat(1, 683)[:, :2048]


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
    for name in ("conv.bias", "bn.bias", "bn.running_mean", "fc.bias", "folded.0.beta", "folded.5.mean"):
        assert not state[name].any(), name
    for name in ("folded.0.var", "folded.5.var"):  # fid-helper's names for running variances
        assert torch.equal(state[name], torch.ones(64)), name
    assert not torch.equal(state["conv.weight"], original["conv.weight"])

    weights, network = resolve_weights(timing)  # the study accepts it as a weights file
    assert weights.sha256 != resolve_weights(real)[0].sha256
    assert weights.path.name == gpu_bundle.TIMING_NAME  # the name every table prints
    x = torch.rand(2, 3, 299, 299) * 255
    features = network(x)
    assert features.shape == (2, 2048) and torch.isfinite(features).all()
    assert not torch.allclose(features[0], features[1])  # ordinary numbers, not a constant
    assert load_torchscript(timing).layout == "fid-helper"


def test_random_weights_that_break_the_network_are_refused(tmp_path):
    zeroed = tmp_path / "zeroed.pt"
    gpu_bundle.zeroed_inception(str(save_script(UnknownNames(), tmp_path / "odd.pt")), zeroed)
    with pytest.raises(UsageError, match="non-finite or constant features"):
        gpu_bundle.timing_inception(zeroed, tmp_path / "device")
    assert not (tmp_path / "device" / gpu_bundle.TIMING_NAME).exists()  # nothing left to be timed by mistake


def test_carry_size_check_refuses_what_one_device_call_cannot_take(tmp_path):
    (tmp_path / "bundle.tar.xz").write_bytes(b"x" * 4096)
    carried, tree = gpu_bundle.check_size(tmp_path, REPO)
    assert carried == 4096 and tree > 0
    with pytest.raises(SystemExit, match="exceed the device tool's"):
        gpu_bundle.check_size(tmp_path, REPO, limit=tree + 4095)
    assert gpu_bundle.check_size(tmp_path, REPO, limit=tree + 4096) == (carried, tree)


def test_compare_timing_tables_both_networks(tmp_path):
    real = save_script(SmallInception(), tmp_path / "real.pt")
    text = gpu_bundle.compare_timing(str(real), images=2, repeats=1, device="cpu")
    assert "- command: `python " in text and "- device: cpu" in text
    rows = [line for line in text.splitlines()
            if line.startswith("| ") and "ms/image" not in line and not line.startswith("| ---")]
    assert [row.split("|")[1].strip().split(" ")[0] for row in rows] == ["real.pt", gpu_bundle.TIMING_NAME]
    ratio = float(text.rsplit("timing-only / real: ", 1)[1].split()[0])
    assert 0 < ratio < float("inf")
