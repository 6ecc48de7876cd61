"""Register an exported model in the MLflow Model Registry (`ddgan-<loss>-T<k>`, alias `champion`).

What is registered is the whole sampler (`ddgan.serving.NoiseToImages`: a noise
batch in, images out) in MLflow's "pt2" format (`torch.export`, no pickled code), so a
served or `mlflow.pyfunc`-loaded model generates images with no ddgan code installed.
The sampler is saved with `mlflow.pytorch.save_model` ("pt2" needs an `input_example`: a
noise batch of two rows, so the batch dimension is exported as dynamic; ~10-16 s on CPU,
so only exported models are logged, with explicit `pip_requirements`), then logged as an
MLflow 3 logged model of the study's experiment and registered from there, all through
`MlflowStore` (public client calls; no process-wide tracking URI or active experiment).

The logged model lives in the study's experiment; the registered version points back
at the trial's run (`run_id`) and carries the trial's final metrics and identity as
tags. Registering the same export again reuses its version (matched by study, trial
and the weights' sha256). `champion` marks, per registered name, the version with the
best value of the study's metric among versions that report that same metric.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pytorch
import numpy as np
import torch
from mlflow.entities import LoggedModelStatus

from ddgan.export import load_export, sha256_file
from ddgan.serving import NoiseToImages
from study.stores.mlflow_client import MlflowStore

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
    return [f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}",
            f"mlflow=={mlflow.__version__}"]


def _tag_value(value: Any) -> str:
    return f"{value:.10g}" if isinstance(value, float) else str(value)


def _existing(store: MlflowStore, name: str, study: str, trial_key: str, sha: str) -> str | None:
    try:
        versions = store.search_model_versions(f"name='{name}'")
    except Exception:  # no such registered model yet
        return None
    for version in versions:
        tags = version.tags or {}
        if (tags.get("study"), tags.get("trial_key"), tags.get("export_weights_sha256")) == (study, trial_key, sha):
            return str(version.version)
    return None


def _log_sampler(store: MlflowStore, experiment_id: str, module: NoiseToImages, metadata: dict[str, Any]):
    """Save the sampler as a "pt2" model and log it to the study's experiment; returns the LoggedModel."""
    example = module.draw_noise(2, torch.Generator().manual_seed(0)).numpy()  # (2, noise_dim)
    model = store.create_logged_model(experiment_id, name="sampler", model_type="pytorch")
    with tempfile.TemporaryDirectory(prefix="sampler-") as tmp:
        local = Path(tmp) / "sampler"
        mlflow.pytorch.save_model(module, str(local), input_example=example, serialization_format="pt2",
                                  pip_requirements=pip_requirements(), metadata=metadata)
        store.log_model_artifacts(model.model_id, str(local))
    return store.finalize_logged_model(model.model_id, LoggedModelStatus.READY)


def register_export(uri: str, experiment_id: str, export_dir: Path, name: str, tags: dict[str, Any]) -> Registered:
    """Log the export's sampler and register it under `name` (or reuse an identical version)."""
    store = MlflowStore(uri)
    sha = sha256_file(export_dir / "model.safetensors")
    module, sampling = build_sampler(export_dir)
    found = _existing(store, name, str(tags["study"]), str(tags["trial_key"]), sha)
    if found is not None:
        return Registered(name, found, True, sampling)
    metadata = {"noise_dim": module.noise_dim, "sampling": sampling, "output": "(B, 1, 28, 28) images in [-1, 1]",
                "noise_layout": "see ddgan/serving.py"}
    logged = _log_sampler(store, experiment_id, module, metadata)
    try:
        store.create_registered_model(name, description=(
            "DDGAN/DDPM Fashion-MNIST sampler: input (B, noise_dim) float32 standard normal noise, "
            "output (B, 1, 28, 28) images in [-1, 1]. Noise layout: ddgan/serving.py."))
    except Exception as err:  # already registered
        if "already exists" not in str(err).lower() and "RESOURCE_ALREADY_EXISTS" not in str(err):
            raise
    all_tags = {**{k: _tag_value(v) for k, v in tags.items()}, "export_weights_sha256": sha, "sampling": sampling,
                "noise_dim": str(module.noise_dim)}
    version = store.create_model_version(name, logged.artifact_location, run_id=str(tags["run_id"]),
                                         tags=all_tags, model_id=logged.model_id)
    return Registered(name, str(version.version), False, sampling)


def set_champions(uri: str, names: list[str], metric: str, mode: str) -> dict[str, str]:
    """Per name, alias `champion` on the version with the best `metric` tag; returns name -> version."""
    store = MlflowStore(uri)
    chosen = {}
    for name in dict.fromkeys(names):
        scored = []
        for version in store.search_model_versions(f"name='{name}'"):
            tags = version.tags or {}
            value = float(tags.get(metric, "nan")) if tags.get("metric") == metric else math.nan
            if math.isfinite(value):
                scored.append((value if mode == "min" else -value, int(version.version)))
        if scored:
            best = str(min(scored)[1])
            store.set_registered_model_alias(name, CHAMPION, best)
            chosen[name] = best
    return chosen

