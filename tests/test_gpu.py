"""CUDA paths (bf16 autocast, channels_last, compile, device-resident data). Skipped without a GPU;
run by benchmarks/gpu_check.sh on a lent GPU machine."""

from __future__ import annotations

import pytest
import torch

from ddgan.config import resolve_config
from ddgan.data import RandomBatches
from ddgan.methods import schedule_for
from ddgan.nets import build_networks
from ddgan.sampler import sample_ddgan
from ddgan.trainer import train

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _cfg(**train):
    return resolve_config({"method": "ddgan", "model": {"preset": "tiny"}, "diffusion": {"T": 2},
                           "train": {"steps": 6, "batch_size": 16, "device": "cuda", "log_every": 2, **train},
                           "eval": {"every": 3}})


def null_evaluator(sample_fn, step, out_dir, final=False):
    images, nfe = sample_fn(4, torch.Generator().manual_seed(0))
    return {"eval/nfe": float(nfe), "eval/mean": float(images.mean())}, {}


@pytest.mark.parametrize("compile_", [False, True])
def test_training_on_cuda_bf16_channels_last(tmp_path, compile_):
    data = torch.rand(64, 1, 28, 28, device="cuda") * 2 - 1
    result = train(_cfg(compile=compile_), tmp_path, data=RandomBatches(data, 16, seed=0), evaluator=null_evaluator)
    assert result.status == "completed" and result.step == 6
    assert torch.isfinite(torch.tensor(list(result.last_metrics.values()))).all()


def test_sampling_noise_is_device_independent():
    cfg = _cfg()
    net = build_networks(cfg.model, "ddgan")["generator"].eval()
    sched = schedule_for(cfg)
    cpu, _ = sample_ddgan(net, sched, 8, z_dim=cfg.model.z_dim, torch_generator=torch.Generator().manual_seed(0))
    gpu, _ = sample_ddgan(net.cuda(), sched, 8, z_dim=cfg.model.z_dim,
                          torch_generator=torch.Generator().manual_seed(0), device="cuda")
    torch.testing.assert_close(cpu, gpu.cpu(), atol=2e-3, rtol=0)


def test_random_batches_on_cuda_resume_exactly():
    data = torch.randn(100, 1, 28, 28, device="cuda")
    batches = RandomBatches(data, 8, seed=3)
    next(batches)
    state = batches.state_dict()
    a = next(batches)
    batches.load_state_dict(state)
    torch.testing.assert_close(a, next(batches))
