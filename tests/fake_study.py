"""A small study written straight into MLflow with `study.stores.tracking`, no Ray and no training.

It has what a real study has (parent run, one nested run per trial with the driver's
tags and the flattened config as params, metric histories, sample grids, a final EMA
model for completed training trials) plus what a small real run rarely produces in a
test: two seeds per learning rate, a pruned, a failed and a still-pending trial, and
known metric values, so tests can check the report's choices exactly.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ddgan.config import read_yaml, resolve_config
from ddgan.export import write_export
from ddgan.metrics.grid import save_grid
from ddgan.nets import build_networks
from study.stores import init_stores, resolve_stores
from study.stores.tracking import Tracker, TrialRun

REPO = Path(__file__).resolve().parents[1]
METRIC = "eval/fd_test-extractor_64"
FINAL_ONLY = "eval/kid_test-extractor_64"
STEPS = 20

# key -> (cell, method, loss, T, lr, seed, status, final metric, ms/image); ddpm respaced: sampler, S
TRIALS = {
    "ddgan-ns-T1-lr0.001-s0": ("ddgan-ns-T1", "ddgan", "ns", 1, 1e-3, 0, "completed", 30.0, 1.0),
    "ddgan-ns-T1-lr0.001-s1": ("ddgan-ns-T1", "ddgan", "ns", 1, 1e-3, 1, "completed", 34.0, 1.2),
    "ddgan-ns-T1-lr0.01-s0": ("ddgan-ns-T1", "ddgan", "ns", 1, 1e-2, 0, "completed", 25.0, 1.0),
    "ddgan-ns-T1-lr0.01-s1": ("ddgan-ns-T1", "ddgan", "ns", 1, 1e-2, 1, "completed", 45.0, 1.1),
    "ddgan-ns-T2-lr0.001-s0": ("ddgan-ns-T2", "ddgan", "ns", 2, 1e-3, 0, "completed", 20.0, 2.0),
    "ddgan-ns-T2-lr0.001-s1": ("ddgan-ns-T2", "ddgan", "ns", 2, 1e-3, 1, "completed", 22.0, 2.1),
    "ddgan-ns-T2-lr0.01-s0": ("ddgan-ns-T2", "ddgan", "ns", 2, 1e-2, 0, "pruned", 90.0, 2.0),
    "ddgan-ns-T2-lr0.01-s1": ("ddgan-ns-T2", "ddgan", "ns", 2, 1e-2, 1, "failed", None, None),
    "ddgan-hellinger-T1-lr0.001-s0": ("ddgan-hellinger-T1", "ddgan", "hellinger", 1, 1e-3, 0, "completed", 28.0, 1.0),
    "ddgan-hellinger-T2-lr0.001-s0": ("ddgan-hellinger-T2", "ddgan", "hellinger", 2, 1e-3, 0, "pending", None, None),
    "ddpm-T4-lr0.001-s0": ("ddpm-T4", "ddpm", "mse", 4, 1e-3, 0, "completed", 60.0, 3.0),
    "ddpm-T8-lr0.001-s0": ("ddpm-T8", "ddpm", "mse", 8, 1e-3, 0, "completed", 50.0, 10.0),
}
RESPACED = {  # key -> (sampler, S, metric, ms): sample trials of the T=8 model
    "ddpm-ancestral-S2-of-ddpm-T8-lr0.001-s0": ("ancestral", 2, 80.0, 2.5),
    "ddpm-ddim-S2-of-ddpm-T8-lr0.001-s0": ("ddim", 2, 70.0, 2.5),
}


def _config(method: str, loss: str, T: int, lr: float, seed: int, extra: tuple[str, ...] = ()):
    base = read_yaml(REPO / "configs" / f"{method}.yaml")
    overrides = ["model.preset=tiny", f"diffusion.T={T}", f"train.lr_g={lr!r}", f"train.seed={seed}",
                 f"train.steps={STEPS}", "eval.metrics=[fd_test-extractor]", "eval.n_samples=64", *extra]
    if method == "ddgan":
        overrides.append(f"objective.loss={loss}")
    return resolve_config(base, overrides)


def _curve(final: float, status: str) -> list[tuple[int, float]]:
    """Metric at steps 10 and 20 (pruned trials stop at 10)."""
    points = [(10, final * 1.5)]
    return points if status == "pruned" else [*points, (STEPS, final)]


def _log_trial(tracker: Tracker, run_id: str, cfg, status: str, final, ms, work: Path) -> None:
    run = TrialRun(tracker.uri, run_id)
    if status == "pending":
        return
    run.open(ray_trial="fake")
    nfe = float(cfg.eval.respaced_steps or cfg.diffusion.T)
    if final is not None:
        for step, value in _curve(final, status):
            run.log_metrics(step, {"train/g_loss": 1.0 / step, "train/img_per_s": 100.0 + step})
            run.log_metrics(step, {METRIC: value, "eval/nfe": nfe, "eval/sample_ms_per_image": ms})
            torch.manual_seed(step)
            grid = save_grid(torch.rand(16, 1, 28, 28) * 2 - 1, work / f"samples_step{step:07d}.png", 4)
            run.log_artifact(grid, "samples")
    if status == "completed":
        run.log_metrics(STEPS, {FINAL_ONLY: final / 100})  # a final-only metric, as fid_inception in real grids
        if cfg.eval.respaced_steps is None:  # a training trial: its final EMA model
            name = "generator" if cfg.method == "ddgan" else "denoiser"
            torch.manual_seed(0)
            net = build_networks(cfg.model, cfg.method)[name]
            write_export(work / "model", cfg, net.state_dict(), {METRIC: final})
            run.log_artifact(work / "model", "model")
        run.finish("completed", "FINISHED", final_step=STEPS)
    elif status == "pruned":
        run.finish("pruned", "KILLED", pruned_at_step=10)
    elif status == "failed":
        run.finish("failed", "FAILED", failure_reason="TrainingDiverged: d_loss is NaN at step 5", failed_step=5)


def build_fake_study(results_dir: Path, study: str = "fake") -> str:
    """Write the study into `<results_dir>/mlflow.db`; returns the tracking URI."""
    stores = resolve_stores(study, results_dir)
    init_stores(stores)
    tracker = Tracker(stores.mlflow_uri, stores.artifact_root)
    experiment = tracker.experiment(study)
    parent = tracker.parent_run(experiment, study, {"grid": "tests/fake", "metric": METRIC, "mode": "min",
                                                    "pruner": "median", "git_commit": "abc123",
                                                    "command": "python -m study.run --grid fake"})
    specs = []
    for key, (cell, method, loss, T, lr, seed, status, final, ms) in TRIALS.items():
        specs.append((key, cell, "train", method, loss, T, lr, seed, None, None, status, final, ms))
    for key, (sampler, S, final, ms) in RESPACED.items():
        specs.append((key, f"ddpm-{sampler}-S{S}", "sample", "ddpm", "mse", 8, 1e-3, 0, sampler, S, "completed",
                      final, ms))
    trials = []
    for key, cell, phase, method, loss, T, lr, seed, sampler, S, *_ in specs:
        extra = (f"eval.respaced_steps={S}", f"eval.sampler={sampler}") if S else ()
        tags = {"study": study, "cell": cell, "phase": phase, "method": method, "loss": loss, "T": T, "lr": lr,
                "seed": seed, "sampler": sampler, "sampling_steps": S, "total_steps": STEPS, "metric": METRIC}
        trials.append((key, tags, _config(method, loss, T, lr, seed, extra).to_dict()))
    run_ids = tracker.trial_runs(experiment, parent, trials)
    for (key, _tags, config), spec in zip(trials, specs, strict=True):
        from ddgan.config import Config

        work = results_dir / "work" / key
        _log_trial(tracker, run_ids[key], Config.from_dict(config), spec[10], spec[11], spec[12], work)
    tracker.finish_parent(parent, {"completed": 10, "pruned": 1, "failed": 1, "unfinished": 1})
    return stores.mlflow_uri
