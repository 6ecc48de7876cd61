"""The Python side of benchmarks/cluster_rehearsal.sh (a two-node cluster on one machine).

    python -m benchmarks.cluster_rehearsal grid OUT.yaml          the `full` grid's shape, every cell tiny
    python -m benchmarks.cluster_rehearsal stand-in OUT.pt        a TorchScript stand-in for Inception
    python -m benchmarks.cluster_rehearsal serve DIR              PostgreSQL + `mlflow server` on 127.0.0.1
                                                                  until SIGTERM; URIs in DIR/servers.env
    python -m benchmarks.cluster_rehearsal node-id ADDRESS TMPDIR the Ray node whose sockets are under TMPDIR
    python -m benchmarks.cluster_rehearsal wait EVENT ...         poll MLflow until a trial is where we want it
    python -m benchmarks.cluster_rehearsal snapshot DIR...        what is in these folders (for "nothing else written")
    python -m benchmarks.cluster_rehearsal verify ...             the end checks; exit 1 if any fails

The servers are started by tests/servers.py (the code the `servers` tests use), not again here.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from ddgan.cli import ArgumentParser, InputPath, Name, Number, OutputDir, OutputFile, run_cli
from study.flags import MlflowUri, OptunaStorage, RayAddress

REPO = Path(__file__).resolve().parents[1]
STUDY = "rehearsal"
STEPS, EVERY = 60, 20  # every cell: 60 steps, an evaluation (and a checkpoint) every 20
TINY = ("model.preset=tiny", "train.batch_size=16", "train.log_every=5", "train.device=cpu",
        "train.ema_decay=0.9", "eval.batch_size=128")
SUBSAMPLED = {"ddgan.T": [1, 4], "ddgan.lr": [1.6e-4], "ddpm.T": [10, 1000], "ddpm.lr": [2.0e-4],
              "ddpm.respaced.steps": [10], "seeds": [0]}


def derive_grid(out: Path) -> Path:
    """`full` with every cell shrunk: all 4 losses, T {1, 4} of 1..10, the middle lr, DDPM T {10, 1000},
    the T=1000 model sampled with S=10 by both samplers, one seed; tiny preset, 60 steps, CPU, fake GPUs
    at 0.5. The learning-rate pilot is left out (one rate: nothing to choose; it is a study of the same
    kind, run by the same code: tests/test_study_pilot.py), and its pruner acts on these trials instead,
    so the cluster's pruning path is rehearsed."""
    import yaml

    from ddgan.metrics.evaluator import metric_name, parse_metric
    from study.grid import load_grid

    grid, path = load_grid("full")
    raw = grid.model_dump(mode="json", exclude_none=True)
    raw.update(name=STUDY, description=f"the full grid's shape, tiny and short (subsampled: {SUBSAMPLED})")
    raw["base"] = {m: str((path.parent / p).resolve()) for m, p in grid.base.items()}
    raw["overrides"] = [*raw["overrides"], *TINY]
    raw.pop("contrasts", None)  # the report's planned comparisons may name cells the subsample drops
    pilot = raw.pop("pilot", None)
    raw["seeds"] = SUBSAMPLED["seeds"]
    raw["ddgan"].update(T=SUBSAMPLED["ddgan.T"], lr=SUBSAMPLED["ddgan.lr"])
    raw["ddpm"].update(T=SUBSAMPLED["ddpm.T"], lr=SUBSAMPLED["ddpm.lr"])
    raw["ddpm"]["respaced"]["steps"] = SUBSAMPLED["ddpm.respaced.steps"]
    raw["budget"] = {"steps": STEPS}
    raw["eval"].update(every=EVERY, n_samples=128, final_n_samples=2048, reference_n=1000, grid_size=4)
    raw["metric"] = metric_name(*parse_metric(grid.eval.metrics[0]), 128)
    pruner = pilot["pruner"] if pilot else raw["pruner"]  # full's pruner acts in its pilot
    raw["pruner"] = {**pruner, "n_warmup_steps": 2 * EVERY}  # two evaluations first
    raw["resources"] = {"cpus": 1, "gpus": 0.5}
    raw["max_concurrent"] = 2
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(raw, sort_keys=False))
    load_grid(str(out))
    return out


def stand_in(out: Path) -> Path:
    """Inception's interface ((N, 3, 299, 299) -> (N, 2048)) at no cost: the plumbing, not a FID."""
    import warnings

    import torch

    class InceptionStandIn(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean(dim=(2, 3)).repeat(1, 683)[:, :2048]

    out.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(InceptionStandIn()), str(out))
    return out


