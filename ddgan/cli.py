"""Shared CLI plumbing: user errors become one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from ddgan.errors import UsageError


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are a UsageError (one line, exit 2 through `run_cli`), not a usage block."""

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(f"{message} (see `{self.prog} --help`)")


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
