"""Trainer throughput: images/s of `ddgan.trainer` vs two plain loops over the same model, same run.

Two references, both fp32 with a shuffling `DataLoader` (no workers), `.item()` on every loss
each step and EMA updated parameter by parameter:

- authors-style: the loop structure of the DDGAN authors' `train_ddgan.py`
  (NVlabs/denoising-diffusion-gan): per-sample torchvision `ToTensor` + `Normalize`
  transforms; in the discriminator step G's forward keeps its graph, so the fake loss
  backpropagates through G as well (G's gradients are then zeroed); R1 is its own backward
  (`retain_graph=True`); the generator step draws a fresh t, pair and z and runs G again.
- tuned: what a careful first version does: per-sample tensors, the D-step fake under
  `no_grad`, one backward per update; still two G forwards per step.

The trainer takes the same official step by default (a fresh draw and a second G forward
for the G update; `objective.generator_draw=shared` reuses D's draw and G's graph instead),
makes D's fake under `no_grad`, draws batches by random index from one tensor on the device,
keeps losses on the device until a log step, and uses fused Adam and foreach EMA (and
bf16/channels_last/compile on CUDA).

    python -m benchmarks.train_throughput --presets tiny small --methods ddgan ddpm --steps 30 --repeats 3
    python -m benchmarks.train_throughput --presets paper --batch 128 --variants fp32 bf16 --repeats 1  # trainer alone

Each figure is the median of `--repeats` timed runs of `--steps` steps (after two warm-up steps).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from benchmarks.common import GpuUtilization, header, markdown_table, write_json, write_table
from ddgan.cli import DEVICE, ArgumentParser, InputPath, Number, OutputDir, OutputFile, run_cli
from ddgan.config import preset_names, resolve_config
from ddgan.data import load_fashion_mnist, resolve_data_dir, to_model_range
from ddgan.losses import get_objective, r1_penalty
from ddgan.methods import schedule_for
from ddgan.nets import build_networks
from ddgan.trainer import train

STYLES = ("authors", "tuned")


class PerSampleDataset(Dataset):
    """One image per `__getitem__`: the tensor path ("tuned") or torchvision transforms on the
    uint8 array, as torchvision's image datasets deliver them ("authors")."""

    def __init__(self, images_uint8: torch.Tensor, style: str):
        self.images, self.style = images_uint8, style
        self.arrays = images_uint8.numpy()[..., None]  # (N, 28, 28, 1) HWC, what ToTensor takes
        self.transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        if self.style == "authors":
            return self.transform(self.arrays[i])  # (1, 28, 28) in [-1, 1]
        return self.images[i].float().div(127.5).sub(1.0).unsqueeze(0)


def _generator_update_on_a_fresh_draw(cfg, nets, opts, sched, objective, x0):
    """Both plain loops' G step: a new t, pair and z, a second G forward, one update."""
    gen, disc = nets["generator"], nets["discriminator"]
    b, device = x0.shape[0], x0.device
    t = torch.randint(1, sched.T + 1, (b,), device=device)
    _, x_t = sched.q_sample_pair(x0, t, torch.randn_like(x0), torch.randn_like(x0))
    x0_pred = gen(x_t, t, torch.randn(b, cfg.model.z_dim, device=device))
    g_loss = objective.generator_loss(disc(sched.sample_posterior(x0_pred, x_t, t, torch.randn_like(x0)), x_t, t))
    opts["generator"].zero_grad()  # also drops the G gradients the authors' D step left behind
    g_loss.backward()
    opts["generator"].step()
    g_loss.item()


def _r1_now(cfg, step: int) -> bool:
    """Lazy R1 as train_ddgan.py's --lazy_reg: at steps divisible by `objective.r1_interval`."""
    return cfg.objective.r1_gamma > 0 and step % cfg.objective.r1_interval == 0


