"""CLI: `python -m study.run --grid NAME|PATH [flags]` runs (or resumes) a study.

Embedded default: local Ray, and the run's state under --state-dir (default results/runs,
ignored by git): MLflow in sqlite:///<state>/mlflow.db, Optuna in <state>/<study>/optuna.db,
Ray storage in <state>/<study>/ray. Curated reports (`study.report`) go to results/<study>/,
never read as a run's state. On a cluster:
--address, --storage-path, --mlflow-uri, --optuna-storage; the same code.
Bad input: one line on stderr, exit code 2, nothing started or written.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence

from ddgan.cli import STUDY_NAME, ArgumentParser, InputPath, Number, OutputDir, run_cli
from study.flags import GridRef, MlflowUri, OptunaStorage, RayAddress, StoragePath
from study.prepare import StudyOptions, prepare
from study.stores.uris import DEFAULT_STATE_DIR
from study.summary import describe_plan


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m study.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", required=True, type=GridRef(), help="grid name in configs/grids (smoke, cpu, full) or a YAML path")
    p.add_argument("--study", default=None, type=STUDY_NAME, help="study name (default: the grid's name)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan and its cost estimate; start and write nothing")
    p.add_argument("--calibrate", action="store_true",
                   help="with --dry-run: time a few training steps here for the cost estimate (seconds to a minute)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted study")
    p.add_argument("--address", default=None, type=RayAddress(), help="Ray cluster: auto, host:port or ray://host:port")
    p.add_argument("--storage-path", default=None, type=StoragePath(), help="Ray storage (shared directory or s3://...)")
    p.add_argument("--mlflow-uri", default=None, type=MlflowUri(), help="MLflow tracking URI (http://host:5000, sqlite:///...)")
    p.add_argument("--optuna-storage", default=None, type=OptunaStorage(), help="Optuna storage URL (postgresql://..., sqlite:///...)")
    p.add_argument("--gpus-per-trial", type=Number(float, 0, 64), default=None, help="fractions pack several trials per GPU")
    p.add_argument("--cpus-per-trial", type=Number(float, 0, 1024, low_open=True), default=None)
    p.add_argument("--max-concurrent", type=Number(int, 1, 10_000), default=None)
    p.add_argument("--gpus", type=Number(int, 1, 100_000), default=None,
                   help="with --dry-run: price the run for N GPUs (default: this machine's; with --address, unknown: 1 assumed)")
    p.add_argument("--data-dir", default=None, type=InputPath("dir"), help="Fashion-MNIST IDX directory (else $DDGAN_DATA_DIR)")
    p.add_argument("--fid-weights", default=None, type=InputPath("file"), help="TorchScript Inception weights for the final FID")
    p.add_argument("--state-dir", "--results-dir", dest="results_dir", default=DEFAULT_STATE_DIR, type=OutputDir(),
                   help=f"the run's state: embedded stores, Ray folders, artifacts (default: {DEFAULT_STATE_DIR})")
    p.add_argument("--cache-dir", default=None, type=OutputDir(),
                   help="reference-statistics cache (default: $DDGAN_CACHE_DIR, else <state-dir>/.cache)")
    p.add_argument("--allow-local", action="store_true",
                   help="with --address: accept stores and folders on this node's disk (every node sees them)")
    p.add_argument("--quiet", action="store_true", help="no progress table")
    return p


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    options = StudyOptions(
        grid=args.grid, study=args.study, dry_run=args.dry_run, calibrate=args.calibrate, resume=args.resume, address=args.address,
        storage_path=args.storage_path, mlflow_uri=args.mlflow_uri, optuna_storage=args.optuna_storage,
        gpus_per_trial=args.gpus_per_trial, cpus_per_trial=args.cpus_per_trial,
        max_concurrent=args.max_concurrent, data_dir=args.data_dir, fid_weights=args.fid_weights,
        results_dir=args.results_dir, cache_dir=args.cache_dir, allow_local=args.allow_local, verbose=0 if args.quiet else 1,
        command=" ".join(["python -m study.run", *map(shlex.quote, sys.argv[1:] if argv is None else argv)]))
    if options.dry_run:  # validates everything, starts and writes nothing: Ray and MLflow are not even loaded
        print(describe_plan(prepare(options), gpus=args.gpus))
        return 0
    # the Ray Tune / MLflow machinery loads only when a study runs
    from study.driver import StudyInterrupted, run_study

    try:
        print(run_study(options))
    except StudyInterrupted as stopped:  # Ctrl-C: Ray stopped the trials; the summary so far, then 130
        print(stopped.text)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
