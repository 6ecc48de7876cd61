"""Shared CLI plumbing: every flag's value is checked by its class; bad input is one line, exit 2.

Every command builds its parser with `ArgumentParser` (argparse whose errors are one line,
exit code 2 through `run_cli`) and gives every flag that takes a value one of the argument
types below as `type=` (or argparse `choices=`). The type *is* the flag's class, so the check
lives in one place per input and runs while the command line is parsed, before the command
writes anything:

  Number        finite, within [low, high]                          (class "number")
  OutputDir     ddgan.paths.check_output_dir                        (class "path-out")
  OutputFile    ddgan.paths.check_output_file + the writer's suffix (class "path-out")
  InputPath     exists, right kind, readable, no symlink loop        (class "path-in")
  CheckpointPath  exists (file or directory); its contents are verified by the loader
                (ddgan.checkpoint / ddgan.export: weights_only, config fits weights, finite)
                before anything is written                           (class "checkpoint")
  Name          a word of a given shape (study name, device, KEY=VALUE) (class "name")

Store URIs (MLflow, Optuna, Ray address) are classes of the study (study/stores/flags.py): a
type may also have `after_parse(value)`, which `ArgumentParser.parse_args` calls once the whole
command line parsed (a bounded network probe), its refusal prefixed with the flag.
tests/test_cli_classes.py finds every command, reads each flag's class from its parser and
runs that class's bad values against it.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Callable, Sequence

from ddgan.errors import UsageError
from ddgan.paths import check_input_path, check_output_dir, check_output_file


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are a UsageError (one line, exit 2 through `run_cli`), not a usage block;
    after parsing, each flag type's `after_parse` check runs (reaching a store, say). Subcommands
    (`add_subparsers`) are parsers of this class too."""

    def error(self, message: str):  # type: ignore[override]
        # "argument --out: 'x' is not writable" -> "--out 'x' is not writable" (a guard's own sentence)
        message = re.sub(r"^argument (\S+?)(/\S+)?: (?=['\"]|must )", r"\1 ", message)
        raise UsageError(f"{message} (see `{self.prog} --help`)")

    def add_argument(self, *args, **kwargs):
        action = super().add_argument(*args, **kwargs)
        self.__dict__.setdefault("arguments", []).append(action)  # what tests/test_cli_classes.py reads
        return action

    def add_subparsers(self, **kwargs):
        kwargs.setdefault("parser_class", ArgumentParser)
        action = super().add_subparsers(**kwargs)
        self.__dict__.setdefault("arguments", []).append(action)  # its `choices`: name -> parser
        return action

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        parsed, extras = super().parse_known_args(args, namespace)
        for action in self.__dict__.get("arguments", []):
            check = getattr(action.type, "after_parse", None)
            value = getattr(parsed, action.dest, None)
            if check is None or value is None:
                continue
            flag = action.option_strings[-1] if action.option_strings else action.dest
            for one in value if isinstance(value, list) else [value]:
                try:
                    check(one)
                except UsageError as err:
                    text = str(err)
                    raise UsageError(text if text.startswith(flag) else f"{flag} {text}") from None
        return parsed, extras


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Call `main(argv)`; a UsageError prints `error: <message>` and returns 2."""
    try:
        return int(main(argv) or 0)
    except UsageError as err:
        print(f"error: {' '.join(str(err).splitlines())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _refuse(err: UsageError) -> argparse.ArgumentTypeError:
    """A guard's message as argparse's (it prefixes `argument --flag: `)."""
    return argparse.ArgumentTypeError(" ".join(str(err).split()))


class Number:
    """An int or float flag: a number, finite, in [low, high] (`low_open`: low itself is refused)."""

    flag_class = "number"

    def __init__(self, cast: type, low: float, high: float, *, low_open: bool = False, why: str = ""):
        self.cast, self.low, self.high, self.low_open, self.why = cast, low, high, low_open, why
        self.__name__ = "an integer" if cast is int else "a number"

    def __call__(self, text: str) -> int | float:
        try:
            value = self.cast(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"{text!r} is not {self.__name__}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        low_ok = value > self.low if self.low_open else value >= self.low
        if not low_ok or value > self.high:
            low, high = (f"{x}" if self.cast is int else f"{x:g}" for x in (self.low, self.high))
            span = f"({low}, {high}]" if self.low_open else f"{low}..{high}"
            why = f" ({self.why})" if self.why else ""
            raise argparse.ArgumentTypeError(f"must be in {span}{why}, got {text}")
        return value


class OutputDir:
    """A directory the command creates or writes into (`remote`: an `s3://...` URI passes as is)."""

    flag_class = "path-out"
    kind = "dir"

    def __init__(self, *, remote: bool = False):
        self.remote = remote

    def __call__(self, text: str) -> str:
        if self.remote and "://" in text:
            return text  # the store's own syntax check follows (study.stores.uris.normalize_storage_path)
        try:
            check_output_dir(text, "")
        except UsageError as err:
            raise _refuse(err) from None
        return text


class OutputFile:
    """A file the command writes, whose name ends in one of `suffixes` (what the writer makes);
    `parents`: the command creates a missing directory above it."""

    flag_class = "path-out"
    kind = "file"

    def __init__(self, *suffixes: str, writer: str, parents: bool = False):
        self.suffixes, self.writer, self.parents = suffixes, writer, parents

    def __call__(self, text: str) -> str:
        try:
            check_output_file(text, "", parents=self.parents)
        except UsageError as err:
            raise _refuse(err) from None
        if not text.lower().endswith(self.suffixes):
            raise argparse.ArgumentTypeError(f"{text!r}: the file is written as {self.writer}; "
                                             f"give a name ending in {' or '.join(self.suffixes)}")
        return text


class InputPath:
    """A file or directory the command reads: it must exist (unless `missing_ok`), be of `kind`
    (file | dir) and readable; a symlink loop is refused."""

    flag_class = "path-in"

    def __init__(self, kind: str, *, missing_ok: bool = False):
        self.kind, self.missing_ok = kind, missing_ok

    def __call__(self, text: str) -> str:
        try:
            check_input_path(text, "", self.kind, missing_ok=self.missing_ok)
        except UsageError as err:
            raise _refuse(err) from None
        return text


class CheckpointPath(InputPath):
    """A checkpoint file, run directory or export directory; the loader verifies what is in it."""

    flag_class = "checkpoint"

    def __init__(self):
        super().__init__("any")


class Name:
    """A word of a given shape: `pattern` (a full match), described as `what`; `example` fits it."""

    flag_class = "name"

    def __init__(self, pattern: str, what: str, example: str):
        self.pattern, self.what, self.example = re.compile(pattern), what, example

    def __call__(self, text: str) -> str:
        if not self.pattern.fullmatch(text):
            raise argparse.ArgumentTypeError(f"{text!r} is not {self.what}")
        return text


STUDY_NAME = Name(r"[A-Za-z0-9][A-Za-z0-9_.-]*", "a study name (letters, digits, '.', '_', '-')", "smoke")
DEVICE = Name(r"auto|cpu|mps|cuda(:\d{1,2})?", "a device (auto, cpu, cuda, cuda:N or mps)", "cpu")
HOST = Name(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?|\[?[0-9A-Fa-f:.]+\]?", "a host name or IP address",
            "127.0.0.1")
OVERRIDE = Name(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*=.*", "a dotted override KEY=VALUE",
                "train.seed=0")
SEED = Number(int, 0, 2**63 - 1)
THREADS = Number(int, 1, 1024)