def _ddgan_step_tuned(cfg, nets, opts, sched, objective, x0, step):
    gen, disc = nets["generator"], nets["discriminator"]
    b, device = x0.shape[0], x0.device
    t = torch.randint(1, sched.T + 1, (b,), device=device)
    x_prev, x_t = sched.q_sample_pair(x0, t, torch.randn_like(x0), torch.randn_like(x0))
    x_prev.requires_grad_(True)
    v_real = disc(x_prev, x_t, t)
    with torch.no_grad():
        x0_pred = gen(x_t, t, torch.randn(b, cfg.model.z_dim, device=device))
        fake = sched.sample_posterior(x0_pred, x_t, t, torch.randn_like(x0))
    d_loss = objective.discriminator_loss(v_real, disc(fake, x_t, t))
    d_total = d_loss + r1_penalty(v_real, x_prev, cfg.objective.r1_gamma) if _r1_now(cfg, step) else d_loss
    opts["discriminator"].zero_grad()
    d_total.backward()
    opts["discriminator"].step()
    d_loss.item()
    _generator_update_on_a_fresh_draw(cfg, nets, opts, sched, objective, x0)


def _ddgan_step_authors(cfg, nets, opts, sched, objective, x0, step):
    gen, disc = nets["generator"], nets["discriminator"]
    b, device = x0.shape[0], x0.device
    for p in disc.parameters():
        p.requires_grad = True
    disc.zero_grad()
    t = torch.randint(1, sched.T + 1, (b,), device=device)
    x_prev, x_t = sched.q_sample_pair(x0, t, torch.randn_like(x0), torch.randn_like(x0))
    x_prev.requires_grad = True
    v_real = disc(x_prev, x_t.detach(), t)
    err_real = -objective.real_term(v_real).mean()  # the loss split into its real and fake terms, as theirs
    err_real.backward(retain_graph=True)
    if _r1_now(cfg, step):
        r1_penalty(v_real, x_prev, cfg.objective.r1_gamma).backward()
    x0_pred = gen(x_t.detach(), t, torch.randn(b, cfg.model.z_dim, device=device))  # graph kept, as theirs
    fake = sched.sample_posterior(x0_pred, x_t, t, torch.randn_like(x0))
    v_fake = disc(fake, x_t.detach(), t)
    err_fake = objective.fake_term(v_fake).mean()
    err_fake.backward()  # through D and G
    opts["discriminator"].step()
    (err_real + err_fake).item()
    for p in disc.parameters():
        p.requires_grad = False
    _generator_update_on_a_fresh_draw(cfg, nets, opts, sched, objective, x0)


def reference_loop(cfg, images_uint8, steps: int, device: torch.device, style: str = "authors",
                   util: GpuUtilization | None = None) -> float:
    """A plain loop over the same networks and math (`style` in STYLES); returns images/s."""
    torch.manual_seed(0)
    nets = {k: v.to(device) for k, v in build_networks(cfg.model, cfg.method).items()}
    ema = {k: [p.detach().clone() for p in v.parameters()] for k, v in nets.items() if k != "discriminator"}
    opts = {k: torch.optim.Adam(v.parameters(), lr=cfg.train.lr_g, betas=(0.5, 0.9)) for k, v in nets.items()}
    sched = schedule_for(cfg)
    objective = get_objective(cfg.objective.loss, cfg.objective.generator_form) if cfg.method == "ddgan" else None
    ddgan_step = _ddgan_step_authors if style == "authors" else _ddgan_step_tuned
    loader = DataLoader(PerSampleDataset(images_uint8, style), batch_size=cfg.train.batch_size, shuffle=True,
                        drop_last=True)
    it, done, start = iter(loader), 0, None
    while done < steps + 2:
        if done == 2 and start is None:
            start = time.perf_counter()  # two warm-up steps
            if util is not None:
                util.start()
        try:
            x0 = next(it).to(device)
        except StopIteration:
            it = iter(loader)
            continue
        if cfg.method == "ddpm":
            t = torch.randint(1, sched.T + 1, (x0.shape[0],), device=device)
            noise = torch.randn_like(x0)
            loss = ((nets["denoiser"](sched.q_sample(x0, t, noise), t) - noise) ** 2).mean()
            opts["denoiser"].zero_grad()
            loss.backward()
            opts["denoiser"].step()
            loss.item()
        else:
            ddgan_step(cfg, nets, opts, sched, objective, x0, done + 1)
        with torch.no_grad():
            for name, shadow in ema.items():
                for s, p in zip(shadow, nets[name].parameters(), strict=True):
                    s.mul_(cfg.train.ema_decay).add_(p.detach(), alpha=1 - cfg.train.ema_decay)
        done += 1
    seconds = time.perf_counter() - start
    if util is not None:
        util.stop()
    return steps * cfg.train.batch_size / seconds


