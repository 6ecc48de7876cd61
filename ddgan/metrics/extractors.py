"""Feature extractors behind one interface: Inception (FID), the Fashion-MNIST classifier, a test one.

Every extractor takes images as uint8 (N, 1, 28, 28) or float in [-1, 1] (quantised
to uint8 first, so generated and real images are prepared identically) and returns
float32 features (N, D). Its `name`, `mode`, `weights_sha256`, `device` type and
`precision` go into the cache key of the reference statistics and into the tags of
every metric it produces.

Numerics are set, not inherited: features are computed in true fp32 on every device
(`fp32_numerics`: no autocast, cuDNN and matmul TF32 off while extracting), so a
reference computed on a GPU and generated images scored on it meet the same arithmetic,
whatever the training or sampling code set around it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ddgan.errors import UsageError
from ddgan.metrics.grid import to_uint8

EXTRACTOR_NAMES = ("inception", "fmnist", "test-extractor")


@contextlib.contextmanager
def fp32_numerics(device: torch.device) -> Iterator[None]:
    """True fp32 on `device` inside the block: autocast off, TF32 off for cuDNN and matmul."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.autocast(device.type, enabled=False):
            yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


class FeatureExtractor:
    """Base class: subclasses set the attributes and implement `_batch_features`."""

    name: str = ""
    mode: str = ""  # how pixels are prepared, e.g. "clean" (clean-fid's protocol)
    weights_sha256: str = ""
    feature_dim: int = 0
    precision: str = "fp32"  # the arithmetic of the features (see fp32_numerics)

    def __init__(self, device: torch.device | str = "cpu", batch_size: int = 256):
        self.device = torch.device(device)
        self.batch_size = int(batch_size)

    def _batch_features(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 1, 28, 28) on the CPU -> float (B, D)."""
        raise NotImplementedError

    @torch.inference_mode()
    def features(self, images: torch.Tensor | np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """Images (N, 1, 28, 28) uint8, or float in [-1, 1] -> float32 features (N, D)."""
        x = to_uint8(images)  # (N, 1, 28, 28) uint8, CPU
        step = batch_size or self.batch_size
        with fp32_numerics(self.device):
            out = [self._batch_features(x[start : start + step]).float().cpu() for start in range(0, len(x), step)]
        return torch.cat(out).numpy() if out else np.zeros((0, self.feature_dim), np.float32)

    def describe(self) -> dict[str, str | int]:
        """The extractor's identity, for tags and cache metadata (device: its type, "cpu" or "cuda")."""
        return {"extractor": self.name, "mode": self.mode, "weights_sha256": self.weights_sha256,
                "feature_dim": self.feature_dim, "device": self.device.type, "precision": self.precision}


class TestExtractor(FeatureExtractor):
    """Deterministic tiny extractor for tests: 4x4 average pooling -> 49 features in [0, 1].

    No weights, no network. Its metrics are named `fd_test-extractor_<n>`: never FID.
    """

    __test__ = False  # not a pytest test class
    name = "test-extractor"
    mode = "avgpool4x4"
    weights_sha256 = hashlib.sha256(b"ddgan test-extractor: 4x4 average pooling of x / 255, v1").hexdigest()
    feature_dim = 49

    def _batch_features(self, images_uint8: torch.Tensor) -> torch.Tensor:
        x = images_uint8.to(self.device, torch.float32) / 255.0  # (B, 1, 28, 28)
        return F.avg_pool2d(x, 4).flatten(1)  # (B, 49)


class FmnistExtractor(FeatureExtractor):
    """Penultimate (128-d) features of the committed Fashion-MNIST classifier: `fd_fmnist`."""

    name = "fmnist"
    mode = "classifier-penultimate"

    def __init__(self, device: torch.device | str = "cpu", batch_size: int = 256, weights_dir=None):
        super().__init__(device, batch_size)
        from ddgan.metrics import fmnist_classifier

        kwargs = {} if weights_dir is None else {"weights_dir": weights_dir}
        self.model, self.record = fmnist_classifier.load_classifier(self.device, **kwargs)
        self.weights_sha256 = self.record["sha256"]
        self.feature_dim = fmnist_classifier.FEATURE_DIM

    def _batch_features(self, images_uint8: torch.Tensor) -> torch.Tensor:
        from ddgan.data import to_model_range

        return self.model.features(to_model_range(images_uint8).to(self.device))  # (B, 128)


class InceptionExtractor(FeatureExtractor):
    """clean-fid's TF-Inception 2015-12-05 pool features (2048-d) in clean mode: FID and KID."""

    name = "inception"
    mode = "clean"
    feature_dim = 2048

    def __init__(self, device: torch.device | str = "cpu", batch_size: int = 64,
                 weights: str | os.PathLike | None = None, allow_download: bool = True,
                 expected_sha256: str | None = None):
        super().__init__(device, batch_size)
        from ddgan.metrics.inception import resolve_weights

        self.weights, self.network = resolve_weights(weights, self.device, allow_download, expected_sha256)
        self.weights_sha256 = self.weights.sha256

    def _batch_features(self, images_uint8: torch.Tensor) -> torch.Tensor:
        from ddgan.metrics.inception import resize_for_inception

        return self.network(resize_for_inception(images_uint8))  # (B, 2048)

    def describe(self) -> dict[str, str | int]:
        return {**super().describe(), "weights_source": self.weights.source,
                "weights_layout": self.weights.layout, "weights_file": self.weights.path.name}


def get_extractor(name: str, device: torch.device | str = "cpu", weights: str | os.PathLike | None = None,
                  batch_size: int | None = None, weights_sha256: str | None = None) -> FeatureExtractor:
    """Build an extractor by name: "inception", "fmnist" or "test-extractor".

    weights: Inception weights file (else $DDGAN_FID_WEIGHTS, then the search in
    `ddgan.metrics.inception`), or the folder of the classifier weights for "fmnist".
    weights_sha256: Inception only, the content the file must have (a study's trials).
    """
    sized = {} if batch_size is None else {"batch_size": batch_size}
    if name == "inception":
        return InceptionExtractor(device, weights=weights, expected_sha256=weights_sha256, **sized)
    if name == "fmnist":
        return FmnistExtractor(device, weights_dir=weights, **sized)
    if name == "test-extractor":
        return TestExtractor(device, **sized)
    raise UsageError(f"unknown feature extractor {name!r}; valid: {', '.join(EXTRACTOR_NAMES)}")
