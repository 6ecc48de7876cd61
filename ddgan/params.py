"""CLI: `python -m ddgan.params [--preset NAME ...]`: parameter counts per model preset.

Prints one row per preset (default: every file in configs/presets/) with the
parameter counts of the DDGAN generator and discriminator and the DDPM denoiser.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ddgan.cli import ArgumentParser, run_cli
from ddgan.config import load_config, preset_names
from ddgan.nets import build_networks, count_parameters

COLUMNS = ("generator", "discriminator", "denoiser")


def preset_parameter_counts(name: str) -> dict[str, int]:
    """{"generator": n, "discriminator": n, "denoiser": n} for the preset `name`."""
    model_cfg = load_config(None, [f"model.preset={name}"]).model
    nets = {**build_networks(model_cfg, "ddgan"), **build_networks(model_cfg, "ddpm")}
    return {col: count_parameters(nets[col]) for col in COLUMNS}


def format_table(counts: dict[str, dict[str, int]]) -> str:
    width = max([len("preset"), *map(len, counts)])
    lines = [f"{'preset':<{width}}" + "".join(f"  {col:>13}" for col in COLUMNS)]
    for name, row in counts.items():
        lines.append(f"{name:<{width}}" + "".join(f"  {row[col]:>13,}" for col in COLUMNS))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m ddgan.params", description=__doc__)
    p.add_argument("--preset", action="append", metavar="NAME", help="preset to count (repeatable; default: all)")
    args = p.parse_args(argv)
    names = args.preset or preset_names()
    print(format_table({name: preset_parameter_counts(name) for name in names}))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