class _TimedBatches:
    """The trainer's batch iterator, timed: the clock starts when step `warmup + 1` asks for its batch
    (after a device sync, and after `barrier.wait()` when given: packed trials start their clocks
    together), so warm-up steps (and compilation) are left out without a sync per step."""

    def __init__(self, batches, warmup: int, device: torch.device, util: GpuUtilization | None = None,
                 barrier=None):
        self.batches, self.warmup, self.device, self.util, self.barrier = batches, warmup, device, util, barrier
        self.calls, self.start = 0, None

    def __iter__(self):
        return self

    def __next__(self):
        self.calls += 1
        if self.calls == self.warmup + 1:
            _sync(self.device)
            if self.barrier is not None:
                self.barrier.wait()
            self.start = time.perf_counter()
            if self.util is not None:
                self.util.start()
        return next(self.batches)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def trainer_loop(cfg, images_uint8, steps: int, device: torch.device, out: Path, warmup: int = 2,
                 util: GpuUtilization | None = None, barrier=None) -> float:
    """The project's trainer on the same data; img/s over `steps` steps after `warmup` steps.

    One log at the last step (its flush is the only host-device sync, as with the default
    `log_every`); the clock stops there, before the trainer's final evaluation and checkpoint.
    """
    from ddgan.callbacks import Callback
    from ddgan.data import RandomBatches

    total = warmup + steps
    batches = _TimedBatches(RandomBatches(to_model_range(images_uint8).to(device), cfg.train.batch_size, seed=0),
                            warmup, device, util, barrier)
    end: dict[str, float] = {}

    class StopClock(Callback):
        def on_train_step(self, step, metrics):
            if step == total:
                end["t"] = time.perf_counter()  # after the flush's device-to-host copy
                if util is not None:
                    util.stop()

    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"steps": total, "log_every": total})})
    train(cfg, out, data=batches, callbacks=[StopClock()], evaluator=lambda *a, **k: ({}, {}))
    return steps * cfg.train.batch_size / (end["t"] - batches.start)


