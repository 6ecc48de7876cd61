"""Read one study back from MLflow: the parent run, one summary row per trial, metric histories.

Everything the report and the export show comes from here, so their numbers are the
MLflow values (`MlflowStore.runs_frame`; final metrics are MLflow's latest values).
The layout it reads is the one `study.stores.tracking` writes: an experiment named after the
study, a parent run tagged `role=study`, one nested run per trial tagged `role=trial`
with `trial_key`, `cell`, `phase`, `method`, `loss`, `T`, `lr`, `seed`, `status`, ...
and params holding the flattened resolved config.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ddgan.errors import UsageError
from study.stores.mlflow_client import MlflowStore
from study.stores.uris import mask_uri

UNFINISHED = ("pending", "running")
# Columns of summary.csv, in order; eval/* and train/* metric columns follow `metric`.
ID_COLUMNS = ["trial_key", "cell", "phase", "method", "loss", "T", "sampler", "sampling_steps", "lr", "seed",
              "preset", "status", "steps", "total_steps", "batch_size", "images_seen", "wall_min",
              "train_min"]
TAIL_COLUMNS = ["failure_reason", "run_id", "run_status"]
INT_COLUMNS = ["T", "sampling_steps", "seed", "steps", "total_steps", "batch_size", "images_seen"]
PROTOCOL_TAG = re.compile(r"^(eval/[^.]+)\.(\w+)$")  # Evaluator.protocol_tags(): "eval/fd_fmnist_2k.weights_sha256"


@dataclass
class StudyRuns:
    """A study as MLflow holds it (possibly still running)."""

    study: str
    uri: str
    experiment_id: str
    parent: dict[str, Any]  # run_id, status, tags
    summary: pd.DataFrame  # one row per trial run, ID_COLUMNS + metrics + TAIL_COLUMNS
    metric: str  # the study's metric (what the pruner and the ranking use)
    mode: str  # "min" | "max"
    histories: dict[str, pd.DataFrame] = field(default_factory=dict)  # run_id -> (step, value) of `metric`
    planned: list[str] | None = None  # trial keys of the plan file, when it was readable
    raw: pd.DataFrame = field(default_factory=pd.DataFrame)  # MlflowStore.runs_frame of the trial runs

    def run_values(self, prefix: str) -> list[dict[str, str]]:
        """Per trial run, its tags ("tags.") or params ("params.") as a plain dict."""
        columns = [c for c in self.raw.columns if c.startswith(prefix)]
        return [{c.removeprefix(prefix): v for c, v in row.items() if isinstance(v, str)}
                for row in self.raw[columns].to_dict("records")]

    @property
    def store(self) -> MlflowStore:
        return MlflowStore(self.uri)

    def better(self, a: float, b: float) -> bool:
        return a < b if self.mode == "min" else a > b


def list_studies(uri: str) -> list[str]:
    """Names of the experiments that hold a study parent run."""
    store = MlflowStore(uri)
    names = []
    for experiment in store.search_experiments():
        if store.search_runs([experiment.experiment_id], "tags.role = 'study'", max_results=1):
            names.append(experiment.name)
    return sorted(names)


def pick_study(uri: str, study: str | None) -> str:
    """`study`, or the only study in the store; a UsageError names the choices otherwise."""
    studies = list_studies(uri)
    if study is not None:
        if study not in studies:
            listed = ", ".join(studies) or "none"
            raise UsageError(f"no study {study!r} in MLflow {mask_uri(uri)} (studies there: {listed})")
        return study
    if len(studies) != 1:
        listed = ", ".join(studies) or "none"
        raise UsageError(f"pass --study NAME: MLflow {mask_uri(uri)} holds {len(studies)} studies ({listed})")
    return studies[0]


def _number(value: Any, kind=float) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value in ("", "None"):
        return None
    try:
        return kind(float(value)) if kind is int else kind(value)
    except (TypeError, ValueError):
        return None


def _first(row: pd.Series, *columns: str) -> Any:
    for column in columns:
        value = row.get(column)
        if value is not None and not (isinstance(value, float) and math.isnan(value)) and value != "None":
            return value
    return None


def _identity(row: pd.Series) -> dict[str, Any]:
    """The trial's coordinates from its tags (params as fallback)."""
    method = _first(row, "tags.method", "params.method")
    T = _number(_first(row, "tags.T", "params.diffusion.T"), int)
    steps = _number(_first(row, "tags.sampling_steps", "params.eval.respaced_steps"), int)
    sampler = _first(row, "tags.sampler", "params.eval.sampler") if method == "ddpm" else None
    return {
        "trial_key": _first(row, "tags.trial_key", "tags.mlflow.runName"),
        "cell": _first(row, "tags.cell"),
        "phase": _first(row, "tags.phase") or "train",
        "method": method,
        "loss": _first(row, "tags.loss", "params.objective.loss") if method == "ddgan" else "mse",
        "T": T,
        "sampler": sampler,
        "sampling_steps": steps if steps is not None else T,
        "lr": _number(_first(row, "tags.lr", "params.train.lr_g")),
        "seed": _number(_first(row, "tags.seed", "params.train.seed"), int),
        "preset": _first(row, "params.model.preset"),
        "status": _first(row, "tags.status") or "pending",
        "total_steps": _number(_first(row, "tags.total_steps", "params.train.steps"), int),
        "batch_size": _number(_first(row, "params.train.batch_size"), int),
        "wall_min": _wall_minutes(row),
        "failure_reason": _first(row, "tags.failure_reason"),
        "run_id": row["run_id"],
        "run_status": row["status"],
    }


