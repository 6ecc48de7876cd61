"""What the study prints: the plan (`--dry-run`) and the one-screen summary at the end."""

from __future__ import annotations

import shlex
from pathlib import Path

import torch
from optuna.trial import TrialState

from study import cost
from study.stores import history, mask_uri
from study.stores.uris import DEFAULT_STATE_DIR, REPORTS_DIR


def describe_plan(prep, gpus: int | None = None) -> str:
    """Cells, trials, resources, budget and stores, without touching any of them; the cost for
    `gpus` GPUs (study.run --gpus). A grid with a pilot: the pilot study's plan first."""
    lines, stages = [], [prep]
    if prep.pilot is not None:
        stages = [prep.pilot, prep]
        pilot_lines, pilot_price = _plan_lines(prep.pilot, gpus)
        lines += ["stage 1 of 2: the learning-rate pilot (its trials stay out of the study's analysis; "
                  "the pruner acts only here)", *pilot_lines, "", "stage 2 of 2: " + _chosen(prep)]
    main_lines, main_price = _plan_lines(prep, gpus)
    lines += main_lines
    if prep.pilot is not None:
        lines += ["", *cost.describe_total([pilot_price, main_price],
                                           len(prep.pilot.plan.trials) + len(prep.plan.trials))]
    notes = dict.fromkeys(note for stage in stages for note in stage.notes)  # once each, in order
    lines += [f"note: {note}" for note in notes]
    return "\n".join(lines)


def _chosen(prep) -> str:
    choice = prep.options.lr_choice
    if choice:
        return "the study at the rates the pilot chose: " + ", ".join(f"{g} {lr:g}" for g, lr in choice.items())
    return ("the study at one rate per method (each DDGAN objective, DDPM): among the pilot's rates that lost the "
            "fewest trials to the pruner, the best mean final "
            f"{prep.pilot.grid.metric}; the rates are not known until the pilot has run")


def _final_metrics(grid) -> str:
    final = ", ".join(grid.eval.final_metrics)
    if not final:
        return "final: -"
    return f"final: {final} on {grid.eval.final_n_samples or grid.eval.n_samples} samples at every completed trial's last step"


def _plan_lines(prep, gpus: int | None) -> tuple[list[str], cost.Priced]:
    plan, grid, stores = prep.plan, prep.grid, prep.stores
    lines = [f"study {stores.study!r} from grid {str(plan.path)!r}" + (" (resume)" if prep.options.resume else ""),
             f"metric {grid.metric} ({grid.mode}); pruner {grid.pruner.kind} within each cell",
             f"resources per trial: {grid.resources.cpus:g} CPU, {grid.resources.gpus:g} GPU; "
             f"max concurrent: {grid.max_concurrent or 'as resources allow'}; retries: {grid.max_failures}",
             f"evaluation every {grid.eval.every} steps on {grid.eval.n_samples} samples "
             f"({', '.join(grid.eval.metrics) or 'no metric'}; {_final_metrics(grid)})",
             "", f"{'cell':<28} {'phase':<7} {'trials':>6} {'seeds':>5} {'lr':>14} {'steps':>7}"]
    for cell, specs in plan.cells().items():
        steps = sorted({s.total_steps for s in specs})
        rates = "/".join(f"{lr:g}" for lr in sorted({s.lr for s in specs}))
        if prep.options.stage == "main" and not prep.options.lr_choice:
            rates = "pilot's"
        lines.append(f"{cell:<28} {specs[0].phase:<7} {len(specs):>6} {len({s.seed for s in specs}):>5} "
                     f"{rates:>14} {'/'.join(map(str, steps)):>7}")
    total_steps = sum(s.total_steps for s in plan.trials if s.phase == "train")
    lines += ["", f"{len(plan.trials)} trials in {len(plan.cells())} cells; {total_steps} training steps in all",
              f"data: {prep.data_dir}"]
    lines += [f"{name}: {value}" for name, value in stores.describe().items()]
    cost_lines, priced = plan_cost(prep, gpus)
    return lines + cost_lines, priced


