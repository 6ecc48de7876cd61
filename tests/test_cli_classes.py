"""Every command, every flag, every class of bad value: one line, exit 2, nothing written.

Nothing here lists commands or flags by hand:

- **Commands** are found by construction: every module under ddgan/, study/ and benchmarks/
  that `python -m` runs (one with an `if __name__ == "__main__":` block, or a package's
  `__main__.py`) must expose `build_parser()` returning a `ddgan.cli.ArgumentParser`, and
  `main(argv)`. A new command without them fails `test_every_command_exposes_its_parser`.
- **Flags** are read from that parser (`parser.arguments`, what `ddgan.cli.ArgumentParser`
  records), cross-checked against its `--help` text.
- **Classes** come from the parser too: a flag's `type=` is an argument type of ddgan/cli.py or
  study/flags.py that names its `flag_class` (number, path-in, path-out, checkpoint, name,
  store), argparse `choices=` makes a choice, an action without a value a switch. A flag the
  classifier cannot place fails `test_every_flag_has_a_class` until it is given one.

Each class has its bad values (derived from the type: a number's range, a file's suffix, the
store it reaches); `test_bad_value_is_refused` runs every one against every flag of that class,
in-process through `run_cli` (the command's other required flags get a good value of their
class): exit code 2, at most 4 stderr lines with exactly one `error: ` line naming the flag, no
traceback, nothing on stdout, no password, the working directory (a fresh one) still empty and
the inputs unchanged, Ray and the store creation never reached, an answer within 15 s (SIGALRM,
imports warmed first: the limit times the refusal). `test_end_to_end` runs the issue's five
commands and one value of each other class as real `python -m` processes.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_bad_input import time_limit  # the one SIGALRM limit of the bad-input tests

from ddgan.cli import ArgumentParser, run_cli

REPO = Path(__file__).resolve().parents[1]
ROOTS = ("ddgan", "study", "benchmarks")
LIMIT_S = 15
SECRET = "hunter2"
CLASSES = ("switch", "choice", "number", "name", "path-in", "path-out", "checkpoint", "store")


def entry_points() -> list[str]:
    """Every module `python -m` runs under ROOTS, found from the source (no list to keep)."""
    found = []
    for root in ROOTS:
        for path in sorted((REPO / root).rglob("*.py")):
            module = ".".join(path.relative_to(REPO).with_suffix("").parts)
            if path.name == "__main__.py" or re.search(r"^if __name__ == ['\"]__main__['\"]:", path.read_text(), re.M):
                found.append(module)
    return found


COMMANDS = entry_points()


def command_name(module: str) -> str:
    return module.removesuffix(".__main__")


def parser_of(module: str) -> ArgumentParser | None:
    """The command's parser; None when it has no `build_parser` (test_every_command_exposes_its_parser fails)."""
    build = getattr(importlib.import_module(module), "build_parser", None)
    return build() if build else None


def is_subcommands(action: argparse.Action) -> bool:
    return isinstance(action.choices, dict)  # add_subparsers: name -> parser


def parsers_of(module: str) -> list[tuple[list[str], ArgumentParser]]:
    """(the subcommand words, the parser) of a command and of each of its subcommands."""
    found, todo = [], [([], parser_of(module))]
    while todo:
        prefix, parser = todo.pop(0)
        if parser is None:
            continue
        found.append((prefix, parser))
        for action in getattr(parser, "arguments", []):
            if is_subcommands(action):
                todo += [([*prefix, name], sub) for name, sub in action.choices.items()]
    return found


def flags_of(parser: ArgumentParser | None) -> list[argparse.Action]:
    return [a for a in getattr(parser, "arguments", []) if "-h" not in a.option_strings and not is_subcommands(a)]


def names_of(action: argparse.Action) -> list[str]:
    """How the refusal names the flag: its option strings, or a positional's name."""
    return list(action.option_strings) or [action.metavar or action.dest]


def all_flags() -> list[tuple[str, list[str], argparse.Action]]:
    return [(m, prefix, a) for m in COMMANDS for prefix, parser in parsers_of(m) for a in flags_of(parser)]


def flag_class(action: argparse.Action) -> str | None:
    """The class of a flag, read from the parser; None: not classified."""
    declared = getattr(action.type, "flag_class", None)
    if declared is not None:
        return declared
    if action.nargs == 0:
        return "switch"
    if action.choices is not None and action.type is None:
        return "choice"
    return None


# -- what each class's bad (and good) values are -------------------------------------------------


