"""The report, assembled: read the study (`data`), compute the tables (`tables`), draw the
figures (`figures`), list what is missing and write REPORT.md (`markdown`) and the CSVs."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from ddgan.errors import UsageError
from study.report import figures as fig
from study.report.claims import analyse, claims_frame, infinity_metrics
from study.report.contrasts import lr_choice_from_tags, study_plan
from study.report.data import StudyRuns, load_study, pick_study, protocol_rows, provenance
from study.report.markdown import render
from study.report.tables import (
    best_by_cell,
    cell_label,
    duplicated_by_sampling_cell,
    fmt,
    speed_reference,
    speed_table,
)
from study.stores import mask_uri, resolve_stores
from study.stores.mlflow_client import quiet_downloads
from study.stores.uris import DEFAULT_STATE_DIR, REPORTS_DIR


@dataclass
class Report:
    out: Path
    files: list[Path] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


# -- sample grids ---------------------------------------------------------------------------------


def _final_grid(runs: StudyRuns, run_id: str, dst: Path) -> Path | None:
    """Download the run's last `samples/samples_step*.png`; None if it logged none."""
    quiet_downloads()
    store = runs.store
    try:
        grids = [f.path for f in store.list_artifacts(run_id, "samples") if f.path.endswith(".png")]
        if not grids:
            return None
        return Path(store.download_artifacts(run_id, max(grids), str(dst)))
    except Exception:  # an unreachable artifact store must not stop the report
        return None


