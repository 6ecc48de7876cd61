"""Shared CLI plumbing: user errors become one line on stderr and exit code 2."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from ddgan.errors import UsageError


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Call `main(argv)`; a UsageError prints `error: <message>` and returns 2."""
    try:
        return int(main(argv) or 0)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
