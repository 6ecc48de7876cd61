"""REPORT.md: the study on one page (headline, missing pieces, tables, figures, protocol, provenance)."""

from __future__ import annotations

import math
import re
from typing import Any

import pandas as pd

from study.report.claims import Analysis, claims_section, infinity_section
from study.report.data import StudyRuns, protocol_rows, provenance
from study.report.tables import MS, NFE, cell_label, fmt, fmt_interval, markdown_table

FIGURE_CAPTIONS = {
    "fig1_ddpm_metric_vs_steps": "DDPM: quality against the number of sampling steps (as in the paper's Fig. 1).",
    "fig3_ddgan_ns_metric_vs_T": "DDGAN with the non-saturating loss: quality against T (as in the paper's Fig. 3).",
    "fig5_objectives_metric_vs_T": "All GAN objectives on one axis (as in the paper's Fig. 5).",
    "fig3_8_per_objective_metric_vs_T": "One panel per objective, the band its 95% interval over seeds "
                                        "(as in the paper's Figs. 3-8).",
    "pareto_metric_vs_ms": "Quality against sampling time per image, every cell; dashed: the Pareto front.",
    "learning_curves": "The metric at every evaluation; colour = learning rate, end marker = how the trial ended.",
}


def _m(metric: str) -> str:
    return f"{metric}_mean"


def _value(row: pd.Series | dict, metric: str) -> str | None:
    return fmt_interval(row[_m(metric)], row[f"{metric}_ci_low"], row[f"{metric}_ci_high"])


def _counts_line(summary: pd.DataFrame) -> str:
    status = summary["status"].value_counts()
    parts = [f"{int(status.get(s, 0))} {s}" for s in ("completed", "pruned", "failed")]
    unfinished = int(status.get("pending", 0) + status.get("running", 0))
    return f"{len(summary)} trials: " + ", ".join(parts) + f", {unfinished} unfinished"


def header(runs: StudyRuns, generated: str, report_command: str) -> list[str]:
    finished = runs.parent["status"] == "FINISHED" and not runs.summary["status"].isin(["pending", "running"]).any()
    state = "finished" if finished else "**incomplete: still running, interrupted or partly failed**"
    better = "lower" if runs.mode == "min" else "higher"
    return [f"# Study `{runs.study}`: DDGAN objectives x T against DDPM on Fashion-MNIST", "",
            *scale_lines(runs),
            f"Generated {generated} by `{report_command}` from MLflow experiment `{runs.study}`.",
            f"State: {state}. {_counts_line(runs.summary)}.", "",
            f"Metric: `{runs.metric}` ({better} is better). A cell's number is the mean over seeds of its best "
            "learning rate; brackets hold a 95% Student-t interval over seeds (only with two or more seeds).", ""]


TRAIN_IMAGES = 60_000  # Fashion-MNIST's training split


def _shared(values: list, unit: str = "") -> str:
    found = sorted({v for v in values if v not in (None, "")}, key=lambda v: (str(type(v)), v))
    return " / ".join(f"{v:,}{unit}" if isinstance(v, int) else f"{v}{unit}" for v in found) or "?"


def planned_images(summary: pd.DataFrame, method: str) -> list[int]:
    """The distinct training budgets (total steps x batch, in images) of a method's training trials."""
    rows = summary[(summary["method"] == method) & (summary["phase"] == "train")]
    return sorted({int(s) * int(b) for s, b in zip(rows["total_steps"], rows["batch_size"], strict=True)
                   if pd.notna(s) and pd.notna(b)})


def scale_lines(runs: StudyRuns) -> list[str]:
    """What the study is, before any number: network preset, training length, evaluation size.
    A study of tiny networks is said to be a plumbing check up front."""
    params, tags = runs.run_values("params."), runs.run_values("tags.")
    train = [p for p, t in zip(params, tags, strict=True) if t.get("phase") == "train"] or params
    presets = sorted({str(p) for p in runs.summary["preset"].dropna()})
    steps = [int(float(p["train.steps"])) for p in train if p.get("train.steps")]
    batches = [int(float(p["train.batch_size"])) for p in train if p.get("train.batch_size")]
    images = [s * b for s, b in zip(steps, batches, strict=False)]
    samples = [int(float(p["eval.n_samples"])) for p in params if p.get("eval.n_samples")]
    epochs = f", {max(images) / TRAIN_IMAGES:.2g} epochs at most" if images else ""
    line = (f"**Scale:** {_shared(presets)} preset networks; {_shared(steps)} training steps per trial at batch "
            f"{_shared(batches)} ({_shared(images)} images seen{epochs}); the metric on {_shared(samples)} samples; "
            f"{len(runs.summary)} trials.")
    budgets = {method: planned_images(runs.summary, method) for method in ("ddgan", "ddpm")}
    if budgets["ddgan"] and budgets["ddpm"] and budgets["ddgan"] != budgets["ddpm"]:
        line += (f" **Unequal budgets:** DDGAN cells train on {_shared(budgets['ddgan'])} images, DDPM cells on "
                 f"{_shared(budgets['ddpm'])}: every DDGAN-vs-DDPM comparison below is at unequal training.")
    if presets == ["tiny"]:
        return ["**A plumbing check, not a result.** Tiny networks trained for a few dozen steps: this study "
                "checks the machinery (Ray Tune trials, per-cell Optuna pruning, MLflow records, this report). "
                "Its numbers mean nothing about the methods.", "", line, ""]
    return [line, ""]


