"""Where a training step's time goes: torch's profiler over `Method.train_step`, grouped.

Times `--steps` steps of the trainer's own step (DDGAN or DDPM, a preset, a batch) after
warm-up, and sums the profiler's self time into convolution (forward and backward), the
rest of the network, and the optimiser. The last line is the Amdahl ceiling: the speed-up
a loop could reach if everything but convolution cost nothing, which bounds what any
loop-level change (data path, syncs, fusion, EMA) can buy at the same precision.

    python -m benchmarks.profile_step --preset small --method ddpm --steps 8 --out /tmp/bench
"""

from __future__ import annotations

import argparse
import sys

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.common import header, markdown_table, write_table
from ddgan.cli import DEVICE, THREADS, ArgumentParser, Number, OutputDir, run_cli
from ddgan.config import preset_names, resolve_config
from ddgan.methods import build_method

GROUPS = {  # first match wins, on the aten op name
    "convolution": ("convolution", "conv2d", "cudnn_conv", "mkldnn_conv"),
    "optimiser": ("adam", "foreach", "optimizer"),
}


def group_of(name: str) -> str:
    low = name.lower()
    return next((group for group, keys in GROUPS.items() if any(k in low for k in keys)), "everything else")


def profile_step(preset: str, method: str, batch: int, steps: int, device: str, T: int | None = None
                 ) -> tuple[list[dict], float]:
    """Rows {group, self ms per step, share}, and the ceiling 1 / (convolution share)."""
    diffusion = {"T": T} if T else {}
    cfg = resolve_config({"method": method, "model": {"preset": preset}, "diffusion": diffusion,
                          "train": {"batch_size": batch, "device": device}})
    step_fn = build_method(cfg, torch.device(device))
    x = torch.rand(batch, 1, 28, 28, device=device) * 2 - 1
    for i in range(3):  # warm-up: allocator, oneDNN primitive caches
        step_fn.train_step(x, i)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as prof:
        for i in range(steps):
            step_fn.train_step(x, 3 + i)
        if device == "cuda":
            torch.cuda.synchronize()
    attr = "self_device_time_total" if device == "cuda" else "self_cpu_time_total"
    totals: dict[str, float] = {}
    for event in prof.key_averages():
        if event.key.startswith(("aten::", "Optimizer")) or device == "cuda":
            group = group_of(event.key)
            totals[group] = totals.get(group, 0.0) + getattr(event, attr)
    whole = sum(totals.values())
    rows = [{"group": group, "self ms/step": totals.get(group, 0.0) / 1000 / steps,
             "share": totals.get(group, 0.0) / whole}
            for group in ("convolution", "everything else", "optimiser")]
    return rows, 1.0 / rows[0]["share"]


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m benchmarks.profile_step", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=preset_names(), default="small")
    p.add_argument("--method", choices=["ddgan", "ddpm"], default="ddpm")
    p.add_argument("--batch", type=Number(int, 1, 4096), default=64)
    p.add_argument("--steps", type=Number(int, 1, 1_000_000), default=8)
    p.add_argument("--T", type=Number(int, 1, 10_000), default=None, help="diffusion steps (default: the method's config)")
    p.add_argument("--device", type=DEVICE, default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=THREADS, default=None)
    p.add_argument("--out", type=OutputDir(), default=None, help="directory for profile_step.md")
    return p


def main(argv=None) -> int | None:
    args = build_parser().parse_args(argv)  # every flag checked by its class (ddgan/cli.py)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows, ceiling = profile_step(args.preset, args.method, args.batch, args.steps, args.device, args.T)
    text = "\n".join([header(f"Profile of one {args.method.upper()} step ({args.preset}, batch {args.batch})",
                             args.device),
                      markdown_table(rows, ["group", "self ms/step", "share"]), "",
                      f"ceiling if only convolution cost time: {ceiling:.2f}x", ""])
    print(text)
    write_table(args.out, "profile_step.md", text)


if __name__ == "__main__":
    sys.exit(run_cli(main))
