"""Bad input is refused before anything starts: one line on stderr, exit code 2, nothing written.

One table (`CASES`) drives `python -m study.run` (and `ddgan.train`, `ddgan.sample`,
`study.export` where the input belongs to them). Most rows call the CLI's `main` in-process
through `ddgan.cli.run_cli` (fast), with `ray.init` and store creation patched to fail the
test if reached; the rows marked `subprocess` run the real `python -m ...` to prove the exit
code. Every row checks: exit code 2, at most 4 stderr lines, exactly one of them starting
`error: ` and holding the expected words, no traceback, nothing on stdout, the directory tree
(the reference cache included) unchanged, and an answer within `limit` seconds (10 for every
refusal that needs no network: SIGALRM in-process, the subprocess timeout otherwise).

The rows follow the classes of issue 17: values that validate but cannot work, files that
are not what they claim, paths, sizes that would hang, partial writes, argparse's usage block.

Plus the security checks of the same issue: every `torch.load` uses `weights_only=True`,
the MLflow UI binds to 127.0.0.1 by default, and URIs are masked wherever they are shown.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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

    # -- issue 17 ------------------------------------------------------------------------------
    def symlink_loop(self, name: str = "loop") -> str:
        """`name` -> `name`: resolving it never ends (ELOOP)."""
        link = self.tmp / name
        link.symlink_to(name)
        return str(link)

    def below_a_file(self, name: str) -> str:
        """A path whose parent is a regular file."""
        return str(Path(self.text_file("a-file", "a regular file, not a directory")) / name)

    def run_dir(self, problem: str | None = None) -> str:
        """A run directory with one checkpoint in the trainer's format, broken as `problem` says:
        mismatch (config and weights differ) | no-config | nan | no-optimizers | other-model."""
        cfg = _tiny_config()
        state = _training_state(cfg)
        if problem == "mismatch":  # the config claims wider networks than the weights hold
            state["config"]["model"]["base_channels"] *= 2
        elif problem == "no-config":
            del state["config"]
        elif problem == "nan":
            first = next(k for k, v in state["ema"]["generator"].items() if v.is_floating_point())
            state["ema"]["generator"][first] = torch.full_like(state["ema"]["generator"][first], float("nan"))
        elif problem == "no-optimizers":
            del state["optimizers"]
        run = self.tmp / "run"
        from ddgan.checkpoint import save_checkpoint

        save_checkpoint(run / "checkpoints" / "ckpt_0000001.pt", state)
        return str(run)

    def export_dir(self, problem: str) -> str:
        """A valid export, then: network (the manifest names a network that is not there) |
        unlisted (the manifest lists no files) | mismatch (config.yaml edited and re-hashed)."""
        from ddgan.export import write_export
        from ddgan.metrics.digest import sha256_file
        from ddgan.nets import build_networks

        cfg = _tiny_config()
        export = self.tmp / "export"
        manifest_file = write_export(export, cfg, build_networks(cfg.model, cfg.method)["generator"].state_dict())
        manifest = json.loads(manifest_file.read_text())
        if problem == "network":
            manifest["network"] = "discriminator"
        elif problem == "unlisted":
            manifest["files"] = {}
        elif problem == "mismatch":
            raw = yaml.safe_load((export / "config.yaml").read_text())
            raw["model"]["base_channels"] *= 2
            (export / "config.yaml").write_text(yaml.safe_dump(raw))
            manifest["files"]["config.yaml"] = sha256_file(export / "config.yaml")
        manifest_file.write_text(json.dumps(manifest))
        return str(export)

    def gzip_bomb_data(self) -> str:
        """The real data, except train images: a small .gz that inflates past any IDX file's size."""
        folder = self.tmp / "data-bomb"
        folder.mkdir()
        for path in self.data.iterdir():
            if path.name.endswith("-ubyte.gz") and not path.name.startswith("train-images"):
                (folder / path.name).symlink_to(path.resolve())
        body = idx_header(2051, 90_000, 28, 28) + bytes(90_000 * 28 * 28)  # 70.6 MB of zeros
        (folder / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(body, compresslevel=1))
        return str(folder)


def idx_header(magic: int, *dims: int) -> bytes:
    return np.array([magic, *dims], dtype=">u4").tobytes()


