"""Trial packing: trials per hour with N trials running at once on this machine.

For each N in --concurrency, one study of N x --waves identical trials (a grid's first
DDGAN cell, seeds 0..N*waves-1, pruning off, one evaluation at the end) runs through
`study.driver.run_study` with `max_concurrent` N. CPU: each trial gets cores/N CPUs
(and as many torch threads). CUDA: each trial gets 1/N of the GPU (Ray's fractional
resources; memory is shared, not isolated) and a fixed CPU share. Trials per hour =
trials x 3600 / wall of the Ray Tune phase; Ray start-up and the driver's set-up
(stores, reference statistics) are excluded. "vs 1" is the ratio to N = 1.

    python -m benchmarks.packing --device cpu --concurrency 1 2 --out /tmp/bench
    python -m benchmarks.packing --device cuda --concurrency 1 2 4 8 --out OUT      # one GPU
    python -m benchmarks.packing --device cpu --concurrency 1 2 --tiny --out /tmp/bench

`--direct` leaves Ray out and measures what packing does to the GPU: N processes, each the
project's trainer on the grid's first DDGAN trial config (its preset and batch), start their
clocks together after warm-up (a barrier) and time `--steps` steps; aggregate images/s is
the sum over the N, "vs 1" its ratio to N = 1 (what configs/costs.yaml's `packing` takes).
Start-up is excluded, so the figure is the steady state of trials that share a GPU.

    python -m benchmarks.packing --direct --device cuda --concurrency 1 2 4 --steps 60 --out OUT
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks.common import header, markdown_table, write_json, write_table
from benchmarks.study_timing import derive_grid, start_ray, timed_study
from ddgan.cli import ArgumentParser, InputPath, Number, OutputDir, OutputFile, run_cli
from ddgan.errors import UsageError
from study.flags import GridRef, RayAddress

DEFAULTS = {"cpu": {"grid": "cpu", "steps": 100}, "cuda": {"grid": "full", "steps": 300}}
TINY = {"grid": "smoke", "steps": 10, "eval": {"n_samples": 32, "batch_size": 32, "reference_n": 200, "grid_size": 4}}
COLUMNS = ["concurrent trials", "per trial", "trials", "steps per trial", "wall s", "trials/hour", "images/s", "vs 1"]


def cpus_per_trial(args, n: int) -> float:
    if args.cpus_per_trial is not None:
        return args.cpus_per_trial
    cores = os.cpu_count() or 1
    if args.device == "cpu":
        return float(max(1, cores // n))  # the cores are what is shared
    return float(max(1, cores // max(args.concurrency)))  # same CPU share at every N: only the GPU is packed


def run_one(args, n: int, work: Path, data_dir: Path) -> dict:
    from ddgan.config import Config
    from study.driver import StudyOptions
    from study.grid import load_plan

    sizes = TINY if args.tiny else {}
    steps = args.steps or sizes.get("steps") or DEFAULTS[args.device]["steps"]
    gpus = 1.0 / n if args.device == "cuda" else 0.0
    cpus = cpus_per_trial(args, n)
    eval_changes = {"final_metrics": [], **sizes.get("eval", {})}
    grid_path = derive_grid(args.grid or sizes.get("grid") or DEFAULTS[args.device]["grid"], work / f"grid-{n}.yaml",
                            name=f"packing-{n}", seeds=n * args.waves, steps=steps, eval_every=steps,
                            eval_changes=eval_changes, overrides=(f"train.device={args.device}",),
                            cpus=cpus, gpus=gpus, max_concurrent=n)
    plan = load_plan(str(grid_path))
    timing = timed_study(StudyOptions(grid=str(grid_path), study=f"packing-{n}", address=args.address,
                                      data_dir=str(data_dir), results_dir=str(work / "results"),
                                      cache_dir=str(work / "cache"), allow_local=True, verbose=0))
    wall = timing.phase_s["train"]
    cfg = Config.from_dict(plan.configs[plan.trials[0].key])
    trials = len(plan.trials)
    share = f"{cpus:g} CPU" + (f", {gpus:.3g} GPU" if gpus else "")
    return {"concurrent trials": n, "per trial": share, "trials": trials, "steps per trial": steps, "wall s": wall,
            "trials/hour": trials * 3600 / wall, "images/s": trials * steps * cfg.train.batch_size / wall,
            "_cfg": cfg}


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m benchmarks.packing", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--concurrency", type=Number(int, 1, 256), nargs="+", default=None, help="default: 1 2 (cpu), 1 2 4 8 (cuda)")
    p.add_argument("--waves", type=Number(int, 1, 1000), default=1, help="trials per run = N x waves (default 1)")
    p.add_argument("--grid", type=GridRef(), default=None, help="grid whose first DDGAN cell is run (default: cpu / full; smoke with --tiny)")
    p.add_argument("--steps", type=Number(int, 1, 1_000_000), default=None, help="steps per trial (default: 100 cpu, 300 cuda; 10 with --tiny)")
    p.add_argument("--cpus-per-trial", type=Number(float, 0, 1024, low_open=True), default=None)
    p.add_argument("--address", type=RayAddress(), default=None, help="join a running Ray cluster instead of starting one")
    p.add_argument("--data-dir", type=InputPath("dir"), default=None, help="Fashion-MNIST IDX directory (else $DDGAN_DATA_DIR)")
    p.add_argument("--tiny", action="store_true", help="smoke size: smoke grid, 10 steps, 32 samples at the end")
    p.add_argument("--direct", action="store_true",
                   help="N trainer processes started together, no Ray: steady-state aggregate images/s")
    p.add_argument("--threads", type=Number(int, 1, 1024), default=1, help="--direct: torch threads per process")
    p.add_argument("--json", type=OutputFile(".json", writer="JSON"), default=None,
                   help="also write the rows here (what benchmarks/costs_patch.py reads)")
    p.add_argument("--out", type=OutputDir(), default=None, help="directory for packing.md")
    return p


def main(argv=None) -> int | None:
    args = build_parser().parse_args(argv)  # every flag checked by its class (ddgan/cli.py)
    args.concurrency = args.concurrency or ([1, 2] if args.device == "cpu" else [1, 2, 4, 8])
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device here")
    from ddgan.data import resolve_data_dir

    data_dir = resolve_data_dir(args.data_dir).resolve()
    if args.direct:
        return direct(args, data_dir)
    work = Path(tempfile.mkdtemp(prefix="ddgan-packing-"))
    rows: list[dict] = []
    try:
        ray_s = start_ray(args.address, 1.0 / max(args.concurrency) if args.device == "cuda" else 0.0)
        for n in args.concurrency:
            rows.append(run_one(args, n, work, data_dir))
            text = render(args, rows, ray_s)  # written after every N: a run cut short keeps what it measured
            write_table(args.out, "packing.md", text)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(text)
    if args.json:
        write_json(Path(args.json), "packing", args.device, rows)


def render(args, rows: list[dict], ray_s: float) -> str:
    base = next((r["trials/hour"] for r in rows if r["concurrent trials"] == 1), None)
    for r in rows:
        r["vs 1"] = r["trials/hour"] / base if base else float("nan")
    cfg = rows[0]["_cfg"]
    device = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    notes = [f"- trial: DDGAN {cfg.objective.loss} T={cfg.diffusion.T}, preset {cfg.model.preset}, "
             f"batch {cfg.train.batch_size}, one evaluation at the end on {cfg.eval.n_samples} samples "
             f"({', '.join(cfg.eval.metrics) or 'no metrics'}); pruning off",
             f"- Ray start-up (excluded): {ray_s:.1f} s", ""]
    return header("Trial packing (trials per hour vs concurrent trials)", device) + "\n".join(notes) + "\n" + \
        markdown_table(rows, COLUMNS)


DIRECT_COLUMNS = ["concurrent trials", "preset", "batch", "steps timed", "img/s per trial", "aggregate img/s", "vs 1"]


def _direct_trial(config: dict, steps: int, device: str, data_dir: str, threads: int, barrier, results) -> None:
    """One packed trial (a spawned process): the trainer's img/s over `steps` steps, clock started at the barrier."""
    from benchmarks.train_throughput import trainer_loop
    from ddgan.config import Config
    from ddgan.data import load_fashion_mnist

    torch.set_num_threads(threads)
    images, _ = load_fashion_mnist(Path(data_dir), "train")
    with tempfile.TemporaryDirectory(prefix="ddgan-packed-") as out:
        results.put(trainer_loop(Config.from_dict(config), images, steps, torch.device(device), Path(out),
                                 barrier=barrier))


