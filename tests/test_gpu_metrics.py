"""Evaluation numerics on CUDA (issue 23): noise drawn on the device (no host-to-device copy per
step), determinism per seed, fp32 features and cache entries apart from the CPU's, Inception's
one-channel copy, bf16 and compiled sampling. Skipped without a GPU."""

from __future__ import annotations

import pytest
import torch

from ddgan.config import EvalConfig, resolve_config
from ddgan.methods import schedule_for
from ddgan.metrics import TestExtractor, reference_stats
from ddgan.metrics.evaluator import Evaluator
from ddgan.metrics.inception import InceptionNetwork, resize_for_inception
from ddgan.nets import build_networks
from ddgan.sampler import sample_ddgan, sampling_numerics

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
DEVICE = "cuda"
T = 3


@pytest.fixture(scope="module")
def tiny():
    cfg = resolve_config({"method": "ddgan", "model": {"preset": "tiny"}, "diffusion": {"T": T}})
    generator = build_networks(cfg.model, "ddgan")["generator"].to(DEVICE).eval()
    schedule = schedule_for(cfg)

    def sample_fn(n, torch_generator):
        return sample_ddgan(generator, schedule, n, z_dim=cfg.model.z_dim, torch_generator=torch_generator,
                            device=DEVICE)

    return generator, schedule, cfg.model.z_dim, sample_fn


def _evaluator(**eval_cfg) -> Evaluator:
    cfg = EvalConfig(metrics=(), n_samples=32, batch_size=16, grid_size=2, **eval_cfg)
    return Evaluator(cfg, {}, {}, DEVICE)


def _host_to_device_copies(fn) -> int:
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(1 for event in prof.events() if "HtoD" in event.name)


def test_evaluation_noise_is_drawn_on_the_device(tiny):
    """The evaluator's generator lives on CUDA: sampling copies no noise from the host, where a
    CPU generator copies every draw (x_T, and per step z and the posterior noise)."""
    generator, schedule, z_dim, sample_fn = tiny
    evaluator = _evaluator()
    assert evaluator.generator().device.type == "cuda"
    evaluator._sample(sample_fn, 0, 32)  # warm-up: the schedule's tables reach the device once
    on_device = _host_to_device_copies(lambda: evaluator._sample(sample_fn, 0, 32))
    cpu_generator = torch.Generator().manual_seed(0)
    from_host = _host_to_device_copies(lambda: [sample_fn(16, cpu_generator) for _ in range(2)])
    draws_per_batch = 1 + T + (T - 1)
    assert from_host - on_device == 2 * draws_per_batch, (from_host, on_device)


def test_cuda_sampling_is_deterministic_per_seed(tiny):
    *_, sample_fn = tiny
    first, _, _ = _evaluator()._sample(sample_fn, 0, 32)
    again, _, _ = _evaluator()._sample(sample_fn, 0, 32)
    other, _, _ = _evaluator(seed=99)._sample(sample_fn, 0, 32)
    assert (first.int() - again.int()).abs().max() <= 1  # uint8 images; cuDNN benchmark may pick other kernels
    assert not torch.equal(first, other)


def test_cudnn_benchmark_is_on_while_sampling_on_cuda_only():
    before = torch.backends.cudnn.benchmark
    with sampling_numerics(DEVICE):
        assert torch.backends.cudnn.benchmark
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    assert torch.backends.cudnn.benchmark == before


def test_reference_on_cuda_is_fp32_and_apart_from_the_cpu_entry(fmnist_dir, tmp_path):
    cuda, cpu = TestExtractor(DEVICE), TestExtractor("cpu")
    mu_gpu, _, meta = reference_stats(cuda, fmnist_dir, "train", 256, tmp_path)
    assert (meta["device"], meta["precision"], meta["from_cache"]) == ("cuda", "fp32", False)
    mu_cpu, _, meta = reference_stats(cpu, fmnist_dir, "train", 256, tmp_path)
    assert not meta["from_cache"], "a CPU run must not read the CUDA entry"
    torch.testing.assert_close(torch.from_numpy(mu_gpu), torch.from_numpy(mu_cpu), atol=1e-6, rtol=0)


def test_features_on_cuda_ignore_the_callers_tf32_and_autocast():
    conv = torch.nn.Conv2d(3, 16, 299, bias=False).to(DEVICE)  # 16 dot products of 268k terms: TF32 shows
    network = InceptionNetwork(lambda x: conv(x).flatten(1), "test", DEVICE)
    images = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    x = resize_for_inception(images)  # expanded: one channel travels, three reach the network

    class Extractor(TestExtractor):
        feature_dim = 16

        def _batch_features(self, images_uint8):
            return network(resize_for_inception(images_uint8))

    exact = Extractor(DEVICE).features(images)
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            again = Extractor(DEVICE).features(images)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
    torch.testing.assert_close(torch.from_numpy(again), torch.from_numpy(exact), rtol=1e-6, atol=1e-3)
    torch.testing.assert_close(network(x).cpu(), network(x.contiguous()).cpu(), rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_reduced_precision_sampling_stays_close_to_fp32(tiny, precision):
    *_, sample_fn = tiny
    fp32, _, _ = _evaluator()._sample(sample_fn, 0, 32)
    reduced, _, _ = _evaluator(sample_precision=precision)._sample(sample_fn, 0, 32)
    assert reduced.shape == fp32.shape and reduced.dtype == torch.uint8
    assert (reduced.float() - fp32.float()).abs().mean() < 8  # uint8 levels; an untrained tiny generator


def test_compiled_sampling_matches_eager(tiny):
    *_, sample_fn = tiny
    eager, _, _ = _evaluator()._sample(sample_fn, 0, 32)
    compiled, _, _ = _evaluator(compile_sampler=True)._sample(sample_fn, 0, 32)
    assert (compiled.int() - eager.int()).abs().max() <= 1
