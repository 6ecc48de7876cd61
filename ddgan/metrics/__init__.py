"""Evaluation: Frechet distances (Inception FID, Fashion-MNIST classifier FD), KID, sample grids.

    from ddgan.metrics import build_evaluator, frechet_distance, get_extractor, reference_stats

Modules: `frechet` (distance, feature stats), `kid`, `inception` (clean-fid network and
weights), `fmnist_classifier` / `train_classifier` (the cheap domain metric),
`extractors` (one interface), `reference` (cached real-image statistics), `grid`
(PNG grids), `evaluator` (what the trainer calls).
"""

from ddgan.metrics.evaluator import Evaluator, build_evaluator, metric_name, prepare_reference
from ddgan.metrics.extractors import FeatureExtractor, TestExtractor, get_extractor
from ddgan.metrics.frechet import feature_stats, frechet_distance
from ddgan.metrics.grid import save_grid
from ddgan.metrics.kid import kernel_distance
from ddgan.metrics.reference import reference_features, reference_stats

__all__ = [
    "Evaluator",
    "FeatureExtractor",
    "TestExtractor",
    "build_evaluator",
    "feature_stats",
    "frechet_distance",
    "get_extractor",
    "kernel_distance",
    "metric_name",
    "prepare_reference",
    "reference_features",
    "reference_stats",
    "save_grid",
]
