"""A small Fashion-MNIST classifier whose penultimate features define `fd_fmnist`.

Inception features cost ~0.26 s per image on a 2-core CPU, far too slow for the
intermediate evaluations that prune a study. This CNN (about 0.1 M parameters)
is trained once by `python -m ddgan.metrics.train_classifier`; its weights are
committed beside a JSON record (sha256 of the weights file, seed, test accuracy,
the command). The Frechet distance between Gaussians fitted to its 128-d
penultimate features is reported as `eval/fd_fmnist_<n>` -- a domain distance,
never called FID.

Input: float (N, 1, 28, 28) in [-1, 1] (`ddgan.data.to_model_range` of the uint8 images).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ddgan.errors import CheckpointError
from ddgan.metrics.digest import sha256_file

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
WEIGHTS_FILE = "fmnist_classifier.pt"
RECORD_FILE = "fmnist_classifier.json"
ARCHITECTURE = "fmnist-cnn-v1"
FEATURE_DIM = 128
NUM_CLASSES = 10


def _block(c_in: int, c_out: int, kernel: int = 3, stride: int = 1) -> list[nn.Module]:
    conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False)
    return [conv, nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class FashionClassifier(nn.Module):
    """conv5x5/2 (32) / conv3x3 (64) / max-pool / conv3x3 (64) / 3x3 average -> linear 128 -> 10 logits.

    A strided first layer keeps it cheap (~6 M multiply-adds per image, ~30 s for 60,000
    reference images on two CPU cores); the 3x3 pooled map keeps the spatial layout that
    tells a shirt from a pullover. The 128-d ReLU output of the linear layer is the feature.
    """

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            *_block(1, 32, kernel=5, stride=2),  # (N, 32, 14, 14)
            *_block(32, 64), nn.MaxPool2d(2),  # (N, 64, 7, 7)
            *_block(64, 64),  # (N, 64, 7, 7)
            nn.AdaptiveAvgPool2d(3), nn.Flatten(),  # (N, 576)
            nn.Linear(64 * 9, FEATURE_DIM), nn.ReLU(inplace=True),  # (N, 128)
        )
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Linear(FEATURE_DIM, NUM_CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, 28, 28) in [-1, 1] -> (N, 128) penultimate features (post-ReLU)."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, 28, 28) in [-1, 1] -> (N, 10) logits."""
        return self.head(self.dropout(self.features(x)))


def read_record(weights_dir: str | Path = WEIGHTS_DIR) -> dict:
    """The JSON record written beside the weights: sha256, seed, test_accuracy, command, ..."""
    path = Path(weights_dir) / RECORD_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{path} not found; train the classifier with `python -m ddgan.metrics.train_classifier "
            f"--data-dir DIR --out {Path(weights_dir)}`"
        )
    return json.loads(path.read_text())


def load_classifier(
    device: torch.device | str = "cpu", weights_dir: str | Path = WEIGHTS_DIR
) -> tuple[FashionClassifier, dict]:
    """The committed classifier in eval mode on `device`, and its record.

    The weights file's sha256 must match the record (a re-trained or corrupted file
    would silently change every `fd_fmnist` value); it is loaded with `weights_only=True`.
    """
    weights_dir = Path(weights_dir)
    record = read_record(weights_dir)
    path = weights_dir / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} not found; re-train with `python -m ddgan.metrics.train_classifier`")
    digest = sha256_file(path)
    if digest != record.get("sha256"):
        raise CheckpointError(
            f"{path} has sha256 {digest[:16]}..., its record {RECORD_FILE} says "
            f"{str(record.get('sha256'))[:16]}...; restore the committed file or re-train"
        )
    if record.get("architecture") != ARCHITECTURE:
        raise CheckpointError(f"{path} holds architecture {record.get('architecture')!r}, expected {ARCHITECTURE!r}")
    model = FashionClassifier()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.to(device).eval(), record
