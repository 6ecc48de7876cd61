"""Bad input is refused before anything starts: one line on stderr, exit code 2, nothing written.

One table (`CASES`) drives `python -m study.run` (and `ddgan.train`, `ddgan.sample`,
`study.export` where the input belongs to them). Most rows call the CLI's `main` in-process
through `ddgan.cli.run_cli` (fast), with `ray.init` and store creation patched to fail the
test if reached; the rows marked `subprocess` run the real `python -m ...` to prove the exit
code. Every row checks: exit code 2, exactly one stderr line starting `error: ` that holds
the expected words, nothing on stdout, and the directory tree unchanged.

Plus the security checks of the same issue: every `torch.load` uses `weights_only=True`,
the MLflow UI binds to 127.0.0.1 by default, and URIs are masked wherever they are shown.
"""

from __future__ import annotations

import gzip
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ddgan.cli import run_cli

REPO = Path(__file__).resolve().parents[1]
KEY = "ddgan-ns-T1-lr0.001-s0"  # the one trial of the base grid below


def base_grid() -> dict:
    return {
        "name": "bad", "base": {"ddgan": str(REPO / "configs" / "ddgan.yaml")},
        "overrides": ["model.preset=tiny", "train.device=cpu", "train.batch_size=16"],
        "ddgan": {"losses": ["ns"], "T": [1], "lr": [1.0e-3]},
        "budget": {"steps": 20},
        "eval": {"every": 10, "n_samples": 64, "batch_size": 64, "metrics": ["fd_test-extractor"]},
        "metric": "eval/fd_test-extractor_64",
        "pruner": {"kind": "none"},
        "resources": {"cpus": 1},
    }


@dataclass
class Env:
    """What a row may build (before the snapshot) in its own temporary directory."""

    tmp: Path
    data: Path  # the real Fashion-MNIST directory

    @property
    def results(self) -> Path:
        return self.tmp / "results"

    def grid(self, **changes) -> str:
        """The base grid with dotted `changes` (`ddgan.T=[0]`); a value None deletes the key."""
        grid = base_grid()
        for dotted, value in changes.items():
            *parents, last = dotted.split(".")
            node = grid
            for name in parents:
                node = node.setdefault(name, {})
            if value is None:
                node.pop(last, None)
            else:
                node[last] = value
        path = self.tmp / "grid.yaml"
        path.write_text(yaml.safe_dump(grid))
        return str(path)

    def text_file(self, name: str, text: str) -> str:
        path = self.tmp / name
        path.write_text(text)
        return str(path)

    def data_dir(self, broken: str) -> str:
        """A data directory: the real files, except `broken` (truncated | magic | counts)."""
        folder = self.tmp / f"data-{broken}"
        folder.mkdir()
        for path in self.data.iterdir():
            if path.name.endswith("-ubyte.gz"):
                (folder / path.name).symlink_to(path.resolve())  # DDGAN_DATA_DIR may be relative
        if broken == "counts":  # 59,999 labels for 60,000 images
            (folder / "train-labels-idx1-ubyte.gz").unlink()
            labels = np.zeros(59_999, np.uint8)
            (folder / "train-labels-idx1-ubyte").write_bytes(idx_header(2049, len(labels)) + labels.tobytes())
        else:
            (folder / "train-images-idx3-ubyte.gz").unlink()
            if broken == "truncated":  # header says 60,000 images, the file holds 1,000
                body = idx_header(2051, 60_000, 28, 28) + bytes(1000 * 28 * 28)
                (folder / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(body, compresslevel=1))
            else:  # not an IDX file at all
                (folder / "train-images-idx3-ubyte").write_bytes(b"PK\x03\x04 certainly not IDX" * 10)
        return str(folder)

    def previous_study(self, grid: str, changed: dict | None = None, corrupt_checkpoint: bool = False) -> str:
        """A study as `study.run` leaves it (plan.json), then optionally the grid changed or
        a Ray trial checkpoint truncated. Returns the grid path to resume."""
        from study.driver import StudyOptions, prepare, write_plan_file

        prep = prepare(StudyOptions(grid=grid, results_dir=str(self.results), data_dir=str(self.data)))
        prep.stores.study_dir.mkdir(parents=True)
        write_plan_file(prep)
        if corrupt_checkpoint:
            saved = prep.stores.study_dir / "ray" / "train" / KEY / "checkpoint_000000"
            saved.mkdir(parents=True)
            (saved / "ckpt_0000010.pt").write_bytes(tiny_checkpoint_bytes()[:300])  # truncated zip
        return self.grid(**changed) if changed else grid

    def run_dir_with_corrupt_checkpoint(self) -> str:
        run = self.tmp / "run"
        (run / "checkpoints").mkdir(parents=True)
        (run / "checkpoints" / "ckpt_0000010.pt").write_bytes(b"\x00garbage, not a zip archive" * 50)
        return str(run)

    def tampered_export(self) -> str:
        from ddgan.export import write_export
        from ddgan.nets import build_networks

        cfg = _tiny_config()
        generator = build_networks(cfg.model, cfg.method)["generator"]
        export = self.tmp / "export"
        write_export(export, cfg, generator.state_dict(), {"eval/fd": 1.0})
        weights = export / "model.safetensors"
        blob = bytearray(weights.read_bytes())
        blob[-1] ^= 0x01  # one bit of one weight
        weights.write_bytes(bytes(blob))
        return str(export)

    def torchscript_not_inception(self) -> str:
        import warnings

        path = self.tmp / "linear.pt"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is "deprecated"; Inception ships as it
            torch.jit.save(torch.jit.script(torch.nn.Linear(4, 2)), str(path))
        return str(path)

    def unwritable_results(self) -> str:
        blocker = self.tmp / "a-file"
        blocker.write_text("a file where the results directory should be (unwritable even for root)")
        return str(blocker / "results")


