"""A short, clock-bounded training run of one grid trial: does it learn on this machine?

The grid's first DDGAN trial with the given loss and T (default: the `full` grid's ns, T=4:
paper preset, batch 128, its learning rate, EMA and cosine schedule) trains with the
project's trainer, evaluating every `--eval-every` steps (the grid's intermediate metric,
fd_fmnist on `--n-samples` samples, and a sample grid), and stops at the first evaluation
after `--seconds`. The table lists each evaluation's step, wall time and distance; the last
sample grid is written as samples.png. "learns" = the last distance is below the first.

    python -m benchmarks.learning_check --seconds 120 --out OUT                  # on a GPU
    python -m benchmarks.learning_check --grid smoke --T 1 --seconds 15 --eval-every 10 --n-samples 64 --out /tmp/l
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import header, markdown_table, write_json, write_table
from ddgan.callbacks import Callback
from ddgan.cli import (
    DEVICE,
    OVERRIDE,
    ArgumentParser,
    InputPath,
    Number,
    OutputDir,
    OutputFile,
    run_cli,
)
from study.flags import GridRef

COLUMNS = ["step", "wall s", "images", "metric", "value"]


class ClockedEvaluations(Callback):
    """Records every evaluation; stops training at the first one after `seconds` of training (the
    clock starts when the trainer does: data, networks and reference statistics are ready)."""

    def __init__(self, seconds: float):
        self.seconds, self.start = seconds, time.perf_counter()
        self.rows: list[dict] = []
        self.grid: Path | None = None

    def on_train_start(self, info):
        self.start = time.perf_counter()

    def on_eval(self, step, metrics, artifacts, checkpoint):
        elapsed = time.perf_counter() - self.start
        self.grid = artifacts.get("samples_grid", self.grid)
        self.rows += [{"step": step, "wall s": elapsed, "metric": k, "value": v}
                      for k, v in metrics.items() if k.startswith("eval/fd")]
        return elapsed > self.seconds


def trial_config(args):
    from ddgan.config import resolve_config
    from study.grid import load_plan

    plan = load_plan(args.grid)
    specs = [s for s in plan.trials if s.method == "ddgan"]
    spec = next((s for s in specs if plan.configs[s.key]["objective"]["loss"] == args.loss
                 and plan.configs[s.key]["diffusion"]["T"] == args.T), specs[0])
    overrides = [f"train.device={args.device}", f"eval.every={args.eval_every}", f"eval.n_samples={args.n_samples}",
                 f"objective.loss={args.loss}", f"diffusion.T={args.T}", "eval.final_metrics=[]", *args.overrides]
    return resolve_config(plan.configs[spec.key], overrides), spec.key


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m benchmarks.learning_check", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", type=GridRef(), default="full", help="grid whose DDGAN trial is run (default: full)")
    p.add_argument("--loss", choices=("ns", "hellinger", "rkl", "tv"), default="ns")
    p.add_argument("--T", type=Number(int, 1, 10_000), default=4)
    p.add_argument("--seconds", type=Number(float, 0, 86_400), default=120.0,
                   help="stop at the first evaluation after this much training wall time")
    p.add_argument("--eval-every", type=Number(int, 1, 1_000_000), default=500)
    p.add_argument("--n-samples", type=Number(int, 2, 100_000), default=2000)
    p.add_argument("--set", dest="overrides", type=OVERRIDE, action="append", default=[], metavar="KEY=VALUE",
                   help="further config override, e.g. --set train.batch_size=16")
    p.add_argument("--device", type=DEVICE, default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--data-dir", type=InputPath("dir"), default=None, help="Fashion-MNIST IDX directory (else $DDGAN_DATA_DIR)")
    p.add_argument("--expect-learning", action="store_true", help="exit 1 unless the last distance is below the first")
    p.add_argument("--json", type=OutputFile(".json", writer="JSON"), default=None, help="also write the rows here")
    p.add_argument("--out", type=OutputDir(), default=None, help="directory for learning_check.md and samples.png")
    return p


def report(args, cfg, key: str, rows: list[dict], status: str) -> bool:
    """Write the table (and JSON) of the evaluations so far; True when the last distance is below the first."""
    values = [r["value"] for r in rows]
    learns = len(values) >= 2 and values[-1] < values[0]
    verdict = (f"- learns: {'yes' if learns else 'NO'} ({rows[0]['metric']} {values[0]:.4g} at step "
               f"{rows[0]['step']} -> {values[-1]:.4g} at step {rows[-1]['step']}; {status})"
               if values else f"- learns: unknown (no evaluation; {status})")
    text = header(f"Learning check: `{key}` of grid {args.grid}, {args.seconds:g} s", str(cfg.train.device)) + \
        f"- preset {cfg.model.preset}, batch {cfg.train.batch_size}, loss {cfg.objective.loss}, T={cfg.diffusion.T}, " \
        f"evaluation every {cfg.eval.every} steps on {cfg.eval.n_samples} samples\n{verdict}\n\n" + \
        markdown_table(rows, COLUMNS)
    write_table(args.out, "learning_check.md", text)
    if args.json:
        write_json(Path(args.json), "learning_check", str(cfg.train.device), [*rows, {"metric": "learns", "value": learns}])
    if status != "running":
        print(text)
    return learns


def main(argv=None) -> int | None:
    args = build_parser().parse_args(argv)  # every flag checked by its class (ddgan/cli.py)
    from ddgan.data import resolve_data_dir
    from ddgan.trainer import train

    cfg, key = trial_config(args)

    class Reported(ClockedEvaluations):  # after every evaluation: a run cut short keeps what it measured
        def on_eval(self, step, metrics, artifacts, checkpoint):
            stop = super().on_eval(step, metrics, artifacts, checkpoint)
            for row in self.rows:
                row["images"] = row["step"] * cfg.train.batch_size
            if args.out and self.grid is not None and Path(self.grid).exists():
                Path(args.out).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(self.grid, Path(args.out) / "samples.png")
            report(args, cfg, key, self.rows, "running")
            return stop

    clock = Reported(args.seconds)
    with tempfile.TemporaryDirectory(prefix="ddgan-learning-") as run:
        result = train(cfg, Path(run), data_dir=resolve_data_dir(args.data_dir), callbacks=[clock])
    learns = report(args, cfg, key, clock.rows, result.status)
    return 1 if args.expect_learning and not learns else 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
