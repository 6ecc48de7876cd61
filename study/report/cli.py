"""CLI: `python -m study.report [--study NAME] [--out results/NAME]` — tables and figures from MLflow.

Writes into --out (default `results/<study>`, the curated report; the run's state stays
under --state-dir): summary.csv (one row per trial),
best_by_cell.csv (per cell the best learning rate; mean and 95% interval over seeds),
REPORT.md and the figures. Works on a study that is still running or partly pruned:
REPORT.md then lists what is missing. Reads only; never changes a run. A hand-written
`discussion.md` in --out, if present, becomes REPORT.md's "Discussion" section.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence

from ddgan.cli import STUDY_NAME, ArgumentParser, OutputDir
from study.flags import add_store_args
from study.report.build import build_report
from study.stores import mlflow_uri_for
from study.stores.uris import REPORTS_DIR


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m study.report", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study", default=None, type=STUDY_NAME, help="study name (default: the only study in the store)")
    p.add_argument("--out", default=None, type=OutputDir(), help=f"output directory (default: {REPORTS_DIR}/<study>)")
    add_store_args(p)
    return p


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    uri = mlflow_uri_for(args.results_dir, args.mlflow_uri)
    command = shlex.join(["python", "-m", "study.report", *(sys.argv[1:] if argv is None else argv)])
    report = build_report(uri, args.study, args.out, args.results_dir, command)
    print(f"wrote {len(report.files)} files to {report.out}: " + ", ".join(p.name for p in report.files))
    for note in report.missing:
        print(f"missing: {note}")
    return 0