def idx_header(magic: int, *dims: int) -> bytes:
    return np.array([magic, *dims], dtype=">u4").tobytes()


def _tiny_config():
    from ddgan.config import read_yaml, resolve_config

    return resolve_config(read_yaml(REPO / "configs" / "ddgan.yaml"), ["model.preset=tiny"])


def tiny_checkpoint_bytes() -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save({"format_version": 1, "step": 10, "weights": torch.zeros(64, 64)}, buffer)
    return buffer.getvalue()


@dataclass(frozen=True)
class Case:
    name: str
    cli: str  # module: study.run | ddgan.train | ddgan.sample | study.export
    argv: Callable[[Env], list[str]]
    message: str  # a regular expression the error line must match
    subprocess: bool = False


def run(argv: Callable[[Env], list[str]]) -> Callable[[Env], list[str]]:
    """study.run rows: the results, data and cache directories default to the row's own."""
    def build(env: Env) -> list[str]:
        args = argv(env)
        defaults = {"--results-dir": str(env.results), "--data-dir": str(env.data),
                    "--cache-dir": str(env.tmp / "cache")}
        return args + [x for flag, value in defaults.items() if flag not in args for x in (flag, value)]
    return build


CASES = [
    # -- the grid ------------------------------------------------------------------------------
    Case("unknown grid name", "study.run", run(lambda e: ["--grid", "no_such_grid"]),
         r"unknown grid 'no_such_grid'; valid: .*smoke", subprocess=True),
    Case("grid file missing", "study.run", run(lambda e: ["--grid", str(e.tmp / "missing.yaml")]),
         r"grid file .*missing\.yaml' not found"),
    Case("grid file not YAML", "study.run", run(lambda e: ["--grid", e.text_file("g.yaml", "name: [bad\n  x: {")]),
         r"is not valid YAML at line"),
    Case("grid file not a mapping", "study.run", run(lambda e: ["--grid", e.text_file("g.yaml", "- a\n- b\n")]),
         r"must hold a mapping"),
    Case("unknown top-level key", "study.run", run(lambda e: ["--grid", e.grid(metrik="eval/x")]),
         r"unknown key 'metrik' \(valid keys: name, .*metric"),
    Case("unknown nested key", "study.run", run(lambda e: ["--grid", e.grid(**{"pruner.knd": "median"})]),
         r"unknown key 'pruner\.knd' \(valid keys: kind, "),
    Case("unknown config key in an override", "study.run",
         run(lambda e: ["--grid", e.grid(overrides=["model.preset=tiny", "train.lrr=1"])]),
         r"unknown key 'train\.lrr'.*valid keys: .*lr_g"),
    Case("T < 1", "study.run", run(lambda e: ["--grid", e.grid(**{"ddgan.T": [0]})]),
         r"ddgan\.T\.0: .*greater than or equal to 1"),
    Case("T not an integer", "study.run", run(lambda e: ["--grid", e.grid(**{"ddgan.T": [2.5]})]),
         r"ddgan\.T\.0: .*integer"),
    Case("learning rate zero", "study.run", run(lambda e: ["--grid", e.grid(**{"ddgan.lr": [0.0]})]),
         r"ddgan\.lr\.0: .*greater than 0"),
    Case("learning rate negative", "study.run", run(lambda e: ["--grid", e.grid(**{"ddgan.lr": [-1e-4]})]),
         r"ddgan\.lr\.0: .*greater than 0"),
    Case("unknown loss", "study.run", run(lambda e: ["--grid", e.grid(**{"ddgan.losses": ["ns", "wasserstein"]})]),
         r"unknown loss 'wasserstein'; valid: .*hellinger.*rkl.*tv"),
    Case("empty axis", "study.run", run(lambda e: ["--grid", e.grid(**{"ddgan.losses": []})]),
         r"ddgan\.losses: .*at least 1 item"),
    Case("evaluation interval zero", "study.run", run(lambda e: ["--grid", e.grid(**{"eval.every": 0})]),
         r"eval\.every: .*greater than or equal to 1"),
    Case("evaluation interval negative", "study.run", run(lambda e: ["--grid", e.grid(**{"eval.every": -10})]),
         r"eval\.every: .*greater than or equal to 1"),
    Case("schedule invalid at this T", "study.run",
         run(lambda e: ["--grid", e.grid(**{"base.ddpm": str(REPO / "configs" / "ddpm.yaml"),
                                            "ddpm": {"lr": [1.0e-3], "respaced": {"T": 2, "steps": [1]}}})]),
         r"trial ddpm-T2-lr0.001-s0: diffusion: linear schedule with T=2 gives betas >= 1"),
    Case("fractional GPUs, no GPU", "study.run", run(lambda e: ["--grid", e.grid(), "--gpus-per-trial", "0.25"]),
         r"0\.25 GPU\(s\) per trial requested but this machine has no GPU"),
    # -- the data ------------------------------------------------------------------------------
    Case("data directory missing", "study.run", run(lambda e: ["--grid", e.grid(), "--data-dir", str(e.tmp / "nope")]),
         r"data directory .*nope' not found"),
    Case("truncated IDX file", "study.run",
         run(lambda e: ["--grid", e.grid(), "--data-dir", e.data_dir("truncated")]),
         r"train-images-idx3-ubyte\.gz is truncated: .* bytes where its header \(60000, 28, 28\) implies"),
    Case("corrupt IDX file", "study.run", run(lambda e: ["--grid", e.grid(), "--data-dir", e.data_dir("magic")]),
         r"train-images-idx3-ubyte is not a Fashion-MNIST IDX file \(magic"),
    Case("labels and images counts differ", "study.run",
         run(lambda e: ["--grid", e.grid(), "--data-dir", e.data_dir("counts")]),
         r"holds 60000 images but .*train-labels-idx1-ubyte holds 59999 labels"),
    Case("FID weights file missing", "study.run",
         run(lambda e: ["--grid", e.grid(**{"eval.final_metrics": ["fid_inception"]}),
                        "--fid-weights", str(e.tmp / "inception.pt")]),
         r"--fid-weights: FID weights file .*inception\.pt \(from argument\) not found"),
    Case("FID weights not TorchScript", "study.run",
         run(lambda e: ["--grid", e.grid(**{"eval.final_metrics": ["fid_inception"]}),
                        "--fid-weights", e.text_file("inception.pt", "not a model")]),
         r"--fid-weights: .*inception\.pt is not a TorchScript file"),
    Case("FID weights TorchScript but not Inception", "study.run",
         run(lambda e: ["--grid", e.grid(**{"eval.final_metrics": ["fid_inception"]}),
                        "--fid-weights", e.torchscript_not_inception()]),
         r"--fid-weights: .*linear\.pt is neither NVIDIA's .* nor|--fid-weights: .*linear\.pt fails on a 299x299"),
    # -- the stores ----------------------------------------------------------------------------
    Case("output directory not writable", "study.run",
         run(lambda e: ["--grid", e.grid(), "--results-dir", e.unwritable_results()]),
         r"results directory .*a-file/results' is not writable"),
    Case("malformed MLflow URI", "study.run", run(lambda e: ["--grid", e.grid(), "--mlflow-uri", "file:///tmp/mlruns"]),
         r"malformed MLflow URI 'file:///tmp/mlruns': scheme must be one of .*sqlite"),
    Case("malformed Optuna storage URL", "study.run",
         run(lambda e: ["--grid", e.grid(), "--optuna-storage", "postgresql://user:hunter2@:5432"]),
         r"malformed Optuna storage 'postgresql://user:\*\*\*@:5432': no host", subprocess=True),
    # -- resume --------------------------------------------------------------------------------
    Case("--resume with no previous study", "study.run", run(lambda e: ["--grid", e.grid(), "--resume"]),
         r"--resume: no previous study 'bad'"),
    Case("--resume with a changed grid", "study.run",
         run(lambda e: ["--grid", e.previous_study(e.grid(), changed={"ddgan.lr": [2.0e-3]}), "--resume"]),
         r"--resume: the grid changed since study 'bad' started"),
    Case("--resume with a corrupt checkpoint", "study.run",
         run(lambda e: ["--grid", e.previous_study(e.grid(), corrupt_checkpoint=True), "--resume"]),
         r"--resume: checkpoint .*checkpoint_000000/ckpt_0000010\.pt' is unreadable or corrupt"),
    Case("ddgan.train --resume with a corrupt checkpoint", "ddgan.train",
         lambda e: ["--config", str(REPO / "configs" / "ddgan.yaml"), "--set", "model.preset=tiny",
                    "--set", "train.device=cpu", "--out", e.run_dir_with_corrupt_checkpoint(), "--resume",
                    "--data-dir", str(e.data), "--quiet"],
         r"checkpoint .*ckpt_0000010\.pt' is unreadable or corrupt"),
    # -- exported models -----------------------------------------------------------------------
    Case("exported model with a tampered file", "ddgan.sample",
         lambda e: ["--checkpoint", e.tampered_export(), "--out", str(e.tmp / "grid.png"), "--device", "cpu"],
         r"export file .*model\.safetensors' does not match its sha256 in manifest\.json", subprocess=True),
    Case("export with no study store", "study.export",
         lambda e: ["--top-k", "1", "--per", "cell", "--results-dir", str(e.results), "--out", str(e.tmp / "x")],
         r"no MLflow store at .*results/mlflow.db.: run `python -m study.run` first"),
]


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in root.rglob("*")}


