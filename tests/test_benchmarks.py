"""Smoke tests of the benchmark scripts at tiny sizes: each writes its Markdown table(s) with the
command, machine and device, the expected columns and finite numbers. No timing is asserted.

`benchmarks/gpu_check.sh --rehearse` (every step shrunk, on the CPU) drives the GPU tests,
train_throughput, sample_speed, eval_cost, packing --direct, learning_check and costs_patch
once; study_overhead runs on its own. Both join the
session's Ray cluster, so Ray starts once for the whole test run. Inception is a TorchScript
stand-in in fid-helper's layout (CI installs no Inception weights and has no network).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import tarfile
import warnings
from pathlib import Path

import pytest
import torch
from study_fixtures import real_study  # noqa: F401 (session fixture)

from tools.gpu_bundle import TIMING_NAME

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


class InceptionStandIn(torch.nn.Module):
    """fid-helper's `default_1.pt` interface: (N, 3, 299, 299) in (v - 128) / 128 -> (N, 2048)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)).repeat(1, 683)[:, :2048]


def bench_env(work: Path, fmnist_dir: Path, ray_address: str) -> dict[str, str]:
    weights = work / "inception-stand-in.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is "deprecated"; the weights format is TorchScript
        torch.jit.save(torch.jit.script(InceptionStandIn()), str(weights))
    return {**os.environ, "DDGAN_DATA_DIR": str(fmnist_dir), "DDGAN_CACHE_DIR": str(work / "cache"),
            "DDGAN_FID_WEIGHTS": str(weights), "RAY_ADDRESS": ray_address, "OMP_NUM_THREADS": "1",
            "PYTHON": sys.executable, "PYTHONUNBUFFERED": "1"}


