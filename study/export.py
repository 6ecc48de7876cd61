"""CLI: `python -m study.export [--study NAME] --top-k K --per cell|loss|overall --out exports/`.

Picks the best K completed training trials per cell, per loss (DDPM counts as the loss
`mse`) or overall, ranked by the study's metric (MLflow's final value), and writes one
self-contained directory per trial (`ddgan.export` format, verified on load):

    <out>/<study>/<trial_key>/model.safetensors   EMA weights of the sampling network
                              config.yaml         resolved config (rebuilds schedule + network)
                              metrics.json        final metrics, protocol, provenance, selection
                              manifest.json       sha256 of every file
    <out>/<study>/selection.json                  what was picked, why, and where it is registered

`python -m ddgan.sample --checkpoint <out>/<study>/<trial_key> --out grid.png` then samples
with no study and no MLflow. Unless --no-register, each exported model is also registered
in the MLflow Model Registry (see study/stores/registry.py; ~10-16 s per model on CPU).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ddgan.cli import STUDY_NAME, ArgumentParser, Number, OutputDir, run_cli
from ddgan.errors import CheckpointError, UsageError
from ddgan.export import load_export, verify_export, write_export
from study.flags import add_store_args
from study.report.data import StudyRuns, load_study, protocol_rows
from study.stores import mlflow_uri_for
from study.stores.mlflow_client import quiet_downloads
from study.stores.registry import register_export, registry_name, set_champions

SELECTIONS = ("cell", "loss", "overall")


@dataclass
class Exported:
    trial_key: str
    group: str
    rank: int
    value: float
    directory: Path
    registered: dict[str, Any] | None = None


@dataclass
class ExportResult:
    out: Path
    models: list[Exported] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    champions: dict[str, str] = field(default_factory=dict)


def select_trials(summary: pd.DataFrame, metric: str, mode: str, per: str, top_k: int) -> pd.DataFrame:
    """The top-k completed training trials per group; adds `group` and `rank` (1 = best)."""
    if per not in SELECTIONS:
        raise UsageError(f"--per {per!r}: choose one of {', '.join(SELECTIONS)}")
    if top_k < 1:
        raise UsageError(f"--top-k must be >= 1, got {top_k}")
    done = summary[(summary["phase"] == "train") & (summary["status"] == "completed") & summary[metric].notna()]
    done = done.assign(group=done["cell"] if per == "cell" else done["loss"] if per == "loss" else "overall")
    ordered = done.sort_values([metric, "trial_key"], ascending=[mode == "min", True], kind="stable")
    picked = ordered.groupby("group", sort=False).head(top_k).copy()
    picked["rank"] = picked.groupby("group", sort=False).cumcount() + 1
    return picked.reset_index(drop=True)


def _final_metrics(row: pd.Series) -> dict[str, float]:
    return {k: float(v) for k, v in row.items() if isinstance(k, str) and k.startswith(("eval/", "train/"))
            and v is not None and not (isinstance(v, float) and math.isnan(v))}


def export_metrics(runs: StudyRuns, row: pd.Series, per: str, protocol: list[dict]) -> dict[str, Any]:
    """metrics.json: the trial's final MLflow metrics, the metric protocol, provenance and selection."""
    return {
        "study": runs.study, "trial_key": row["trial_key"], "cell": row["cell"], "run_id": row["run_id"],
        "method": row["method"], "loss": row["loss"], "T": int(row["T"]), "lr": float(row["lr"]),
        "seed": int(row["seed"]), "steps": None if pd.isna(row["steps"]) else int(row["steps"]),
        "metric": runs.metric, "mode": runs.mode, "value": float(row[runs.metric]),
        "selection": {"per": per, "group": row["group"], "rank": int(row["rank"])},
        "metrics": _final_metrics(row),
        "protocol": [p for p in protocol if p["metric"] in row.index],
        "sampling": _sampling(row),
    }


def _sampling(row: pd.Series) -> dict[str, Any]:
    """How the metric was measured, as `ddgan.sample` flags (DDPM may be evaluated with S < T steps)."""
    steps = int(row["sampling_steps"]) if pd.notna(row["sampling_steps"]) else int(row["T"])
    if row["method"] == "ddgan" or steps == int(row["T"]) and (row["sampler"] or "ancestral") == "ancestral":
        return {"steps": steps, "sampler": row["sampler"], "ddgan_sample_flags": ""}
    return {"steps": steps, "sampler": row["sampler"],
            "ddgan_sample_flags": f"--steps {steps} --sampler {row['sampler'] or 'ancestral'}"}


