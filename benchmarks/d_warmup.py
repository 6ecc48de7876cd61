"""How fast the discriminator leaves chance, with the official initialisation and with PyTorch's default.

Trains the DDGAN (configs/ddgan.yaml, small preset by default) for a few dozen steps on
Fashion-MNIST and prints, every `--every` steps, D's loss and its raw outputs v on the real
pair, on the fake pair of its update, and on the generator update's fake. With `--pytorch-init`
every discriminator layer is reset to PyTorch's default initialisation first (what this repo
used before issue 15's fix; see ddgan/nets/discriminator.py).

    python -m benchmarks.d_warmup --steps 60 --data-dir ../shared/data/fashion-mnist
    python -m benchmarks.d_warmup --steps 60 --data-dir ../shared/data/fashion-mnist --pytorch-init
"""

from __future__ import annotations

import argparse
import sys

import torch
from torch import nn

from benchmarks.common import header
from benchmarks.objective_check import CONFIG
from ddgan.cli import SEED, ArgumentParser, InputPath, Number, run_cli
from ddgan.config import load_config, preset_names
from ddgan.data import load_training_tensor
from ddgan.losses import objective_names
from ddgan.methods import build_method


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m benchmarks.d_warmup", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=Number(int, 1, 1_000_000), default=60)
    p.add_argument("--every", type=Number(int, 1, 1_000_000), default=10)
    p.add_argument("--preset", choices=preset_names(), default="small")
    p.add_argument("--T", type=Number(int, 1, 10_000), default=4)
    p.add_argument("--loss", choices=objective_names(), default="ns")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--data-dir", type=InputPath("dir"), default=None)
    p.add_argument("--pytorch-init", action="store_true", help="reset every D layer to PyTorch's default init")
    return p


def main(argv=None) -> int | None:
    a = build_parser().parse_args(argv)  # every flag checked by its class (ddgan/cli.py)
    cfg = load_config(CONFIG, [f"model.preset={a.preset}", f"diffusion.T={a.T}", f"objective.loss={a.loss}",
                               f"train.seed={a.seed}", "train.device=cpu", "train.compile=false"]
                      + ([f"data.dir={a.data_dir}"] if a.data_dir else []))
    torch.manual_seed(a.seed)
    method = build_method(cfg, torch.device("cpu"))
    disc = method.networks["discriminator"]
    if a.pytorch_init:
        for module in disc.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                module.reset_parameters()
    x = load_training_tensor(cfg.data, "cpu")
    outputs: list[torch.Tensor] = []
    disc.register_forward_hook(lambda _m, _i, out: outputs.append(out.detach()))
    gen = torch.Generator().manual_seed(a.seed)
    print(header("D warm-up", "cpu"))
    print(f"{a.preset} preset, T={a.T}, loss {a.loss}, batch {cfg.train.batch_size}, "
          f"{'PyTorch default' if a.pytorch_init else 'official'} D initialisation\n")
    print("| step | d_loss | g_loss | v real mean +- sd | v fake mean +- sd | v of G's fake |")
    print("| --- | --- | --- | --- | --- | --- |")
    for step in range(1, a.steps + 1):
        outputs.clear()
        batch = x[torch.randint(0, len(x), (cfg.train.batch_size,), generator=gen)]
        out = method.train_step(batch, step)
        if step == 1 or step % a.every == 0:
            real, fake, g_fake = outputs[0], outputs[1], outputs[-1]
            print(f"| {step} | {float(out['train/d_loss']):.4f} | {float(out['train/g_loss']):.4f} | "
                  f"{real.mean():.3f} +- {real.std():.3f} | {fake.mean():.3f} +- {fake.std():.3f} | "
                  f"{g_fake.mean():.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