@dataclass
class Env:
    inputs: Path  # fixtures a value may point at (checked unchanged)
    cwd: Path  # the command's working directory (checked empty)
    closed_port: int

    def file(self, name: str = "a-file.txt") -> str:
        path = self.inputs / name
        if not path.exists():
            path.write_text("a regular file, not what the flag wants\n")
        return str(path)

    def directory(self, name: str = "a-dir") -> str:
        path = self.inputs / name
        path.mkdir(exist_ok=True)
        return str(path)

    def loop(self) -> str:
        link = self.inputs / "loop"
        if not link.is_symlink():
            link.symlink_to("loop")
        return str(link)

    def unwritable(self) -> str:
        locked = self.inputs / "locked"
        locked.mkdir(mode=0o500, exist_ok=True)
        return str(locked / "out")


Value = Callable[[Env], str]


def number_values(kind) -> list[tuple[str, Value]]:
    cast = kind.cast
    below = kind.low if kind.low_open else kind.low - 1
    return [("below its range", lambda e: str(cast(below))), ("above its range", lambda e: str(cast(kind.high) + 1)),
            ("nan", lambda e: "nan"), ("inf", lambda e: "inf"), ("not a number", lambda e: "many")]


def path_values(action: argparse.Action) -> list[tuple[str, Value]]:
    kind = action.type
    loop = ("a symlink loop", Env.loop)
    if flag_class(action) == "path-in":
        wrong = {"file": [("a directory", Env.directory)], "dir": [("a regular file", Env.file)]}.get(kind.kind, [])
        missing = [] if kind.missing_ok else [("missing", lambda e: str(e.inputs / "missing"))]
        return [*missing, *wrong, loop]
    below_file = ("below a regular file", lambda e: str(Path(e.file()) / "out"))
    values = [loop, below_file]
    if kind.kind == "file":
        suffix = kind.suffixes[0]
        values += [("an existing directory", Env.directory),
                   ("a suffix the writer cannot produce", lambda e: str(e.inputs / "out.txt"))]
        if not kind.parents:  # else the command makes it
            values.append(("in a missing directory", lambda e: str(e.inputs / "missing" / f"out{suffix}")))
    else:
        values.append(("a regular file", Env.file))
        if os.geteuid() != 0:  # root writes through permission bits
            values.append(("no write permission", Env.unwritable))
    return values


def store_values(kind) -> list[tuple[str, Value]]:
    auth = f"u:{SECRET}@127.0.0.1"
    return {
        "mlflow": [("malformed", lambda e: "nope://x"),
                   ("unreachable", lambda e: f"http://{auth}:{e.closed_port}")],
        "optuna": [("malformed", lambda e: "nope.db"),
                   ("unreachable", lambda e: f"postgresql://{auth}:{e.closed_port}/optuna")],
        "ray": [("malformed", lambda e: "not an address"), ("unreachable", lambda e: f"127.0.0.1:{e.closed_port}"),
                ("auto with no cluster", lambda e: "auto")],
    }[kind.store]


def bad_values(action: argparse.Action) -> list[tuple[str, Value]]:
    cls = flag_class(action)
    if cls == "switch":
        return [("given a value", lambda e: "1")]
    if cls == "choice":
        return [("not a choice", lambda e: "no-such-choice")]
    if cls == "number":
        return number_values(action.type)
    if cls == "name":
        return [("with a slash and a space", lambda e: "../evil name"), ("empty", lambda e: "")]
    if cls in ("path-in", "path-out"):
        return path_values(action)
    if cls == "checkpoint":
        return [("missing", lambda e: str(e.inputs / "missing.pt")),
                ("not a checkpoint", lambda e: e.file("garbage.pt")), ("an empty directory", Env.directory)]
    if cls == "store":
        return store_values(action.type)
    raise AssertionError(f"no bad values for class {cls!r}")


def good_value(action: argparse.Action, env: Env) -> str:
    """A value of the flag's class that passes while the command line is parsed."""
    cls, kind = flag_class(action), action.type
    if cls == "number":
        return str(kind.cast(kind.low + 1 if kind.low_open else kind.low))
    if cls == "choice":
        return str(action.choices[0])
    if cls == "name":
        return kind.example
    if cls == "path-in":
        return env.file() if kind.kind == "file" else env.directory()
    if cls == "checkpoint":
        return env.directory()
    if cls == "path-out":
        return str(env.inputs / ("new" + (kind.suffixes[0] if kind.kind == "file" else "-dir")))
    if cls == "store":  # syntax passes while parsing; a probe runs only once every argument parsed
        return {"mlflow": f"sqlite:///{env.inputs}/mlflow.db", "optuna": f"sqlite:///{env.inputs}/optuna.db",
                "ray": "127.0.0.1:1"}[kind.store]
    raise AssertionError(f"a required flag of class {cls!r}: give good_value a case for it")


