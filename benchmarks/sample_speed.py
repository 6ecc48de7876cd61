"""Sampling speed: DDGAN at T = 1, 2, 4, 8 vs DDPM at T = 10, 100, 1000 (ancestral and DDIM).

Same backbone preset and batch for every row, EMA-style eval networks,
`torch.inference_mode`; speed-up is against DDPM T=1000 ancestral. Untrained
weights: sampling cost does not depend on what the weights are. Noise is drawn on the
device and the networks run under `sampling_numerics` (`--precision`, default fp32 as
`eval.sample_precision`), as a trial's evaluation samples. `--channels-last`
loads the networks as the trials' evaluations do on CUDA. `--fid-samples N` adds the
cost of sampling N images from a DDPM with S=1000 steps (the full grid's final FID of
its S=1000 cell), extrapolated from `--probe-steps` steps on one batch and labelled so.

    python -m benchmarks.sample_speed --preset small --batch 64 [--device cuda] [--out benchmarks/out]
    python -m benchmarks.sample_speed --presets tiny small paper --batch 500 --channels-last --fid-samples 10000
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from benchmarks.common import header, markdown_table, timed, write_json, write_table
from ddgan.cli import DEVICE, ArgumentParser, Number, OutputDir, OutputFile, run_cli
from ddgan.config import preset_names, resolve_config
from ddgan.methods import schedule_for
from ddgan.nets import build_networks
from ddgan.sampler import SAMPLE_PRECISIONS, sample_ddgan, sample_ddpm, sampling_numerics


def _net(cfg, role: str, device: torch.device, channels_last: bool) -> torch.nn.Module:
    fmt = torch.channels_last if channels_last else torch.preserve_format
    return build_networks(cfg.model, cfg.method)[role].to(device, memory_format=fmt).eval()


def rows_for(preset: str, batch: int, device: torch.device, ddgan_T, ddpm_T, repeats: int,
             channels_last: bool = False) -> list[dict]:
    rows = []
    for T in ddgan_T:
        cfg = resolve_config({"method": "ddgan", "model": {"preset": preset}, "diffusion": {"T": T}})
        net = _net(cfg, "generator", device, channels_last)
        sched = schedule_for(cfg)

        def run(net=net, sched=sched, cfg=cfg):
            return sample_ddgan(net, sched, batch, z_dim=cfg.model.z_dim,
                                torch_generator=torch.Generator(device).manual_seed(0), device=device)

        rows.append({"model": "DDGAN", "sampler": "posterior", "T": T, "NFE": T,
                     "seconds": timed(run, device, repeats)})
    for T in ddpm_T:
        cfg = resolve_config({"method": "ddpm", "model": {"preset": preset}, "diffusion": {"T": T}})
        net = _net(cfg, "denoiser", device, channels_last)
        sched = schedule_for(cfg)
        for method in ("ancestral", "ddim"):
            def run(net=net, sched=sched, method=method):
                return sample_ddpm(net, sched, batch, torch_generator=torch.Generator(device).manual_seed(0),
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
        r.update(preset=preset, batch=batch, channels_last=channels_last)
    return rows


def fid_sampling_row(preset: str, batch: int, device: torch.device, n: int, probe_steps: int,
                     channels_last: bool, S: int = 1000) -> dict:
    """Seconds to sample `n` images from a T=1000 DDPM with S steps (ancestral), extrapolated from
    `probe_steps` steps of one batch: seconds per step x S x ceil(n / batch)."""
    cfg = resolve_config({"method": "ddpm", "model": {"preset": preset}, "diffusion": {"T": 1000}})
    net = _net(cfg, "denoiser", device, channels_last)
    probe = schedule_for(cfg).respace(probe_steps)  # same network, `probe_steps` evaluations

    def run():
        return sample_ddpm(net, probe, batch, torch_generator=torch.Generator(device).manual_seed(0), device=device)

    per_step = timed(run, device, repeats=1, warmup=1) / probe_steps
    batches = -(-n // batch)
    return {"preset": preset, "S": S, "samples": n, "batch": batch, "ms per step (one batch)": 1000 * per_step,
            "ms/image per NFE": 1000 * per_step / batch, "extrapolated s": per_step * S * batches,
            "how": f"EXTRAPOLATED from {probe_steps} of {S} steps on one batch of {batch}, x {batches} batches"}


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m benchmarks.sample_speed", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", "--preset", dest="presets", choices=preset_names(), nargs="+", default=["small"])
    p.add_argument("--batch", type=Number(int, 1, 4096), default=64)
    p.add_argument("--device", type=DEVICE, default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--ddgan-T", type=Number(int, 1, 10_000), nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--ddpm-T", type=Number(int, 1, 10_000), nargs="+", default=[10, 100, 1000])
    p.add_argument("--repeats", type=Number(int, 1, 1000), default=3)
    p.add_argument("--channels-last", action="store_true", help="networks in channels_last, as trials load them on CUDA")
    p.add_argument("--precision", choices=SAMPLE_PRECISIONS, default="fp32",
                   help="sampling numerics (ddgan.sampler.sampling_numerics; eval.sample_precision, default fp32)")
    p.add_argument("--fid-samples", type=Number(int, 1, 1_000_000), default=None,
                   help="also: seconds to sample this many images from a DDPM with S=1000 steps (extrapolated)")
    p.add_argument("--probe-steps", type=Number(int, 1, 1000), default=20,
                   help="steps timed for the --fid-samples extrapolation (default 20)")
    p.add_argument("--json", type=OutputFile(".json", writer="JSON"), default=None,
                   help="also write the rows here (what benchmarks/costs_patch.py reads)")
    p.add_argument("--out", type=OutputDir(), default=None, help="directory for sample_speed.md")
    return p


def main(argv=None) -> int | None:
    args = build_parser().parse_args(argv)  # every flag checked by its class (ddgan/cli.py)
    device = torch.device(args.device)
    ref_col = f"speed-up vs DDPM T={max(args.ddpm_T)}"
    columns = ["model", "sampler", "T", "NFE", "ms/image", "images/s", ref_col]
    layout = (" in channels_last" if args.channels_last else "") + f", {args.precision}"
    text, rows, fid_rows = "", [], []
    for preset in args.presets:
        with sampling_numerics(device, args.precision):  # as a trial's evaluation samples
            found = rows_for(preset, args.batch, device, args.ddgan_T, args.ddpm_T, args.repeats, args.channels_last)
        rows += found
        text += header(f"Sampling speed ({preset} preset, batch {args.batch}{layout})", str(device)) + "\n" + \
            markdown_table(found, columns) + "\n\n"
    if args.fid_samples:
        with sampling_numerics(device, args.precision):
            fid_rows = [fid_sampling_row(preset, args.batch, device, args.fid_samples, args.probe_steps,
                                         args.channels_last) for preset in args.presets]
        text += f"### DDPM S=1000: {args.fid_samples} samples for a final FID\n\n" + markdown_table(
            fid_rows, ["preset", "S", "samples", "batch", "ms per step (one batch)", "ms/image per NFE",
                       "extrapolated s", "how"]) + "\n"
    text = text.rstrip()
    print(text)
    write_table(args.out, "sample_speed.md", text)
    if args.json:
        write_json(Path(args.json), "sample_speed", str(device), rows + [{**r, "model": "DDPM S=1000 FID"}
                                                                        for r in fid_rows])


if __name__ == "__main__":
    sys.exit(run_cli(main))
