"""FLOPs and aten op counts of the real training step and of one sampling network evaluation.

For each preset and method, `ddgan.methods.build_method(cfg, cpu).train_step` runs once under
`torch.utils.flop_counter.FlopCounterMode` (forward, backward and R1's double backward: every
aten op the step dispatches) and a dispatch mode that counts the aten ops. DDGAN's step is
the official one (D on a real and a fake pair, then G on a fresh draw: two generator
forwards); R1 (`objective.r1_interval`, 15) is counted on its own step and amortised:
(r1_interval - 1) plain steps + 1 R1 step, per r1_interval. Sampling: one network
evaluation (generator or denoiser forward without autograd) per image.

FLOPs scale with the batch (counted at `--batch`, given per image); the op count does not
(one kernel launch per op on a GPU: the per-step host floor is ops x 5-10 us, unless
torch.compile or CUDA graphs fuse them). Ops are counted on the CPU; CUDA dispatches the same
network ops (fused Adam and foreach EMA may issue fewer optimiser ops there).

    python -m benchmarks.flops                        # the table, and YAML for configs/costs.yaml
    python -m benchmarks.flops --presets tiny --batch 2
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from benchmarks.common import command, header, markdown_table
from ddgan.cli import ArgumentParser, Number, run_cli

PRESETS = ("tiny", "small", "paper")
METHODS = ("ddgan", "ddpm")


class StepCounter(TorchDispatchMode):
    """FLOPs and aten ops dispatched inside the `with` block.

    FLOPs by `torch.utils.flop_counter`'s own formulas (`flop_registry`, what FlopCounterMode
    sums); FlopCounterMode itself cannot count R1, whose `autograd.grad` on an input breaks its
    module tracker. Each op is counted once as dispatched (one kernel launch on a GPU), before
    any decomposition.
    """

    def __init__(self):
        super().__init__()
        self.flops = 0
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func.overloadpacket
        self.ops[str(packet)] += 1
        if packet in flop_registry:
            self.flops += flop_registry[packet](*args, **kwargs, out_val=out)
        return out

    @property
    def total_ops(self) -> int:
        return sum(self.ops.values())


def count(fn) -> tuple[int, int]:
    """(FLOPs, aten ops) of one call of `fn()`."""
    counter = StepCounter()
    with counter:
        fn()
    return counter.flops, counter.total_ops


def step_config(preset: str, method: str, batch: int) -> Any:
    from ddgan.config import resolve_config

    return resolve_config({"method": method, "model": {"preset": preset},
                           "train": {"batch_size": batch, "device": "cpu", "compile": False}})


def count_train_step(preset: str, method: str, batch: int) -> dict[str, float]:
    """Per image: plain step, R1 step (DDGAN) and the amortised step; ops per step."""
    from ddgan.methods import build_method

    torch.manual_seed(0)
    cfg = step_config(preset, method, batch)
    m = build_method(cfg, torch.device("cpu"))
    x0 = torch.rand(batch, 1, 28, 28) * 2 - 1  # (B, 1, 28, 28); the count does not depend on content
    m.train_step(x0, 1)  # first call: lazy state (optimiser moments) is not what a step costs
    plain_flops, plain_ops = count(lambda: m.train_step(x0, 2))
    row = {"gflop_per_image_plain": plain_flops / batch / 1e9, "ops_per_step_plain": plain_ops}
    every = cfg.objective.r1_interval if method == "ddgan" and cfg.objective.r1_gamma > 0 else 0
    if every:
        r1_flops, r1_ops = count(lambda: m.train_step(x0, every))
        row.update(gflop_per_image_r1=r1_flops / batch / 1e9, ops_per_step_r1=r1_ops, r1_interval=every)
        plain_flops = ((every - 1) * plain_flops + r1_flops) / every
        plain_ops = ((every - 1) * plain_ops + r1_ops) / every
    row.update(gflop_per_image=plain_flops / batch / 1e9, ops_per_step=plain_ops)
    return row


def count_network_evaluation(preset: str, method: str, batch: int) -> dict[str, float]:
    """One sampling network evaluation (G or the denoiser, forward, no autograd), per image."""
    from ddgan.nets import build_networks

    cfg = step_config(preset, method, batch)
    net = build_networks(cfg.model, method)["generator" if method == "ddgan" else "denoiser"].eval()
    x_t, t = torch.randn(batch, 1, 28, 28), torch.full((batch,), 2)
    z = torch.randn(batch, cfg.model.z_dim)
    with torch.no_grad():  # not inference_mode: it dispatches composite ops (conv2d) the registry does not know
        flops, ops = count(lambda: net(x_t, t, z) if method == "ddgan" else net(x_t, t))
    return {"gflop_per_image": flops / batch / 1e9, "ops": ops}


def count_all(presets, methods, batch: int) -> dict[str, dict]:
    """{"train": {preset: {method: row}}, "sample": {...}} as configs/costs.yaml's `flops` takes it."""
    out: dict[str, dict] = {"train": {}, "sample": {}}
    for preset in presets:
        for method in methods:
            out["train"].setdefault(preset, {})[method] = count_train_step(preset, method, batch)
            out["sample"].setdefault(preset, {})[method] = count_network_evaluation(preset, method, batch)
    return out


def as_yaml(counts: dict[str, dict], batch: int) -> str:
    """The `flops:` block of configs/costs.yaml (rounded), with the command and date that made it."""
    lines = ["flops:", f"  # {command()} ({time.strftime('%Y-%m-%d', time.gmtime())}, torch "
                       f"{torch.__version__}, counted on the CPU at batch {batch})",
             "  train:   # per image: the amortised step (R1 every r1_interval steps); aten ops per step"]
    for preset, row in counts["train"].items():
        cells = ", ".join(f"{m}: {{gflop_per_image: {r['gflop_per_image']:.4g}, ops_per_step: {r['ops_per_step']:.0f}}}"
                          for m, r in row.items())
        lines.append(f"    {preset}: {{{cells}}}")
    lines.append("  sample:  # per image per network evaluation; aten ops per evaluation (one batch)")
    for preset, row in counts["sample"].items():
        cells = ", ".join(f"{m}: {{gflop_per_image: {r['gflop_per_image']:.4g}, ops: {r['ops']:.0f}}}"
                          for m, r in row.items())
        lines.append(f"    {preset}: {{{cells}}}")
    return "\n".join(lines)


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m benchmarks.flops", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=list(PRESETS), choices=PRESETS)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--batch", type=Number(int, 1, 4096), default=4,
                   help="batch the step is counted at (FLOPs are given per image)")
    return p


def main(argv=None) -> int | None:
    args = build_parser().parse_args(argv)  # every flag checked by its class (ddgan/cli.py)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    counts = count_all(args.presets, args.methods, args.batch)
    rows = [{"preset": preset, "method": method, **r, **{f"sample {k}": v for k, v in counts["sample"][preset][method].items()}}
            for preset, row in counts["train"].items() for method, r in row.items()]
    columns = ["preset", "method", "gflop_per_image_plain", "gflop_per_image_r1", "gflop_per_image", "ops_per_step_plain",
               "ops_per_step_r1", "ops_per_step", "sample gflop_per_image", "sample ops"]
    print(header("FLOPs and aten ops of one training step (per image) and one sampling evaluation", "cpu"))
    print(markdown_table(rows, columns))
    print()
    print(as_yaml(counts, args.batch))


if __name__ == "__main__":
    sys.exit(run_cli(main))
