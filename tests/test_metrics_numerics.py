"""Numerics of evaluation, on the CPU: reference cache entries keyed by device type and precision,
features in true fp32 whatever the caller set, Inception's resize once per grayscale image (equal
to clean-fid's per-channel path), and sampling noise drawn by a generator on the sampling device."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ddgan.config import EvalConfig
from ddgan.metrics import TestExtractor, build_evaluator, reference_stats
from ddgan.metrics.inception import InceptionNetwork, resize_for_inception
from ddgan.sampler import _for_sampling, sample_ddgan, sample_ddpm, sampling_numerics
from ddgan.schedule import Schedule


class Bf16TestExtractor(TestExtractor):
    precision = "bf16"


class CudaLabelledTestExtractor(TestExtractor):
    """Computes on the CPU but describes itself as CUDA: stands for an entry a GPU wrote."""

    def describe(self):
        return {**super().describe(), "device": "cuda"}


def test_reference_entry_records_device_and_precision_and_is_not_shared(fmnist_dir, tmp_path):
    cache = tmp_path / "cache"
    _, _, meta = reference_stats(TestExtractor("cpu"), fmnist_dir, "train", 64, cache)
    assert not meta["from_cache"] and (meta["device"], meta["precision"]) == ("cpu", "fp32")
    assert "pid" in meta["computed_by"]
    assert reference_stats(TestExtractor("cpu"), fmnist_dir, "train", 64, cache)[2]["from_cache"]
    for other in (Bf16TestExtractor("cpu"), CudaLabelledTestExtractor("cpu")):
        _, _, meta = reference_stats(other, fmnist_dir, "train", 64, cache)
        assert not meta["from_cache"], f"{other.describe()} must not reuse the cpu-fp32 entry"
    assert len(list((cache / "reference").glob("*.npz"))) == 3


class RecordingExtractor(TestExtractor):
    seen: list = []

    def _batch_features(self, images_uint8):
        self.seen.append((torch.is_autocast_enabled("cpu"), torch.backends.cudnn.allow_tf32,
                          torch.backends.cuda.matmul.allow_tf32))
        return super()._batch_features(images_uint8)


def test_features_are_true_fp32_whatever_the_caller_set():
    extractor = RecordingExtractor("cpu", batch_size=4)
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            features = extractor.features(torch.zeros((8, 1, 28, 28), dtype=torch.uint8))
        assert features.dtype == np.float32
        assert extractor.seen == [(False, False, False)] * 2
        assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (True, True)  # restored
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


# --- Inception's resize -------------------------------------------------------------------------


def _clean_fid_per_channel(images: np.ndarray) -> np.ndarray:
    """clean-fid's own path: RGB (B, H, W, 3) uint8 -> (B, 3, 299, 299), each channel by make_resizer."""
    from cleanfid.resize import make_resizer

    resize = make_resizer("PIL", False, "bicubic", (299, 299))
    return np.stack([resize(image).transpose(2, 0, 1) for image in images])


def test_resize_once_per_grayscale_image_equals_clean_fid_per_channel(monkeypatch):
    rng = np.random.default_rng(7)
    gray = rng.integers(0, 256, (12, 28, 28), dtype=np.uint8)
    gray[0], gray[1], gray[2] = 0, 255, (rng.random((28, 28)) > 0.5) * 255  # extremes: overshoot clipped
    calls = []
    real_resize = Image.Image.resize
    monkeypatch.setattr(Image.Image, "resize", lambda self, *a, **k: calls.append(1) or real_resize(self, *a, **k))
    ours = resize_for_inception(torch.from_numpy(gray).unsqueeze(1))  # (12, 3, 299, 299)
    assert len(calls) == len(gray), "one PIL resize per grayscale image, not one per channel"
    assert ours.shape == (12, 3, 299, 299) and ours.dtype == torch.float32 and ours.stride(1) == 0
    monkeypatch.setattr(Image.Image, "resize", real_resize)
    rgb = np.array([np.array(Image.fromarray(g).convert("RGB")) for g in gray])  # what clean-fid reads
    np.testing.assert_array_equal(ours.numpy(), _clean_fid_per_channel(rgb))


def test_resize_of_colour_images_is_per_channel():
    rgb = np.random.default_rng(8).integers(0, 256, (3, 20, 24, 3), dtype=np.uint8)
    ours = resize_for_inception(torch.from_numpy(rgb).permute(0, 3, 1, 2))
    np.testing.assert_array_equal(ours.numpy(), _clean_fid_per_channel(rgb))


def test_resize_benchmark_checks_equality_and_reports_finite_ratios():
    from benchmarks.inception_resize import measure, table

    rows = measure(8, 1)
    assert [r["path"] for r in rows][0].startswith("per channel") and rows[0]["speed_up"] == 1.0
    assert all(np.isfinite(r["ms_per_image"]) and r["speed_up"] > 0 for r in rows)
    assert table(rows).count("\n") == len(rows) + 1


def test_an_expanded_grayscale_batch_gives_the_features_of_the_full_batch():
    network = InceptionNetwork(lambda x: x.mean(dim=(2, 3)) * torch.tensor([1.0, 2.0, 3.0]), "test", "cpu")
    x = resize_for_inception(torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8))
    torch.testing.assert_close(network(x), network(x.contiguous()), rtol=0, atol=0)


# --- sampling on the device ---------------------------------------------------------------------