def argv_for(prefix: list[str], parser: ArgumentParser, action: argparse.Action, bad: str, env: Env) -> list[str]:
    """The subcommand words, every positional (the one under test bad, the others good), the other
    required flags with good values, then the flag under test."""
    given = list(prefix)
    for other in flags_of(parser):
        if not other.option_strings:
            given.append(bad if other is action else good_value(other, env))
        elif other.required and other is not action:
            given += [other.option_strings[-1], good_value(other, env)]
    if action.option_strings:
        flag = action.option_strings[-1]
        given += [f"{flag}={bad}"] if action.nargs == 0 else [flag, bad]
    return given


@dataclass(frozen=True)
class Case:
    module: str
    prefix: tuple[str, ...]
    dest: str
    cls: str
    label: str
    value: Value


def all_cases() -> list[Case]:
    return [Case(module, tuple(prefix), action.dest, flag_class(action), label, value)
            for module, prefix, action in all_flags() if flag_class(action) is not None  # else: has_a_class fails
            for label, value in bad_values(action)]


CASES = all_cases()


def case_id(case: Case) -> str:
    return " ".join([command_name(case.module), *case.prefix, case.dest, case.label])


# -- discovery ---------------------------------------------------------------------------------


def test_discovery_finds_the_commands():
    """A control for the search: the documented commands are among those found."""
    names = {command_name(m) for m in COMMANDS}
    assert {"ddgan.train", "ddgan.sample", "study.run", "study.export", "study.final_fid", "study.report",
            "study.ui", "benchmarks.objective_check"} <= names, names


@pytest.mark.parametrize("module", COMMANDS, ids=command_name)
def test_every_command_exposes_its_parser(module):
    loaded = importlib.import_module(module)
    assert callable(getattr(loaded, "main", None)), f"{module}: no main(argv)"
    assert callable(getattr(loaded, "build_parser", None)), f"{module}: no build_parser() (tests/test_cli_classes.py)"
    parser = loaded.build_parser()
    assert isinstance(parser, ArgumentParser), f"{module}: build with ddgan.cli.ArgumentParser (one-line errors)"
    recorded = {s for a in parser.arguments for s in a.option_strings} | {"-h"}
    in_usage = set(re.findall(r"(?<![\w-])--?[A-Za-z][\w-]*", parser.format_usage().replace(parser.prog, "")))
    assert in_usage <= recorded, f"{module}: flags not recorded by add_argument: {sorted(in_usage - recorded)}"


def test_every_flag_has_a_class():
    unclassified = [" ".join([command_name(m), *prefix, names_of(a)[-1]]) for m, prefix, a in all_flags()
                    if flag_class(a) is None]
    assert not unclassified, ("flags without a class (give each a type from ddgan/cli.py or study/flags.py, "
                              f"or choices=): {', '.join(unclassified)}")
    assert all(flag_class(a) in CLASSES for _, _, a in all_flags())


def test_every_class_is_exercised():
    assert {c.cls for c in CASES} == set(CLASSES)


# -- the promise, in-process -------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in root.rglob("*")}


WARM = ("ddgan.trainer", "ddgan.export", "ddgan.methods", "study.stores.mlflow_client", "study.driver")


@pytest.fixture
def isolated(tmp_path, monkeypatch) -> Env:
    """A fresh, empty working directory; no Ray cluster to find; Ray and store creation refused."""
    import ray

    import study.stores

    for module in WARM:  # what the commands load lazily, outside the time limit (an alarm never lands in an import)
        importlib.import_module(module)

    def refuse(*args, **kwargs):
        raise AssertionError("started something on bad input")

    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.setattr(study.stores, "init_stores", refuse)
    for name in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "DDGAN_FID_WEIGHTS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "ray-tmp"))  # `--address auto` finds no cluster here
    monkeypatch.setenv("DDGAN_CACHE_DIR", str(tmp_path / "cache"))  # a cache written would show
    env = Env(tmp_path / "inputs", tmp_path / "cwd", closed_port())
    env.inputs.mkdir()
    env.cwd.mkdir()
    monkeypatch.chdir(env.cwd)
    return env


