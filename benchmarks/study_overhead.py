"""Study overhead: one trial run bare (the trainer) and as one trial of `study.run`, same steps.

Both legs train the same resolved config (a grid's first DDGAN cell, its budget and its
evaluation cadence) with the same thread count and the same warm reference cache:
  bare   the trainer CLI, `python -m ddgan.train --config <base> --set <the trial's overrides>`
         (printed under the table), timed as a subprocess from start to exit;
  study  `study.driver.run_study` on a one-trial grid in a temporary results directory:
         Ray Tune + the Optuna pruning scheduler + MLflow logging, embedded stores.
Overhead = study trial time - bare time, as a % of the study trial time. Ray start-up is
timed apart and excluded (it is paid once per study, not per trial); the driver's own
set-up (stores, plan, MLflow runs, Optuna trials) is reported on its own row.

    python -m benchmarks.study_overhead --grid cpu --out /tmp/bench          # ~12 min on 2 cores
    python -m benchmarks.study_overhead --tiny --out /tmp/bench               # smoke size
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import header, markdown_table, write_table
from benchmarks.study_timing import derive_grid, start_ray, timed_study
from ddgan.cli import DEVICE, ArgumentParser, InputPath, Number, OutputDir, run_cli
from study.flags import GridRef, RayAddress

REPO = Path(__file__).resolve().parents[1]
TINY = {"grid": "smoke", "steps": 20, "eval_every": 10,
        "eval": {"n_samples": 64, "batch_size": 64, "reference_n": 500, "grid_size": 4}}


def bare_run(spec, data_dir: Path, cache_dir: Path, out_dir: Path, threads: int) -> float:
    """Wall seconds of `python -m ddgan.train` on the trial's config: interpreter start, imports,
    data, evaluator (warm cache), training and evaluations; the trial's thread count."""
    env = {**os.environ, "DDGAN_CACHE_DIR": str(cache_dir), "OMP_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads)}  # study.tuning.trial.run_trial: torch.set_num_threads(cpus)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *bare_command(spec, out_dir)[1:], "--data-dir", str(data_dir), "--quiet"],
                          cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0 or "completed at step" not in proc.stdout:
        raise RuntimeError(f"bare run failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return seconds


def warm_cache(config: dict, data_dir: Path, cache_dir: Path) -> float:
    from ddgan.config import Config
    from ddgan.metrics.evaluator import prepare_reference

    start = time.perf_counter()
    prepare_reference(Config.from_dict(config).eval, data_dir, "cpu", cache_dir=cache_dir)
    return time.perf_counter() - start


def bare_command(spec, out_dir: Path | str = "runs/bare") -> list[str]:
    sets = [arg for override in spec.overrides for arg in ("--set", override)]
    return ["python", "-m", "ddgan.train", "--config", spec.base, *sets, "--out", str(out_dir)]


def measure(args, work: Path) -> tuple[list[dict], dict]:
    from ddgan.data import resolve_data_dir
    from study.driver import StudyOptions
    from study.grid import load_plan

    tiny = TINY if args.tiny else {}
    device_override = () if args.device is None else (f"train.device={args.device}",)
    grid_path = derive_grid(args.grid or tiny.get("grid", "cpu"), work / "grid.yaml", name="overhead",
                            steps=args.steps or tiny.get("steps"), eval_every=args.eval_every or tiny.get("eval_every"),
                            eval_changes=tiny.get("eval"), overrides=device_override, max_concurrent=1)
    plan = load_plan(str(grid_path))
    (spec,) = plan.trials
    config = plan.configs[spec.key]
    data_dir, cache_dir = resolve_data_dir(args.data_dir).resolve(), work / "cache"
    threads = max(1, int(plan.grid.resources.cpus))
    reference_s = warm_cache(config, data_dir, cache_dir)
    bare_s = bare_run(spec, data_dir, cache_dir, work / "bare", threads)
    ray_s = start_ray(args.address, plan.grid.resources.gpus)
    timing = timed_study(StudyOptions(grid=str(grid_path), study="overhead", address=args.address,
                                      data_dir=str(data_dir), results_dir=str(work / "results"),
                                      cache_dir=str(cache_dir), allow_local=True, verbose=0))
    phase_s = timing.phase_s["train"]
    steps, every = config["train"]["steps"], config["eval"]["every"]
    evals = steps // every + (steps % every != 0)

    def row(leg, seconds, overhead=True):
        extra = {"overhead s": seconds - bare_s, "overhead % of trial": 100 * (seconds - bare_s) / seconds} if overhead else {}
        return {"leg": leg, "steps": steps, "evaluations": evals, "seconds": seconds, **extra}

    rows = [row("bare: python -m ddgan.train (start-up, data, evaluator, training, evaluations)", bare_s,
                overhead=False),
            row("study: the trial as Ray Tune runs it (worker, trial, MLflow, Optuna, Ray checkpoints)", phase_s),
            row("study: study.run without Ray start-up (+ driver set-up)", timing.total_s),
            {"leg": "study: driver set-up alone (checks, stores, plan, MLflow runs, Optuna trials)",
             "seconds": timing.setup_s},
            {"leg": "Ray start-up (excluded above)", "seconds": ray_s},
            {"leg": "reference statistics, cold (once per study; both legs read the cache)", "seconds": reference_s}]
    info = {"config": config, "spec": spec, "threads": threads}
    return rows, info


COLUMNS = ["leg", "steps", "evaluations", "seconds", "overhead s", "overhead % of trial"]


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m benchmarks.study_overhead", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", type=GridRef(), default=None, help="grid whose first DDGAN cell is timed (default: cpu; smoke with --tiny)")
    p.add_argument("--steps", type=Number(int, 1, 1_000_000), default=None, help="override the grid's budget (default: the grid's)")
    p.add_argument("--eval-every", type=Number(int, 1, 1_000_000), default=None, help="override the grid's cadence (default: the grid's)")
    p.add_argument("--device", type=DEVICE, default=None, help="train.device for both legs (default: the grid's, usually auto)")
    p.add_argument("--address", type=RayAddress(), default=None, help="join a running Ray cluster (its connect time is reported)")
    p.add_argument("--data-dir", type=InputPath("dir"), default=None, help="Fashion-MNIST IDX directory (else $DDGAN_DATA_DIR)")
    p.add_argument("--tiny", action="store_true", help="smoke size: smoke grid, 20 steps, eval every 10 on 64 samples")
    p.add_argument("--keep", action="store_true", help="keep the temporary results directory (its path is printed)")
    p.add_argument("--out", type=OutputDir(), default=None, help="directory for study_overhead.md")
    return p


def main(argv=None) -> int | None:
    args = build_parser().parse_args(argv)  # every flag checked by its class (ddgan/cli.py)
    work = Path(tempfile.mkdtemp(prefix="ddgan-overhead-"))
    try:
        rows, info = measure(args, work)
    finally:
        if not args.keep:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    cfg = info["config"]
    device = cfg["train"]["device"]
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    notes = [f"- trial: `{info['spec'].key}`, preset {cfg['model']['preset']}, batch {cfg['train']['batch_size']}, "
             f"{cfg['train']['steps']} steps, eval every {cfg['eval']['every']} on {cfg['eval']['n_samples']} samples "
             f"({', '.join(cfg['eval']['metrics']) or 'no metrics'}), {info['threads']} thread(s) per leg",
             f"- bare leg: `{shlex.join(bare_command(info['spec']))} --data-dir DIR --quiet`",
             *([f"- kept: {work}"] if args.keep else []), ""]
    text = header("Study overhead (one trial: bare trainer vs study.run)", device) + "\n".join(notes) + "\n" + \
        markdown_table(rows, COLUMNS)
    print(text)
    write_table(args.out, "study_overhead.md", text)


if __name__ == "__main__":
    sys.exit(run_cli(main))
