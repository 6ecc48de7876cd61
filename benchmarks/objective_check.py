"""Short real-data check of the DDGAN objectives and step variants, several seeds each.

Every arm trains the same cell (a preset, T, learning rate, batch, steps) on Fashion-MNIST
with `ddgan.trainer.train` and is scored once at the end on the fixed evaluation noise
(`eval/fd_fmnist_<n>`: Frechet distance in the committed Fashion-MNIST classifier's
features, NOT Inception FID). An arm is `loss[:generator_form][/draw]`, e.g. `tv:log`,
`tv:nonsaturating`, `ns/shared`. Per arm and seed it records whether the D and G losses
moved (the range of its logged windows exceeds 1e-3), whether training diverged (the
trainer's non-finite guard), the median step time and the final distance; per arm the mean
and a 95% t-interval over seeds.

    python -m benchmarks.objective_check --arms ns tv:log tv:nonsaturating --seeds 0 1 2 \\
        --steps 240 --out /tmp/objective_check

Runs are interleaved seed by seed, so a noisy machine slows every arm alike; `--jobs 2` runs
two at a time (one torch thread each).

`--from-study NAME` adds (or, with no --arms, only reports) the matching cells of a finished
study: its completed DDGAN trials at this T, read from MLflow (the same numbers per seed: the
D and G losses of the first and last logged step, the final `eval/fd_fmnist_<n>`, the median
step time), so a study whose cells train exactly this configuration serves as the default-form
arms without training them twice:

    python -m benchmarks.objective_check --from-study cpu --results-dir results/runs --T 4
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd
import torch
from scipy import stats

from benchmarks.common import header, markdown_table, write_table
from ddgan.callbacks import Callback
from ddgan.cli import SEED, STUDY_NAME, ArgumentParser, InputPath, Name, Number, OutputDir, run_cli
from ddgan.config import load_config, preset_names
from ddgan.data import resolve_data_dir
from ddgan.errors import TrainingDiverged
from ddgan.trainer import train

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "ddgan.yaml"


MOVED = 1e-3  # a loss "moved" when its logged windows span more than this (stuck at chance: ~1e-4)


def arm_overrides(arm: str) -> list[str]:
    """`loss[:form][/draw]` -> dotted overrides."""
    spec, _, draw = arm.partition("/")
    loss, _, form = spec.partition(":")
    out = [f"objective.loss={loss}"]
    if form:
        out.append(f"objective.generator_form={form}")
    if draw:
        out.append(f"objective.generator_draw={draw}")
    return out


class _Losses(Callback):
    def __init__(self):
        self.windows: list[dict[str, float]] = []

    def on_train_step(self, step, metrics):
        self.windows.append(dict(metrics))


def run_one(arm: str, seed: int, args: dict) -> dict:
    torch.set_num_threads(args["threads"])
    cfg = load_config(CONFIG, [
        f"model.preset={args['preset']}", f"diffusion.T={args['T']}", f"train.lr_g={args['lr']}",
        f"train.steps={args['steps']}", f"train.batch_size={args['batch']}", f"train.seed={seed}",
        f"train.log_every={args['log_every']}", f"eval.every={args['steps']}", f"eval.n_samples={args['n_samples']}",
        "eval.metrics=[fd_fmnist]", "train.device=cpu", f"data.dir={args['data_dir']}", *arm_overrides(arm),
    ])
    losses = _Losses()
    row = {"arm": arm, "seed": seed, "form": cfg.objective.generator_form, "draw": cfg.objective.generator_draw}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            result = train(cfg, tmp, callbacks=[losses])
            metric = next(k for k in result.last_metrics if k.startswith("eval/fd_fmnist"))
            row.update(status="ok", metric=metric, fd=result.last_metrics[metric])
        except TrainingDiverged as err:
            row.update(status=f"diverged at step {err.step}", fd=math.nan)
    row["wall_s"] = time.perf_counter() - start
    train_windows = [w for w in losses.windows if "train/d_loss" in w]
    if train_windows:
        first, last = train_windows[0], train_windows[-1]
        for key in ("d_loss", "g_loss"):
            row[f"{key}_first"], row[f"{key}_last"] = first[f"train/{key}"], last[f"train/{key}"]
            values = [w[f"train/{key}"] for w in train_windows]
            row[f"{key}_range"] = max(values) - min(values)
        rates = [w["train/img_per_s"] for w in train_windows[1:]] or [first["train/img_per_s"]]
        row["step_s"] = args["batch"] / statistics.median(rates)
    return row


def study_rows(results_dir: str, study: str, T: int) -> list[dict]:
    """Rows in `run_one`'s format from a study's completed DDGAN trials at T (MLflow histories)."""
    from study.report.data import load_study
    from study.stores import mlflow_uri_for

    runs = load_study(mlflow_uri_for(results_dir, None), study)
    store = runs.store
    metric = runs.metric
    params = {r["run_id"]: p for r, p in zip(runs.raw.to_dict("records"), runs.run_values("params."), strict=True)}
    rows = []
    done = runs.summary[(runs.summary["method"] == "ddgan") & (runs.summary["T"] == T)
                        & (runs.summary["status"] == "completed")]
    for _, trial in done.sort_values(["seed", "loss"]).iterrows():
        p = params[trial["run_id"]]
        form, draw = p.get("objective.generator_form"), p.get("objective.generator_draw")
        row = {"arm": f"{trial['loss']}:{form}" + ("" if draw == "fresh" else f"/{draw}"), "seed": int(trial["seed"]),
               "form": form, "draw": draw, "status": "ok", "metric": metric, "fd": float(trial.get(metric, math.nan))}
        for key in ("d_loss", "g_loss"):
            history = sorted(store.get_metric_history(trial["run_id"], f"train/{key}"), key=lambda m: m.step)
            row[f"{key}_first"], row[f"{key}_last"] = history[0].value, history[-1].value
            row[f"{key}_range"] = max(m.value for m in history) - min(m.value for m in history)
        rates = [m.value for m in store.get_metric_history(trial["run_id"], "train/img_per_s")]
        row["step_s"] = int(float(p["train.batch_size"])) / statistics.median(rates)
        row["wall_s"] = float(trial["wall_min"]) * 60 if pd.notna(trial.get("wall_min")) else math.nan
        row["cell"] = (p.get("model.preset"), float(p["train.lr_g"]), int(float(p["train.steps"])),
                       int(float(p["train.batch_size"])))
        rows.append(row)
    return rows


def interval(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% t-interval (nan with fewer than 2 finite values)."""
    finite = [v for v in values if math.isfinite(v)]
    if len(finite) < 2:
        return (finite[0] if finite else math.nan), math.nan
    half = stats.t.ppf(0.975, len(finite) - 1) * statistics.stdev(finite) / math.sqrt(len(finite))
    return statistics.mean(finite), half