def _ddgan(best: pd.DataFrame, metric: str) -> pd.DataFrame:
    return best[(best["method"] == "ddgan") & best[_m(metric)].notna()]


def at_a_glance(runs: StudyRuns, best: pd.DataFrame, speed: pd.DataFrame) -> list[str]:
    metric, ascending = runs.metric, runs.mode == "min"
    lines = ["## At a glance", "", "_Descriptive: the best means, picked by the very numbers they show; only the claims "
             "above test a difference._", ""]
    ddgan = _ddgan(best, metric).sort_values(_m(metric), ascending=ascending)
    if len(ddgan):
        top = ddgan.iloc[0]
        lines.append(f"- Best DDGAN cell: **{cell_label(top)}** at lr {top['best_lr']:g}: {_value(top, metric)}.")
        per_loss = ddgan.drop_duplicates("loss")
        lines.append("- Best T per objective: " + "; ".join(
            f"{r['loss']} T={r['T']} ({fmt(r[_m(metric)])})" for _, r in per_loss.iterrows()) + ".")
    ddpm = best[(best["method"] == "ddpm") & best[_m(metric)].notna()].sort_values(_m(metric), ascending=ascending)
    if len(ddpm):
        top = ddpm.iloc[0]
        lines.append(f"- Best DDPM configuration: **{cell_label(top)}** ({int(top[NFE]) if pd.notna(top[NFE]) else '?'} "
                     f"network evaluations): {_value(top, metric)}.")
    if len(speed) and speed["on_pareto_front"].any():
        front = speed[speed["on_pareto_front"]].sort_values(MS)
        lines.append("- Pareto front (fastest first): " + " -> ".join(cell_label(r) for _, r in front.iterrows()) + ".")
    pruned = runs.summary[runs.summary["status"] == "pruned"]
    if len(pruned):
        stops = ", ".join(f"`{r['trial_key']}` at step {r['steps']}" for _, r in pruned.iterrows())
        lines.append(f"- The pruner stopped {len(pruned)} trial(s): {stops}.")
    else:
        lines.append("- The pruner stopped no trial.")
    return lines + [""]


def missing_section(notes: list[str]) -> list[str]:
    if not notes:
        return []
    return ["## What is missing", "", *[f"- {note}" for note in notes], ""]


def extra_metrics(best: pd.DataFrame, metric: str) -> list[str]:
    """Other quality metrics in best_by_cell (e.g. a final Inception FID): shown beside the study's metric."""
    return [c.removesuffix("_mean") for c in best.columns
            if c.startswith("eval/") and c.endswith("_mean") and c != _m(metric)]


def single_trial_metrics(best: pd.DataFrame) -> list[str]:
    """Metrics that only some trials of a cell have (`<name>_trials`): shown as single values."""
    return [c.removesuffix("_trials") for c in best.columns if c.startswith("eval/") and c.endswith("_trials")]


def _single_headers(names: list[str]) -> list[str]:
    return [f"{name} of single trials (not a cell mean)" for name in names]


def ddgan_tables(best: pd.DataFrame, metric: str) -> list[str]:
    rows = best[best["method"] == "ddgan"]
    if rows.empty:
        return ["## DDGAN: best learning rate per cell", "", "No DDGAN cell in this study.", ""]
    ts = sorted(rows["T"].unique())
    pivot = []
    for loss, part in rows.groupby("loss", sort=False):
        by_t = {r["T"]: fmt(r[_m(metric)]) for _, r in part.iterrows()}
        pivot.append([loss] + [by_t.get(t) for t in ts])
    extra, single = extra_metrics(best, metric), single_trial_metrics(best)
    detail = [[r["loss"], r["T"], fmt(r["best_lr"], 3), r["seeds"], _value(r, metric),
               *[fmt(r[_m(e)]) for e in extra], *[_text(r.get(f"{s}_trials")) for s in single], fmt(r[MS], 3),
               _trials_cell(r), r["lrs_tried"] or None, r["basis"]] for _, r in rows.iterrows()]
    return ["## DDGAN: best learning rate per cell", "", f"`{metric}` of the best learning rate, loss x T:", "",
            markdown_table(["loss"] + [f"T={t}" for t in ts], pivot, set(range(1, len(ts) + 1))), "",
            markdown_table(["loss", "T", "best lr", "seeds", metric, *extra, *_single_headers(single), "ms/image",
                            "trials c/p/f/u", "mean by lr", "basis"], detail,
                           {*range(1, 5 + len(extra)), 5 + len(extra) + len(single)}), ""]


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _trials_cell(row: pd.Series) -> str:
    return f"{row['completed']}/{row['pruned']}/{row['failed']}/{row['unfinished']}"


