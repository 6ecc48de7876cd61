"""Shared helpers for the benchmark scripts: machine description and table printing."""

from __future__ import annotations

import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from study.report.tables import markdown_table as render_table


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


def write_table(out: str | Path | None, name: str, text: str) -> None:
    """Write a script's Markdown to `out/name` when `--out` was given (the folder is created)."""
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / name).write_text(text + "\n")


def write_json(path: Path, benchmark: str, device: str, rows: list[dict]) -> None:
    """A benchmark's rows (fields starting with `_` left out) as JSON with the machine, command and
    date: what benchmarks/costs_patch.py reads."""
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    clean = [{k: v for k, v in row.items() if not k.startswith("_")} for row in rows]
    path.write_text(json.dumps({"benchmark": benchmark, "device": device, "machine": machine(), "command": command(),
                                "date": time.strftime("%Y-%m-%d", time.gmtime()), "rows": clean}, indent=1,
                               default=str) + "\n")


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    """Rows of dicts as a Markdown table (numbers to 3 significant digits), drawn by the study's
    one table renderer, `study.report.tables.markdown_table`."""
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
        return str(v)

    return render_table(columns, [[fmt(r.get(c, "")) for c in columns] for r in rows])


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


class GpuUtilization:
    """Mean GPU utilisation (%) between `start()` and `stop()` (or over a `with` block): `.mean`.

    Sampled every `interval` s from NVML through `torch.cuda.utilization` (needs nvidia-ml-py),
    else from `nvidia-smi`. NaN on the CPU or when neither is available.
    """

    def __init__(self, device: torch.device, interval: float = 0.1):
        self.device, self.interval = torch.device(device), interval
        self.samples: list[float] = []
        self._stop = None

    def _read(self) -> float | None:
        try:
            return float(torch.cuda.utilization(self.device))
        except Exception:
            pass
        import subprocess

        index = self.device.index if self.device.index is not None else torch.cuda.current_device()
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                  "-i", str(index)], capture_output=True, text=True, timeout=5, check=True).stdout
            return float(out.strip().splitlines()[0])
        except (OSError, subprocess.SubprocessError, ValueError, IndexError):
            return None

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            value = self._read()
            if value is None:
                return
            self.samples.append(value)

    def start(self) -> None:
        if self.device.type == "cuda" and (self._stop is None or self._stop.is_set()):  # restartable
            import threading

            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._stop is not None and not self._stop.is_set():
            self._stop.set()
            self._thread.join()

    def __enter__(self) -> GpuUtilization:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def mean(self) -> float:
        return sum(self.samples) / len(self.samples) if self.samples else float("nan")
