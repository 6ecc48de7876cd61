"""Sampling speed: DDGAN at T = 1, 2, 4, 8 vs DDPM at T = 10, 100, 1000 (ancestral and DDIM).

Same backbone preset and batch for every row, EMA-style eval networks,
`torch.inference_mode`; speed-up is against DDPM T=1000 ancestral. Untrained
weights: sampling cost does not depend on what the weights are.

    python -m benchmarks.sample_speed --preset small --batch 64 [--device cuda] [--out benchmarks/out]
"""

from __future__ import annotations

import argparse
import sys

import torch

from benchmarks.common import header, markdown_table, timed, write_table
from ddgan.cli import DEVICE, ArgumentParser, Number, OutputDir, run_cli
from ddgan.config import preset_names, resolve_config
from ddgan.methods import schedule_for
from ddgan.nets import build_networks
from ddgan.sampler import sample_ddgan, sample_ddpm


def rows_for(preset: str, batch: int, device: torch.device, ddgan_T, ddpm_T, repeats: int) -> list[dict]:
    rows = []
    for T in ddgan_T:
        cfg = resolve_config({"method": "ddgan", "model": {"preset": preset}, "diffusion": {"T": T}})
        net = build_networks(cfg.model, "ddgan")["generator"].to(device).eval()
        sched = schedule_for(cfg)

        def run(net=net, sched=sched, cfg=cfg):
            return sample_ddgan(net, sched, batch, z_dim=cfg.model.z_dim,
                                torch_generator=torch.Generator().manual_seed(0), device=device)

        rows.append({"model": "DDGAN", "sampler": "posterior", "T": T, "NFE": T,
                     "seconds": timed(run, device, repeats)})
    for T in ddpm_T:
        cfg = resolve_config({"method": "ddpm", "model": {"preset": preset}, "diffusion": {"T": T}})
        net = build_networks(cfg.model, "ddpm")["denoiser"].to(device).eval()
        sched = schedule_for(cfg)
        for method in ("ancestral", "ddim"):
            def run(net=net, sched=sched, method=method):
                return sample_ddpm(net, sched, batch, torch_generator=torch.Generator().manual_seed(0),
                                   device=device, method=method)

            reps = 1 if T >= 1000 and device.type == "cpu" else repeats
            rows.append({"model": "DDPM", "sampler": method, "T": T, "NFE": T,
                         "seconds": timed(run, device, reps, warmup=0 if T >= 100 else 1)})
    ref = next((r["seconds"] for r in rows if r["model"] == "DDPM" and r["sampler"] == "ancestral"
                and r["T"] == max(ddpm_T)), None)
    for r in rows:
        r["ms/image"] = 1000 * r["seconds"] / batch
        r["images/s"] = batch / r["seconds"]
        r[f"speed-up vs DDPM T={max(ddpm_T)}"] = ref / r["seconds"] if ref else float("nan")
    return rows


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m benchmarks.sample_speed", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=preset_names(), default="small")
    p.add_argument("--batch", type=Number(int, 1, 4096), default=64)
    p.add_argument("--device", type=DEVICE, default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--ddgan-T", type=Number(int, 1, 10_000), nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--ddpm-T", type=Number(int, 1, 10_000), nargs="+", default=[10, 100, 1000])
    p.add_argument("--repeats", type=Number(int, 1, 1000), default=3)
    p.add_argument("--out", type=OutputDir(), default=None, help="directory for sample_speed.md")
    return p


def main(argv=None) -> int | None:
    args = build_parser().parse_args(argv)  # every flag checked by its class (ddgan/cli.py)
    device = torch.device(args.device)
    rows = rows_for(args.preset, args.batch, device, args.ddgan_T, args.ddpm_T, args.repeats)
    ref_col = f"speed-up vs DDPM T={max(args.ddpm_T)}"
    text = header(f"Sampling speed ({args.preset} preset, batch {args.batch})", str(device)) + "\n" + markdown_table(
        rows, ["model", "sampler", "T", "NFE", "ms/image", "images/s", ref_col])
    print(text)
    write_table(args.out, "sample_speed.md", text)


if __name__ == "__main__":
    sys.exit(run_cli(main))
