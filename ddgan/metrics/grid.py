"""Sample grids as PNG files, and the one uint8 conversion used for every metric."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def to_uint8(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Images -> uint8 (N, 1, H, W) on the CPU.

    uint8 input passes through; float input is read as [-1, 1] and quantised as a PNG
    writer would: round((x + 1) * 127.5), clipped to 0..255. Generated and real images
    both go through this, so every extractor sees identically prepared pixels.
    """
    x = torch.as_tensor(images).detach().cpu()
    if x.dim() == 3:
        x = x.unsqueeze(1)  # (N, H, W) -> (N, 1, H, W)
    if x.dim() != 4:
        raise ValueError(f"expected images (N, C, H, W) or (N, H, W), got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        return x
    if not x.is_floating_point():
        raise TypeError(f"expected uint8 or float images in [-1, 1], got {x.dtype}")
    if not torch.isfinite(x).all():
        raise ValueError("images contain NaN or inf")
    return ((x.float().clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)


def save_grid(images: torch.Tensor | np.ndarray, path: str | Path, nrow: int = 8) -> Path:
    """Write images (N, C, H, W) (float in [-1, 1] or uint8) as an `nrow`-wide PNG grid; atomic."""
    # torchvision (and torch._dynamo with it) loads here, not on import: a CLI's refusal need not wait
    from torchvision.utils import make_grid

    x = to_uint8(images)  # (N, C, H, W)
    if len(x) == 0:
        raise ValueError("save_grid needs at least one image")
    grid = make_grid(x, nrow=nrow, padding=2).permute(1, 2, 0).numpy()  # (H', W', 3): one channel is repeated
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture = Image.fromarray(grid[:, :, 0] if x.shape[1] == 1 else grid)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    picture.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path