def serve(root: Path) -> None:
    """PostgreSQL (databases `optuna` and `mlflow`) and `mlflow server` on it, artifacts under
    root/mlflow/artifacts; the URIs go to root/servers.env; both stop on SIGTERM."""
    sys.path.insert(0, str(REPO / "tests"))
    import servers  # tests/servers.py

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    postgres = servers.start_postgres()
    try:
        optuna_url = postgres.create_database("optuna")
        (root / "mlflow").mkdir(parents=True, exist_ok=True)
        process, mlflow_uri = servers.start_mlflow_server(postgres.create_database("mlflow"), root / "mlflow")
        try:
            env = root / "servers.env"
            env.write_text(f"OPTUNA_URL='{optuna_url}'\nMLFLOW_URI='{mlflow_uri}'\n")
            env.chmod(0o600)
            print(f"postgres 127.0.0.1:{postgres.port} (data {postgres.root}), mlflow {mlflow_uri}", flush=True)
            while not stop:
                time.sleep(0.5)
        finally:
            servers.stop_process_group(process)
    finally:
        postgres.stop()


def node_id(address: str, temp_dir: str) -> str:
    """The id of the alive Ray node whose raylet socket lies under `temp_dir`."""
    import ray

    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    try:
        found = [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["RayletSocketName"].startswith(temp_dir)]
    finally:
        ray.shutdown()
    if len(found) != 1:
        raise SystemExit(f"no single alive Ray node under {temp_dir}: {found}")
    return found[0]