def cli_main(module: str):
    import importlib

    return importlib.import_module(module).main


@pytest.fixture
def nothing_starts(monkeypatch):
    """In-process rows: reaching Ray or the creation of the stores fails the test."""
    import ray

    import study.stores

    def refuse(*args, **kwargs):
        raise AssertionError("started something on bad input")

    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.setattr(study.stores, "init_stores", refuse)
    monkeypatch.delenv("DDGAN_FID_WEIGHTS", raising=False)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_one_line_exit_2_nothing_started_nothing_written(case, tmp_path, fmnist_dir, capsys, nothing_starts):
    if case.name == "fractional GPUs, no GPU" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    env = Env(tmp_path, fmnist_dir)
    argv = case.argv(env)
    before = snapshot(tmp_path)
    if case.subprocess:
        done = subprocess.run([sys.executable, "-m", case.cli, *argv], cwd=tmp_path, capture_output=True,
                              text=True, timeout=120, env=_env_without_fid_weights())
        code, out, err = done.returncode, done.stdout, done.stderr
    else:
        code = run_cli(cli_main(case.cli), argv)
        out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, f"exit {code}\n{err[-2000:]}"
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-2000:]
    assert re.search(case.message, lines[0]), lines[0]
    assert out == ""
    assert snapshot(tmp_path) == before, "something was written"
    assert "hunter2" not in err


