"""Shared helpers for the benchmark scripts: machine description and table printing."""

from __future__ import annotations

import os
import platform
import shlex
import sys
import time
from collections.abc import Callable

import torch


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return f"{cpu}; {os.cpu_count()} cores; torch {torch.__version__} ({torch.get_num_threads()} threads); GPU: {gpu}"


def command() -> str:
    """The command line as a user would type it (`python -m benchmarks.X ...`)."""
    script = sys.argv[0]
    if script.endswith(".py") and "benchmarks" in script:
        script = "-m benchmarks." + os.path.basename(script)[:-3]
    return "python " + " ".join([script, *(shlex.quote(a) for a in sys.argv[1:])])


def header(title: str, device: str) -> str:
    return "\n".join([f"## {title}", "", f"- command: `{command()}`", f"- machine: {machine()}",
                      f"- device: {device}", f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", ""])


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def timed(fn: Callable[[], object], device: torch.device, repeats: int = 3, warmup: int = 1) -> float:
    """Median wall seconds of `fn()` after `warmup` calls (CUDA synchronised)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]
