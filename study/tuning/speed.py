"""Speed figures measured alone on the trials' device: one Ray task after the phases.

Trials share devices (`gpus_per_trial` 0.25 packs four on a GPU; CPU trials share cores), so
what they log (`train/img_per_s`, `eval/sample_ms_per_image`) is a packed figure. The report's
speed claims (the Pareto front of quality vs sampling time, training minutes) use `speed/*`
instead: every distinct speed configuration of the plan (network, method, T, sampling steps
and sampler, batch sizes, numerics) timed once by `ddgan.speed.measure_speed` in ONE Ray task
holding a whole GPU (when trials use GPUs) while no trial runs, so all figures come from the
same device, one configuration at a time. CPU trials on a one-node local Ray ran on the
driver's machine: there the driver times them itself, with a trial's thread count. Each trial's MLflow run gets its group's figures
(metrics at step 0, `speed.*` tags naming the device and protocol); a resumed study measures
only the groups not yet logged with the current protocol (`ddgan.speed.PROTOCOL`), so a
finished study resumed after the protocol changed is timed again.
"""

from __future__ import annotations

import json
import time
from typing import Any

import ray

from ddgan.config import Config
from study.grid import Plan

__all__ = ["CPU_SAMPLE_BATCH", "log_speed", "speed_groups", "speed_key"]

# On a CPU a sampling call's cost per image hardly depends on the batch: a small one keeps the
# slowest chain (DDPM, 1000 steps: seconds per image) affordable. On a GPU the eval batch is timed.
CPU_SAMPLE_BATCH = 16


def speed_key(config: dict[str, Any]) -> str:
    """What the speed depends on: not the seed, the learning rate or the loss's formula."""
    ev, train, objective = config["eval"], config["train"], dict(config["objective"])
    objective.pop("loss"), objective.pop("generator_form", None)
    objective["gradient_penalty"] = config["objective"]["loss"] == "wgan-gp"  # a double backward
    return json.dumps({
        "method": config["method"], "model": config["model"], "diffusion": config["diffusion"],
        "objective": objective,
        "train": {k: train[k] for k in ("batch_size", "device", "channels_last", "amp", "compile") if k in train},
        "eval": {k: ev.get(k) for k in ("batch_size", "respaced_steps", "sampler", "sample_precision",
                                        "compile_sampler")},
    }, sort_keys=True, default=str)


def speed_groups(plan: Plan) -> dict[str, tuple[dict[str, Any], list[str]]]:
    """speed key -> (one config of the group, the keys of its trials), in plan order."""
    groups: dict[str, tuple[dict[str, Any], list[str]]] = {}
    for spec in plan.trials:
        config = plan.configs[spec.key]  # a sample trial's holds its own S and sampler (eval.respaced_steps)
        groups.setdefault(speed_key(config), (config, []))[1].append(spec.key)
    return groups


def _measure_all(configs: list[dict[str, Any]], threads: int) -> list[dict[str, Any]]:
    """The Ray task: time each config in turn on this node's device."""
    import torch

    from ddgan.speed import measure_speed
    from ddgan.trainer import pick_device

    torch.set_num_threads(threads)
    out = []
    for raw in configs:
        cfg = Config.from_dict(raw)
        device = pick_device(cfg.train.device)
        batch = cfg.eval.batch_size if device.type == "cuda" else min(cfg.eval.batch_size, CPU_SAMPLE_BATCH)
        figures = measure_speed(cfg, device, batch)
        out.append({"metrics": figures.as_metrics(), "tags": figures.as_tags()})
    return out


def _single_node_here() -> bool:
    """The Ray cluster is one node, this machine (local Ray): CPU trials ran on this CPU."""
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    return len(nodes) == 1 and nodes[0].get("NodeManagerAddress") == ray.util.get_node_ip_address()


def _measured_here(configs: list[dict[str, Any]], threads: int) -> list[dict[str, Any]]:
    """`_measure_all` in this process, its torch thread count restored after."""
    import torch

    before = torch.get_num_threads()
    try:
        return _measure_all(configs, threads)
    finally:
        torch.set_num_threads(before)


def _logged_now(data) -> bool:
    """The run holds speed figures of the current protocol (an older protocol's are timed again)."""
    from ddgan.speed import PROTOCOL

    return "speed/sample_ms_per_image" in data.metrics and data.tags.get("speed.protocol") == PROTOCOL


def log_speed(plan: Plan, client, run_ids: dict[str, str], cpus_per_trial: float, gpus_per_trial: float) -> int:
    """Measure the groups not yet logged and log them to their trials' runs; -> groups measured."""
    from mlflow.entities import Metric, RunTag

    todo = [(config, keys) for config, keys in speed_groups(plan).values()
            if any(not _logged_now(client.get_run(run_ids[k]).data) for k in keys)]
    if not todo:
        return 0
    configs, threads = [config for config, _ in todo], max(1, int(cpus_per_trial))
    if gpus_per_trial == 0 and _single_node_here():
        results = _measured_here(configs, threads)  # the trials' CPU is this one: no worker to start
    else:
        task = ray.remote(max_retries=1, num_cpus=float(cpus_per_trial),
                          num_gpus=1.0 if gpus_per_trial > 0 else 0.0)(_measure_all)
        results = ray.get(task.remote(configs, threads))
    now_ms = int(time.time() * 1000)  # at step 0, the newest timestamp makes these the runs' latest values
    for (_, keys), result in zip(todo, results, strict=True):
        metrics = [Metric(name, float(value), now_ms, 0) for name, value in result["metrics"].items()]
        tags = [RunTag(name, value) for name, value in result["tags"].items()]
        for key in keys:
            client.log_batch(run_ids[key], metrics=metrics, tags=tags)
    return len(todo)
