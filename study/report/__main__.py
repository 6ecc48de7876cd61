"""`python -m study.report`: see study/report/cli.py."""

import sys

from ddgan.cli import run_cli
from study.report.cli import build_parser, main  # noqa: F401 (build_parser: tests/test_cli_classes.py)

if __name__ == "__main__":
    sys.exit(run_cli(main))