def summarise(rows: list[dict], arms: list[str]) -> list[dict]:
    out = []
    for arm in arms:
        mine = [r for r in rows if r["arm"] == arm]
        mean, half = interval([r["fd"] for r in mine])
        moved = sum(r.get("d_loss_range", 0) > MOVED and r.get("g_loss_range", 0) > MOVED for r in mine)
        out.append({"arm": arm, "form": mine[0]["form"], "draw": mine[0]["draw"], "seeds": len(mine),
                    "diverged": sum(r["status"] != "ok" for r in mine), "losses moved": f"{moved}/{len(mine)}",
                    "fd mean": mean, "95% CI +-": half,
                    "fd per seed": " ".join(f"{r['fd']:.1f}" for r in mine),
                    "step s (median)": statistics.median(r.get("step_s", math.nan) for r in mine)})
    return out


ARM = Name(r"[a-z0-9_]+(:[a-z_]+)?(/[a-z_]+)?", "an arm LOSS[:FORM][/DRAW] (e.g. tv:log, ns/shared)", "ns")


def jobs_needed(a: argparse.Namespace) -> bool:
    """Whether any arm trains here (the data directory is needed then only)."""
    return bool(a.arms) or (a.arms is None and not a.from_study)


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m benchmarks.objective_check", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arms", type=ARM, nargs="*", default=None, help="default: ns tv:log tv:nonsaturating (none with --from-study)")
    p.add_argument("--from-study", type=STUDY_NAME, default=None, help="also report this finished study's cells at --T (MLflow)")
    p.add_argument("--results-dir", type=InputPath("dir", missing_ok=True), default="results/runs", help="the study's state directory (--from-study)")
    p.add_argument("--seeds", type=SEED, nargs="+", default=[0, 1, 2])
    p.add_argument("--preset", choices=preset_names(), default="small")
    p.add_argument("--T", type=Number(int, 1, 10_000), default=4)
    p.add_argument("--lr", type=Number(float, 0, 10, low_open=True), default=1.6e-4)
    p.add_argument("--steps", type=Number(int, 1, 1_000_000), default=240)
    p.add_argument("--batch", type=Number(int, 1, 4096), default=64)
    p.add_argument("--n-samples", type=Number(int, 2, 1_000_000), default=1000)
    p.add_argument("--log-every", type=Number(int, 1, 1_000_000), default=20)
    p.add_argument("--jobs", type=Number(int, 1, 256), default=1)
    p.add_argument("--data-dir", type=InputPath("dir"), default=None)
    p.add_argument("--out", type=OutputDir(), default=None)
    return p