def check_refusal(code: int, out: str, err: str, flags: list[str]) -> None:
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert code == 2, f"exit {code}\n{err[-2000:]}"
    assert len(lines) <= 4 and len(errors) == 1 and "Traceback" not in err, err[-2000:]
    assert any(re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", errors[0]) for f in flags), \
        f"does not name {flags}: {errors[0]}"
    assert SECRET not in err and out == "", (out, err)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_bad_value_is_refused(case, isolated, capsys):
    env = isolated
    loaded = importlib.import_module(case.module)
    parser = dict((tuple(p), q) for p, q in parsers_of(case.module))[case.prefix]
    action = next(a for a in flags_of(parser) if a.dest == case.dest)
    argv = argv_for(list(case.prefix), parser, action, case.value(env), env)
    before = snapshot(env.inputs.parent)
    with time_limit(LIMIT_S):
        code = run_cli(loaded.main, argv)
    out, err = capsys.readouterr()
    check_refusal(code, out, err, names_of(action))
    assert not any(env.cwd.iterdir()), f"wrote {sorted(p.name for p in env.cwd.iterdir())}"
    assert snapshot(env.inputs.parent) == before, "something was written"


# -- end to end: real processes ------------------------------------------------------------------


def tiny_grid(folder: Path) -> str:
    import yaml

    grid = {"name": "classes", "base": {"ddgan": str(REPO / "configs" / "ddgan.yaml")},
            "overrides": ["model.preset=tiny", "train.device=cpu", "train.batch_size=16"],
            "ddgan": {"losses": ["ns"], "T": [1], "lr": [1.0e-3]}, "budget": {"steps": 20},
            "eval": {"every": 10, "n_samples": 64, "batch_size": 64, "metrics": ["fd_test-extractor"]},
            "metric": "eval/fd_test-extractor_64", "pruner": {"kind": "none"}, "resources": {"cpus": 1}}
    path = folder / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    return str(path)


END_TO_END = [  # (module, argv, the flag the refusal names); the five first
    ("study.export", lambda e: ["--top-k", "1", "--per", "cell", "--mlflow-uri", "http://127.0.0.1:1"], "--mlflow-uri"),
    ("study.final_fid", lambda e: ["--mlflow-uri", "http://127.0.0.1:1"], "--mlflow-uri"),
    ("study.run", lambda e: ["--grid", tiny_grid(e.inputs), "--address", "auto"], "--address"),
    ("study.export", lambda e: ["--top-k", "1", "--per", "cell", "--out", str(Path(e.file()) / "exports")], "--out"),
    ("ddgan.sample", lambda e: ["--checkpoint", e.directory(), "--out", "grid.txt"], "--out"),
    ("ddgan.sample", lambda e: ["--checkpoint", e.directory(), "--out", "g.png", "--n", "nan"], "--n"),
    ("ddgan.sample", lambda e: ["--checkpoint", e.file("garbage.pt"), "--out", "g.png", "--device", "cpu"],
     "--checkpoint"),
    ("ddgan.train", lambda e: ["--config", str(e.inputs / "missing.yaml"), "--out", "run"], "--config"),
    ("ddgan.train", lambda e: ["--config", e.file(), "--out", "run", "--quiet=1"], "--quiet"),
    ("ddgan.train", lambda e: ["--config", e.file(), "--out", "run", "--set", "../evil name"], "--set"),
    ("ddgan.sample", lambda e: ["--checkpoint", e.directory(), "--out", "g.png", "--sampler", "nope"], "--sampler"),
]


@pytest.mark.parametrize("row", END_TO_END, ids=lambda r: f"{r[0]} {r[2]}")
def test_end_to_end(row, tmp_path):
    """`python -m ...` in an empty directory: exit 2, one line, nothing written, within 15 s."""
    module, make_argv, flag = row
    env = Env(tmp_path / "inputs", tmp_path / "cwd", closed_port())
    env.inputs.mkdir()
    env.cwd.mkdir()
    argv = make_argv(env)
    before = snapshot(tmp_path)
    environ = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    environ.update(PYTHONPATH=str(REPO), RAY_TMPDIR=str(tmp_path / "ray-tmp"))
    done = subprocess.run([sys.executable, "-m", module, *argv], cwd=env.cwd, capture_output=True, text=True,
                          timeout=LIMIT_S * 4, env=environ)  # a hang guard; imports on a loaded machine vary
    check_refusal(done.returncode, done.stdout, done.stderr, [flag])
    assert snapshot(tmp_path) == before, "something was written"
