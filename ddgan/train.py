"""CLI: `python -m ddgan.train --config configs/<file>.yaml [--set key=value ...] --out DIR [--resume]`.

Every check runs before the first write: the config (finite values in range), the
output directory (no symlink loop, no file in the way, writable) and, with --resume,
the checkpoint (readable, its config and weights fit together and match this config).
Only then does `train` build anything and write `config.yaml`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ddgan.cli import OVERRIDE, ArgumentParser, InputPath, OutputDir, run_cli
from ddgan.errors import TrainingDiverged, UsageError
from ddgan.paths import check_output_dir

# torch and the model code load only after argparse accepted the flags (a typo is answered
# at once); the config, the output directory and the checkpoint are then checked in turn.


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m ddgan.train", description=__doc__)
    p.add_argument("--config", required=True, type=InputPath("file"), help="YAML config, e.g. configs/ddgan.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", type=OVERRIDE,
                   help="dotted override, e.g. --set train.lr_g=2e-4 (repeatable)")
    p.add_argument("--out", required=True, type=OutputDir(), help="run directory (config, checkpoints, sample grids)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    p.add_argument("--data-dir", default=None, type=InputPath("dir"), help="Fashion-MNIST IDX directory (else data.dir / $DDGAN_DATA_DIR)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from ddgan.config import load_config

    cfg = load_config(args.config, args.overrides)
    out = check_output_dir(args.out, "--out")
    from ddgan.callbacks import ConsoleProgress
    from ddgan.checkpoint import check_resumable, latest_checkpoint, load_checkpoint
    from ddgan.trainer import train

    if args.resume:
        found = latest_checkpoint(out / "checkpoints")
        if found is None:
            raise UsageError(f"--resume: no checkpoints in {args.out!r} to resume from")
        check_resumable(load_checkpoint(found), cfg, found)
    try:
        result = train(cfg, out, callbacks=[ConsoleProgress(disable=args.quiet)],
                       resume_from=out if args.resume else None, data_dir=args.data_dir)
    except TrainingDiverged as err:  # not bad input (exit 1), but still one line: the checkpoints stay
        print(f"error: {err}; lower train.lr_g or set train.grad_clip", file=sys.stderr)
        return 1
    print(f"{result.status} at step {result.step}; checkpoint: {result.checkpoint}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
