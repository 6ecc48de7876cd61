"""Evaluation cost: extractor throughput, and one full evaluation with and without cached references.

Table 1: features per second of the Inception (clean-fid protocol: 299x299 bicubic
resize on the CPU, then the network) and Fashion-MNIST classifier extractors, on the
first N training images, after two warm-up batches; loading the weights is timed apart.
Table 2: one evaluation as a trial runs it, at the grid's configured sizes (its first
DDGAN trial's `eval` section; `--final` adds the last-step evaluation with its final
metrics): `build_evaluator` + one `evaluator(...)` call, first with an empty reference
cache (a temporary directory: the reference statistics are computed) and then with the
cache that run filled, after one untimed evaluation at 2 samples (imports, weights, first calls). Sampling uses an untrained generator of the trial's preset
(sampling cost does not depend on the weights).

    python -m benchmarks.eval_cost --grid cpu --out /tmp/bench                # CPU
    python -m benchmarks.eval_cost --grid full --final --device cuda --out OUT     # GPU
    python -m benchmarks.eval_cost --tiny --out /tmp/bench                         # smoke size
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import header, markdown_table, write_json, write_table
from ddgan.cli import (
    DEVICE,
    OVERRIDE,
    THREADS,
    ArgumentParser,
    InputPath,
    Number,
    OutputDir,
    OutputFile,
    run_cli,
)
from study.flags import GridRef

TINY = {"grid": "smoke", "feature_images": {"fmnist": 256, "inception": 2},
        "overrides": ["eval.n_samples=64", "eval.batch_size=64", "eval.reference_n=256",
                      "eval.final_metrics=[]", "eval.grid_size=4"]}
DEFAULT_FEATURE_IMAGES = {"cpu": {"fmnist": 10_000, "inception": 256}, "cuda": {"fmnist": 60_000, "inception": 5_000}}
FEATURE_COLUMNS = ["extractor", "feature dim", "batch", "images", "load s", "seconds", "features/s", "ms/image"]
EVAL_COLUMNS = ["evaluation", "metrics", "samples", "reference images", "no cache: total s", "of which references s",
                "cached: total s", "evaluation call s", "no cache / cached"]


def feature_rows(extractors: list[str], counts: dict[str, int], batch: int, device: torch.device,
                 data_dir: Path, fid_weights: str | None) -> list[dict]:
    from benchmarks.common import timed
    from ddgan.metrics.evaluator import INCEPTION_BATCH
    from ddgan.metrics.extractors import get_extractor
    from ddgan.metrics.reference import reference_images

    rows = []
    for name in extractors:
        n = counts[name]
        size = min(batch, INCEPTION_BATCH) if name == "inception" else batch  # as build_evaluator sizes them
        images, _ = reference_images(data_dir, "train", max(n, 2))  # (n, 1, 28, 28) uint8
        start = time.perf_counter()
        extractor = get_extractor(name, device, weights=fid_weights if name == "inception" else None,
                                  batch_size=size)
        load_s = time.perf_counter() - start
        for _ in range(2):  # warm-up: TorchScript's profiling runs (per input shape), allocator, threads
            extractor.features(images[: min(size, n)])
        seconds = timed(lambda extractor=extractor, images=images, n=n: extractor.features(images[:n]), device,
                        repeats=1, warmup=0)
        rows.append({"extractor": name, "feature dim": extractor.feature_dim, "batch": min(size, n), "images": n,
                     "load s": load_s, "seconds": seconds, "features/s": n / seconds, "ms/image": 1000 * seconds / n,
                     "_weights": f"{name} weights: {extractor.describe().get('weights_file', 'committed')} "
                                 f"(sha256 {extractor.weights_sha256[:12]})"})
    return rows


def one_evaluation(cfg, data_dir: Path, device: torch.device, cache_dir: Path, out_dir: Path, final: bool,
                   fid_weights: str | None) -> tuple[float, float]:
    """(seconds to build the evaluator, seconds for one evaluator call)."""
    from ddgan.methods import build_method
    from ddgan.metrics.evaluator import build_evaluator

    method = build_method(cfg, device)  # untrained: only the cost of sampling matters here
    start = time.perf_counter()
    evaluator = build_evaluator(cfg.eval, data_dir, device, cache_dir=cache_dir, fid_weights=fid_weights)
    built = time.perf_counter() - start
    start = time.perf_counter()
    metrics, _ = evaluator(method.sample, cfg.train.steps, out_dir, final=final)
    called = time.perf_counter() - start
    bad = [k for k, v in metrics.items() if v != v]
    if bad:
        raise RuntimeError(f"evaluation produced NaN for {bad}")
    return built, called


def warm_up(cfg, data_dir: Path, device: torch.device, work: Path, final: bool, fid_weights: str | None) -> None:
    """One untimed evaluation at 2 samples / 2 reference images (own cache): imports, weights and
    first calls are paid here, so the cold leg measures the reference statistics, not start-up."""
    small = cfg.eval.model_copy(update={"n_samples": 2, "final_n_samples": 2, "reference_n": 2, "grid_size": 1})
    one_evaluation(cfg.model_copy(update={"eval": small}), data_dir, device, work / "warm-up-cache", work / "warm-up",
                   final, fid_weights)


def eval_rows(config, data_dir: Path, device: torch.device, finals: list[bool], fid_weights: str | None) -> list[dict]:
    from ddgan.metrics.evaluator import metric_specs

    rows = []
    for final in finals:
        cfg = config
        if not final:  # build_evaluator prepares every reference up front: keep the final ones out of this row
            cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"final_metrics": ()})})
        specs = metric_specs(cfg.eval, final)
        work = Path(tempfile.mkdtemp(prefix="ddgan-evalcost-"))
        try:
            warm_up(cfg, data_dir, device, work, final, fid_weights)
            cold_build, cold_call = one_evaluation(cfg, data_dir, device, work / "cache", work / "cold", final, fid_weights)
            warm_build, warm_call = one_evaluation(cfg, data_dir, device, work / "cache", work / "warm", final, fid_weights)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        cold, warm = cold_build + cold_call, warm_build + warm_call
        rows.append({"evaluation": "final (last step)" if final else "intermediate (every eval.every)",
                     "metrics": ", ".join(s.name for s in specs) or "none",
                     "samples": max([cfg.eval.grid_size**2, *(s.n for s in specs)]),
                     "reference images": cfg.eval.reference_n or f"{cfg.eval.reference_split} split",
                     "no cache: total s": cold, "of which references s": cold_build - warm_build,
                     "cached: total s": warm, "evaluation call s": warm_call, "no cache / cached": cold / warm})
    return rows


def trial_config(grid: str, overrides: list[str], device: str):
    """The grid's first DDGAN trial config (its eval section is 'the configured N'), plus overrides."""
    from ddgan.config import resolve_config
    from study.grid import load_plan

    plan = load_plan(grid)
    spec = next((t for t in plan.trials if t.method == "ddgan"), plan.trials[0])
    return resolve_config(plan.configs[spec.key], [*overrides, f"train.device={device}"]), spec.key


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m benchmarks.eval_cost", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", type=GridRef(), default=None, help="grid whose first DDGAN trial sets the evaluation (default: cpu)")
    p.add_argument("--set", type=OVERRIDE, dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override applied to that trial, e.g. --set eval.reference_n=10000")
    p.add_argument("--final", action="store_true", help="also time the final evaluation (final_metrics)")
    p.add_argument("--extractors", choices=("fmnist", "inception"), nargs="+", default=["fmnist", "inception"])
    p.add_argument("--feature-images", type=Number(int, 2, 1_000_000), nargs="+", default=None, metavar="N",
                   help="images per extractor, in --extractors order (default: cpu 10000 256, cuda 60000 5000)")
    p.add_argument("--skip-evaluation", action="store_true", help="table 1 only")
    p.add_argument("--device", type=DEVICE, default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=THREADS, default=None, help="torch threads (default: torch's)")
    p.add_argument("--data-dir", type=InputPath("dir"), default=None, help="Fashion-MNIST IDX directory (else $DDGAN_DATA_DIR)")
    p.add_argument("--fid-weights", type=InputPath("file"), default=None, help="Inception TorchScript file (else found as the study does)")
    p.add_argument("--tiny", action="store_true", help="smoke size: smoke grid (tiny preset), 64 samples, 256 references")
    p.add_argument("--inception-stand-in", type=OutputFile(".pt", writer="TorchScript"), default=None,
                   help="write a stand-in with Inception's interface here and time it instead (a rehearsal "
                        "without weights: its figures are not Inception's)")
    p.add_argument("--json", type=OutputFile(".json", writer="JSON"), default=None,
                   help="also write the rows here (what benchmarks/costs_patch.py reads)")
    p.add_argument("--out", type=OutputDir(), default=None, help="directory for eval_cost.md")
    return p


class InceptionStandIn(torch.nn.Module):
    """fid-helper's `default_1.pt` interface: (N, 3, 299, 299) in (v - 128) / 128 -> (N, 2048). Not
    Inception: it lets a rehearsal run the extractor's path (resize, batching) without weights."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)).repeat(1, 683)[:, :2048]


def write_stand_in(path: str) -> str:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is "deprecated"; the weights format is TorchScript
        torch.jit.save(torch.jit.script(InceptionStandIn()), path)
    return path


def main(argv=None) -> int | None:
    args = build_parser().parse_args(argv)  # every flag checked by its class (ddgan/cli.py)
    if args.threads:
        torch.set_num_threads(args.threads)
    from ddgan.data import resolve_data_dir

    device = torch.device(args.device)
    data_dir = resolve_data_dir(args.data_dir).resolve()
    cfg, key = trial_config(args.grid or (TINY["grid"] if args.tiny else "cpu"),
                            (TINY["overrides"] if args.tiny else []) + args.overrides, args.device)
    defaults = TINY["feature_images"] if args.tiny else DEFAULT_FEATURE_IMAGES[device.type]
    counts = dict(zip(args.extractors, args.feature_images, strict=True)) if args.feature_images else \
        {name: defaults.get(name, 1000) for name in args.extractors}
    fid_weights = write_stand_in(args.inception_stand_in) if args.inception_stand_in else args.fid_weights
    features = feature_rows(args.extractors, counts, cfg.eval.batch_size, device, data_dir, fid_weights)
    if args.inception_stand_in:
        for row in features:
            row["extractor"] += " (STAND-IN)" if row["extractor"] == "inception" else ""
    notes = [f"- evaluation config: `{key}` of the grid (preset {cfg.model.preset}, T={cfg.diffusion.T}, "
             f"eval batch {cfg.eval.batch_size}); {torch.get_num_threads()} torch threads",
             *(f"- {row['_weights']}" for row in features), ""]
    text = header("Evaluation cost", str(device)) + "\n".join(notes) + "\n### Feature extraction\n\n" + \
        markdown_table(features, FEATURE_COLUMNS)
    write_table(args.out, "eval_cost.md", text)  # now: a run cut short keeps table 1
    finals = [False] + ([True] if args.final and cfg.eval.final_metrics else [])
    evaluations = [] if args.skip_evaluation else eval_rows(cfg, data_dir, device, finals, fid_weights)
    if evaluations:
        text += "\n\n### One evaluation: reference statistics computed vs cached\n\n" + \
            markdown_table(evaluations, EVAL_COLUMNS)
    print(text)
    write_table(args.out, "eval_cost.md", text)
    if args.json:
        write_json(Path(args.json), "eval_cost", str(device), features + evaluations)


if __name__ == "__main__":
    sys.exit(run_cli(main))