def _tiny_config():
    from ddgan.config import read_yaml, resolve_config

    return resolve_config(read_yaml(REPO / "configs" / "ddgan.yaml"), ["model.preset=tiny"])


def _training_state(cfg) -> dict:
    """What the trainer saves (`_Loop.state`), for an untrained method."""
    from ddgan.checkpoint import capture_rng_state
    from ddgan.methods import build_method

    method = build_method(cfg, torch.device("cpu"))
    return {"step": 1, "config": cfg.to_dict(), **method.state_dict(),
            "rng": {**capture_rng_state(), "data": None}, "metrics": {}}


def tiny_checkpoint_bytes() -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save({"format_version": 2, "step": 10, "weights": torch.zeros(64, 64)}, buffer)
    return buffer.getvalue()


@dataclass(frozen=True)
class Case:
    name: str
    cli: str  # module: study.run | ddgan.train | ddgan.sample | study.export
    argv: Callable[[Env], list[str]]
    message: str  # a regular expression the error line must match
    subprocess: bool = False
    limit: int = 10  # seconds; the refusal needs no network


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
         r"unknown grid 'no_such_grid'; valid: .*smoke", subprocess=True, limit=120),  # imports Ray, MLflow
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
                                            "ddpm": {"lr": [1.0e-3],
                                                     "respaced": {"T": 2, "steps": [1], "schedule": "linear"}}})]),
         r"trial ddpm-T2-lr0.001-s0: diffusion: linear schedule with T=2 gives betas >= 1"),
    Case("fractional GPUs, no GPU", "study.run", run(lambda e: ["--grid", e.grid(), "--gpus-per-trial", "0.25"]),
         r"0\.25 GPU\(s\) per trial requested but this machine has no GPU"),
    # -- the data ------------------------------------------------------------------------------
    Case("data directory missing", "study.run", run(lambda e: ["--grid", e.grid(), "--data-dir", str(e.tmp / "nope")]),
         r"--data-dir '.*nope' not found"),
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
         r"--fid-weights '.*inception\.pt' not found"),
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
         r"--(state|results)-dir '.*a-file/results' is not writable: '.*a-file' is a file, not a directory"),
    Case("malformed MLflow URI", "study.run", run(lambda e: ["--grid", e.grid(), "--mlflow-uri", "file:///tmp/mlruns"]),
         r"malformed MLflow URI 'file:///tmp/mlruns': scheme must be one of .*sqlite"),
    Case("malformed Optuna storage URL", "study.run",
         run(lambda e: ["--grid", e.grid(), "--optuna-storage", "postgresql://user:hunter2@:5432"]),
         r"malformed Optuna storage 'postgresql://user:\*\*\*@:5432': no host", subprocess=True, limit=120),
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
         r"export file .*model\.safetensors' does not match its sha256 in manifest\.json", subprocess=True,
         limit=120),  # loads torch and hashes the files before it can refuse
    Case("export with no study store", "study.export",
         lambda e: ["--top-k", "1", "--per", "cell", "--results-dir", str(e.results), "--out", str(e.tmp / "x")],
         r"no MLflow store at .*results/mlflow.db.: run `python -m study.run` first"),
]


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in root.rglob("*")}


def train(argv: Callable[[Env], list[str]]) -> Callable[[Env], list[str]]:
    """ddgan.train rows: the tiny preset on CPU, the real data, a run directory under the row's own."""
    def build(env: Env) -> list[str]:
        args = argv(env)
        defaults = {"--config": str(REPO / "configs" / "ddgan.yaml"), "--out": str(env.tmp / "run"),
                    "--data-dir": str(env.data)}
        fixed = ["--set", "model.preset=tiny", "--set", "train.device=cpu", "--set", "train.steps=2", "--quiet"]
        return fixed + args + [x for flag, value in defaults.items() if flag not in args for x in (flag, value)]
    return build


def sample(argv: Callable[[Env], list[str]]) -> Callable[[Env], list[str]]:
    """ddgan.sample rows: a valid tiny checkpoint and an output file under the row's own directory."""
    def build(env: Env) -> list[str]:
        args = argv(env)
        defaults = {"--out": str(env.tmp / "grid.png"), "--device": "cpu"}
        if "--checkpoint" not in args:
            args = ["--checkpoint", env.run_dir(), *args]
        return args + [x for flag, value in defaults.items() if flag not in args for x in (flag, value)]
    return build


