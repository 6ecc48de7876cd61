"""Reference statistics of the real images, computed once and cached.

One cache entry per (extractor, mode, weights sha256, device type, precision, split, N,
content of those images):
`<cache>/reference/<extractor>_<mode>_w<sha>_<device>-<precision>_<split>_<N>_d<sha>_<kind>.npz`
with `kind` = "stats" (mu, sigma: Frechet distances) or "features" (KID). The weights
are keyed by content, so two copies of one file share entries; features computed on
another device type or in another precision (a CUDA reference is not a CPU one) never do.
The entry's metadata records all of it, and the host and process that computed it. The cache
lives in `$DDGAN_CACHE_DIR` or `~/.cache/ddgan`, never in clean-fid's site-packages
folder (which its `make_custom_stats` writes into and a reinstall wipes). Files are
written to a temporary name and renamed, so a crash never leaves a broken entry.
The study driver fills the cache once before trials start
(`ddgan.metrics.evaluator.prepare_reference`).

The reference set is the first N images of the split (Fashion-MNIST is stored in
random order); N = None means the whole split.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from pathlib import Path

import numpy as np

from ddgan.metrics.digest import sha256_bytes
from ddgan.metrics.extractors import FeatureExtractor
from ddgan.metrics.frechet import feature_stats

CACHE_ENV = "DDGAN_CACHE_DIR"
FORMAT_VERSION = 2  # 2: device type and precision in the key and the metadata
log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """$DDGAN_CACHE_DIR, else ~/.cache/ddgan."""
    return Path(os.environ.get(CACHE_ENV) or "~/.cache/ddgan").expanduser()


def reference_images(data_dir: str | os.PathLike, split: str, n: int | None = None):
    """(uint8 images (N, 1, 28, 28), sha256 of their bytes): the first n of the split."""
    import torch

    from ddgan.data import load_fashion_mnist
    from ddgan.errors import ConfigError

    images, _ = load_fashion_mnist(data_dir, split)  # (N, 28, 28) uint8
    if n is not None:
        if not 2 <= n <= len(images):
            raise ConfigError(f"reference size {n} must be in 2..{len(images)} for the {split} split")
        images = images[:n]
    images = torch.as_tensor(images).unsqueeze(1).contiguous()  # (N, 1, 28, 28)
    return images, sha256_bytes(images.numpy().tobytes())


def _cache_path(cache_dir: Path, extractor: FeatureExtractor, split: str, n: int, data_sha: str, kind: str) -> Path:
    identity = extractor.describe()
    numerics = f"{identity['device']}-{identity['precision']}"
    name = f"{extractor.name}_{extractor.mode}_w{extractor.weights_sha256[:12]}_{numerics}_{split}_{n}_d{data_sha[:12]}"
    return cache_dir / "reference" / f"{name}_{kind}.npz"


def _save(path: Path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        np.savez(handle, **arrays, meta=np.array(json.dumps(meta, sort_keys=True)))
    os.replace(tmp, path)


def _load(path: Path) -> tuple[dict[str, np.ndarray], dict] | None:
    """The cached arrays and metadata, or None when absent or unreadable (then recomputed)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files if key != "meta"}
            meta = json.loads(str(data["meta"]))
    except (OSError, ValueError, KeyError, EOFError) as err:
        log.warning("ignoring unreadable reference cache %s (%s)", path, err)
        return None
    return (arrays, meta) if meta.get("format_version") == FORMAT_VERSION else None


def _cached(extractor: FeatureExtractor, data_dir, split: str, n: int | None, cache_dir, kind: str):
    images, data_sha = reference_images(data_dir, split, n)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = _cache_path(cache_dir, extractor, split, len(images), data_sha, kind)
    hit = _load(path)
    if hit is not None:
        arrays, meta = hit
        return arrays, {**meta, "from_cache": True, "path": str(path)}
    start = time.perf_counter()
    log.info("computing %s reference %s of %d %s images -> %s", extractor.name, kind, len(images), split, path)
    features = extractor.features(images)  # (N, D)
    if kind == "stats":
        mu, sigma = feature_stats(features)
        arrays = {"mu": mu, "sigma": sigma}
    else:
        arrays = {"features": features.astype(np.float32)}
    meta = {**extractor.describe(), "split": split, "n": len(images), "data_sha256": data_sha,
            "kind": kind, "seconds": round(time.perf_counter() - start, 2), "format_version": FORMAT_VERSION,
            "computed_by": f"{platform.node()} pid {os.getpid()}"}
    _save(path, arrays, meta)
    return arrays, {**meta, "from_cache": False, "path": str(path)}


def reference_stats(extractor: FeatureExtractor, data_dir: str | os.PathLike, split: str = "train",
                    n: int | None = None, cache_dir: str | os.PathLike | None = None):
    """(mu (D,), sigma (D, D), meta) of the first n images of `split` (all when n is None); cached.

    meta: extractor, mode, weights_sha256, feature_dim, device, precision, split, n, data_sha256,
    computed_by, path, from_cache (False when computed by this call).
    """
    arrays, meta = _cached(extractor, data_dir, split, n, cache_dir, "stats")
    return arrays["mu"], arrays["sigma"], meta


def reference_features(extractor: FeatureExtractor, data_dir: str | os.PathLike, split: str = "train",
                       n: int | None = None, cache_dir: str | os.PathLike | None = None):
    """(features float32 (N, D), meta) of the first n images of `split`; cached (used by KID)."""
    arrays, meta = _cached(extractor, data_dir, split, n, cache_dir, "features")
    return arrays["features"], meta
