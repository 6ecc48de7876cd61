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

from ddgan.checkpoint import check_weights, checkpoint_config, load_checkpoint, network_shapes
from ddgan.config import Config, save_config
from ddgan.errors import CheckpointError
from ddgan.metrics.digest import sha256_file
from ddgan.nets import build_networks, memory_format_for

EXPORT_FORMAT = 1
MANIFEST = "manifest.json"
EXPORT_FILES = ("model.safetensors", "config.yaml", "metrics.json")  # every one listed in the manifest


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
    files = {name: sha256_file(out / name) for name in EXPORT_FILES}
    manifest = {"format": EXPORT_FORMAT, "network": sampling_network_name(cfg), "files": files}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return out / MANIFEST


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, metrics: dict[str, Any] | None = None) -> Path:
    """Export the EMA weights of a training checkpoint."""
    state = load_checkpoint(checkpoint)  # verified: config, names and shapes of the weights
    cfg = Config.from_dict(state["config"])
    return write_export(out_dir, cfg, _ema_weights(state, cfg, f"checkpoint {str(checkpoint)!r}"), metrics)


def _ema_weights(state: dict[str, Any], cfg: Config, where: str) -> dict[str, torch.Tensor]:
    name = sampling_network_name(cfg)
    if name not in state["ema"]:
        raise CheckpointError(f"{where} has no EMA weights of the {name}")
    return state["ema"][name]


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
    if set(files) != set(EXPORT_FILES):  # an unlisted file would be read unverified
        raise CheckpointError(
            f"export {str(d)!r}: {MANIFEST} lists {sorted(files)}; an export lists exactly {list(EXPORT_FILES)}"
        )
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
    where = f"export {str(d)!r}"
    manifest = verify_export(d)
    try:
        raw = yaml.safe_load((d / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        raise CheckpointError(f"{where}: config.yaml is not readable YAML") from None
    cfg = checkpoint_config(raw, where)
    name = sampling_network_name(cfg)
    if manifest.get("network") != name:
        raise CheckpointError(
            f"{where}: {MANIFEST} names network {manifest.get('network')!r}, but a {cfg.method} export holds the {name!r}"
        )
    try:
        weights = load_file(str(d / "model.safetensors"))
    except Exception as err:  # safetensors' SafetensorError, OSError: a header that is not one
        raise CheckpointError(f"{where}: model.safetensors is unreadable ({type(err).__name__})") from None
    check_weights(weights, network_shapes(cfg)[name], f"{where}: model.safetensors")
    net = build_networks(cfg.model, cfg.method)[name]
    net.load_state_dict(weights)
    return cfg, net.to(device, memory_format=memory_format_for(cfg.train.channels_last, device)).eval()


def load_for_sampling(path: str | Path, device: str | torch.device = "cpu") -> tuple[Config, nn.Module]:
    """An export directory or a training checkpoint (file or run directory) -> (config, EMA network)."""
    p = Path(path)
    if p.is_dir() and (p / MANIFEST).exists():
        return load_export(p, device)
    if p.is_dir() and (p / "checkpoints").is_dir():
        p = p / "checkpoints"
    state = load_checkpoint(p)  # verified: config, names and shapes of the weights
    cfg = Config.from_dict(state["config"])
    net = build_networks(cfg.model, cfg.method)[sampling_network_name(cfg)]
    net.load_state_dict(_ema_weights(state, cfg, f"checkpoint {str(p)!r}"))
    return cfg, net.to(device, memory_format=memory_format_for(cfg.train.channels_last, device)).eval()
