"""`python -m study.run` and `study.ui`: bad input is one line on stderr, exit 2, nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ddgan.cli import run_cli
from study import run as run_cli_module
from study import ui
from study.grid import GRID_DIR


def grid_file(tmp_path: Path, **changes) -> str:
    grid = yaml.safe_load((GRID_DIR / "test_pruning.yaml").read_text())
    grid["base"] = {m: str(GRID_DIR / p) for m, p in grid["base"].items()}
    grid.update(changes)
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    return str(path)


def previous_study(tmp_path: Path, fingerprint: str = "0" * 16) -> str:
    plan = tmp_path / "results" / "test_pruning" / "plan.json"
    plan.parent.mkdir(parents=True)
    plan.write_text(json.dumps({"fingerprint": fingerprint}))
    return "test_pruning"


CASES = [
    ("unknown grid name", lambda t, d: ["--grid", "nope"], "unknown grid 'nope'"),
    ("grid file missing", lambda t, d: ["--grid", str(t / "missing.yaml")], "not found"),
    ("unknown grid key", lambda t, d: ["--grid", grid_file(t, pruner={"knd": "median"})], "valid keys"),
    ("metric never reported", lambda t, d: ["--grid", grid_file(t, metric="eval/fd_fmnist_2k")], "not reported"),
    ("malformed MLflow URI", lambda t, d: ["--grid", "test_pruning", "--mlflow-uri", "mlruns"], "malformed MLflow"),
    ("malformed Optuna URL", lambda t, d: ["--grid", "test_pruning", "--optuna-storage", "nope.db"],
     "malformed Optuna"),
    ("malformed address", lambda t, d: ["--grid", "test_pruning", "--address", "not an address"],
     "malformed --address"),
    ("GPUs on a machine without", lambda t, d: ["--grid", "test_pruning", "--gpus-per-trial", "0.25"], "GPU"),
    ("zero max concurrent", lambda t, d: ["--grid", "test_pruning", "--max-concurrent", "0"], "--max-concurrent"),
    ("data directory missing", lambda t, d: ["--grid", "test_pruning", "--data-dir", str(t / "no-data")],
     "no-data"),
    ("resume without a study", lambda t, d: ["--grid", "test_pruning", "--resume"], "no previous study"),
    ("resume a changed grid", lambda t, d: ["--grid", previous_study(t), "--resume"], "grid changed"),
    ("study exists already", lambda t, d: ["--grid", previous_study(t)], "already exists"),
    ("bad study name", lambda t, d: ["--grid", "test_pruning", "--study", "a/b"], "--study"),
]


@pytest.mark.parametrize(("name", "argv", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, fmnist_dir, capsys, name, argv, message):
    import torch

    if name == "GPUs on a machine without" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    args = [*argv(tmp_path, fmnist_dir), "--results-dir", str(tmp_path / "results")]
    before = sorted(p for p in tmp_path.rglob("*"))
    if "--data-dir" not in args:
        args += ["--data-dir", str(fmnist_dir)]
    assert run_cli(run_cli_module.main, args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err, err
    assert sorted(p for p in tmp_path.rglob("*")) == before  # nothing written


def test_ui_binds_to_loopback_with_the_absolute_store(tmp_path):
    (tmp_path / "mlflow.db").write_bytes(b"")
    command = ui.ui_command(tmp_path, None, "127.0.0.1", 5000)
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert command[command.index("--backend-store-uri") + 1] == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert ui.parse_args([]).host == "127.0.0.1"


def test_ui_without_a_store_is_a_usage_error(tmp_path, capsys):
    assert run_cli(ui.main, ["--results-dir", str(tmp_path)]) == 2
    assert "no MLflow store" in capsys.readouterr().err