def direct(args, data_dir: Path) -> None:
    """--direct: N trainer processes per N, started together; aggregate images/s vs N = 1."""
    import multiprocessing

    from ddgan.config import Config
    from study.grid import load_plan

    plan = load_plan(args.grid or ("smoke" if args.tiny else DEFAULTS[args.device]["grid"]))
    spec = next(s for s in plan.trials if s.method == "ddgan")
    cfg = Config.from_dict({**plan.configs[spec.key], "train": {**plan.configs[spec.key]["train"], "device": args.device,
                                                                 "steps": 10**6}})
    steps = args.steps or (5 if args.tiny else 60)
    ctx = multiprocessing.get_context("spawn")  # CUDA cannot be forked
    rows = []
    for n in args.concurrency:
        barrier, results = ctx.Barrier(n), ctx.Queue()
        procs = [ctx.Process(target=_direct_trial, args=(cfg.to_dict(), steps, args.device, str(data_dir),
                                                          args.threads, barrier, results)) for _ in range(n)]
        for proc in procs:
            proc.start()
        speeds = [results.get(timeout=3600) for _ in procs]
        for proc in procs:
            proc.join()
        rows.append({"concurrent trials": n, "preset": cfg.model.preset, "batch": cfg.train.batch_size,
                     "steps timed": steps, "img/s per trial": sum(speeds) / n, "aggregate img/s": sum(speeds)})
        base = rows[0]["aggregate img/s"] if rows[0]["concurrent trials"] == 1 else float("nan")
        for row in rows:
            row["vs 1"] = row["aggregate img/s"] / base
        device = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
        text = header("Trial packing, steady state (aggregate images/s vs trials sharing the device)", device) + \
            f"- trial: `{spec.key}` of grid {plan.grid.name} (DDGAN {cfg.objective.loss} T={cfg.diffusion.T}); " \
            f"each process the project's trainer, {args.threads} torch thread(s), clocks started together " \
            "after 2 warm-up steps; start-up excluded\n\n" + markdown_table(rows, DIRECT_COLUMNS)
        write_table(args.out, "packing.md", text)  # after every N: a run cut short keeps what it measured
        if args.json:
            write_json(Path(args.json), "packing", device, rows)
    print(text)


if __name__ == "__main__":
    sys.exit(run_cli(main))
