"""CLI: `python -m ddgan.sample --checkpoint PATH --n 64 [--steps S] --out grid.png [--seed N]`.

PATH is a training checkpoint, a run directory, or an export directory (verified
against its sha256 manifest). Sampling always uses the EMA weights. The output is one
PNG grid, so `--n` has a ceiling (MAX_IMAGES, a 100 x 100 grid); every argument is
checked before the model is loaded.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ddgan.cli import DEVICE, SEED, ArgumentParser, CheckpointPath, Number, OutputFile, run_cli
from ddgan.errors import CheckpointError, UsageError

if TYPE_CHECKING:
    import torch

# torch and the model code load only after the arguments passed their checks, so a typo or
# an absurd size is answered in a fraction of a second, not after seconds of imports.

MAX_IMAGES = 10_000  # one PNG grid of 100 x 100 images (2,802 x 2,802 pixels)
MAX_BATCH = 4096
MAX_SEED = 2**63 - 1
GRID_LIMIT = f"one PNG grid of at most {math.isqrt(MAX_IMAGES)} x {math.isqrt(MAX_IMAGES)} images"


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m ddgan.sample", description=__doc__)
    p.add_argument("--checkpoint", required=True, type=CheckpointPath(), help="checkpoint file, run directory or export directory")
    p.add_argument("--n", type=Number(int, 1, MAX_IMAGES, why=GRID_LIMIT), default=64, help=f"number of images, 1..{MAX_IMAGES}")
    p.add_argument("--steps", type=Number(int, 1, 10_000), default=None, help="DDPM only: sample with S <= T respaced steps")
    p.add_argument("--sampler", choices=["ancestral", "ddim"], default="ancestral", help="DDPM only")
    p.add_argument("--out", required=True, type=OutputFile(".png", writer="PNG"), help="output PNG grid")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--device", default="auto", type=DEVICE)
    p.add_argument("--batch-size", type=Number(int, 1, MAX_BATCH), default=256, help=f"images per forward pass, 1..{MAX_BATCH}")
    return p


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def check_sizes(n: int, batch_size: int, seed: int) -> None:
    """Every size within what one machine and one PNG can hold; checked before the model loads."""
    if not 1 <= n <= MAX_IMAGES:
        raise UsageError(f"--n must be in 1..{MAX_IMAGES} ({GRID_LIMIT}), got {n}")
    if not 1 <= batch_size <= MAX_BATCH:
        raise UsageError(f"--batch-size must be in 1..{MAX_BATCH}, got {batch_size}")
    if not 0 <= seed <= MAX_SEED:
        raise UsageError(f"--seed must be in 0..2**63-1, got {seed}")


def sampling_device(name: str) -> torch.device:
    """`auto`, `cpu`, `cuda`, `cuda:N` -> a device that exists here; anything else is a UsageError."""
    import torch

    from ddgan.trainer import pick_device

    try:
        device = torch.device(name) if name != "auto" else None
    except RuntimeError:
        raise UsageError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device is not None and device.type == "cuda" and device.index is not None and torch.cuda.is_available() \
            and device.index >= torch.cuda.device_count():
        raise UsageError(f"--device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return pick_device(name)


def generate(checkpoint: str | Path, n: int, *, seed: int = 0, steps: int | None = None,
             sampler: str = "ancestral", device: str = "auto", batch_size: int = 256) -> tuple[torch.Tensor, int]:
    """Images (n, 1, 28, 28) in [-1, 1] and the NFE per image."""
    import torch

    from ddgan.export import load_for_sampling
    from ddgan.methods import schedule_for
    from ddgan.sampler import sample_ddgan, sample_ddpm, sample_in_batches

    check_sizes(n, batch_size, seed)
    dev = sampling_device(device)
    cfg, net = load_for_sampling(checkpoint, dev)
    schedule = schedule_for(cfg)
    if steps is not None and cfg.method == "ddgan" and steps != schedule.T:
        raise UsageError(f"a DDGAN model samples with its own T={schedule.T} steps (one model per T); got --steps {steps}")
    if steps is not None and not 1 <= steps <= schedule.T:
        raise UsageError(f"--steps must be in 1..{schedule.T}, got {steps}")
    if cfg.method == "ddpm" and steps is not None and steps < schedule.T:
        schedule = schedule.respace(steps)
    gen = torch.Generator(device=dev).manual_seed(seed)  # noise drawn where the network runs
    if cfg.method == "ddgan":
        def one(m):
            return sample_ddgan(net, schedule, m, z_dim=cfg.model.z_dim, torch_generator=gen, device=dev)
    else:
        def one(m):
            return sample_ddpm(net, schedule, m, torch_generator=gen, device=dev, method=sampler)
    return sample_in_batches(one, n, batch_size)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)  # every flag checked by its class (ddgan/cli.py): --out a writable .png
    out = Path(args.out)
    try:
        images, nfe = generate(args.checkpoint, args.n, seed=args.seed, steps=args.steps, sampler=args.sampler,
                               device=args.device, batch_size=args.batch_size)
    except CheckpointError as err:  # what the loader found in it: unreadable, config vs weights, not finite
        raise CheckpointError(f"--checkpoint {err}") from None
    from ddgan.metrics.grid import save_grid

    save_grid(images, out, nrow=int(math.ceil(math.sqrt(args.n))))
    print(f"wrote {args.n} samples ({nfe} network evaluations each) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