def export_trial(runs: StudyRuns, row: pd.Series, directory: Path, metrics: dict[str, Any]) -> Path:
    """Download the trial's final EMA model from MLflow, verify it, and re-export it with full metrics."""
    quiet_downloads()
    with tempfile.TemporaryDirectory(prefix="export-") as tmp:
        try:
            source = Path(runs.store.download_artifacts(row["run_id"], "model", tmp))
        except Exception as err:  # MLflow raises its own types for a missing artifact
            raise CheckpointError(f"trial {row['trial_key']!r} logged no final model: {type(err).__name__}") from None
        cfg, network = load_export(source)  # verifies the trial's manifest first
        shutil.rmtree(directory, ignore_errors=True)
        write_export(directory, cfg, network.state_dict(), metrics)
    verify_export(directory)
    return directory


def _register(runs: StudyRuns, row: pd.Series, directory: Path) -> dict[str, Any]:
    name = registry_name(row["method"], row["loss"], int(row["T"]))
    tags = {"study": runs.study, "trial_key": row["trial_key"], "cell": row["cell"], "run_id": row["run_id"],
            "metric": runs.metric, "mode": runs.mode, **_final_metrics(row)}
    registered = register_export(runs.uri, runs.experiment_id, directory, name, tags)
    return {"name": registered.name, "version": registered.version, "reused": registered.reused,
            "sampling": registered.sampling}


def export_study(mlflow_uri: str, study: str | None, per: str, top_k: int, out: str | Path,
                 register: bool = True) -> ExportResult:
    """Select, export (and register) the best trials; writes `<out>/<study>/selection.json`."""
    runs = load_study(mlflow_uri, study)
    picked = select_trials(runs.summary, runs.metric, runs.mode, per, top_k)
    if picked.empty:
        raise UsageError(f"study {runs.study!r} has no completed training trial with {runs.metric!r} yet")
    result = ExportResult(Path(out) / runs.study)
    protocol = protocol_rows(runs)
    for _, row in picked.iterrows():
        directory = result.out / row["trial_key"]
        try:
            export_trial(runs, row, directory, export_metrics(runs, row, per, protocol))
        except CheckpointError as err:
            result.skipped.append(f"{row['trial_key']}: {err}")
            continue
        model = Exported(row["trial_key"], str(row["group"]), int(row["rank"]), float(row[runs.metric]), directory)
        if register:
            model.registered = _register(runs, row, directory)
        result.models.append(model)
    if register and result.models:
        names = [m.registered["name"] for m in result.models]
        result.champions = set_champions(runs.uri, names, runs.metric, runs.mode)
    _write_selection(result, runs, per, top_k)
    return result


def _write_selection(result: ExportResult, runs: StudyRuns, per: str, top_k: int) -> None:
    doc = {"study": runs.study, "metric": runs.metric, "mode": runs.mode, "per": per, "top_k": top_k,
           "champions": result.champions, "skipped": result.skipped,
           "models": [{"trial_key": m.trial_key, "group": m.group, "rank": m.rank, "value": m.value,
                       "directory": m.directory.name, "registered": m.registered} for m in result.models]}
    result.out.mkdir(parents=True, exist_ok=True)
    (result.out / "selection.json").write_text(json.dumps(doc, indent=2))


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m study.export", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study", default=None, type=STUDY_NAME, help="study name (default: the only study in the store)")
    p.add_argument("--top-k", type=Number(int, 1, 10_000), required=True, help="how many trials per group")
    p.add_argument("--per", required=True, choices=SELECTIONS, help="group: each cell, each loss, or overall")
    p.add_argument("--out", default="exports", type=OutputDir(), help="output directory (default: exports)")
    add_store_args(p)
    p.add_argument("--no-register", action="store_true", help="write the export directories only")
    return p


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    uri = mlflow_uri_for(args.results_dir, args.mlflow_uri)
    result = export_study(uri, args.study, args.per, args.top_k, args.out, register=not args.no_register)
    for model in result.models:
        where = f" -> registered {model.registered['name']} v{model.registered['version']}" if model.registered else ""
        print(f"{model.group} #{model.rank}: {model.trial_key} ({model.value:.4g}) in {model.directory}{where}")
    for name, version in result.champions.items():
        print(f"alias {name}@champion -> version {version}")
    for note in result.skipped:
        print(f"skipped: {note}")
    print(f"sample one: python -m ddgan.sample --checkpoint {result.models[0].directory} --out samples.png"
          if result.models else "nothing exported")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
