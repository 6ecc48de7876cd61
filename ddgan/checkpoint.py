"""One checkpoint format for training, resume, evaluation and export.

A checkpoint is a plain dict of tensors and Python scalars (no pickled modules,
no argparse namespaces), so it loads with `torch.load(weights_only=True)`:

    format_version  int
    step            int: optimiser steps completed
    config          the resolved config (Config.to_dict())
    networks        {name: state_dict}            trained weights
    ema             {name: state_dict}            averaged weights (used for sampling)
    optimizers      {name: state_dict}
    lr_schedulers   {name: state_dict}
    rng             torch / cuda / numpy / python / trainer / data generator states
    metrics         the last logged metrics

It is written to a temporary file in the same directory and renamed, so a crash
mid-write never leaves a broken "latest" checkpoint. `load_checkpoint` refuses a file
that is not what it claims before any network sees it: no `config` entry, a config that
does not validate, or weights whose names and shapes differ from the networks that
config builds (`check_weights`), or weights that are not finite.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ddgan.config import Config
from ddgan.errors import CheckpointError, ConfigError

# 2: the official DDGAN discriminator (minibatch stddev, DownConvBlocks), the latent mapping
# with n_mlp layers and per-loss generator forms; a version-1 checkpoint's networks differ.
FORMAT_VERSION = 2
_NAME = re.compile(r"^ckpt_(\d{7,})\.pt$")
_REQUIRED = ("step", "config", "networks", "ema")  # what sampling, export and resume all read


def checkpoint_path(directory: str | Path, step: int) -> Path:
    return Path(directory) / f"ckpt_{step:07d}.pt"


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Atomically write `state` (plus the format version) to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save({**state, "format_version": FORMAT_VERSION}, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with `weights_only=True`; any failure is a one-line CheckpointError."""
    path = Path(path)
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise CheckpointError(f"no checkpoint (ckpt_*.pt) in directory {str(path)!r}")
        path = found
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated zip, garbage bytes, disallowed pickle globals
        raise CheckpointError(f"checkpoint {str(path)!r} is unreadable or corrupt ({type(err).__name__})") from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        version = state.get("format_version") if isinstance(state, dict) else None
        raise CheckpointError(
            f"checkpoint {str(path)!r} has format version {version!r}; this code reads version {FORMAT_VERSION}"
        )
    verify_state(state, f"checkpoint {str(path)!r}")
    return state


def verify_state(state: dict[str, Any], where: str) -> Config:
    """The checkpoint's config, once its entries, config and weights are known to fit together."""
    missing = [key for key in _REQUIRED if key not in state]
    if missing:
        raise CheckpointError(f"{where} has no {', '.join(map(repr, missing))} entry; it was not written by ddgan.train")
    if not isinstance(state["step"], int) or state["step"] < 0:
        raise CheckpointError(f"{where} has step {state['step']!r}; expected a non-negative integer")
    cfg = checkpoint_config(state["config"], where)
    shapes = network_shapes(cfg)
    for group in ("networks", "ema"):
        nets = state[group]
        if not isinstance(nets, dict) or not nets:
            raise CheckpointError(f"{where}: {group!r} holds no networks")
        for name, weights in nets.items():
            if name not in shapes:
                raise CheckpointError(
                    f"{where}: {group!r} holds a network {name!r} that a {cfg.method} config does not build "
                    f"(valid: {', '.join(shapes)})"
                )
            check_weights(weights, shapes[name], f"{where}: {group}.{name}")
    return cfg


def check_resumable(state: dict[str, Any], cfg: Config, path: str | Path) -> None:
    """Refuse to resume `cfg` from `state` (already verified by `load_checkpoint`) when the run would differ.

    The sections that define the networks and the objective must be equal (the trainer checks the
    same), and the optimiser, scheduler and RNG states must be there.
    """
    where = f"checkpoint {str(path)!r}"
    missing = [key for key in ("optimizers", "lr_schedulers", "rng", "method_rng") if key not in state]
    if missing:
        raise CheckpointError(f"{where} has no {', '.join(map(repr, missing))} entry; it cannot be resumed")
    saved, wanted = Config.from_dict(state["config"]).to_dict(), cfg.to_dict()
    for section in ("method", "model", "diffusion", "objective"):
        if saved[section] != wanted[section]:
            changed = sorted(k for k in wanted[section] if saved[section].get(k) != wanted[section][k]) \
                if isinstance(wanted[section], dict) else []
            detail = f" ({', '.join(f'{section}.{k}' for k in changed[:3])})" if changed else ""
            raise CheckpointError(f"{where} was trained with a different {section} config{detail}; "
                                  "resume with the config it was trained with, or start a new --out")
    if set(state["networks"]) != set(network_shapes(cfg)):
        raise CheckpointError(f"{where} holds the networks {sorted(state['networks'])}; resuming needs "
                              f"{sorted(network_shapes(cfg))}")
    if not isinstance(state["optimizers"], dict) or set(state["optimizers"]) != set(state["networks"]):
        raise CheckpointError(f"{where}: its optimizer states do not match its networks; it cannot be resumed")


