"""CLI: `python -m ddgan.train --config configs/<file>.yaml [--set key=value ...] --out DIR [--resume]`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ddgan.callbacks import ConsoleProgress
from ddgan.cli import run_cli
from ddgan.config import load_config
from ddgan.errors import UsageError
from ddgan.trainer import train


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ddgan.train", description=__doc__)
    p.add_argument("--config", required=True, help="YAML config, e.g. configs/ddgan.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override, e.g. --set train.lr_g=2e-4 (repeatable)")
    p.add_argument("--out", required=True, help="run directory (config, checkpoints, sample grids)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX directory (else data.dir / $DDGAN_DATA_DIR)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    if args.resume and not (Path(args.out) / "checkpoints").is_dir():
        raise UsageError(f"--resume: no checkpoints in {args.out!r} to resume from")
    result = train(cfg, args.out, callbacks=[ConsoleProgress(disable=args.quiet)],
                   resume_from=args.out if args.resume else None, data_dir=args.data_dir)
    print(f"{result.status} at step {result.step}; checkpoint: {result.checkpoint}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
