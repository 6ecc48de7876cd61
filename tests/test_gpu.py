"""CUDA paths (bf16 autocast, channels_last, compile, device-resident data, a resume across an R1
step). Skipped without a GPU; run by benchmarks/gpu_check.sh on a GPU machine."""

from __future__ import annotations

import pytest
import torch

from ddgan.callbacks import Callback
from ddgan.checkpoint import list_checkpoints, load_checkpoint
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


class Losses(Callback):
    def __init__(self, stop_at: int | None = None):
        self.steps: dict[int, dict] = {}
        self.stop_at = stop_at

    def on_train_step(self, step, metrics):
        self.steps[step] = dict(metrics)
        return self.stop_at is not None and step >= self.stop_at


def _tensors(state) -> dict[str, torch.Tensor]:
    """Every tensor of a (nested) state dict, by its dotted path."""
    if isinstance(state, torch.Tensor):
        return {"": state}
    items = state.items() if isinstance(state, dict) else enumerate(state) if isinstance(state, list | tuple) else ()
    return {f"{k}.{path}".rstrip("."): t for k, v in items for path, t in _tensors(v).items()}


def test_resume_across_an_r1_step_on_cuda_matches_the_uninterrupted_run(tmp_path, monkeypatch):
    """20 steps (R1 at step 15) straight, against 10 steps, a checkpoint, and a resume to 20 on the
    GPU: the checkpoint's RNG states are restored on CUDA, the R1 step is reached after the resume,
    and the losses, G, D and the EMA generator (what sampling and export use) agree. fp32 and
    deterministic cuDNN, so the tolerance sits far below what one step of other noise moves
    (Adam at lr 1.6e-4 moves weights ~1e-4 a step; a lost EMA or RNG state differs by more)."""
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    cfg = _cfg(steps=20, log_every=1, amp=False)
    assert cfg.objective.r1_gamma > 0 and cfg.objective.r1_interval == 15
    data = torch.rand(256, 1, 28, 28, device="cuda") * 2 - 1
    full = Losses()
    train(cfg, tmp_path / "full", data=RandomBatches(data, 16, seed=0), callbacks=[full], evaluator=null_evaluator)
    first = train(cfg, tmp_path / "split", data=RandomBatches(data, 16, seed=0), callbacks=[Losses(stop_at=10)],
                  evaluator=null_evaluator)
    assert (first.step, first.status) == (10, "stopped")
    second = Losses()
    done = train(cfg, tmp_path / "split", data=RandomBatches(data, 16, seed=99), callbacks=[second],
                 evaluator=null_evaluator, resume_from=tmp_path / "split")
    assert (done.step, done.status) == (20, "completed") and sorted(second.steps) == list(range(11, 21))
    assert second.steps[15]["train/d_penalty"] > 0 and second.steps[14]["train/d_penalty"] == 0  # R1 reached
    for step in range(11, 21):
        for key in ("train/d_loss", "train/g_loss", "train/d_penalty"):
            assert second.steps[step][key] == pytest.approx(full.steps[step][key], rel=1e-4, abs=1e-6), (step, key)
    a = load_checkpoint(list_checkpoints(tmp_path / "full" / "checkpoints")[-1])
    b = load_checkpoint(list_checkpoints(tmp_path / "split" / "checkpoints")[-1])
    for part in ("networks", "ema"):
        ours, theirs = _tensors(a[part]), _tensors(b[part])
        assert ours.keys() == theirs.keys() and ours
        for key, value in ours.items():
            if value.is_floating_point():
                torch.testing.assert_close(theirs[key], value, rtol=1e-4, atol=1e-6, msg=f"{part}.{key}")


def test_checkpoint_loaded_onto_cuda_restores_its_rng_states(tmp_path):
    """Defect 1 itself: every tensor of a checkpoint mapped to the GPU, RNG states included."""
    from ddgan.checkpoint import capture_rng_state, restore_rng_state, save_checkpoint

    torch.manual_seed(3)
    torch.cuda.manual_seed_all(3)
    save_checkpoint(tmp_path / "rng.pt", {"step": 0, "config": _cfg().to_dict(), "networks": {}, "ema": {},
                                          "rng": capture_rng_state()})
    expected = torch.rand(3), torch.rand(3, device="cuda")
    mapped = torch.load(tmp_path / "rng.pt", map_location="cuda", weights_only=True)["rng"]
    assert mapped["torch"].is_cuda
    restore_rng_state(mapped)
    assert torch.equal(torch.rand(3), expected[0]) and torch.equal(torch.rand(3, device="cuda"), expected[1])


def test_speed_alone_and_the_sample_phase_layout_on_cuda(tmp_path):
    from ddgan.checkpoint import save_checkpoint
    from ddgan.export import load_for_sampling
    from ddgan.methods import build_method
    from ddgan.speed import measure_speed

    cfg = _cfg()
    figures = measure_speed(cfg, "cuda", sample_batch=32)
    assert figures.device.startswith("cuda: ") and figures.nfe == 2 and figures.train_steps_timed == 15
    assert figures.sample_ms_per_image > 0 and figures.train_img_per_s > 0
    method = build_method(cfg, torch.device("cuda"))
    save_checkpoint(tmp_path / "ckpt_0000001.pt", {"step": 1, "config": cfg.to_dict(), **method.state_dict()})
    _, net = load_for_sampling(tmp_path, "cuda")  # the sample phase's network, as training evaluated it
    convs = [m.weight for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.shape[1] > 1]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