def checkpoint_config(raw: Any, where: str) -> Config:
    """A saved config (checkpoint entry or export's config.yaml) -> Config; anything off is a CheckpointError."""
    if not isinstance(raw, dict):
        raise CheckpointError(f"{where}: its config is a {type(raw).__name__}, not a mapping")
    try:
        return Config.from_dict(raw)
    except ConfigError as err:
        raise CheckpointError(f"{where} holds a config this code refuses ({err})") from None


def network_shapes(cfg: Config) -> dict[str, dict[str, tuple[int, ...]]]:
    """{network name: {tensor name: shape}} of the networks `cfg` builds (on the meta device: no memory)."""
    from ddgan.nets import build_networks

    try:
        with torch.device("meta"):
            nets = build_networks(cfg.model, cfg.method)
    except Exception:  # a layer that computes a table on the host: build it for real, once
        nets = build_networks(cfg.model, cfg.method)
    return {name: {k: tuple(v.shape) for k, v in net.state_dict().items()} for name, net in nets.items()}


def check_weights(weights: Any, shapes: dict[str, tuple[int, ...]], where: str) -> None:
    """Refuse a state dict whose names or shapes differ from `shapes`, or that holds NaN/inf, in one line."""
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise CheckpointError(f"{where} is not a mapping of tensor names to tensors")
    missing = [k for k in shapes if k not in weights]
    unexpected = [k for k in weights if k not in shapes]
    mismatched = [k for k in shapes if k in weights and tuple(weights[k].shape) != shapes[k]]
    if missing or unexpected or mismatched:
        if mismatched:
            k = mismatched[0]
            first = f"{k} is {tuple(weights[k].shape)}, the config builds {shapes[k]}"
        else:
            first = f"{(missing or unexpected)[0]} is {'missing' if missing else 'unexpected'}"
        raise CheckpointError(
            f"{where} does not match the network its config describes: {len(mismatched)} shape mismatches, "
            f"{len(missing)} missing and {len(unexpected)} unexpected tensors (first: {first})"
        )
    for k, v in weights.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise CheckpointError(f"{where} holds non-finite weights ({k})")


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Checkpoints in `directory`, oldest step first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(directory: str | Path) -> Path | None:
    paths = list_checkpoints(directory)
    return paths[-1] if paths else None


def prune_checkpoints(directory: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` checkpoints; returns what was removed."""
    paths = list_checkpoints(directory)
    removed = paths[:-keep] if keep > 0 else paths
    for p in removed:
        p.unlink(missing_ok=True)
    return removed


def capture_rng_state() -> dict[str, Any]:
    """Global RNG states as tensors and plain Python values (weights_only-safe)."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": py_version, "internal": list(py_internal), "gauss": py_gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _cpu_bytes(state: torch.Tensor) -> torch.Tensor:
    """An RNG state as the CPU ByteTensor the setters demand, wherever the loader mapped it."""
    return state.detach().to("cpu", torch.uint8)


def restore_rng_state(state: dict[str, Any]) -> None:
    """Set the global RNGs from `capture_rng_state()`'s dict.

    A checkpoint loaded with `map_location="cuda"` (or any mapping) holds these states as
    device tensors; torch's setters accept only CPU ByteTensors, so each is brought back
    here. CUDA states are restored for the devices both the checkpoint and this process
    have (a trial retried on a node with other visible devices still resumes).
    """
    torch.set_rng_state(_cpu_bytes(state["torch"]))
    np_state = state["numpy"]
    keys = np_state["keys"]
    keys = keys.detach().cpu().numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
    np.random.set_state(
        ("MT19937", keys.astype(np.uint32), int(np_state["pos"]), int(np_state["has_gauss"]),
         float(np_state["cached_gaussian"]))
    )
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = list(state["cuda"])[: torch.cuda.device_count()]
        for index, cuda_state in enumerate(cuda_states):
            torch.cuda.set_rng_state(_cpu_bytes(cuda_state), index)
