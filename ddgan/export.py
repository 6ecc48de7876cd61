"""Exported models: EMA weights + resolved config + metrics, verified by a sha256 manifest.

An export directory holds:

    model.safetensors   EMA weights of the sampling network (generator or denoiser)
    config.yaml         the resolved training config (rebuilds schedule and network)
    metrics.json        the trial's final metrics and protocol tags
    manifest.json       {"format": 1, "network": ..., "files": {name: sha256}}

`load_export` verifies every file against the manifest before reading any
weights, so a tampered or truncated file is refused. Nothing here needs the
study, Ray or MLflow: `python -m ddgan.sample --checkpoint EXPORT_DIR` works alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_file
from torch import nn

from ddgan.checkpoint import load_checkpoint
from ddgan.config import Config, save_config
from ddgan.errors import CheckpointError
from ddgan.metrics.digest import sha256_file
from ddgan.nets import build_networks

EXPORT_FORMAT = 1
MANIFEST = "manifest.json"


def sampling_network_name(cfg: Config) -> str:
    return "generator" if cfg.method == "ddgan" else "denoiser"


def write_export(out_dir: str | Path, cfg: Config, ema_state: dict[str, torch.Tensor],
                 metrics: dict[str, Any] | None = None) -> Path:
    """Write an export directory; returns its manifest path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in ema_state.items()}, str(out / "model.safetensors"))
    save_config(cfg, out / "config.yaml")
    (out / "metrics.json").write_text(json.dumps(metrics or {}, indent=2, sort_keys=True, default=str))
    files = {name: sha256_file(out / name) for name in ("model.safetensors", "config.yaml", "metrics.json")}
    manifest = {"format": EXPORT_FORMAT, "network": sampling_network_name(cfg), "files": files}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return out / MANIFEST


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, metrics: dict[str, Any] | None = None) -> Path:
    """Export the EMA weights of a training checkpoint."""
    state = load_checkpoint(checkpoint)
    cfg = Config.from_dict(state["config"])
    return write_export(out_dir, cfg, state["ema"][sampling_network_name(cfg)], metrics)


def verify_export(directory: str | Path) -> dict[str, Any]:
    """Check every file against the manifest; raise CheckpointError on anything off."""
    d = Path(directory)
    try:
        manifest = json.loads((d / MANIFEST).read_text())
        files = dict(manifest["files"])
    except (OSError, ValueError, KeyError, TypeError):
        raise CheckpointError(f"export {str(d)!r} has no readable {MANIFEST}") from None
    if manifest.get("format") != EXPORT_FORMAT:
        raise CheckpointError(f"export {str(d)!r} has format {manifest.get('format')!r}; expected {EXPORT_FORMAT}")
    for name, expected in files.items():
        path = d / name
        if not path.is_file():
            raise CheckpointError(f"export {str(d)!r} is missing {name}")
        if sha256_file(path) != expected:
            raise CheckpointError(f"export file {str(path)!r} does not match its sha256 in {MANIFEST} (tampered?)")
    return manifest


def load_export(directory: str | Path, device: str | torch.device = "cpu") -> tuple[Config, nn.Module]:
    """Verify, then rebuild the config and the EMA sampling network (eval mode)."""
    d = Path(directory)
    manifest = verify_export(d)
    cfg = Config.from_dict(yaml.safe_load((d / "config.yaml").read_text()))
    net = build_networks(cfg.model, cfg.method)[manifest["network"]]
    net.load_state_dict(load_file(str(d / "model.safetensors")))
    return cfg, net.to(device).eval()


def load_for_sampling(path: str | Path, device: str | torch.device = "cpu") -> tuple[Config, nn.Module]:
    """An export directory or a training checkpoint (file or run directory) -> (config, EMA network)."""
    p = Path(path)
    if p.is_dir() and (p / MANIFEST).exists():
        return load_export(p, device)
    if p.is_dir() and (p / "checkpoints").is_dir():
        p = p / "checkpoints"
    state = load_checkpoint(p)
    cfg = Config.from_dict(state["config"])
    name = sampling_network_name(cfg)
    net = build_networks(cfg.model, cfg.method)[name]
    net.load_state_dict(state["ema"][name])
    return cfg, net.to(device).eval()
