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
mid-write never leaves a broken "latest" checkpoint.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ddgan.errors import CheckpointError

FORMAT_VERSION = 1
_NAME = re.compile(r"^ckpt_(\d{7,})\.pt$")


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
    return state


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


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(
        ("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"], np_state["has_gauss"],
         np_state["cached_gaussian"])
    )
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