FINITE = r"Input should be a finite number"
CASES += [
    # -- issue 17, class 2: values that validate but cannot work ----------------------------------
    Case("learning rate inf (override)", "ddgan.train", train(lambda e: ["--set", "train.lr_g=inf"]),
         rf"train\.lr_g: {FINITE}"),
    Case("learning rate .nan (override)", "ddgan.train", train(lambda e: ["--set", "train.lr_g=.nan"]),
         rf"train\.lr_g: {FINITE}"),
    Case("learning rate .inf in the config file", "ddgan.train",
         train(lambda e: ["--config", e.text_file("c.yaml", "model: {preset: tiny}\ntrain: {lr_g: .inf}\n")]),
         rf"train\.lr_g: {FINITE}"),
    Case("R1 weight inf", "ddgan.train", train(lambda e: ["--set", "objective.r1_gamma=.inf"]),
         rf"objective\.r1_gamma: {FINITE}"),
    Case("beta_max inf", "ddgan.train", train(lambda e: ["--set", "diffusion.beta_max=.inf"]),
         rf"diffusion\.beta_max: {FINITE}"),
    Case("T of 10^9", "ddgan.train", train(lambda e: ["--set", "diffusion.T=1000000000"]),
         r"diffusion\.T: Input should be less than or equal to 10000"),
    Case("batch size of 10^8", "ddgan.train", train(lambda e: ["--set", "train.batch_size=100000000"]),
         r"train\.batch_size: Input should be less than or equal to 4096"),
    Case("evaluation sample count of 10^9", "ddgan.train", train(lambda e: ["--set", "eval.n_samples=1000000000"]),
         r"eval\.n_samples: Input should be less than or equal to 100000"),
    Case("seed beyond 64 bits", "ddgan.train", train(lambda e: ["--set", f"train.seed={2**70}"]),
         r"train\.seed: Input should be less than or equal to"),
    Case("device that does not exist", "ddgan.train", train(lambda e: ["--set", "train.device=gpu0"]),
         r"train\.device: String should match pattern"),
    # -- class 3: files that are not what they claim ---------------------------------------------
    Case("checkpoint whose config does not match its weights", "ddgan.sample",
         sample(lambda e: ["--checkpoint", e.run_dir("mismatch")]),
         r"ckpt_0000001\.pt': networks\.generator does not match the network its config describes: "
         r"\d+ shape mismatches, 0 missing and 0 unexpected tensors \(first: "),
    Case("checkpoint without a config entry", "ddgan.sample", sample(lambda e: ["--checkpoint", e.run_dir("no-config")]),
         r"ckpt_0000001\.pt' has no 'config' entry; it was not written by ddgan\.train"),
    Case("checkpoint with NaN weights", "ddgan.sample", sample(lambda e: ["--checkpoint", e.run_dir("nan")]),
         r"ema\.generator holds non-finite weights"),
    Case("export whose manifest names a network that is not there", "ddgan.sample",
         sample(lambda e: ["--checkpoint", e.export_dir("network")]),
         r"manifest\.json names network 'discriminator', but a ddgan export holds the 'generator'"),
    Case("export whose manifest lists no files", "ddgan.sample",
         sample(lambda e: ["--checkpoint", e.export_dir("unlisted")]),
         r"manifest\.json lists \[\]; an export lists exactly \['model\.safetensors', 'config\.yaml'"),
    Case("export whose config (re-hashed) does not match its weights", "ddgan.sample",
         sample(lambda e: ["--checkpoint", e.export_dir("mismatch")]),
         r"model\.safetensors does not match the network its config describes"),
    Case("--resume from a checkpoint of another model", "ddgan.train",
         train(lambda e: ["--out", e.run_dir(), "--resume", "--set", "model.base_channels=16"]),
         r"ckpt_0000001\.pt' was trained with a different model config \(model\.base_channels\)"),
    Case("--resume from a checkpoint without optimizer states", "ddgan.train",
         train(lambda e: ["--out", e.run_dir("no-optimizers"), "--resume"]),
         r"ckpt_0000001\.pt' has no 'optimizers' entry; it cannot be resumed"),
    Case("config file not UTF-8", "ddgan.train",
         train(lambda e: ["--config", _latin1(e.tmp / "latin1.yaml")]),
         r"config file .*latin1\.yaml' is not UTF-8 text \(byte 20\)"),
    Case("training data that inflates past any IDX file (gzip bomb)", "ddgan.train",
         train(lambda e: ["--data-dir", e.gzip_bomb_data()]),
         r"train-images-idx3-ubyte\.gz decompresses to more than 67108864 bytes"),
    # -- class 4: paths ----------------------------------------------------------------------------
    Case("train --out a symlink loop", "ddgan.train", train(lambda e: ["--out", e.symlink_loop()]),
         r"--out '.*loop' cannot be resolved: a symlink loop"),
    Case("train --out below a symlink loop", "ddgan.train",
         train(lambda e: ["--out", str(Path(e.symlink_loop()) / "run")]),
         r"--out '.*loop/run' cannot be resolved: a symlink loop"),
    Case("train --out below a regular file", "ddgan.train", train(lambda e: ["--out", e.below_a_file("run")]),
         r"--out '.*a-file/run' is not writable: '.*a-file' is a file, not a directory"),
    Case("train --data-dir a symlink loop", "ddgan.train", train(lambda e: ["--data-dir", e.symlink_loop("data")]),
         r"--data-dir '.*data' cannot be resolved: a symlink loop"),
    Case("sample --out a symlink loop", "ddgan.sample", sample(lambda e: ["--out", e.symlink_loop()]),
         r"--out '.*loop' cannot be resolved: a symlink loop"),
    Case("sample --out below a regular file", "ddgan.sample", sample(lambda e: ["--out", e.below_a_file("g.png")]),
         r"--out '.*a-file/g\.png' is not writable: '.*a-file' is a file, not a directory"),
    Case("sample --out an existing directory", "ddgan.sample", sample(lambda e: ["--out", str(e.tmp)]),
         r"--out '.*' is a directory; give a file name"),
    # -- class 5: sizes that would hang or exhaust memory -----------------------------------------
    Case("sample --n 10^9", "ddgan.sample", sample(lambda e: ["--n", "1000000000"]),
         r"--n must be in 1\.\.10000 \(one PNG grid of at most 100 x 100 images\), got 1000000000", subprocess=True),
    Case("sample --n 0", "ddgan.sample", sample(lambda e: ["--n", "0"]), r"--n must be in 1\.\.10000"),
    Case("sample --batch-size 0", "ddgan.sample", sample(lambda e: ["--batch-size", "0"]),
         r"--batch-size must be in 1\.\.4096, got 0", subprocess=True),
    Case("sample --seed beyond 64 bits", "ddgan.sample", sample(lambda e: ["--seed", str(2**70)]),
         r"--seed must be in 0\.\.9223372036854775807, got 1180591620717411303424"),
    Case("sample --device that is not one", "ddgan.sample", sample(lambda e: ["--device", "gpu"]),
         r"--device 'gpu' is not a device \(auto, cpu, cuda, cuda:N or mps\)"),
    # -- class 6: partial writes: nothing before every check passed (no config.yaml, no cache) ----
    Case("train with a missing data directory", "ddgan.train", train(lambda e: ["--data-dir", str(e.tmp / "nope")]),
         r"--data-dir '.*nope' not found"),
    # -- class 7: argparse's usage block -----------------------------------------------------------
    Case("sample --n not an integer", "ddgan.sample", sample(lambda e: ["--n", "many"]),
         r"--n 'many' is not an integer \(see `python -m ddgan\.sample --help`\)", subprocess=True),
    Case("train with an unknown flag", "ddgan.train", train(lambda e: ["--quite"]),
         r"unrecognized arguments: --quite \(see `python -m ddgan\.train --help`\)", subprocess=True),
    Case("train without --config", "ddgan.train", lambda e: ["--out", str(e.tmp / "run")],
         r"the following arguments are required: --config"),
]