def _wall_minutes(row: pd.Series) -> float | None:
    """The trial's wall-clock: from the start of its first attempt (tag `started_ms`) to the run's
    end. None where the start was not recorded: MLflow's own start_time is when the driver created
    the run, before the trial waited in Ray's queue, so it would count the wait."""
    start, end = _number(_first(row, "tags.started_ms")), row.get("end_time")
    if start is None or end is None or pd.isna(end):
        return None
    return (float(end) - float(start)) / 60_000  # ms since the epoch


STEP_TAG = {"completed": "tags.final_step", "pruned": "tags.pruned_at_step", "failed": "tags.failed_step"}


def _last_step(row: pd.Series, history: pd.DataFrame) -> int | None:
    """The step the trial ended at (its status tag's step), else the last evaluated step."""
    tag = STEP_TAG.get(_first(row, "tags.status") or "")
    tagged = _number(_first(row, tag), int) if tag else None
    if tagged is not None:
        return tagged
    return int(history["step"].max()) if len(history) else None


def _history(store: MlflowStore, run_id: str, metric: str) -> pd.DataFrame:
    points = store.get_metric_history(run_id, metric)
    frame = pd.DataFrame([(m.step, m.value) for m in points], columns=["step", "value"])
    return frame.sort_values("step").drop_duplicates("step", keep="last").reset_index(drop=True)


def _summary(trials: pd.DataFrame, histories: dict[str, pd.DataFrame], metric: str) -> pd.DataFrame:
    metric_cols = sorted(c for c in trials.columns if c.startswith("metrics."))
    eval_cols = [c for c in metric_cols if c.startswith("metrics.eval/")]
    other_cols = [c for c in metric_cols if c not in eval_cols]
    rows = []
    for _, row in trials.iterrows():
        record = _identity(row)
        record["steps"] = _last_step(row, histories[row["run_id"]])
        # Images the model saw: a training trial's own steps; a sample trial's source model's.
        trained = record["total_steps"] if record["phase"] == "sample" else record["steps"]
        if trained is not None and record["batch_size"] is not None:
            record["images_seen"] = int(trained) * int(record["batch_size"])
        # training time at the throughput measured alone on the device (speed/*, study.tuning.speed),
        # else at the trial's last logged one (packed beside other trials); no evaluation, no start-up
        rate = _number(row.get("metrics.speed/train_img_per_s"), float) or row.get("metrics.train/img_per_s")
        if record["phase"] == "train" and trained is not None and rate is not None and rate > 0:
            record["train_min"] = record["images_seen"] / float(rate) / 60
        for column in eval_cols + other_cols:
            record[column.removeprefix("metrics.")] = row[column]
        rows.append(record)
    names = [c.removeprefix("metrics.") for c in eval_cols + other_cols]
    if metric not in names:
        names.insert(0, metric)
    frame = pd.DataFrame(rows, columns=ID_COLUMNS + names + TAIL_COLUMNS)
    for column in INT_COLUMNS:
        frame[column] = pd.array(frame[column], dtype="Int64")
    head = [metric] + [n for n in names if n != metric]
    return frame[ID_COLUMNS + head + TAIL_COLUMNS].sort_values(["phase", "cell", "lr", "seed"],
                                                               ascending=[False, True, True, True],
                                                               key=_sort_key).reset_index(drop=True)


def _sort_key(column: pd.Series) -> pd.Series:
    if column.name == "cell":
        return column.map(cell_order)
    return column


LOSS_ORDER = ("ns", "hellinger", "rkl", "tv")


def cell_order(cell: Any) -> tuple:
    """ddgan-<loss>-T<T> in the study's loss order, then ddpm-T<T>, then ddpm-<sampler>-S<S>."""
    text = str(cell)
    numbers = [int(n) for n in re.findall(r"\d+", text)]
    number = numbers[-1] if numbers else 0
    parts = text.split("-")
    if text.startswith("ddgan-"):
        loss = parts[1] if len(parts) > 2 else ""
        rank = LOSS_ORDER.index(loss) if loss in LOSS_ORDER else len(LOSS_ORDER)
        return (0, rank, loss, number)
    if re.match(r"^ddpm-T\d+$", text):
        return (1, 0, "", number)
    return (2, 0, parts[1] if len(parts) > 1 else "", number)