def _sampler_text(row: pd.Series) -> str:
    sampler = row["sampler"] or "ancestral"
    training = re.fullmatch(r"ddpm-T\d+", str(row["cell"])) and row["sampling_steps"] != row["T"]
    return f"{sampler} (evaluated while training)" if training else sampler


def ddpm_table(best: pd.DataFrame, metric: str) -> list[str]:
    rows = best[best["method"] == "ddpm"]
    if rows.empty:
        return ["## DDPM baseline", "", "No DDPM cell in this study.", ""]
    extra, single = extra_metrics(best, metric), single_trial_metrics(best)
    table = [[r["T"], _sampler_text(r), r["sampling_steps"], fmt(r["best_lr"], 3), _value(r, metric),
              *[fmt(r[_m(e)]) for e in extra], *[_text(r.get(f"{s}_trials")) for s in single], fmt(r[MS], 3),
              _trials_cell(r), r["basis"]] for _, r in rows.iterrows()]
    return ["## DDPM baseline", "", "One model per T sampled with all its steps, and one trained model sampled "
            "with S respaced steps (ancestral and DDIM); same network preset, data and metric as DDGAN. A model "
            "that is evaluated with S < T steps while it trains shows that sampler and S.", "",
            markdown_table(["model T", "sampler", "steps S (NFE)", "lr", metric, *extra, *_single_headers(single),
                            "ms/image", "trials c/p/f/u", "basis"], table,
                           {0, *range(2, 5 + len(extra)), 5 + len(extra) + len(single)}), ""]


def speed_section(speed: pd.DataFrame, best: pd.DataFrame, metric: str, reference: dict[str, dict]) -> list[str]:
    lines = ["## Sampling speed", ""]
    if speed.empty:
        return lines + ["No cell recorded `speed/sample_ms_per_image` or `eval/sample_ms_per_image` yet.", ""]
    for preset, ref in reference.items():
        lines.append(f"- Reference for preset `{preset}`: DDPM T=1000 with 1000 steps, "
                     f"{fmt(ref['ms'], 3)} ms/image ({ref['how']}).")
    if not reference:
        lines.append("- No DDPM T=1000 cell was timed, so there is no speed-up column reference.")
    table = [[cell_label(r), fmt(r[NFE], 4), fmt(r[MS], 3),
              None if math.isnan(r["speedup_vs_ddpm1000"]) else f"{r['speedup_vs_ddpm1000']:.3g}x",
              fmt(r[_m(metric)]), "yes" if r["on_pareto_front"] else ""] for _, r in speed.iterrows()]
    return lines + [_timing_note(speed), "", "The DDGAN generator and the DDPM denoiser are the same U-Net "
                    "preset; the generator adds the latent z.", "",
                    markdown_table(["cell", "NFE", "ms/image", "speed-up vs DDPM T=1000", metric, "Pareto front"],
                                   table, {1, 2, 3, 4}), ""]


def _timing_note(speed: pd.DataFrame) -> str:
    """How the ms/image column was timed: alone on the device, or inside trials that shared it."""
    timed = set("/".join(speed.get("sample_ms_timed", pd.Series(dtype=str)).fillna("")).split("/")) - {""}
    alone = ("- ms/image measured alone on the device after the study's phases (`speed/sample_ms_per_image`: "
             "one configuration at a time, untrained weights, synchronised, an untimed first call unless it "
             "alone took 1 s, then calls filling 1 s; the device is each run's `speed.device` tag, the protocol "
             "its `speed.protocol`).")
    packed = ("- ms/image timed during the trials' evaluations (`eval/sample_ms_per_image`: batch of "
              "`eval.batch_size`, other trials possibly sharing the device): compare ratios, not absolute times.")
    if timed == {"alone"}:
        return alone
    if timed == {"packed"}:
        return packed
    return alone + "\n" + packed.replace("- ms/image", "- Cells marked packed: ms/image") if timed else packed


def figures_section(figures: dict[str, str | None]) -> list[str]:
    lines = ["## Figures", ""]
    for name, file in figures.items():
        if file is None:
            continue
        caption = FIGURE_CAPTIONS.get(name) or f"Final samples of the best trial of each cell: {name.removeprefix('samples_')}."
        lines += [f"![{caption}]({file})", "", f"*{caption}*", ""]
    return lines