def small_bundle(work: Path, fmnist_dir: Path) -> Path:
    """A bundle in gpu_bundle.py's layout without the packages (this environment has them): the
    train split's files and a zeroed Inception stand-in, tarred (`python -m tarfile` unpacks any
    compression, so no xz here)."""
    from tools.gpu_bundle import zeroed_inception

    stage = work / "stage"
    (stage / "site").mkdir(parents=True)
    (stage / "data").mkdir()
    (stage / "inception").mkdir()
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        shutil.copyfile(fmnist_dir / name, stage / "data" / name)
    zeroed_inception(str(work / "inception-stand-in.pt"), stage / "inception" / "architecture.pt")  # bench_env's
    bundle = work / "bundle" / "bundle.tar"
    bundle.parent.mkdir()
    with tarfile.open(bundle, "w") as tar:
        for part in ("site", "data", "inception"):
            tar.add(stage / part, arcname=part)
    (bundle.parent / "MANIFEST.txt").write_text("target: this test's Python\ndata: the train split\n"
                                                "inception: a zeroed stand-in\n")
    return bundle


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory, fmnist_dir, ray_session) -> tuple[Path, subprocess.CompletedProcess]:
    """`gpu_check.sh --rehearse` (every step shrunk, on the CPU) as the device machine would run it:
    through a bundle (tools/)."""
    out = tmp_path_factory.mktemp("gpu-check")
    work = tmp_path_factory.mktemp("env")
    env = bench_env(work, fmnist_dir, ray_session)
    env["GPU_BUNDLE"] = str(small_bundle(work, fmnist_dir))
    proc = subprocess.run(["bash", "tools/gpu_check_bundled.sh", str(out), "--rehearse"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    return out, proc


def tables(text: str) -> list[tuple[list[str], list[dict[str, str]]]]:
    """Every Markdown table in `text`: (columns, rows as {column: cell})."""
    found, block = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            block.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif block:
            columns, rows = block[0], block[2:]
            found.append((columns, [dict(zip(columns, row, strict=True)) for row in rows]))
            block = []
    return found


def number(cell: str) -> float:
    return float(cell.replace(",", ""))


def check_table(text: str, index: int, columns: list[str], numeric: list[str]) -> list[dict[str, str]]:
    """The header lines are there; table `index` has exactly `columns`; `numeric` cells are finite."""
    for field in ("- command: `python -m benchmarks.", "- machine: ", "- device: "):
        assert field in text, f"missing {field!r} in:\n{text}"
    found = tables(text)
    assert len(found) > index, text
    got, rows = found[index]
    assert got == columns, text
    assert rows, text
    for row in rows:
        for column in numeric:
            assert math.isfinite(number(row[column])), f"{column}={row[column]!r} in:\n{text}"
    return rows


def section(out: Path, title: str) -> str:
    """One benchmark's section of tables.md (from its `## title` to the next `## `)."""
    text = (out / "tables.md").read_text()
    parts = [p for p in text.split("\n## ") if p.startswith(title) or p.startswith("## " + title)]
    assert parts, f"no section {title!r} in tables.md:\n{text[:3000]}"
    return "## " + parts[0].removeprefix("## ")


def test_gpu_check_rehearsal_runs_every_step(dry_run):
    out, proc = dry_run
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert not (out / "failures.txt").exists(), (out / "failures.txt").read_text()
    names = sorted(p.name for p in out.iterdir())
    assert names == ["costs.patch", "figures.json", "log.txt", "machine.txt", "samples.png", "tables.md"]  # <= 8
    log = (out / "log.txt").read_text()
    assert "== unpacking" in log and re.search(r"\d+ skipped", log)  # the GPU tests ran (skipped on the CPU)
    assert [line.split(" (limit")[0] for line in log.splitlines() if line.startswith("== ") and "(limit" in line] == [
        "== 1 GPU tests (resume across R1, bf16, compile)", "== 2 trainer img/s, fp32 and bf16",
        "== 3 trainer img/s, bf16 + compile", "== 4 sampling ms/image (channels_last) and DDPM S=1000 FID sampling",
        "== 5 Inception ms/image", "== 6 trials packed per GPU (1, 2, 4)", "== 7 learning run (DDGAN ns, T=4)",
        "== 8 costs.yaml patch"]
    machine = (out / "machine.txt").read_text()
    assert "REHEARSAL" in machine and "bundle: " in machine and "inception: a zeroed stand-in" in machine


def test_gpu_check_step_limits_fit_eight_minutes():
    """The GPU path's step limits add up to at most 480 s, so a check that hits every limit still
    ends inside 8 minutes."""
    text = (REPO / "benchmarks" / "gpu_check.sh").read_text()
    limits = [int(m) for m in re.findall(r'^step "[^"]+" (\d+) ', text, re.M)]
    assert len(limits) == 8 and sum(limits) <= 480, limits


def test_train_throughput_table(dry_run):
    rows = check_table(section(dry_run[0], "Trainer throughput"), 0,
                       ["preset", "method", "variant", "T", "batch", "trainer img/s", "ms/step"],
                       ["trainer img/s", "ms/step"])
    assert [(r["method"], r["variant"]) for r in rows] == [("ddgan", "fp32"), ("ddgan", "bf16"), ("ddpm", "fp32"),
                                                          ("ddpm", "bf16")]


def test_sample_speed_tables(dry_run):
    text = section(dry_run[0], "Sampling speed")
    rows = check_table(text, 0, ["model", "sampler", "T", "NFE", "ms/image", "images/s", "speed-up vs DDPM T=10"],
                       ["T", "NFE", "ms/image", "images/s", "speed-up vs DDPM T=10"])
    assert [(r["model"], r["sampler"], r["T"]) for r in rows] == [
        ("DDGAN", "posterior", "1"), ("DDPM", "ancestral", "10"), ("DDPM", "ddim", "10")]
    assert "channels_last" in text
    (fid,) = check_table(text, 1, ["preset", "S", "samples", "batch", "ms per step (one batch)", "ms/image per NFE",
                                   "extrapolated s", "how"], ["extrapolated s"])
    assert fid["S"] == "1000" and fid["how"].startswith("EXTRAPOLATED from 2 of 1000 steps")


def test_packing_table(dry_run):
    rows = check_table(section(dry_run[0], "Trial packing"), 0,
                       ["concurrent trials", "preset", "batch", "steps timed", "img/s per trial", "aggregate img/s",
                        "vs 1"], ["img/s per trial", "aggregate img/s", "vs 1"])
    assert [r["concurrent trials"] for r in rows] == ["1", "2"] and number(rows[0]["vs 1"]) == 1.0


def test_inception_table(dry_run):
    text = section(dry_run[0], "Evaluation cost")
    (row,) = check_table(text, 0, ["extractor", "feature dim", "batch", "images", "load s", "seconds", "features/s",
                                   "ms/image"], ["feature dim", "images", "seconds", "ms/image"])
    assert row["extractor"] == "inception" and row["feature dim"] == "2048"
    assert f"inception weights: {TIMING_NAME} (sha256" in text  # the bundle's timing-only network, named as such


def test_learning_run_and_costs_patch(dry_run, tmp_path):
    """The learning run's evaluations are listed; the patch applies to configs/costs.yaml, names the
    machine, and the patched file loads with the measured sampling figures in place."""
    out = dry_run[0]
    text = section(out, "Learning check")
    assert "- learns: " in text
    check_table(text, 0, ["step", "wall s", "images", "metric", "value"], ["step", "value"])
    figures = json.loads((out / "figures.json").read_text())
    assert {"train_throughput", "sample_speed", "eval_cost", "packing", "learning_check"} <= figures.keys()
    (tmp_path / "configs").mkdir()
    shutil.copyfile(REPO / "configs" / "costs.yaml", tmp_path / "configs" / "costs.yaml")
    subprocess.run(["git", "apply", str(out / "costs.patch")], cwd=tmp_path, check=True)
    from study.cost import load_figures

    gpu = load_figures(tmp_path / "configs" / "costs.yaml")["gpu"]
    assert "measured" in gpu.name and "tiny" in gpu.nfe_ms_per_image and gpu.packing.keys() == {2}


def test_study_overhead_table(tmp_path, fmnist_dir, ray_session):
    env = bench_env(tmp_path, fmnist_dir, ray_session)
    proc = subprocess.run([sys.executable, "-m", "benchmarks.study_overhead", "--tiny", "--address", ray_session,
                           "--out", str(tmp_path / "out")], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    text = (tmp_path / "out" / "study_overhead.md").read_text()
    rows = check_table(text, 0, ["leg", "steps", "evaluations", "seconds", "overhead s", "overhead % of trial"],
                       ["seconds"])
    assert len(rows) == 6
    for row in rows[1:3]:  # the study legs, against the bare one
        assert row["steps"] == "20" and row["evaluations"] == "2"
        assert math.isfinite(number(row["overhead s"])) and math.isfinite(number(row["overhead % of trial"]))
    assert "python -m ddgan.train --config" in text  # the bare leg as a command


def test_profile_step_groups_the_whole_step_and_bounds_the_speed_up():
    from benchmarks.profile_step import group_of, profile_step

    assert [group_of(n) for n in ("aten::mkldnn_convolution", "aten::convolution_backward", "aten::_fused_adam_",
                                  "aten::native_group_norm", "aten::silu")] == [
        "convolution", "convolution", "optimiser", "everything else", "everything else"]
    rows, ceiling = profile_step("tiny", "ddpm", batch=4, steps=1, device="cpu", T=10)
    assert [r["group"] for r in rows] == ["convolution", "everything else", "optimiser"]
    assert sum(r["share"] for r in rows) == pytest.approx(1.0)
    assert all(r["share"] > 0 and r["self ms/step"] > 0 for r in rows)
    assert ceiling == pytest.approx(1 / rows[0]["share"]) and ceiling > 1


def test_objective_check_table(tmp_path, fmnist_dir):
    """benchmarks/objective_check.py at a tiny size: one row per arm and seed, the arm's form and
    draw resolved from the config, a summary row per arm with its seeds and finite distances."""
    env = {**os.environ, "DDGAN_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.objective_check", "--arms", "tv", "tv:nonsaturating/shared",
                           "--seeds", "0", "1", "--preset", "tiny", "--steps", "4", "--log-every", "2",
                           "--batch", "8", "--n-samples", "32", "--data-dir", str(fmnist_dir),
                           "--out", str(tmp_path / "out")], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    text = (tmp_path / "out" / "objective_check.md").read_text()
    summary = check_table(text, 0, ["arm", "form", "draw", "seeds", "diverged", "losses moved", "fd mean",
                                    "95% CI +-", "fd per seed", "step s (median)"], ["fd mean", "95% CI +-"])
    assert [(r["arm"], r["form"], r["draw"], r["seeds"]) for r in summary] == [
        ("tv", "log", "fresh", "2"), ("tv:nonsaturating/shared", "nonsaturating", "shared", "2")]
    per_seed = check_table(text, 1, ["arm", "seed", "status", "d_loss_first", "d_loss_last", "d_loss_range", "g_loss_first",
                                     "g_loss_last", "g_loss_range", "fd", "step_s", "wall_s"], ["fd", "d_loss_first"])
    assert len(per_seed) == 4 and {r["status"] for r in per_seed} == {"ok"}
    assert "eval/fd_fmnist_32" in text and "not Inception FID" in text


def test_objective_check_reads_a_finished_studys_cells(real_study):  # noqa: F811
    """--from-study: a study's completed DDGAN trials at T as objective-check rows (MLflow values)."""
    from mlflow.tracking import MlflowClient

    from benchmarks.objective_check import study_rows

    rows = study_rows(str(real_study.results), real_study.study, T=2)
    assert [(r["arm"], r["seed"], r["form"], r["draw"]) for r in rows] == [("ns:nonsaturating", 0, "nonsaturating", "fresh")]
    client = MlflowClient(real_study.uri)
    run_id = client.search_runs([client.get_experiment_by_name(real_study.study).experiment_id],
                                "tags.trial_key = 'ddgan-ns-T2-lr0.002-s0'")[0].info.run_id
    d_loss = sorted(client.get_metric_history(run_id, "train/d_loss"), key=lambda m: m.step)
    assert (rows[0]["d_loss_first"], rows[0]["d_loss_last"]) == (d_loss[0].value, d_loss[-1].value)
    assert rows[0]["fd"] == client.get_run(run_id).data.metrics["eval/fd_test-extractor_64"]
    assert rows[0]["step_s"] > 0


@pytest.mark.parametrize("flag", [[], ["--pytorch-init"]])
def test_d_warmup_table(fmnist_dir, flag):
    """benchmarks/d_warmup.py at a tiny size: one row per reported step; at step 1 the official D
    is ~constant (its last convolution starts at ~0), PyTorch's default-initialised D is not."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks.d_warmup", "--steps", "4", "--every", "2",
                           "--preset", "tiny", "--data-dir", str(fmnist_dir), *flag], cwd=REPO,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [line.split("|")[1:-1] for line in proc.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    assert [r[0].strip() for r in rows[1:]] == ["1", "2", "4"]
    sd_real = float(rows[1][3].split("+-")[1])
    assert (sd_real < 1e-3) == (not flag)