def main(argv=None) -> int | None:
    a = build_parser().parse_args(argv)  # every flag checked by its class (ddgan/cli.py)
    args = {"preset": a.preset, "T": a.T, "lr": a.lr, "steps": a.steps, "batch": a.batch,
            "n_samples": a.n_samples, "log_every": a.log_every, "threads": 1 if a.jobs > 1 else torch.get_num_threads(),
            "data_dir": str(resolve_data_dir(a.data_dir)) if jobs_needed(a) else None}
    arms = a.arms if a.arms is not None else ([] if a.from_study else ["ns", "tv:log", "tv:nonsaturating"])
    jobs = [(arm, seed) for seed in a.seeds for arm in arms]
    rows = []
    if jobs:
        with ProcessPoolExecutor(max_workers=a.jobs) as pool:
            rows = list(pool.map(run_one, [j[0] for j in jobs], [j[1] for j in jobs], [args] * len(jobs)))
    if a.from_study:
        found = study_rows(a.results_dir, a.from_study, a.T)
        rows += found
        arms = list(dict.fromkeys(r["arm"] for r in found)) + arms
    metric = next((r["metric"] for r in rows if "metric" in r), "eval/fd_fmnist")
    per_seed = markdown_table(rows, ["arm", "seed", "status", "d_loss_first", "d_loss_last", "d_loss_range",
                                     "g_loss_first", "g_loss_last", "g_loss_range", "fd", "step_s", "wall_s"])
    summary = markdown_table(summarise(rows, arms), ["arm", "form", "draw", "seeds", "diverged", "losses moved",
                                                       "fd mean", "95% CI +-", "fd per seed", "step s (median)"])
    cells = {r["cell"] for r in rows if "cell" in r}
    if not jobs and len(cells) == 1:  # only a study's rows: describe its cell
        a.preset, a.lr, a.steps, a.batch = next(iter(cells))
    source = f" (the study {a.from_study!r}'s cells)" if a.from_study and not jobs else ""
    text = "\n".join([
        header("Objective check", "cpu"),
        f"{a.preset} preset, T={a.T}, lr_g={a.lr:g}, {a.steps} steps at batch {a.batch} "
        f"({a.steps * a.batch:,} images){source}, `fd` = `{metric}` at the last step (CPU scale, not Inception FID).",
        "", summary, "", "Per seed:", "", per_seed])
    print(text)
    write_table(a.out, "objective_check.md", text)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
