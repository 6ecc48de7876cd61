"""Reference statistics computed where the trials run: one Ray task before the first trial.

A cluster's head node often has no GPU and few cores: the full grid's 60k-image Inception
reference is hours there and a minute or two on a GPU. So the driver hands the job to the
cluster as one Ray task with the resources of one trial (a whole GPU when trials get GPUs),
and the task computes on the device a trial of that config would use (`train.device`; "auto"
is CUDA when one is visible). Features are fp32 on every device and the cache entry records
its device type and precision, so the trials (same device type) hit it and nothing mixes.

The cache folder must be one every node sees (`--cache-dir` on shared storage): the task
writes it, the trials read it. The task also resolves the Inception weights on its node
and returns their absolute path and sha256, which every trial is then held to.
"""

from __future__ import annotations

import os
import platform
from typing import Any

import ray

from ddgan.config import Config
from ddgan.errors import UsageError
from ddgan.metrics.evaluator import build_evaluator

__all__ = ["compute_references", "distinct_eval_configs", "reference_resources", "run_reference_task"]


def distinct_eval_configs(configs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One resolved config per distinct (evaluation protocol, training device) that has metrics."""
    chosen: dict[tuple, dict[str, Any]] = {}
    for config in configs.values():
        cfg = Config.from_dict(config)
        eval_cfg = cfg.eval
        if not (eval_cfg.metrics or eval_cfg.final_metrics):
            continue
        key = (eval_cfg.metrics, eval_cfg.final_metrics, eval_cfg.n_samples, eval_cfg.final_n_samples,
               eval_cfg.reference_split, eval_cfg.reference_n, eval_cfg.batch_size, cfg.train.device)
        chosen.setdefault(key, config)
    return list(chosen.values())


def reference_resources(cpus_per_trial: float, gpus_per_trial: float) -> dict[str, float]:
    """Ray resources of the reference task: a trial's CPUs, and one whole GPU if trials use GPUs."""
    return {"num_cpus": float(cpus_per_trial), "num_gpus": 1.0 if gpus_per_trial > 0 else 0.0}


def compute_references(configs: list[dict[str, Any]], data_dir: str | None, cache_dir: str | None,
                       fid_weights: str | None = None, fid_weights_sha256: str | None = None) -> dict[str, Any]:
    """Fill the cache for every config (the body of the Ray task; callable directly).

    Returns where it ran ({"host", "pid", "devices"}) and the Inception weights it used
    ({"fid_weights": absolute path, "fid_weights_sha256"}; None when no metric needs them).
    """
    from ddgan.trainer import pick_device

    done: dict[str, Any] = {"host": platform.node(), "pid": os.getpid(), "devices": [],
                            "fid_weights": fid_weights, "fid_weights_sha256": fid_weights_sha256}
    for config in configs:
        cfg = Config.from_dict(config)
        device = pick_device(cfg.train.device)
        evaluator = build_evaluator(cfg.eval, data_dir, device, cache_dir, fid_weights, fid_weights_sha256)
        done["devices"].append(str(device))
        inception = evaluator.extractors.get("inception")
        if inception is not None:  # the file this node found: the trials are held to it
            done["fid_weights"], done["fid_weights_sha256"] = str(inception.weights.path), inception.weights_sha256
            fid_weights, fid_weights_sha256 = done["fid_weights"], done["fid_weights_sha256"]
    return done


def _reference_task(threads: int, *args) -> dict[str, Any]:
    import torch

    torch.set_num_threads(threads)  # a trial's CPUs, as the trials set theirs
    return compute_references(*args)


def run_reference_task(configs: list[dict[str, Any]], *, data_dir: str | None, cache_dir: str | None,
                       fid_weights: str | None, fid_weights_sha256: str | None, cpus_per_trial: float,
                       gpus_per_trial: float) -> dict[str, Any]:
    """`compute_references` as one Ray task with a trial's resources (Ray must be initialised)."""
    task = ray.remote(max_retries=1, **reference_resources(cpus_per_trial, gpus_per_trial))(_reference_task)
    try:
        return ray.get(task.remote(max(1, int(cpus_per_trial)), configs, data_dir, cache_dir, fid_weights,
                                   fid_weights_sha256))
    except ray.exceptions.RayTaskError as err:
        if isinstance(err.cause, UsageError):  # missing weights or data on the worker: the reason, not a trace
            raise UsageError(f"reference statistics (Ray task on a worker): {err.cause}") from None
        raise
