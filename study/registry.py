"""Register an exported model in the MLflow Model Registry (`ddgan-<loss>-T<k>`, alias `champion`).

What is registered is the whole sampler (`study.sampler_module.NoiseToImages`: a noise
batch in, images out) in MLflow's "pt2" format (`torch.export`, no pickled code), so a
served or `mlflow.pyfunc`-loaded model generates images with no ddgan code installed.
In MLflow 3 `register_model` on a plain artifact folder fails; `mlflow.pytorch.log_model`
with "pt2" needs an `input_example` (a noise batch: two rows, so the batch dimension is
exported as dynamic) and takes ~10-16 s on CPU, so only exported models are logged,
with explicit `pip_requirements` (no slow inference of requirements).

The logged model lives in the study's experiment; the registered version points back
at the trial's run (`run_id`) and carries the trial's final metrics and identity as
tags. Registering the same export again reuses its version (matched by study, trial
and the weights' sha256). `champion` marks, per registered name, the version with the
best value of the study's metric among versions that report that same metric.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ddgan.export import load_export, sha256_file
from study.report_data import using_mlflow
from study.sampler_module import NoiseToImages
from study.tracking import quiet_run_urls, with_retry

CHAMPION = "champion"
MAX_UNROLLED_STEPS = 100  # beyond this a registered DDPM samples with DDIM at this many steps


@dataclass
class Registered:
    name: str
    version: str
    reused: bool
    sampling: str  # e.g. "ddgan T=4", "ddpm ddim S=10"


def registry_name(method: str, loss: str, T: int) -> str:
    """`ddgan-<loss>-T<k>` for DDGAN, `ddpm-T<k>` for DDPM."""
    return f"ddgan-{loss}-T{T}" if method == "ddgan" else f"ddpm-T{T}"


def build_sampler(export_dir: Path) -> tuple[NoiseToImages, str]:
    """The export's sampler as it was evaluated in the study (DDPM: its eval sampler and S)."""
    cfg, network = load_export(export_dir)
    if cfg.method == "ddgan":
        return NoiseToImages(network, cfg), f"ddgan T={cfg.diffusion.T}"
    steps = cfg.eval.respaced_steps or cfg.diffusion.T
    sampler = cfg.eval.sampler
    if steps > MAX_UNROLLED_STEPS:
        steps, sampler = MAX_UNROLLED_STEPS, "ddim"
    return NoiseToImages(network, cfg, steps=steps, sampler=sampler), f"ddpm {sampler} S={steps}"


def pip_requirements() -> list[str]:
    import mlflow

    return [f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}",
            f"mlflow=={mlflow.__version__}"]


def _tag_value(value: Any) -> str:
    return f"{value:.10g}" if isinstance(value, float) else str(value)


def _existing(client, name: str, study: str, trial_key: str, sha: str) -> str | None:
    try:
        versions = with_retry(client.search_model_versions, f"name='{name}'")
    except Exception:  # no such registered model yet
        return None
    for version in versions:
        tags = version.tags or {}
        if (tags.get("study"), tags.get("trial_key"), tags.get("export_weights_sha256")) == (study, trial_key, sha):
            return str(version.version)
    return None


def _log_sampler(uri: str, experiment_id: str, module: NoiseToImages, metadata: dict[str, Any]):
    """Log the sampler as a "pt2" model in the study's experiment (not MLflow's default one)."""
    import mlflow.pytorch

    example = module.draw_noise(2, torch.Generator().manual_seed(0)).numpy()  # (2, noise_dim)
    with using_mlflow(uri, experiment_id):
        return mlflow.pytorch.log_model(module, name="sampler", input_example=example, serialization_format="pt2",
                                        pip_requirements=pip_requirements(), metadata=metadata)


def register_export(uri: str, experiment_id: str, export_dir: Path, name: str, tags: dict[str, Any]) -> Registered:
    """Log the export's sampler and register it under `name` (or reuse an identical version)."""
    from mlflow.tracking import MlflowClient

    quiet_run_urls(uri)
    client = MlflowClient(tracking_uri=uri)
    sha = sha256_file(export_dir / "model.safetensors")
    module, sampling = build_sampler(export_dir)
    found = _existing(client, name, str(tags["study"]), str(tags["trial_key"]), sha)
    if found is not None:
        return Registered(name, found, True, sampling)
    metadata = {"noise_dim": module.noise_dim, "sampling": sampling, "output": "(B, 1, 28, 28) images in [-1, 1]",
                "noise_layout": "see study/sampler_module.py"}
    info = _log_sampler(uri, experiment_id, module, metadata)
    try:
        with_retry(client.create_registered_model, name, description=(
            "DDGAN/DDPM Fashion-MNIST sampler: input (B, noise_dim) float32 standard normal noise, "
            "output (B, 1, 28, 28) images in [-1, 1]. Noise layout: study/sampler_module.py."))
    except Exception as err:  # already registered
        if "already exists" not in str(err).lower() and "RESOURCE_ALREADY_EXISTS" not in str(err):
            raise
    all_tags = {**{k: _tag_value(v) for k, v in tags.items()}, "export_weights_sha256": sha, "sampling": sampling,
                "noise_dim": str(module.noise_dim)}
    with using_mlflow(uri):  # MLflow's registry store resolves "models:/m-..." with a default MlflowClient()
        version = with_retry(client.create_model_version, name, info.model_uri, run_id=str(tags["run_id"]),
                             tags=all_tags)
    return Registered(name, str(version.version), False, sampling)


def set_champions(uri: str, names: list[str], metric: str, mode: str) -> dict[str, str]:
    """Per name, alias `champion` on the version with the best `metric` tag; returns name -> version."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    chosen = {}
    for name in dict.fromkeys(names):
        scored = []
        for version in with_retry(client.search_model_versions, f"name='{name}'"):
            tags = version.tags or {}
            value = float(tags.get(metric, "nan")) if tags.get("metric") == metric else math.nan
            if math.isfinite(value):
                scored.append((value if mode == "min" else -value, int(version.version)))
        if scored:
            best = str(min(scored)[1])
            with_retry(client.set_registered_model_alias, name, CHAMPION, best)
            chosen[name] = best
    return chosen

