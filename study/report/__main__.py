"""`python -m study.report`: see study/report/cli.py."""

import sys

from ddgan.cli import run_cli
from study.report.cli import main

sys.exit(run_cli(main))