def plan_cost(prep, gpus: int | None = None) -> tuple[list[str], cost.Priced]:
    """Wall-clock and GPU-hours where the plan runs: here, or on the Ray cluster of `--address`
    (`gpus` GPUs, else unknown and one assumed); `--calibrate` times a few steps here first."""
    figures = cost.load_figures()
    local, gpu = figures["cpu"], figures["gpu"]
    address, cuda = prep.options.address, torch.cuda.is_available()
    if prep.options.calibrate:
        if address is None:
            local = cost.calibrate(prep.plan, local, "cpu")
        if cuda:
            gpu = cost.calibrate(prep.plan, gpu, "cuda")
    elif cuda:
        prep.notes.append("this machine has a GPU: --calibrate measures its figures instead of the reference GPU's")
    source = "--gpus" if gpus else None
    if gpus is None and address is not None:
        source = f"count unknown: --address {address} without --gpus; 1 GPU assumed"
        prep.notes.append(f"pass --gpus N to price the run for the N GPUs of the cluster at {address}")
    elif gpus is None and cuda:
        gpus, source = torch.cuda.device_count(), "this machine's GPUs"
    priced = cost.price(prep.plan, local, gpu, gpus, address)
    return cost.describe(prep.plan, local, gpu, gpus, address, source, priced), priced


def _counts(book, plan) -> dict[str, int]:
    counts = {"completed": 0, "pruned": 0, "failed": 0, "unfinished": 0}
    names = {TrialState.COMPLETE: "completed", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}
    for spec in plan.trials:
        counts[names.get(book.frozen(spec.key).state, "unfinished")] += 1
    return counts


def summarize(prep, book, seconds: float, runs: list[dict] | None = None) -> tuple[str, dict[str, int]]:
    """Best trial per cell, counts by final state, the study's own time, where the results are, what next.

    seconds: this invocation's time; runs: every invocation (study.stores.history), for the study's total."""
    plan, grid, stores = prep.plan, prep.grid, prep.stores
    lines = [f"study {stores.study!r}: {len(plan.trials)} trials in {history.describe(runs or [], seconds)}", "",
             f"{'cell':<28} {'best ' + grid.metric:<30} {'trial':<40} done/pruned/failed"]
    for cell, specs in plan.cells().items():
        frozen = [book.frozen(s.key) for s in specs]
        done = [t for t in frozen if t.state == TrialState.COMPLETE and t.value is not None]
        best = (min if grid.mode == "min" else max)(done, key=lambda t: t.value) if done else None
        states = [sum(t.state == s for t in frozen) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)]
        value = f"{best.value:.4g}" if best else "-"
        name = best.user_attrs.get("trial_key", "") if best else ""
        lines.append(f"{cell:<28} {value:<30} {name:<40} {'/'.join(map(str, states))}")
    counts = _counts(book, plan)
    lines += ["", "trials: " + ", ".join(f"{v} {k}" for k, v in counts.items()),
              f"run state: {stores.study_dir}", f"MLflow: {mask_uri(stores.mlflow_uri)} (experiment {stores.study!r})",
              f"Optuna: {mask_uri(stores.optuna_url)} (studies {stores.study}/<cell>)", "", "next:"]
    lines += [f"  {command:<78} # {what}" for command, what in next_commands(stores)]
    return "\n".join(lines), counts


def next_commands(stores) -> list[tuple[str, str]]:
    """What to run after a study, with the flags that find this study's stores."""
    where = []
    if stores.mlflow_uri.startswith("sqlite:"):
        if stores.results_dir != Path(DEFAULT_STATE_DIR).resolve():
            where = ["--state-dir", str(stores.results_dir)]
    else:
        where = ["--mlflow-uri", mask_uri(stores.mlflow_uri)]
    name = ["--study", stores.study]
    out = [(shlex.join(["python", "-m", "study.report", *name, *where]), f"REPORT.md, tables, figures in {REPORTS_DIR}/{stores.study}/"),
           (shlex.join(["python", "-m", "study.export", *name, "--top-k", "1", "--per", "loss", "--out", "exports/", *where]),
            "the best model per loss, ready for ddgan.sample")]
    if stores.mlflow_uri.startswith("sqlite:"):
        out.append((shlex.join(["python", "-m", "study.ui", *where]), "MLflow UI on 127.0.0.1:5000"))
    if stores.optuna_url.startswith("sqlite:"):
        state = ["--state-dir", str(stores.results_dir)] if where and where[0] == "--state-dir" else []
        out.append((shlex.join(["python", "-m", "study.ui", "--optuna", *name, *state]), "Optuna dashboard on 127.0.0.1:8080"))
    return out