def protocol_section(runs: StudyRuns) -> list[str]:
    rows = protocol_rows(runs)
    table = [[f"`{r['metric']}`", r["kind"], r["extractor"], _sha(r["weights_sha256"]), r["n"],
              r["reference_split"], r["reference_n"] or "whole split", r["eval_seed"]] for r in rows]
    lines = ["## Metric protocol", ""]
    if not rows:
        return lines + ["No evaluation metric has been logged yet.", ""]
    lines.append(markdown_table(["metric", "kind", "extractor", "weights sha256", "N generated", "reference split",
                                 "reference N", "eval seed"], table))
    lines += ["", "Every trial is scored on the same noise (fixed eval seed). `fd_*` is a Frechet distance in the "
              "named extractor's feature space; only `fid_inception_*` is FID comparable in kind with the "
              "literature, and at this scale not in value.", ""]
    return lines


def _sha(value: str | None) -> str | None:
    return f"`{value[:16]}...`" if value else "not recorded"


def provenance_section(runs: StudyRuns) -> list[str]:
    info = provenance(runs)
    command = f"`{info['command']}`" if info["command"] else "not recorded by the study"
    return ["## How this study was produced", "",
            f"- Command: {command}",
            f"- Grid: `{info['grid'] or 'not recorded'}` (pruner: {info['pruner'] or 'not recorded'}; "
            f"fingerprint {info['fingerprint'] or '-'})",
            _commit_line(info["git_commit"]),
            *_pilot_line(runs.parent["tags"]),
            f"- MLflow: `{info['mlflow']}`, experiment `{info['experiment']}`; browse with `python -m study.ui`.",
            "- Every trial's own rerun command is the `rerun_command` tag of its MLflow run.", ""]


def _commit_line(commits: str | None) -> str:
    """One commit, or every invocation's (a resumed study), oldest first."""
    listed = (commits or "").split(",")
    if len(listed) > 1:
        return (f"- Git commits of the invocations (a resumed study), oldest first, each listed once in a row: "
                f"{', '.join(f'`{c}`' for c in listed)}")
    return f"- Git commit: `{commits or 'not recorded'}`"


def _pilot_line(tags: dict[str, str]) -> list[str]:
    """A study whose rates a pilot chose (study/pilot.py): which study, which rates."""
    chosen = {k.removeprefix("lr_chosen."): v for k, v in tags.items() if k.startswith("lr_chosen.")}
    if not chosen:
        return []
    rates = ", ".join(f"{group} {lr}" for group, lr in sorted(chosen.items()))
    return [f"- Learning rates: chosen once by the pilot study `{tags.get('pilot', '?')}` on its own seeds "
            f"(its trials are not in this report): {rates}"]


def trials_section(summary: pd.DataFrame, metric: str) -> list[str]:
    table = [[f"`{r['trial_key']}`", r["status"], r["steps"], fmt(r[metric]), fmt(r.get(MS), 3),
              fmt(r.get(NFE), 4), f"`{r['run_id'][:8]}`"] for _, r in summary.iterrows()]
    return ["## All trials", "", "The same rows, with every final metric, are in `summary.csv`.", "",
            markdown_table(["trial", "status", "steps", metric, "ms/image", "NFE", "run"], table, {2, 3, 4, 5}), ""]


def discussion_section(text: str | None) -> list[str]:
    """The hand-written reading of the numbers (`discussion.md` beside REPORT.md), kept across reruns."""
    if not text or not text.strip():
        return []
    return ["## Discussion", "", "_Hand-written in `discussion.md` (kept when the report is regenerated); "
            "every other section is generated from MLflow._", "", text.strip(), ""]


def render(runs: StudyRuns, best: pd.DataFrame, speed: pd.DataFrame, reference: dict[str, dict[str, Any]],
           figures: dict[str, str | None], notes: list[str], generated: str, report_command: str,
           discussion: str | None = None, analysis: Analysis | None = None,
           checks: list[tuple[str, Analysis]] | None = None) -> str:
    lines = header(runs, generated, report_command)
    lines += claims_section(analysis, best, runs.metric, runs.mode)  # first: what the study resolves
    if analysis is not None and checks:
        lines += infinity_section(checks, analysis, best, runs.mode)
    lines += at_a_glance(runs, best, speed)
    lines += discussion_section(discussion)
    lines += missing_section(notes)
    lines += ddgan_tables(best, runs.metric) + ddpm_table(best, runs.metric)
    lines += speed_section(speed, best, runs.metric, reference)
    lines += figures_section(figures) + protocol_section(runs) + provenance_section(runs)
    lines += trials_section(runs.summary, runs.metric)
    return "\n".join(lines).rstrip() + "\n"