def _sample_groups(best: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Model -> its cells: DDGAN per loss (over T), DDPM per-T models, DDPM T=1000 per sampler (over S)."""
    groups: dict[str, pd.DataFrame] = {}
    best = best[~duplicated_by_sampling_cell(best)]
    for loss, part in best[best["method"] == "ddgan"].groupby("loss", sort=False):
        groups[f"ddgan-{loss}"] = part
    ddpm = best[best["method"] == "ddpm"]
    per_t = ddpm[ddpm["cell"].str.fullmatch(r"ddpm-T\d+")]
    if len(per_t):
        groups["ddpm"] = per_t
    for sampler, part in ddpm[~ddpm.index.isin(per_t.index)].groupby("sampler", sort=False):
        groups[f"ddpm-{sampler}"] = part
    return groups


def _sample_title(model: str, cells: pd.DataFrame) -> str:
    if model.startswith("ddgan-"):
        return f"DDGAN {model.removeprefix('ddgan-')}: final samples per T"
    if model == "ddpm":
        return "DDPM, one model per T"
    return f"DDPM T={int(cells['T'].iloc[0])}, {model.removeprefix('ddpm-')}: per S"


def sample_figures(runs: StudyRuns, best: pd.DataFrame, out: Path, notes: list[str]) -> dict[str, Path | None]:
    made: dict[str, Path | None] = {}
    with tempfile.TemporaryDirectory(prefix="report-grids-") as tmp:
        for model, cells in _sample_groups(best).items():
            panels, absent = [], []
            for _, row in cells.iterrows():
                grid = _final_grid(runs, row["best_run_id"], Path(tmp) / row["cell"]) if row["best_run_id"] else None
                if grid is None:
                    absent.append(row["cell"])
                    continue
                label = cell_label(row).split(", ", 1)[-1].removeprefix("DDPM ")
                value = fmt(row[f"{runs.metric}_mean"])
                label += f"  ({runs.metric.removeprefix('eval/')} {value})" if value else ""
                panels.append((label + (" (not final)" if row["basis"] == "partial" else ""), grid))
            if absent:
                notes.append(f"no sample grid yet for {', '.join(absent)}")
            made[f"samples_{model}"] = fig.plot_sample_grids(panels, _sample_title(model, cells),
                                                             out / f"samples_{model}.png")
    return made


def make_figures(runs: StudyRuns, best: pd.DataFrame, speed: pd.DataFrame, out: Path,
                 notes: list[str]) -> dict[str, str | None]:
    """All figures; returns name -> file name (None: skipped, with a note why)."""
    losses = list(dict.fromkeys(best.loc[best["method"] == "ddgan", "loss"]))
    made = {
        "fig1_ddpm_metric_vs_steps": fig.plot_ddpm_vs_steps(best, runs.summary, runs.metric, runs.mode,
                                                           out / "fig1_ddpm_metric_vs_steps.png"),
        "fig3_ddgan_ns_metric_vs_T": fig.plot_metric_vs_T(best, runs.metric, runs.mode, ["ns"],
                                                          out / "fig3_ddgan_ns_metric_vs_T.png",
                                                          "DDGAN, non-saturating loss: quality vs T"),
        "fig5_objectives_metric_vs_T": fig.plot_metric_vs_T(best, runs.metric, runs.mode, losses,
                                                            out / "fig5_objectives_metric_vs_T.png",
                                                            "DDGAN: every objective, quality vs T"),
        "fig3_8_per_objective_metric_vs_T": fig.plot_objective_panels(
            best, runs.metric, runs.mode, losses, out / "fig3_8_per_objective_metric_vs_T.png"),
        "pareto_metric_vs_ms": fig.plot_pareto(speed, runs.metric, runs.mode, out / "pareto_metric_vs_ms.png"),
        "learning_curves": fig.plot_learning_curves(runs.summary, runs.histories, runs.metric,
                                                    out / "learning_curves.png"),
    }
    made.update(sample_figures(runs, best, out, notes))
    skipped = [name for name, path in made.items() if path is None]
    if skipped:
        notes.append(f"figures skipped for lack of data: {', '.join(skipped)}")
    return {name: path.name if path else None for name, path in made.items()}


# -- what is missing ------------------------------------------------------------------------------


def missing_notes(runs: StudyRuns, best: pd.DataFrame) -> list[str]:
    """Plain sentences on everything that keeps the report from being final."""
    summary, notes = runs.summary, []
    if runs.parent["status"] != "FINISHED":
        notes.append(f"the study's parent run is {runs.parent['status']}: the study is still running or was "
                     "interrupted (continue it with `python -m study.run ... --resume`)")
    unfinished = summary[summary["status"].isin(["pending", "running"])]
    if len(unfinished):
        keys = ", ".join(f"`{k}` ({s})" for k, s in zip(unfinished["trial_key"], unfinished["status"], strict=True))
        notes.append(f"{len(unfinished)} trial(s) have not finished: {keys}")
    for _, row in summary[summary["status"] == "failed"].iterrows():
        notes.append(f"trial `{row['trial_key']}` failed at step {row['steps']}: {row['failure_reason'] or 'no reason recorded'}")
    for _, row in best[best["basis"] != "completed"].iterrows() if len(best) else []:
        what = "only unfinished or pruned values (not final)" if row["basis"] == "partial" else "no value at all"
        notes.append(f"cell `{row['cell']}` has no completed trial: {what}")
    if runs.planned is not None:
        absent = sorted(set(runs.planned) - set(summary["trial_key"]))
        if absent:
            notes.append(f"{len(absent)} planned trial(s) have no MLflow run yet: {', '.join(absent)}")
    rows = protocol_rows(runs)
    if rows and not all(r["recorded"] for r in rows):
        notes.append("the metric protocol (extractor weights sha256, reference N) was not recorded as MLflow tags; "
                     "the protocol table shows what the trial configs give")
    if not provenance(runs)["command"]:
        notes.append("the command that started the study was not recorded (parent-run tag `command`)")
    return notes


# -- the whole report -----------------------------------------------------------------------------


def build_report(mlflow_uri: str, study: str | None, out: str | Path | None = None,
                 results_dir: str | Path = DEFAULT_STATE_DIR, report_command: str | None = None) -> Report:
    """Read the study from MLflow and write summary.csv, best_by_cell.csv, REPORT.md and the figures."""
    study = pick_study(mlflow_uri, study)
    stores = resolve_stores(study, results_dir, mlflow_uri=mlflow_uri)
    out = Path(out) if out is not None else Path(REPORTS_DIR) / study  # curated, apart from the run's state
    runs = load_study(mlflow_uri, study, stores.plan_file)
    if runs.summary.empty:
        raise UsageError(f"study {study!r} has no trial runs in MLflow {mask_uri(mlflow_uri)} yet")
    out.mkdir(parents=True, exist_ok=True)
    best = best_by_cell(runs.summary, runs.metric, runs.mode)
    speed = speed_table(best, runs.metric, runs.mode)
    report = Report(out)
    report.missing = missing_notes(runs, best)
    runs.summary.to_csv(out / "summary.csv", index=False)
    best.to_csv(out / "best_by_cell.csv", index=False)
    tags = runs.parent["tags"]
    plan = study_plan(tags.get("grid"), best, tags.get("fingerprint"), lr_choice_from_tags(tags))
    analysis = analyse(runs.summary, best, runs.metric, plan)
    checks = [(m, analyse(runs.summary, best_by_cell(runs.summary, m, runs.mode), m, plan))
              for m in infinity_metrics(runs.summary, runs.metric)]
    pd.concat([claims_frame(analysis, runs.metric), *(claims_frame(a, m) for m, a in checks)]).to_csv(
        out / "claims.csv", index=False)
    figures = make_figures(runs, best, speed, out, report.missing)
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = report_command or f"python -m study.report --study {study}"
    discussion_file = out / "discussion.md"
    discussion = discussion_file.read_text() if discussion_file.is_file() else None
    text = render(runs, best, speed, speed_reference(best), figures, report.missing, generated, command, discussion,
                  analysis, checks)
    (out / "REPORT.md").write_text(text)
    report.files = [out / "summary.csv", out / "best_by_cell.csv", out / "claims.csv", out / "REPORT.md"]
    report.files += [out / name for name in figures.values() if name]
    return report
