"""The train/sample CLIs: bad input gives one line, exit code 2, and writes nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ddgan import sample as sample_cli
from ddgan import train as train_cli
from ddgan.cli import run_cli

ROOT = Path(__file__).resolve().parents[1]


def write_config(path: Path, **sections) -> Path:
    base = {"method": "ddgan", "model": {"preset": "tiny"}, "diffusion": {"T": 2},
            "train": {"steps": 4, "batch_size": 8, "device": "cpu", "log_every": 2},
            "data": {"subset": 64}, "eval": {"every": 2, "n_samples": 16, "batch_size": 16}}
    for key, value in sections.items():
        base.setdefault(key, {}).update(value) if isinstance(value, dict) else base.__setitem__(key, value)
    path.write_text(yaml.safe_dump(base))
    return path


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*")) if path.exists() else []


BAD_TRAIN = [
    ("missing config", lambda tmp: ["--config", str(tmp / "nope.yaml")], "not found"),
    ("unknown key", lambda tmp: ["--config", str(write_config(tmp / "c.yaml", train={"lrr": 1}))], "valid keys"),
    ("unknown override key", lambda tmp: ["--config", str(write_config(tmp / "c.yaml")), "--set", "train.lrr=1"],
     "valid keys"),
    ("T below 1", lambda tmp: ["--config", str(write_config(tmp / "c.yaml")), "--set", "diffusion.T=0"], "diffusion.T"),
    ("T not an integer", lambda tmp: ["--config", str(write_config(tmp / "c.yaml")), "--set", "diffusion.T=2.5"],
     "diffusion.T"),
    ("lr not positive", lambda tmp: ["--config", str(write_config(tmp / "c.yaml")), "--set", "train.lr_g=0"],
     "train.lr_g"),
    ("unknown loss", lambda tmp: ["--config", str(write_config(tmp / "c.yaml")), "--set", "objective.loss=kl"],
     "hellinger"),
    ("not yaml", lambda tmp: ["--config", str(_write(tmp / "c.yaml", "a: [1, 2"))], "not valid YAML"),
]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("name,make_args,needle", BAD_TRAIN, ids=[c[0] for c in BAD_TRAIN])
def test_train_cli_bad_input(tmp_path, capsys, name, make_args, needle):
    out = tmp_path / "run"
    args = make_args(tmp_path) + ["--out", str(out)]
    before = files_under(tmp_path)
    assert run_cli(train_cli.main, args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and needle in err[0], err
    assert files_under(tmp_path) == before and not out.exists()


def test_train_cli_unwritable_output(tmp_path, capsys):
    if os.geteuid() == 0:  # root writes through permission bits: put the run under a regular file
        target = _write(tmp_path / "a-file", "x") / "run"
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        target = locked / "run"
    args = ["--config", str(write_config(tmp_path / "c.yaml")), "--out", str(target)]
    assert run_cli(train_cli.main, args) == 2
    assert "not writable" in capsys.readouterr().err


def test_sample_cli_unreadable_checkpoint(tmp_path, capsys):
    bad = _write(tmp_path / "ckpt_0000001.pt", "garbage, not a checkpoint")
    out = tmp_path / "grid.png"
    assert run_cli(sample_cli.main, ["--checkpoint", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unreadable or corrupt" in err[0]
    assert not out.exists()


def test_train_then_sample_end_to_end(tmp_path, fmnist_dir):
    """The documented commands, as subprocesses: train a tiny DDGAN on real data, resume, then sample."""
    cfg = write_config(tmp_path / "c.yaml", data={"dir": str(fmnist_dir), "subset": 64})
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "ddgan.train", "--config", str(cfg), "--out", str(run), "--quiet"],
                   check=True, env=env, capture_output=True)
    assert (run / "config.yaml").exists() and list((run / "checkpoints").glob("ckpt_*.pt"))
    assert list((run / "samples").glob("*.png"))
    resumed = subprocess.run([sys.executable, "-m", "ddgan.train", "--config", str(cfg), "--out", str(run),
                              "--resume", "--set", "train.steps=6", "--quiet"],
                             env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "completed at step 6" in resumed.stdout
    grid = tmp_path / "grid.png"
    subprocess.run([sys.executable, "-m", "ddgan.sample", "--checkpoint", str(run), "--n", "16", "--out", str(grid),
                    "--device", "cpu"], check=True, env=env, capture_output=True)
    assert grid.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


CLIS = ["ddgan.train", "ddgan.sample", "ddgan.params", "ddgan.metrics.train_classifier", "study.run",
        "study.report.cli", "study.export", "study.final_fid", "study.ui"]


@pytest.mark.parametrize("module", CLIS)
def test_every_cli_reports_a_wrong_flag_in_one_line(module, capsys):
    """argparse's 12-line usage block is gone: an unknown flag is one line, exit code 2."""
    import importlib

    main = importlib.import_module(module).main
    assert run_cli(main, ["--no-such-flag", "1"]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert out == "" and len(lines) == 1, err
    assert lines[0].startswith("error: ") and "--help" in lines[0], lines[0]
    assert "unrecognized arguments: --no-such-flag" in lines[0] or "arguments are required" in lines[0], lines[0]