VARIANTS = {"fp32": {"amp": False, "channels_last": False, "compile": False},
            "bf16": {"amp": True, "channels_last": True, "compile": False},
            "bf16+compile": {"amp": True, "channels_last": True, "compile": True}}


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m benchmarks.train_throughput", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", choices=preset_names(), nargs="+", default=["tiny", "small"])
    p.add_argument("--methods", choices=("ddgan", "ddpm"), nargs="+", default=["ddgan", "ddpm"])
    p.add_argument("--steps", type=Number(int, 1, 1_000_000), default=30)
    p.add_argument("--repeats", type=Number(int, 1, 1000), default=3, help="timed runs of each arm; the table gives medians")
    p.add_argument("--batch", type=Number(int, 1, 4096), default=64)
    p.add_argument("--T", type=Number(int, 1, 10_000), default=4, help="DDGAN T (DDPM uses 1000)")
    p.add_argument("--device", type=DEVICE, default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--compile", action="store_true", help="torch.compile in the trainer")
    p.add_argument("--variants", choices=list(VARIANTS), nargs="+", default=None,
                   help="the trainer alone in these settings, no plain loops (fp32; bf16 = autocast + "
                        "channels_last, both CUDA only; bf16+compile)")
    p.add_argument("--data-dir", type=InputPath("dir"), default=None)
    p.add_argument("--json", type=OutputFile(".json", writer="JSON"), default=None,
                   help="also write the rows here (what benchmarks/costs_patch.py reads)")
    p.add_argument("--out", type=OutputDir(), default=None, help="directory for train_throughput.md")
    return p


def main(argv=None) -> int | None:
    args = build_parser().parse_args(argv)  # every flag checked by its class (ddgan/cli.py)
    device = torch.device(args.device)
    images, _ = load_fashion_mnist(resolve_data_dir(args.data_dir), "train")
    with tempfile.TemporaryDirectory(prefix="ddgan-throughput-") as runs:  # trainer checkpoints: thrown away
        if args.variants:
            rows = trainer_rows(args, images, device, Path(runs))
            columns = ["preset", "method", "variant", "T", "batch", "trainer img/s", "ms/step"]
            columns += ["GPU util %"] if device.type == "cuda" else []
        else:
            rows, columns = comparison_rows(args, images, device, Path(runs))
    text = header("Trainer throughput", str(device)) + "\n" + markdown_table(rows, columns)
    print(text)
    write_table(args.out, "train_throughput.md", text)
    if args.json:
        write_json(Path(args.json), "train_throughput", str(device), rows)


def trainer_rows(args, images, device: torch.device, runs: Path) -> list[dict]:
    """The trainer alone, per preset, method and variant: img/s and ms per step (DDGAN: R1 included
    when a timed step is a multiple of r1_interval)."""
    rows = []
    for preset in args.presets:
        for method in args.methods:
            for variant in args.variants:
                T = args.T if method == "ddgan" else 1000
                cfg = resolve_config({"method": method, "model": {"preset": preset}, "diffusion": {"T": T},
                                      "train": {"batch_size": args.batch, "device": args.device, **VARIANTS[variant]},
                                      "eval": {"every": 10**7}})
                util = GpuUtilization(device)
                speed = statistics.median(trainer_loop(cfg, images, args.steps, device,
                                                       runs / f"{preset}-{method}-{variant}-{r}", util=util)
                                          for r in range(args.repeats))
                rows.append({"preset": preset, "method": method, "variant": variant, "T": T, "batch": args.batch,
                             "trainer img/s": speed, "ms/step": 1000 * args.batch / speed, "GPU util %": util.mean})
    return rows


def comparison_rows(args, images, device: torch.device, runs: Path) -> tuple[list[dict], list[str]]:
    """The trainer against the two plain loops (authors-style, tuned), arms interleaved."""
    rows = []
    for preset in args.presets:
        for method in args.methods:
            T = args.T if method == "ddgan" else 1000
            cfg = resolve_config({"method": method, "model": {"preset": preset}, "diffusion": {"T": T},
                                  "train": {"batch_size": args.batch, "device": args.device, "compile": args.compile},
                                  "eval": {"every": 10**7}},
                                 ["diffusion.schedule=linear"] if method == "ddpm" else [])
            utils = {name: GpuUtilization(device) for name in (*STYLES, "trainer")}  # timed steps only
            runs_of = {name: [] for name in utils}
            for r in range(args.repeats):  # arms interleaved, so slow drifts of the machine hit all three
                for style in STYLES:
                    runs_of[style].append(reference_loop(cfg, images, args.steps, device, style, utils[style]))
                runs_of["trainer"].append(trainer_loop(cfg, images, args.steps, device,
                                                       runs / f"{preset}-{method}-{r}", util=utils["trainer"]))
            speed = {name: statistics.median(v) for name, v in runs_of.items()}
            rows.append({"preset": preset, "method": method, "T": T, "batch": args.batch,
                         **{f"{name} img/s": v for name, v in speed.items()},
                         **{f"vs {style}": speed["trainer"] / speed[style] for style in STYLES},
                         **{f"{name} GPU util %": u.mean for name, u in utils.items()}})
    columns = ["preset", "method", "T", "batch", *(f"{n} img/s" for n in (*STYLES, "trainer")),
               *(f"vs {style}" for style in STYLES)]
    if device.type == "cuda":
        columns += [f"{n} GPU util %" for n in (*STYLES, "trainer")]
    return rows, columns


if __name__ == "__main__":
    sys.exit(run_cli(main))