def _env_without_fid_weights() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "DDGAN_FID_WEIGHTS"}


def test_the_table_covers_the_issue():
    assert len(CASES) >= 20
    assert len({c.name for c in CASES}) == len(CASES)
    assert sum(c.subprocess for c in CASES) >= 3


# -- security ---------------------------------------------------------------------------------


def _python_sources() -> list[Path]:
    return [p for folder in ("ddgan", "study", "benchmarks", "scripts") if (REPO / folder).is_dir()
            for p in sorted((REPO / folder).rglob("*.py"))]


def test_every_torch_load_uses_weights_only():
    """No pickle of arbitrary objects: every torch.load in the code passes weights_only=True."""
    calls = []
    for path in _python_sources():
        text = path.read_text()
        for match in re.finditer(r"torch\.load\(", text):
            depth, i = 1, match.end()
            while depth and i < len(text):  # the whole call, nested parentheses included
                depth += {"(": 1, ")": -1}.get(text[i], 0)
                i += 1
            call = text[match.start():i]
            calls.append((path.relative_to(REPO), call))
            assert "weights_only=True" in call, f"{path.relative_to(REPO)}: {call}"
    assert calls, "found no torch.load at all: did the source layout change?"
    for path in _python_sources():
        text = path.read_text()
        assert "pickle.load" not in text and "weights_only=False" not in text, path