def trial_runs(uri: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(STUDY)
    if experiment is None:
        return []
    return [r for r in client.search_runs([experiment.experiment_id], "tags.role = 'trial'", max_results=1000)]


def wait(event: str, uri: str, node: str, timeout: float) -> str:
    """Poll MLflow until `event`; print the trial key it is about.

    on-node:  a trial running on `node` has logged an evaluation (so Ray holds its checkpoint)
              and is not at its last step -> the trial key
    moved:    trial `node` (a key here) runs again or has completed, on another node
    partial:  a trial other than `node` (a key here: the node's victim) runs past an evaluation,
              and at least one trial completed -> the key (the moment to kill the driver)
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = trial_runs(uri)
        for run in runs:
            tags, key = run.data.tags, run.data.tags.get("trial_key")
            evaluated = [m.step for m in client.get_metric_history(run.info.run_id, tags.get("metric", ""))] \
                if tags.get("status") == "running" else []
            if event == "on-node" and tags.get("ray_node_id") == node and evaluated and \
                    max(evaluated) < STEPS:
                return key
            if event == "moved" and key == node and int(tags.get("attempts", "0")) >= 2 and \
                    tags.get("status") in ("running", "completed"):
                return f"{key} attempt {tags['attempts']} on {tags.get('ray_node_id')} status {tags['status']}"
            if event == "partial" and key != node and evaluated and max(evaluated) < STEPS and \
                    any(r.data.tags.get("status") == "completed" for r in runs):
                return key
        time.sleep(2.0)
    raise SystemExit(f"timed out after {timeout:.0f} s waiting for {event} ({node})")


def snapshot(paths: list[str]) -> dict[str, list[str]]:
    """Every file and folder under each path; version control, the virtual environment and
    bytecode caches aside (imports write those)."""
    skip = {".git", ".venv", "__pycache__"}
    out = {}
    for path in paths:
        found = []
        for folder, dirs, files in os.walk(path):
            dirs[:] = [d for d in dirs if d not in skip]
            found += [os.path.relpath(os.path.join(folder, name), path) for name in dirs + files]
        out[path] = sorted(found)
    return out


def verify(uri: str, optuna_url: str, state_dir: Path, victim: str, worker: str, head: str,
           before: Path, after: Path) -> list[str]:
    """The end checks; returns the failures (empty: all passed). Prints what it checked."""
    import optuna
    from mlflow.tracking import MlflowClient

    failures = []

    def check(ok: bool, what: str) -> None:
        print(f"  {'ok  ' if ok else 'FAIL'} {what}")
        if not ok:
            failures.append(what)

    plan = json.loads((state_dir / STUDY / "plan.json").read_text())
    keys = {t["key"]: t for t in plan["trials"]}
    runs = trial_runs(uri)
    by_key: dict[str, list] = {}
    for run in runs:
        by_key.setdefault(run.data.tags.get("trial_key"), []).append(run)
    check(sorted(by_key) == sorted(keys) and all(len(v) == 1 for v in by_key.values()),
          f"one MLflow run per trial: {len(runs)} runs for {len(keys)} trials")
    check(all(r.info.status != "RUNNING" for r in runs), "no MLflow run left RUNNING")
    statuses = {k: v[0].data.tags.get("status") for k, v in by_key.items()}
    check(all(s in ("completed", "pruned") for s in statuses.values()),
          f"every trial completed or pruned: {sorted(set(statuses.values()))}")
    client = MlflowClient(uri)
    missing, duplicated = [], []
    for key, spec in keys.items():
        metric = spec.get("metric") or plan["metric"]
        run = by_key.get(key, [None])[0]
        if run is None or metric not in run.data.metrics:
            missing.append(key)
            continue
        steps = [m.step for m in client.get_metric_history(run.info.run_id, metric)]
        if len(steps) != len(set(steps)):
            duplicated.append(key)
    check(not missing, f"every trial's metric present ({plan['metric']} or its own){': ' + str(missing) if missing else ''}")
    check(not duplicated, f"no step logged twice after the restarts{': ' + str(duplicated) if duplicated else ''}")
    parent = client.search_runs([runs[0].info.experiment_id], "tags.role = 'study'")
    check(len(parent) == 1 and parent[0].info.status == "FINISHED", "the study's parent run FINISHED")
    # the node loss: the victim's later attempt ran on the head from a checkpoint
    tags = by_key[victim][0].data.tags
    starts = [int(s) for s in tags.get("start_steps", "0").split(",")]
    check(int(tags.get("attempts", "0")) >= 2 and tags.get("ray_node_id") == head and max(starts) > 0,
          f"{victim} (on the killed node {worker[:8]}) finished on the head {head[:8]} from its checkpoint: "
          f"attempts {tags.get('attempts')}, start_steps {tags.get('start_steps')}")
    resumed = [k for k, v in by_key.items() if k != victim and any(
        int(s) > 0 for s in v[0].data.tags.get("start_steps", "0").split(","))]  # the victim's is the node's
    history = json.loads((state_dir / STUDY / "history.json").read_text())
    invocations = history if isinstance(history, list) else history.get("invocations", history.get("runs", []))
    check(len(invocations) >= 2 and bool(resumed),
          f"the driver was killed and --resume continued: {len(invocations)} invocations, "
          f"trials continued from a checkpoint: {resumed}")
    # Optuna: one trial per study trial, each COMPLETE (with its value) or PRUNED
    states = {}
    for summary in optuna.get_all_study_summaries(optuna_url):
        for trial in optuna.load_study(study_name=summary.study_name, storage=optuna_url).get_trials():
            states[trial.user_attrs.get("trial_key")] = (trial.state.name, trial.value)
    check(sorted(states) == sorted(keys), f"one Optuna trial per study trial: {len(states)} for {len(keys)}")
    check(all(s == "PRUNED" or (s == "COMPLETE" and v is not None) for s, v in states.values()),
          f"Optuna: every trial COMPLETE with a value or PRUNED: {sorted({s for s, _ in states.values()})}")
    # nothing written outside the given paths
    old, new = json.loads(before.read_text()), json.loads(after.read_text())
    for path, files in new.items():
        added = sorted(set(files) - set(old.get(path, [])))
        check(not added, f"nothing new under {path}{': ' + ', '.join(added[:8]) if added else ''}")
    return failures


NODE = Name(r"[\w.:-]+", "a Ray node id or a trial key", "0123abcd")


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m benchmarks.cluster_rehearsal", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("grid").add_argument("out", type=OutputFile(".yaml", ".yml", writer="YAML"))
    sub.add_parser("stand-in").add_argument("out", type=OutputFile(".pt", writer="TorchScript"))
    sub.add_parser("serve").add_argument("root", type=OutputDir())
    n = sub.add_parser("node-id")
    n.add_argument("address", type=RayAddress())
    n.add_argument("temp_dir", type=InputPath("dir"))
    w = sub.add_parser("wait")
    w.add_argument("event", choices=("on-node", "moved", "partial"))
    w.add_argument("uri", type=MlflowUri())
    w.add_argument("node", nargs="?", default=None, type=NODE)
    w.add_argument("--timeout", type=Number(float, 0, 86_400, low_open=True), default=600)
    s = sub.add_parser("snapshot")
    s.add_argument("out", type=OutputFile(".json", writer="JSON"))
    s.add_argument("paths", nargs="+", type=InputPath("any", missing_ok=True))
    v = sub.add_parser("verify")
    v.add_argument("uri", type=MlflowUri())
    v.add_argument("optuna_url", type=OptunaStorage())
    v.add_argument("state_dir", type=InputPath("dir"))
    for name in ("victim", "worker", "head"):
        v.add_argument(name, type=NODE)
    for name in ("before", "after"):
        v.add_argument(name, type=InputPath("file"))
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # every argument checked by its class (ddgan/cli.py)
    for name in ("out", "root"):
        if getattr(args, name, None) is not None:
            setattr(args, name, Path(getattr(args, name)))
    if args.command == "grid":
        print(derive_grid(args.out))
    elif args.command == "stand-in":
        print(stand_in(args.out))
    elif args.command == "serve":
        serve(args.root)
    elif args.command == "node-id":
        print(node_id(args.address, args.temp_dir))
    elif args.command == "wait":
        print(wait(args.event, args.uri, args.node or "", args.timeout))
    elif args.command == "snapshot":
        args.out.write_text(json.dumps(snapshot(args.paths)))
    else:
        failures = verify(args.uri, args.optuna_url, Path(args.state_dir), args.victim, args.worker, args.head,
                          Path(args.before), Path(args.after))
        return 1 if failures else 0
    return 0


if __name__ == "__main__":
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    sys.exit(run_cli(main))
