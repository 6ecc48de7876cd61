"""The speed of one configuration, measured alone on its device.

In a study, trials share devices: `gpus_per_trial` 0.25 packs four trials on a GPU and CPU
trials share the cores, so the `train/img_per_s` and `eval/sample_ms_per_image` a trial logs
are *packed* figures (they say how fast it went among its neighbours). Claims about speed
("DDGAN samples k times faster than DDPM") need each configuration timed with the device to
itself: the study measures every distinct (network, method, sampling steps, sampler) once
this way (`study.tuning.speed`) and logs it as `speed/*`.

Speed does not depend on what the weights are, so the networks here are freshly built from the
config, on the device and in the memory format a trial uses (`build_method`), and nothing is
loaded. Every timed region ends with a device synchronisation (CUDA runs asynchronously).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from ddgan.config import Config
from ddgan.methods import build_method
from ddgan.sampler import sampling_numerics

__all__ = ["PROTOCOL", "SpeedFigures", "measure_speed", "synchronize"]

# What a figure means; logged as the `speed.protocol` tag, and a study re-times any group whose
# tag differs (study.tuning.speed), so figures of one report always share one protocol.
PROTOCOL = ("alone on the device, untrained weights, synchronised; sampling: a first call (after one "
            "untimed call on CUDA) is the figure if it took >= 1 s, else it was a warm-up and as many calls "
            "as one more warm call says fill ~1 s are timed together; training: an untimed warm-up (one "
            "step, a window on CUDA), then one R1 window")
MIN_SAMPLE_SECONDS = 1.0


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class SpeedFigures:
    sample_ms_per_image: float  # one image, the config's full sampling chain (nfe network calls)
    sample_batch: int  # images per sampling call
    nfe: int
    train_img_per_s: float  # training images per second, steps timed include one R1 step (DDGAN)
    train_steps_timed: int
    device: str  # e.g. "cuda: NVIDIA H100 80GB HBM3" or "cpu: 2 threads"
    sample_calls_timed: int = 1

    def as_metrics(self) -> dict[str, float]:
        return {"speed/sample_ms_per_image": self.sample_ms_per_image, "speed/train_img_per_s": self.train_img_per_s}

    def as_tags(self) -> dict[str, str]:
        return {"speed.device": self.device, "speed.sample_batch": str(self.sample_batch),
                "speed.nfe": str(self.nfe), "speed.train_steps_timed": str(self.train_steps_timed),
                "speed.sample_calls_timed": str(self.sample_calls_timed), "speed.protocol": PROTOCOL}


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"{device.type}: {torch.get_num_threads()} threads"


def _timed(fn, device: torch.device, repeats: int, warmup: bool = True) -> float:
    """Seconds per call of `fn` (mean over `repeats`, after one untimed warm-up call if asked)."""
    if warmup:
        fn()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / repeats


def time_calls(fn, device: torch.device, min_seconds: float = MIN_SAMPLE_SECONDS,
               max_calls: int = 1000) -> tuple[float, int]:
    """(seconds per call of `fn`, calls timed). The first call is timed alone: when it took
    `min_seconds` or more, start-up costs (allocation, oneDNN primitive creation, cuDNN autotuning)
    are a small share of it and it is the figure; else it was the warm-up, one more (warm) call
    says how many calls fill `min_seconds`, and those are timed together. A cheap chain (DDGAN at
    T=1: a few ms) is never timed cold or from one call; a chain of a second or more is run once."""
    first = _timed(fn, device, 1, warmup=device.type == "cuda")  # CUDA autotunes on the first call
    if first >= min_seconds:
        return first, 1
    warm = _timed(fn, device, 1, warmup=False)  # the cold first call would under-fill the window
    calls = min(max_calls, max(1, math.ceil(min_seconds / max(warm, 1e-9))))
    return _timed(fn, device, calls, warmup=False), calls


def measure_speed(cfg: Config, device: torch.device | str, sample_batch: int, train_steps: int | None = None,
                  min_sample_seconds: float = MIN_SAMPLE_SECONDS) -> SpeedFigures:
    """Time `cfg`'s sampling (calls of `sample_batch` images, `cfg.eval` numerics; `time_calls`)
    and training.

    train_steps: steps per timed window (default: DDGAN's R1 period `objective.r1_interval`, so the
    window holds exactly one R1 step, the share the grid's trials pay; DDPM: 8). An untimed
    warm-up runs first: a whole window on CUDA, one step on a CPU.
    """
    device = torch.device(device)
    method = build_method(cfg, device)
    generator = torch.Generator(device=device).manual_seed(0)
    nfe_box: list[int] = []

    def sample() -> None:
        with sampling_numerics(device, cfg.eval.sample_precision, cfg.eval.compile_sampler):
            images, nfe = method.sample(sample_batch, generator)  # (b, 1, 28, 28)
        nfe_box.append(int(nfe))
        del images

    sample_s, sample_calls = time_calls(sample, device, min_sample_seconds)
    period = cfg.objective.r1_interval if cfg.method == "ddgan" else 8
    steps = int(train_steps or period)
    batch = torch.rand(cfg.train.batch_size, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    batch = method.to_input(batch)
    counter = iter(range(1, 10**9))

    def run_steps(n: int) -> None:
        for _ in range(n):
            method.train_step(batch, next(counter))

    # Warm-up, untimed: on CUDA a whole window (cuDNN autotunes the R1 step's kernels too); on a
    # CPU one step. The timed window then starts after it and holds one R1 step.
    run_steps(steps if device.type == "cuda" else 1)
    train_s = _timed(lambda: run_steps(steps), device, 1, warmup=False)
    return SpeedFigures(
        sample_ms_per_image=1000.0 * sample_s / sample_batch, sample_batch=int(sample_batch), nfe=nfe_box[-1],
        train_img_per_s=steps * cfg.train.batch_size / max(train_s, 1e-9), train_steps_timed=steps,
        device=describe_device(device), sample_calls_timed=sample_calls)