def _plan_keys(plan_file: Path | None) -> list[str] | None:
    if plan_file is None or not plan_file.is_file():
        return None
    try:
        return [t["key"] for t in json.loads(plan_file.read_text())["trials"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load_study(uri: str, study: str | None = None, plan_file: Path | None = None) -> StudyRuns:
    """Read the study's parent run, its trial runs (into the summary frame) and metric histories."""
    study = pick_study(uri, study)
    store = MlflowStore(uri)
    experiment_id = store.get_experiment_by_name(study).experiment_id
    parent = store.search_all([experiment_id], "tags.role = 'study'")[0]
    trials = store.runs_frame(experiment_id, "tags.role = 'trial'")
    tags = dict(parent.data.tags)
    metric = tags.get("metric") or _common_tag(trials, "tags.metric")
    if not metric:
        raise UsageError(f"study {study!r}: neither the parent run nor the trials name the study's metric")
    mode = tags.get("mode", "min")
    histories = {run_id: _history(store, run_id, metric) for run_id in trials.get("run_id", [])}
    summary = _summary(trials, histories, metric) if len(trials) else pd.DataFrame(
        columns=ID_COLUMNS + [metric] + TAIL_COLUMNS)
    parent_info = {"run_id": parent.info.run_id, "status": parent.info.status, "tags": tags,
                   "start_time": parent.info.start_time, "end_time": parent.info.end_time}
    return StudyRuns(study, uri, experiment_id, parent_info, summary, metric, mode, histories,
                     _plan_keys(plan_file), trials)


def _common_tag(trials: pd.DataFrame, column: str) -> str | None:
    if column not in trials:
        return None
    values = trials[column].dropna().unique()
    return str(values[0]) if len(values) == 1 else None


# -- protocol and provenance ----------------------------------------------------------------------


def protocol_rows(runs: StudyRuns) -> list[dict[str, Any]]:
    """Per eval metric: kind, extractor, weights sha256, N, reference split and size, eval seed.

    Taken from protocol tags (`eval/<name>.<field>`, as `Evaluator.protocol_tags` writes them)
    on the parent run or any trial run; what no tag records is filled from the trials'
    params (N, reference split, eval seed) or left as None.
    """
    tags = _protocol_tags(runs)
    params = _eval_params(runs)
    rows = []
    names = [c for c in runs.summary.columns if c.startswith("eval/") and c not in ("eval/nfe", "eval/sample_ms_per_image")]
    for name in names:
        kind, _, rest = name.removeprefix("eval/").partition("_")
        extractor, _, count = rest.rpartition("_")
        found = tags.get(name, {})
        rows.append({
            "metric": name, "kind": found.get("kind", kind), "extractor": found.get("extractor", extractor),
            "weights_sha256": found.get("weights_sha256"), "n": found.get("n", count),
            "reference_split": found.get("reference_split", params.get("eval.reference_split")),
            "reference_n": found.get("reference_n", params.get("eval.reference_n")),
            "reference_data_sha256": found.get("reference_data_sha256"),
            "eval_seed": found.get("sample_seed", tags.get("", {}).get("eval.seed", params.get("eval.seed"))),
            "recorded": bool(found),
        })
    return rows


def _protocol_tags(runs: StudyRuns) -> dict[str, dict[str, str]]:
    sources = [runs.parent["tags"], *runs.run_values("tags.")]
    out: dict[str, dict[str, str]] = {"": {}}
    for tags in sources:
        for key, value in tags.items():
            match = PROTOCOL_TAG.match(key)
            if match:
                out.setdefault(match.group(1), {}).setdefault(match.group(2), value)
            elif key in ("eval.seed", "eval.reference_split"):
                out[""].setdefault(key, value)
    return out


def _eval_params(runs: StudyRuns) -> dict[str, str]:
    """eval.* params that every trial shares."""
    params = runs.run_values("params.")
    shared = {k: v for k, v in params[0].items() if k.startswith("eval.")} if params else {}
    return {k: v for k, v in shared.items() if all(p.get(k) == v for p in params)}


def provenance(runs: StudyRuns) -> dict[str, str | None]:
    """The command, grid, commit and stores that produced the study (None where not recorded)."""
    tags = runs.parent["tags"]
    trial_tags = next(iter(runs.run_values("tags.")), {})
    command = tags.get("command") or tags.get("study_command")
    return {"command": command, "grid": tags.get("grid"), "git_commit": tags.get("git_commits") or tags.get("git_commit")
            or trial_tags.get("git_commit"), "pruner": tags.get("pruner"), "fingerprint": tags.get("fingerprint"),
            "mlflow": mask_uri(runs.uri), "experiment": runs.study}