def closed_port() -> int:
    """A local TCP port where nothing listens (bound, then closed)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _mismatched_resume_checkpoint(env: Env) -> str:
    """A previous study whose trial checkpoint (Ray's copy) holds weights its config does not build."""
    grid = env.previous_study(env.grid())
    saved = env.results / "bad" / "ray" / "train" / KEY / "checkpoint_000000"
    saved.mkdir(parents=True)
    source = Path(env.run_dir("mismatch")) / "checkpoints" / "ckpt_0000001.pt"
    (saved / "ckpt_0000010.pt").write_bytes(source.read_bytes())
    return grid


CASES += [
    # -- issue 17 on the study side: values, files, paths, network targets ------------------------
    Case("grid learning rate .inf", "study.run", run(lambda e: ["--grid", e.grid(**{"ddgan.lr": [float("inf")]})]),
         rf"ddgan\.lr\.0: {FINITE}"),
    Case("grid learning rate .nan", "study.run", run(lambda e: ["--grid", e.grid(**{"ddgan.lr": [float("nan")]})]),
         rf"ddgan\.lr\.0: {FINITE}"),
    Case("grid T of 10^9", "study.run", run(lambda e: ["--grid", e.grid(**{"ddgan.T": [10**9]})]),
         r"ddgan\.T\.0: Input should be less than or equal to 10000"),
    Case("--cpus-per-trial nan", "study.run", run(lambda e: ["--grid", e.grid(), "--cpus-per-trial", "nan"]),
         r"--cpus-per-trial 'nan' is not a finite number"),
    Case("--gpus-per-trial nan", "study.run", run(lambda e: ["--grid", e.grid(), "--gpus-per-trial", "nan"]),
         r"--gpus-per-trial 'nan' is not a finite number"),
    Case("--cpus-per-trial not a number", "study.run", run(lambda e: ["--grid", e.grid(), "--cpus-per-trial", "all"]),
         r"--cpus-per-trial 'all' is not a number \(see `python -m study\.run --help`\)"),
    Case("grid file not UTF-8", "study.run", run(lambda e: ["--grid", _latin1(e.tmp / "grid-latin1.yaml")]),
         r"grid-latin1\.yaml' is not UTF-8 text"),
    Case("--results-dir a symlink loop", "study.run", run(lambda e: ["--grid", e.grid(), "--results-dir", e.symlink_loop()]),
         r"--(state|results)-dir '.*loop' cannot be resolved: a symlink loop"),
    Case("--cache-dir below a regular file", "study.run",
         run(lambda e: ["--grid", e.grid(), "--cache-dir", e.below_a_file("cache")]),
         r"--cache-dir '.*a-file/cache' is not writable: '.*a-file' is a file, not a directory"),
    Case("--mlflow-uri sqlite:/// of a directory", "study.run",
         run(lambda e: ["--grid", e.grid(), "--mlflow-uri", f"sqlite:///{e.tmp}"]),
         r"MLflow URI sqlite:///.*: '.*' is a directory; name a database file in it"),
    Case("--optuna-storage sqlite:/// of a directory", "study.run",
         run(lambda e: ["--grid", e.grid(), "--optuna-storage", f"sqlite:///{e.tmp}"]),
         r"Optuna storage sqlite:///.*: '.*' is a directory; name a database file in it"),
    Case("--address where no Ray listens", "study.run",
         run(lambda e: ["--grid", e.grid(), "--address", f"127.0.0.1:{closed_port()}"]),
         r"--address 127\.0\.0\.1:\d+: no Ray cluster answers there", limit=15),
    Case("study.report --mlflow-uri where no server listens", "study.report.cli",
         lambda e: ["--mlflow-uri", f"http://127.0.0.1:{closed_port()}", "--out", str(e.tmp / "report")],
         r"MLflow server http://127\.0\.0\.1:\d+ is unreachable", limit=15),
    Case("--resume with a checkpoint whose config does not match its weights", "study.run",
         run(lambda e: ["--grid", _mismatched_resume_checkpoint(e), "--resume"]),
         r"--resume: checkpoint .*ckpt_0000010\.pt': networks\.generator does not match the network"),
]


def _latin1(path: Path) -> str:
    path.write_bytes("# Fashion-MNIST, Sch\u00e4fer's run\nmodel: {preset: tiny}\n".encode("latin-1"))
    return str(path)


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


WARM = ("ddgan.trainer", "ddgan.export", "ddgan.methods", "ddgan.metrics.evaluator", "ddgan.metrics.inception",
        "study.driver", "study.export", "study.report.build", "study.stores.mlflow_client")


def warm_imports() -> None:
    """Import what the CLIs load lazily, outside the time limit: the limit times the refusal, and
    an alarm can never land inside an import (which would leave a half-imported module behind)."""
    import importlib

    for module in WARM:
        importlib.import_module(module)


@contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    """In-process rows: a refusal that takes longer than `seconds` fails the test (SIGALRM)."""
    def expire(signum, frame):
        raise TimeoutError(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_one_line_exit_2_nothing_started_nothing_written(case, tmp_path, fmnist_dir, capsys, nothing_starts,
                                                                   monkeypatch):
    if case.name == "fractional GPUs, no GPU" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.setenv("DDGAN_CACHE_DIR", str(tmp_path / "cache"))  # a reference cache written shows below
    env = Env(tmp_path, fmnist_dir)
    argv = case.argv(env)
    before = snapshot(tmp_path)
    if case.subprocess:
        done = subprocess.run([sys.executable, "-m", case.cli, *argv], cwd=tmp_path, capture_output=True,
                              text=True, timeout=case.limit, env=_env_without_fid_weights())
        code, out, err = done.returncode, done.stdout, done.stderr
    else:
        main = cli_main(case.cli)
        warm_imports()
        with time_limit(case.limit):
            code = run_cli(main, argv)
        out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert code == 2, f"exit {code}\n{err[-2000:]}"
    assert len(lines) <= 4 and len(errors) == 1 and "Traceback" not in err, err[-2000:]
    assert re.search(case.message, errors[0]), errors[0]
    assert out == ""
    assert snapshot(tmp_path) == before, "something was written"
    assert "hunter2" not in err


def _env_without_fid_weights() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "DDGAN_FID_WEIGHTS"}


def test_the_table_covers_the_issue():
    assert len(CASES) >= 20 + 25  # issue 17 added at least 25 rows
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


# -- issue 17, class 1: --resume never unpickles what it cannot verify ----------------------------


class _ShellCommand:
    """Unpickling this runs a shell command (what a crafted tuner.pkl did before)."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_resume_never_unpickles_rays_state(tmp_path, fmnist_dir, ray_session, monkeypatch):
    """A study folder whose Ray state holds a crafted pickle (tuner.pkl, as Tuner.restore reads it):
    `--resume` runs the study from the project's own state and the pickle's command never runs."""
    import pickle

    from optuna.trial import TrialState

    from study.driver import StudyOptions, run_study
    from study.stores import resolve_stores

    monkeypatch.setenv("DDGAN_CACHE_DIR", str(tmp_path / "cache"))
    env = Env(tmp_path, fmnist_dir)
    grid = env.previous_study(env.grid())  # plan.json of an interrupted study, nothing else
    marker = tmp_path / "pwned"
    ray_train = env.results / "bad" / "ray" / "train"
    ray_train.mkdir(parents=True)
    for name in ("tuner.pkl", "trainable.pkl"):
        (ray_train / name).write_bytes(pickle.dumps(_ShellCommand(f"touch {marker}")))
    pickle.loads(pickle.dumps(_ShellCommand(f"touch {tmp_path / 'control'}")))  # the payload works
    assert (tmp_path / "control").exists()

    run_study(StudyOptions(grid=grid, results_dir=str(env.results), data_dir=str(fmnist_dir),
                           cache_dir=str(tmp_path / "cache"), address=ray_session, allow_local=True, resume=True,
                           verbose=0))
    assert not marker.exists(), "--resume unpickled Ray's state"
    import optuna

    storage = resolve_stores("bad", str(env.results)).optuna_url
    states = {t.user_attrs["trial_key"]: t.state for summary in optuna.get_all_study_summaries(storage)
              for t in optuna.load_study(study_name=summary.study_name, storage=storage).get_trials()}
    assert states == {KEY: TrialState.COMPLETE}  # the resume did run the study