class RecordingGenerator(torch.nn.Module):
    """x0 = tanh(x + mean(z)); records the device of every input it sees."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.devices: set = set()

    def forward(self, x, t, z):
        self.devices |= {x.device, t.device, z.device}
        return torch.tanh(self.scale * x + z.mean(dim=1).view(-1, 1, 1, 1))


def _ddgan_sample_fn(network, device):
    schedule = Schedule.vp(4)
    return lambda n, g: sample_ddgan(network, schedule, n, z_dim=8, torch_generator=g, device=device)


def test_evaluator_draws_noise_with_a_generator_on_its_device(tmp_path):
    cfg = EvalConfig(metrics=(), n_samples=8, batch_size=4, grid_size=2, seed=5)
    evaluator = build_evaluator(cfg, None, "cpu")
    assert evaluator.device == torch.device("cpu") and evaluator.generator().device == evaluator.device
    network, generators = RecordingGenerator(), []
    sample = _ddgan_sample_fn(network, evaluator.device)

    def sample_fn(n, g):
        generators.append(g)
        return sample(n, g)

    evaluator(sample_fn, 1, tmp_path)
    assert {g.device for g in generators} == {evaluator.device}
    assert network.devices == {evaluator.device}
    protocol = evaluator.protocol()
    assert (protocol["sample_device"], protocol["sample_precision"], protocol["compile_sampler"]) == ("cpu", "fp32", False)
    assert evaluator.protocol_tags()["eval.sample_precision"] == "fp32"


def test_sampling_is_deterministic_per_seed_on_one_device():
    sample = _ddgan_sample_fn(RecordingGenerator(), "cpu")
    first, _ = sample(6, torch.Generator("cpu").manual_seed(3))
    again, _ = sample(6, torch.Generator("cpu").manual_seed(3))
    other, _ = sample(6, torch.Generator("cpu").manual_seed(4))
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert not torch.equal(first, other)


def test_noise_is_one_draw_per_tensor_in_the_documented_order():
    """x_T, then per step z and (k > 1) the posterior noise: each one randn of the whole batch."""
    network, n, T = RecordingGenerator(), 5, 3
    images, nfe = sample_ddgan(network, Schedule.vp(T), n, z_dim=8, torch_generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)
    draws = [torch.randn((n, 1, 28, 28), generator=g)]
    for k in range(T, 0, -1):
        draws.append(torch.randn((n, 8), generator=g))
        if k > 1:
            draws.append(torch.randn((n, 1, 28, 28), generator=g))
    schedule, x = Schedule.vp(T), draws[0]
    index = 1
    for k in range(T, 0, -1):
        t = torch.full((n,), k)
        x0 = network(x, t, draws[index])
        index += 1
        if k > 1:
            x = schedule.sample_posterior(x0, x, t, draws[index])
            index += 1
        else:
            x = x0
    torch.testing.assert_close(images, x.clamp(-1, 1), rtol=0, atol=0)
    assert nfe == T


@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
def test_sampling_numerics_are_set_inside_and_restored_after(precision):
    before = (torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    with sampling_numerics("cpu", precision):
        assert torch.backends.cudnn.allow_tf32 == torch.backends.cuda.matmul.allow_tf32 == (precision == "tf32")
        assert torch.is_autocast_enabled("cpu") == (precision == "bf16")
        assert not torch.backends.cudnn.benchmark or before[0], "benchmark mode is for CUDA only"
    assert (torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32,
            torch.backends.cuda.matmul.allow_tf32) == before
    assert not torch.is_autocast_enabled("cpu")
    with pytest.raises(ValueError, match="valid: fp32, tf32, bf16"), sampling_numerics("cpu", "fp16"):
        pass


def test_eval_config_turns_bf16_autocast_on_for_sampling_only(tmp_path):
    from ddgan.metrics.evaluator import Evaluator

    seen = []

    def sample_fn(n, g):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return (torch.rand((n, 1, 28, 28), generator=g) * 2 - 1).to(torch.bfloat16), 1

    evaluator = Evaluator(EvalConfig(metrics=(), n_samples=8, batch_size=8, grid_size=2, sample_precision="bf16"),
                          {}, {}, "cpu")
    evaluator(sample_fn, 1, tmp_path)
    assert seen == [(True, torch.bfloat16)] and evaluator.protocol()["sample_precision"] == "bf16"
    assert not torch.is_autocast_enabled("cpu")
    assert Evaluator(EvalConfig(metrics=()), {}, {}, "cpu").sample_precision == "fp32"  # off by default


def test_compile_flag_wraps_the_network_only_inside_the_block():
    network = RecordingGenerator()
    assert _for_sampling(network) is network
    with sampling_numerics("cpu", compile=True):
        wrapped = _for_sampling(network)
    assert wrapped is not network and getattr(wrapped, "_orig_mod", None) is network
    assert _for_sampling(network) is network


def test_ddpm_sampler_draws_on_the_generator_device():
    class Denoiser(torch.nn.Module):
        devices: set = set()

        def forward(self, x, t):
            self.devices.add(x.device)
            return torch.zeros_like(x)

    denoiser = Denoiser()
    images, nfe = sample_ddpm(denoiser, Schedule.linear(100), 3, torch_generator=torch.Generator("cpu").manual_seed(0))
    assert images.shape == (3, 1, 28, 28) and nfe == 100 and denoiser.devices == {torch.device("cpu")}