def test_servers_started_by_the_project_bind_to_loopback():
    from study import ui

    assert ui.parse_args([]).host == "127.0.0.1"
    assert "0.0.0.0" not in "".join(p.read_text() for p in _python_sources())


def test_passwords_are_masked_in_errors_plans_and_the_recorded_command(tmp_path, fmnist_dir, capsys):
    """A password in a store URI never reaches an error line, the printed stores or the command
    recorded on the parent run, whatever its spelling (`--flag=URI`, an unencoded '/' or '@')."""
    from study import run as study_run
    from study.driver import StudyOptions, study_command
    from study.stores import mask_uri, resolve_stores

    secret = "s3cr3t-pw"
    code = run_cli(study_run.main, ["--grid", Env(tmp_path, fmnist_dir).grid(), "--dry-run",
                                    "--data-dir", str(fmnist_dir), "--results-dir", str(tmp_path / "r"),
                                    "--optuna-storage", f"postgresql://ddgan:{secret}@127.0.0.1:1/optuna"])
    out, err = capsys.readouterr()
    assert code == 2 and secret not in out + err and "ddgan:***@127.0.0.1:1" in err, err
    stores = resolve_stores("s", tmp_path / "r", mlflow_uri=f"http://u:{secret}@mlflow:5000",
                            optuna_storage=f"postgresql://u:{secret}@db/optuna")
    assert secret not in str(stores.describe())
    command = (f"python -m study.run --optuna-storage=postgresql://u:{secret}@db/o "
               f"--mlflow-uri http://u:{secret}@mlflow:5000")
    assert secret not in study_command(StudyOptions(grid="g", command=command))
    for uri in (f"postgresql://u:{secret}/x@db/o", f"postgresql://u:{secret}@x@db/o", f"mysql://u@h/d?password={secret}"):
        assert secret not in mask_uri(uri), uri
