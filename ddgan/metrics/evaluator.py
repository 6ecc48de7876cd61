"""The evaluator the trainer calls every `eval.every` steps.

    evaluator = build_evaluator(cfg.eval, data_dir, device)
    metrics, artifacts = evaluator(sample_fn, step, out_dir, final=False)

`sample_fn(n, torch_generator) -> (images (n, 1, 28, 28) in [-1, 1], nfe)` samples
from the EMA weights. The evaluator seeds one `torch.Generator` on its device with
`eval.seed` and draws batches of `eval.batch_size` in order, so every trial (and
every evaluation of one trial) on one device type is scored on the same noise; the
noise is drawn where the network runs (CPU and CUDA streams differ: see
`ddgan.sampler`). Sampling runs under `sampling_numerics` with `eval.sample_precision`
(fp32 by default; tf32, bf16) and `eval.compile_sampler` (off by default); both, and the
device type, are part of the protocol. Each call reports
`eval/nfe`, `eval/sample_ms_per_image`, writes `samples_step{step:07d}.png`
(a `grid_size` x `grid_size` grid) and computes the metrics named in
`eval.metrics` (plus `eval.final_metrics` at `final_n_samples` when final=True):

    "fd_fmnist"        -> eval/fd_fmnist_<n>         Frechet distance, classifier features
    "fid_inception"    -> eval/fid_inception_<n>     FID, clean-fid protocol
    "kid_inception"    -> eval/kid_inception_<n>     KID, seeded subsets
    "fd_test-extractor", "kid_fmnist", ...           any kind x extractor, except FID
                                                     which is Inception's alone

`<n>` is the sample count ("2k", "10k", "256"). A final Frechet metric on N >= 4,096 samples is
also logged at N/2 and as FID-infinity (`eval/fid_inception_inf`, the 1/N fit of Chong & Forsyth). `evaluator.protocol()` holds each
metric's extractor, weights sha256, mode, sample count and reference set.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ddgan.errors import ConfigError, TrainingDiverged
from ddgan.metrics.extractors import EXTRACTOR_NAMES, FeatureExtractor, get_extractor
from ddgan.metrics.fid_infinity import MIN_FID_SAMPLES, fid_at_counts, fit_fid_infinity
from ddgan.metrics.frechet import feature_stats, frechet_distance
from ddgan.metrics.grid import save_grid, to_uint8
from ddgan.metrics.kid import DEFAULT_SUBSET_SIZE, DEFAULT_SUBSETS, kernel_distance
from ddgan.metrics.reference import reference_features, reference_stats
from ddgan.sampler import sampling_numerics

KINDS = ("fd", "fid", "kid")
INCEPTION_BATCH = 64  # 299x299 activations: keep Inception batches small on any device
KID_REFERENCE_CAP = 10_000  # reference features kept for KID (10k x 2048 float32 = 82 MB)


def count_label(n: int) -> str:
    """10000 -> "10k", 2000 -> "2k", 256 -> "256"."""
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def metric_name(kind: str, extractor: str, n: int) -> str:
    """("fid", "inception", 10000) -> "eval/fid_inception_10k"."""
    return f"eval/{kind}_{extractor}_{count_label(n)}"


def valid_metric_specs() -> list[str]:
    return [f"{k}_{e}" for k in KINDS for e in EXTRACTOR_NAMES if (k == "fid") == (e == "inception") or k == "kid"]


def parse_metric(spec: str) -> tuple[str, str]:
    """"fd_fmnist" -> ("fd", "fmnist"); unknown or mislabelled (e.g. "fid_fmnist") -> ConfigError."""
    kind, _, extractor = spec.partition("_")
    if spec not in valid_metric_specs():
        hint = " (FID means Inception features; use fd_<extractor> for others)" if kind == "fid" else ""
        raise ConfigError(f"eval: unknown metric {spec!r}{hint}; valid: {', '.join(valid_metric_specs())}")
    return kind, extractor


@dataclass(frozen=True)
class MetricSpec:
    kind: str  # fd | fid | kid
    extractor: str
    n: int  # generated samples
    final_only: bool = False

    @property
    def name(self) -> str:
        return metric_name(self.kind, self.extractor, self.n)


def metric_specs(eval_cfg, final: bool) -> list[MetricSpec]:
    """The metrics one evaluation computes (deduplicated by name, in config order)."""
    specs = [MetricSpec(*parse_metric(s), eval_cfg.n_samples) for s in eval_cfg.metrics]
    if final:
        n_final = eval_cfg.final_n_samples or eval_cfg.n_samples
        specs += [MetricSpec(*parse_metric(s), n_final, True) for s in eval_cfg.final_metrics]
    unique = {spec.name: spec for spec in reversed(specs)}
    return [unique[name] for name in dict.fromkeys(spec.name for spec in specs)]


def _extrapolated(spec: MetricSpec) -> bool:
    """A final Frechet metric on enough samples for FID-infinity (N/2 >= 2,048)."""
    return spec.final_only and spec.kind in ("fd", "fid") and spec.n >= 2 * MIN_FID_SAMPLES


def infinity_counts(n: int) -> tuple[int, int, int]:
    """The sample counts of the FID-infinity fit of a metric on n samples: N/2, 3N/4, N."""
    return (n // 2, 3 * n // 4, n)


class Evaluator:
    """Callable evaluator; build it with `build_evaluator`."""

    def __init__(self, eval_cfg, extractors: dict[str, FeatureExtractor], references: dict[str, dict],
                 device: torch.device | str = "cpu"):
        self.cfg, self.extractors, self.references = eval_cfg, extractors, references
        self.device = torch.device(device)  # where sample_fn samples: its noise is drawn there
        self.sample_precision = getattr(eval_cfg, "sample_precision", "fp32")
        self.compile_sampler = bool(getattr(eval_cfg, "compile_sampler", False))

    def generator(self) -> torch.Generator:
        """The evaluation noise: a generator on the sampling device seeded with eval.seed."""
        return torch.Generator(device=self.device).manual_seed(int(self.cfg.seed))

    def __call__(self, sample_fn, step: int, out_dir: str | os.PathLike, final: bool = False):
        """-> (metrics {name: float}, artifacts {"samples_grid": Path})."""
        specs = metric_specs(self.cfg, final)
        n_grid = self.cfg.grid_size**2
        images, nfe, seconds = self._sample(sample_fn, step, max([n_grid, *(s.n for s in specs)]))
        grid = save_grid(images[:n_grid], Path(out_dir) / f"samples_step{step:07d}.png", self.cfg.grid_size)
        metrics = {"eval/nfe": float(nfe), "eval/sample_ms_per_image": 1000.0 * seconds / len(images)}
        features: dict[str, np.ndarray] = {}
        for spec in specs:
            if spec.extractor not in features:
                n_max = max(s.n for s in specs if s.extractor == spec.extractor)
                features[spec.extractor] = self.extractors[spec.extractor].features(images[:n_max])
            metrics[spec.name] = self._score(spec, features[spec.extractor][: spec.n])
            if _extrapolated(spec):
                metrics.update(self._infinity(spec, features[spec.extractor][: spec.n]))
        return metrics, {"samples_grid": grid}

    def _infinity(self, spec: MetricSpec, features: np.ndarray) -> dict[str, float]:
        """A final Frechet metric on N >= 4,096 samples also at N/2 and extrapolated to N = infinity
        (Chong & Forsyth; `ddgan.metrics.fid_infinity`, counts N/2, 3N/4, N of the same samples):
        eval/<kind>_<extractor>_<N/2> and eval/<kind>_<extractor>_inf."""
        counts = infinity_counts(spec.n)
        reference = self.references[spec.name]
        fids = fid_at_counts(features, reference["mu"], reference["sigma"], counts)
        fit = fit_fid_infinity(counts, fids)
        return {metric_name(spec.kind, spec.extractor, counts[0]): fids[0],
                f"eval/{spec.kind}_{spec.extractor}_inf": fit.fid_inf}

    def _sample(self, sample_fn, step: int, n: int) -> tuple[torch.Tensor, int, float]:
        generator = self.generator()
        batches, nfe = [], 0
        start = time.perf_counter()
        with sampling_numerics(self.device, self.sample_precision, self.compile_sampler):
            for first in range(0, n, self.cfg.batch_size):
                x, nfe = sample_fn(min(self.cfg.batch_size, n - first), generator)  # (b, 1, 28, 28) in [-1, 1]
                try:
                    batches.append(to_uint8(x.float()))  # the copy to the CPU also waits for the device
                except ValueError:
                    raise TrainingDiverged(step, "generated samples") from None
        return torch.cat(batches), int(nfe), time.perf_counter() - start

    def _score(self, spec: MetricSpec, features: np.ndarray) -> float:
        reference = self.references[spec.name]
        if spec.kind == "kid":
            return kernel_distance(features, reference["features"], seed=int(self.cfg.seed))
        mu, sigma = feature_stats(features)
        return frechet_distance(mu, sigma, reference["mu"], reference["sigma"])

    def protocol(self) -> dict:
        """{"eval_seed", "reference_split", "sample_device", "sample_precision", "compile_sampler",
        "metrics": {name: {kind, extractor, weights_sha256, mode, device, precision, n, reference_split,
        reference_n, reference_data_sha256, final_only, ...}}}."""
        metrics = {}
        for spec in metric_specs(self.cfg, final=True):
            meta = self.references[spec.name]["meta"]
            entry = {"kind": spec.kind, **self.extractors[spec.extractor].describe(), "n": spec.n,
                     "final_only": spec.final_only, "reference_split": meta["split"],
                     "reference_n": meta["n"], "reference_data_sha256": meta["data_sha256"]}
            if spec.kind == "kid":
                entry.update(kid_subsets=DEFAULT_SUBSETS, kid_subset_size=min(DEFAULT_SUBSET_SIZE, spec.n, meta["n"]))
            metrics[spec.name] = entry
            if _extrapolated(spec):  # the same samples at N/2, and the 1/N fit over N/2, 3N/4, N
                counts = infinity_counts(spec.n)
                metrics[metric_name(spec.kind, spec.extractor, counts[0])] = {**entry, "n": counts[0],
                                                                              "subset_of": spec.name}
                metrics[f"eval/{spec.kind}_{spec.extractor}_inf"] = {
                    **entry, "n": spec.n, "fid_infinity_counts": "/".join(map(str, counts)),
                    "fid_infinity": "least squares FID_N = FID_inf + k/N (Chong & Forsyth 2020)"}
        return {"eval_seed": int(self.cfg.seed), "reference_split": self.cfg.reference_split,
                "sample_device": self.device.type, "sample_precision": self.sample_precision,
                "compile_sampler": self.compile_sampler, "metrics": metrics}

    def protocol_tags(self) -> dict[str, str]:
        """The protocol flattened to string tags: {"eval/fd_fmnist_2k.weights_sha256": "...", ...}."""
        protocol = self.protocol()
        tags = {"eval.seed": str(protocol["eval_seed"]), "eval.reference_split": protocol["reference_split"],
                "eval.sample_device": protocol["sample_device"], "eval.sample_precision": protocol["sample_precision"],
                "eval.compile_sampler": str(protocol["compile_sampler"])}
        for name, entry in protocol["metrics"].items():
            tags.update({f"{name}.{key}": str(value) for key, value in entry.items()})
        return tags


def _load_references(specs, extractors, data_dir, split, reference_n, cache_dir) -> dict[str, dict]:
    references = {}
    for spec in specs:
        extractor = extractors[spec.extractor]
        if spec.kind == "kid":
            n_kid = min(reference_n or KID_REFERENCE_CAP, KID_REFERENCE_CAP)
            feats, meta = reference_features(extractor, data_dir, split, n_kid, cache_dir)
            references[spec.name] = {"features": feats, "meta": meta}
        else:
            mu, sigma, meta = reference_stats(extractor, data_dir, split, reference_n, cache_dir)
            references[spec.name] = {"mu": mu, "sigma": sigma, "meta": meta}
    return references


def build_evaluator(eval_cfg, data_dir: str | os.PathLike | None, device: torch.device | str = "cpu",
                    cache_dir: str | os.PathLike | None = None, fid_weights: str | os.PathLike | None = None,
                    fid_weights_sha256: str | None = None) -> Evaluator:
    """Build the extractors and load (or compute and cache) every reference statistic now.

    Fails fast: unknown metric names, missing Inception weights or a missing data
    directory raise a UsageError here, not hours later at the final evaluation.
    data_dir None: $DDGAN_DATA_DIR (only needed when metrics are configured).
    `eval_cfg.reference_n` (if the config has it) limits the reference set; default: whole split.
    fid_weights_sha256: the Inception file must have this content (a study holds its trials to
    the file its references were computed with).
    """
    specs = metric_specs(eval_cfg, final=True)
    extractors = {}
    for name in dict.fromkeys(spec.extractor for spec in specs):
        inception = name == "inception"
        batch = min(eval_cfg.batch_size, INCEPTION_BATCH) if inception else eval_cfg.batch_size
        extractors[name] = get_extractor(name, device, weights=fid_weights if inception else None, batch_size=batch,
                                         weights_sha256=fid_weights_sha256 if inception else None)
    references = {}
    if specs:
        from ddgan.data import resolve_data_dir

        reference_n = getattr(eval_cfg, "reference_n", None)
        references = _load_references(specs, extractors, resolve_data_dir(data_dir), eval_cfg.reference_split,
                                      reference_n, cache_dir)
    return Evaluator(eval_cfg, extractors, references, device)


def prepare_reference(eval_cfg, data_dir: str | os.PathLike | None, device: torch.device | str = "cpu",
                      cache_dir: str | os.PathLike | None = None, fid_weights: str | os.PathLike | None = None,
                      fid_weights_sha256: str | None = None) -> dict:
    """Compute and cache every reference statistic `eval_cfg` needs; returns the protocol.

    A study computes them once before any trial starts, on the trials' device
    (`study.tuning.references`); trials then only read the cache.
    """
    return build_evaluator(eval_cfg, data_dir, device, cache_dir, fid_weights, fid_weights_sha256).protocol()
