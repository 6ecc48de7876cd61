"""CLI: `python -m ddgan.params [--preset NAME ...]`: parameter counts per model preset.

Prints one row per preset (default: every file in configs/presets/) with the
parameter counts of the DDGAN generator and discriminator and the DDPM denoiser, and
beside them the official DDGAN CIFAR-10 discriminator (`Discriminator_small`, ngf 64).
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


def official_small_discriminator_parameters(in_channels: int = 6, ngf: int = 64, t_emb_dim: int = 256) -> int:
    """Closed-form parameter count of the official `Discriminator_small`
    (NVlabs/denoising-diffusion-gan, score_sde/models/discriminator.py) for `in_channels`
    stacked input channels (CIFAR-10: 2 x 3): a 2-layer time MLP, a 1x1 start conv, four
    DownConvBlocks 2ngf -> 2ngf -> 4ngf -> 8ngf -> 8ngf, a 3x3 conv over 8ngf + 1
    (minibatch stddev) channels and a linear output."""

    def conv(c_in: int, c_out: int, k: int, bias: bool = True) -> int:
        return c_in * c_out * k * k + (c_out if bias else 0)

    def block(c_in: int, c_out: int) -> int:  # conv1, conv2, dense_t1, bias-free 1x1 skip
        return conv(c_in, c_out, 3) + conv(c_out, c_out, 3) + t_emb_dim * c_out + c_out + conv(c_in, c_out, 1, False)

    widths = [2 * ngf, 2 * ngf, 4 * ngf, 8 * ngf, 8 * ngf]
    return (2 * (t_emb_dim * t_emb_dim + t_emb_dim) + conv(in_channels, widths[0], 1)
            + sum(block(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True))
            + conv(widths[-1] + 1, widths[-1], 3) + widths[-1] + 1)


def format_table(counts: dict[str, dict[str, int]]) -> str:
    width = max([len("preset"), *map(len, counts)])
    lines = [f"{'preset':<{width}}" + "".join(f"  {col:>13}" for col in COLUMNS)]
    for name, row in counts.items():
        lines.append(f"{name:<{width}}" + "".join(f"  {row[col]:>13,}" for col in COLUMNS))
    return "\n".join(lines)


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m ddgan.params", description=__doc__)
    p.add_argument("--preset", action="append", metavar="NAME", choices=preset_names(),
                   help="preset to count (repeatable; default: all)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    names = args.preset or preset_names()
    print(format_table({name: preset_parameter_counts(name) for name in names}))
    print(f"official DDGAN CIFAR-10 discriminator (Discriminator_small, ngf 64, t_emb 256): "
          f"{official_small_discriminator_parameters():,}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
