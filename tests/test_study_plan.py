"""What a dry-run plans: every committed grid on a fresh clone, a cost estimate with its
sources, notes (not errors) for what this machine lacks; run state apart from reports."""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from study import cost
from study.grid import load_plan
from study.prepare import StudyOptions, prepare

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("grid", ["cpu", "full"])
def test_dry_run_of_a_committed_grid_plans_and_costs_on_a_fresh_checkout(tmp_path, fmnist_dir, grid):
    """A fresh clone: no state, results/cpu committed. The dry-run exits 0, prints the cost with
    where its figures come from, and writes nothing (also not into the committed report)."""
    shutil.copytree(REPO / "results" / "cpu", tmp_path / "results" / "cpu")
    before = sorted(tmp_path.rglob("*"))
    done = subprocess.run([sys.executable, "-m", "study.run", "--grid", grid, "--dry-run", "--data-dir", str(fmnist_dir)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    stages = 2 if grid == "full" else 1  # full: its learning-rate pilot, then the study
    assert "cost estimate" in out and "GPU-hours" in out and out.count("per-step figures:") == 2 * stages, out
    assert "configs/costs.yaml" in out and ("ESTIMATE" in out or "measured" in out)
    assert f"{tmp_path}/results/runs/{grid}" in out  # the run's state, not results/<grid>
    if grid == "full" and not torch.cuda.is_available():
        assert "note: 0.25 GPU(s) per trial requested but this machine has no GPU" in out
    if grid == "full":  # issue 25: what the plan shows
        study = out[out.index("stage 2 of 2"):]
        assert "final: fid_inception on 10000 samples at every completed trial's last step" in study
        assert "pruner none" in study and "pruner median" in out[:out.index("stage 2 of 2")]
        rows = [line.split() for line in study.splitlines() if line.startswith(("ddgan-", "ddpm-"))]
        assert rows and all(int(row[3]) >= 3 for row in rows)  # seeds per reported cell
        assert {"ddpm-ddim-S1", "ddpm-ddim-S2", "ddpm-ddim-S4", "ddpm-ancestral-S1"} <= {row[0] for row in rows}
        # both stages priced together: trials and GPU-hours add up; each note printed once
        trials = [int(m) for m in re.findall(r"^(\d+) trials in \d+ cells", out, re.M)]
        hours = [tuple(map(float, m)) for m in re.findall(r"([\d.]+) \.\. ([\d.]+) GPU-hours", out)]
        assert len(trials) == 2 and len(hours) == 3, out
        assert f"both stages, one after the other: {sum(trials)} trials;" in out
        for i in range(2):
            assert hours[2][i] == pytest.approx(hours[0][i] + hours[1][i], abs=0.11)
        notes = [line for line in out.splitlines() if line.startswith("note: ")]
        assert notes and len(notes) == len(set(notes))
    assert sorted(tmp_path.rglob("*")) == before


def test_a_committed_report_is_not_a_run_state(tmp_path, fmnist_dir, monkeypatch):
    """`study.run --grid cpu` on a fresh clone starts a new study beside the committed results/cpu."""
    shutil.copytree(REPO / "results" / "cpu", tmp_path / "results" / "cpu")
    monkeypatch.chdir(tmp_path)
    prep = prepare(StudyOptions(grid="cpu", data_dir=str(fmnist_dir)))  # no "already exists"
    assert prep.stores.study_dir == tmp_path / "results" / "runs" / "cpu"
    assert not prep.stores.plan_file.exists()


def test_dry_run_without_data_plans_with_a_note(tmp_path):
    """No data where $DDGAN_DATA_DIR points: a note, not an error (a --data-dir that does not
    exist is refused by the flag's own check, tests/test_cli_classes.py)."""
    done = subprocess.run([sys.executable, "-m", "study.run", "--grid", "smoke", "--dry-run",
                           "--state-dir", str(tmp_path / "state")], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "DDGAN_DATA_DIR": str(tmp_path / "nowhere")})
    assert done.returncode == 0, done.stderr
    assert "note: no usable Fashion-MNIST here" in done.stdout and "nowhere" in done.stdout
    assert not (tmp_path / "state").exists()


FIGURES = cost.Figures(name="test", source="made up", batch=16,
                       train_step_s={"tiny": {"ddgan": 1.0, "ddpm": 0.5}}, nfe_ms_per_image={"tiny": {"ddgan": 0.0, "ddpm": 0.0}},
                       eval_overhead_s=2.0, trial_startup_s=0.0, study_startup_s=0.0, inception_ms_per_image=0.0)


def test_cost_of_the_pruning_grid_in_closed_form():
    """test_pruning: two DDGAN trials in one cell (40 steps at batch 16, evaluation every 10) and one
    DDPM trial alone. Full trial: 40 x 1 s + 4 evaluations x 2 s = 48 s (DDPM 40 x 0.5 + 8 = 28 s).
    Pruned at the first evaluation at or after n_warmup_steps 10: 10 x 1 + 2 = 12 s. Only the
    DDGAN cell has a trial to prune; the DDPM trial is alone in its cell."""
    plan = load_plan("test_pruning")
    est = cost.estimate(plan, FIGURES, slots=2)
    assert est.trial_s == (pytest.approx(48 + 12 + 28), pytest.approx(48 + 48 + 28))
    # one phase, two slots: the longer of half the trial time and the longest trial
    assert est.wall_s == (pytest.approx(max(88 / 2, 48)), pytest.approx(max(124 / 2, 48)))
    assert est.saving == pytest.approx(1 - 88 / 124)


def test_evaluation_cost_counts_network_evaluations():
    """A DDGAN evaluation at T samples n images x T network evaluations; DDPM at its respaced S."""
    plan = load_plan("smoke")
    figures = cost.Figures(**{**FIGURES.__dict__, "eval_overhead_s": 0.0, "train_step_s": {"tiny": {"ddgan": 0.0, "ddpm": 0.0}},
                              "nfe_ms_per_image": {"tiny": {"ddgan": 1.0, "ddpm": 1.0}}})
    for spec in plan.trials:
        config = plan.configs[spec.key]
        evaluations = math.ceil(spec.total_steps / config["eval"]["every"])
        nfe = spec.sampling_steps or (config["diffusion"]["T"] if spec.method == "ddgan"
                                      else config["eval"].get("respaced_steps") or config["diffusion"]["T"])
        expected = (1 if spec.phase == "sample" else evaluations) * config["eval"]["n_samples"] * nfe / 1000
        assert cost.trial_cost(spec, config, plan, figures).full_s == pytest.approx(expected), spec.key


def test_calibrate_measures_each_preset_and_method_of_the_plan():
    plan = load_plan("test_pruning")
    base = cost.load_figures()["cpu"]
    measured = cost.calibrate(plan, base, "cpu", steps=1)
    assert measured.source.startswith("calibrated just now")
    for method in ("ddgan", "ddpm"):
        assert 0 < measured.train_step_s["tiny"][method] < math.inf
        assert 0 < measured.nfe_ms_per_image["tiny"][method] < math.inf
    assert measured.train_step_s["paper"] == base.train_step_s["paper"]  # not in the plan: kept


# -- the FLOP count (benchmarks/flops.py) against closed forms -------------------------------------


def test_flop_count_of_one_layer_is_twice_its_macs():
    """A convolution's forward is 2 x MACs; a linear layer's forward + backward is 3 x that
    (grad input and grad weight each cost the forward again)."""
    from benchmarks.flops import count

    conv = torch.nn.Conv2d(3, 8, kernel_size=3, padding=1)
    x = torch.randn(5, 3, 28, 28)  # (B, C, H, W)
    with torch.no_grad():
        flops, ops = count(lambda: conv(x))
    assert flops == 2 * (5 * 8 * 28 * 28) * (3 * 3 * 3) and ops >= 1
    linear = torch.nn.Linear(16, 4)
    y = torch.randn(7, 16, requires_grad=True)
    flops, _ = count(lambda: linear(y).sum().backward())
    assert flops == 3 * 2 * 7 * 16 * 4


def test_flop_count_of_a_train_step_matches_flop_counter_mode_and_r1_costs_more():
    """The step counter sums FlopCounterMode's own formulas: on a step without R1 both agree
    exactly; DDGAN's R1 step (a double backward through D) costs more FLOPs and ops than a plain one."""
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarks.flops import count, count_train_step, step_config
    from ddgan.methods import build_method

    method = build_method(step_config("tiny", "ddpm", 2), torch.device("cpu"))
    x0 = torch.rand(2, 1, 28, 28) * 2 - 1
    method.train_step(x0, 1)
    ours, _ = count(lambda: method.train_step(x0, 2))
    reference = FlopCounterMode(display=False)
    with reference:
        method.train_step(x0, 3)
    assert ours == reference.get_total_flops() > 0
    row = count_train_step("tiny", "ddgan", 2)
    assert row["gflop_per_image_r1"] > row["gflop_per_image_plain"] and row["ops_per_step_r1"] > row["ops_per_step_plain"]
    every = row["r1_interval"]
    assert row["gflop_per_image"] == pytest.approx(((every - 1) * row["gflop_per_image_plain"] + row["gflop_per_image_r1"])
                                                   / every)


def test_committed_gpu_estimate_comes_from_the_counted_flops():
    """configs/costs.yaml's GPU step for the full grid's paper DDGAN trial is the FLOP model's
    closed form, and the counts behind it are the real step's (more than G + D forwards alone)."""
    figures = cost.load_figures()["gpu"]
    plan = load_plan("full")
    config = plan.configs[next(s.key for s in plan.trials if s.method == "ddgan")]
    row = figures.model.train["paper"]["ddgan"]
    busy = row["gflop_per_image"] * 128 / figures.model.sustained_tflops / 1000
    floor = row["ops_per_step"] * figures.model.host_us_per_op / 1e6
    assert figures.step_s(config) == (pytest.approx(max(busy, floor)), pytest.approx(busy))
    g, d = 2.40, 2.23  # forward GFLOP per image of the paper generator and discriminator (2026-12)
    forwards = 2 * g + 3 * d  # the fresh draw: two G forwards; D on real, fake and G's fake
    assert 2 * forwards < row["gflop_per_image"] < 3 * forwards  # each with its backward (1-2 x a forward)


# -- the cost model's arithmetic on a synthetic plan -------------------------------------------------

MODEL = cost.FlopModel(sustained_tflops=10.0, host_us_per_op=10.0,
                       train={"tiny": {"ddgan": {"gflop_per_image": 1.0, "ops_per_step": 1000},
                                       "ddpm": {"gflop_per_image": 0.5, "ops_per_step": 100}}},
                       sample={"tiny": {"ddgan": {"gflop_per_image": 0.0, "ops": 0},
                                        "ddpm": {"gflop_per_image": 0.0, "ops": 0}}})


def test_flop_model_step_is_flops_or_the_op_floor_and_compile_drops_the_floor():
    """Batch 16: DDGAN 16 GFLOP at 10 TFLOP/s = 1.6 ms, under its floor 1000 ops x 10 us = 10 ms;
    DDPM 0.8 ms over 1 ms of floor. With train.compile the floor goes."""
    plan = load_plan("test_pruning")
    figures = cost.Figures(**{**FIGURES.__dict__, "train_step_s": {}, "model": MODEL})
    by_method = {s.method: plan.configs[s.key] for s in plan.trials}
    assert figures.step_s(by_method["ddgan"]) == (pytest.approx(0.010), pytest.approx(0.0016))
    assert figures.step_s(by_method["ddpm"]) == (pytest.approx(0.001), pytest.approx(0.0008))
    compiled = {**by_method["ddgan"], "train": {**by_method["ddgan"]["train"], "compile": True}}
    assert figures.step_s(compiled) == (pytest.approx(0.0016), pytest.approx(0.0016))


def test_packing_and_gpu_count_in_closed_form():
    """k trials on one GPU: each trial's step max(solo, k x busy) (aggregate min(k x solo, peak)),
    or solo x k / measured ratio; N GPUs at 0.25 GPU per trial run 4N trials at a time."""
    plan = load_plan("test_pruning")
    figures = cost.Figures(**{**FIGURES.__dict__, "train_step_s": {}, "eval_overhead_s": 0.0, "model": MODEL})
    ddgan = next(s for s in plan.trials if s.method == "ddgan")
    alone = cost.trial_cost(ddgan, plan.configs[ddgan.key], plan, figures, k=1).full_s
    assert alone == pytest.approx(40 * 0.010)  # 40 steps, floor-bound; sampling free
    assert cost.trial_cost(ddgan, plan.configs[ddgan.key], plan, figures, k=4).full_s == pytest.approx(40 * 0.010)
    assert cost.trial_cost(ddgan, plan.configs[ddgan.key], plan, figures, k=8).full_s == pytest.approx(40 * 8 * 0.0016)
    measured = cost.Figures(**{**figures.__dict__, "packing": {4: 2.0}})
    assert cost.trial_cost(ddgan, plan.configs[ddgan.key], plan, measured, k=4).full_s == pytest.approx(40 * 0.010 * 2)
    est = cost.estimate(plan, figures, slots=2, per_device=8)
    assert est.trial_s[1] == pytest.approx(2 * 40 * 8 * 0.0016 + 40 * 8 * 0.0008)  # DDPM: max(1 ms, 8 x 0.8 ms)
    full = load_plan("full")
    assert cost.trials_per_gpu(full.grid.resources.gpus) == 4 and cost.trials_per_gpu(1.0) == 1
    assert cost.gpu_slots(full, 3) == 12 and cost.gpu_slots(plan, 5) == 2  # test_pruning: max_concurrent 2


def test_plan_prices_the_cluster_it_names(tmp_path, fmnist_dir, ray_session):
    """With --address the CPU here is not priced; the GPU line names N from --gpus, or says the count
    is unknown and what was assumed; 16 GPUs at 4 trials each run 64 at a time."""
    from study.summary import describe_plan

    def dry(*flags):
        done = subprocess.run([sys.executable, "-m", "study.run", "--grid", "full", "--dry-run", "--data-dir",
                               str(fmnist_dir), "--state-dir", str(tmp_path / "state"), "--allow-local",
                               "--address", ray_session, *flags], cwd=REPO, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return done.stdout

    named = dry("--gpus", "16")
    assert f"not priced (the trials run on the Ray cluster at {ray_session})" in named
    assert "x 16 (--gpus)" in named and "64 trial(s) at a time, 4 per GPU" in named and "GPU-hours" in named
    unknown = dry()
    assert f"count unknown: --address {ray_session} without --gpus; 1 GPU assumed" in unknown
    assert "here on the CPU" not in named + unknown
    local = describe_plan(prepare(StudyOptions(grid="full", dry_run=True, data_dir=str(fmnist_dir),
                                               results_dir=str(tmp_path / "state"))), gpus=2)
    assert "here on the CPU" in local and "x 2 (--gpus)" in local and "8 trial(s) at a time" in local


def test_costs_patch_turns_measured_figures_into_the_gpu_set(tmp_path):
    """benchmarks/costs_patch.py on synthetic figures: step = batch / img/s of the grid's variant
    (bf16), ms per NFE = ms/image / NFE (DDGAN: median over T; DDPM: ancestral), packing = the
    measured aggregate ratio, Inception from the real network; the patch applies and loads."""
    import json

    from benchmarks.costs_patch import load as load_json
    from benchmarks.costs_patch import patch

    def write(name, benchmark, rows):
        (tmp_path / name).write_text(json.dumps({"benchmark": benchmark, "device": "cuda", "date": "2026-12-24",
                                                 "machine": "x; GPU: NVIDIA H100 80GB HBM3", "rows": rows}))

    write("train.json", "train_throughput", [
        {"preset": "paper", "method": "ddgan", "variant": "bf16", "batch": 128, "trainer img/s": 3200.0, "ms/step": 40.0},
        {"preset": "paper", "method": "ddgan", "variant": "fp32", "batch": 128, "trainer img/s": 1600.0, "ms/step": 80.0}])
    write("sample.json", "sample_speed", [
        {"preset": "paper", "model": "DDGAN", "sampler": "posterior", "NFE": 1, "ms/image": 0.02},
        {"preset": "paper", "model": "DDGAN", "sampler": "posterior", "NFE": 4, "ms/image": 0.12},
        {"preset": "paper", "model": "DDGAN", "sampler": "posterior", "NFE": 8, "ms/image": 0.4},
        {"preset": "paper", "model": "DDPM", "sampler": "ancestral", "NFE": 10, "ms/image": 0.5},
        {"preset": "paper", "model": "DDPM", "sampler": "ddim", "NFE": 10, "ms/image": 9.0}])
    write("packing.json", "packing", [{"concurrent trials": n, "aggregate img/s": a, "vs 1": a / 3200}
                                      for n, a in ((1, 3200.0), (2, 4800.0), (4, 5600.0))])
    write("inception.json", "eval_cost", [{"extractor": "inception", "ms/image": 0.8}])
    costs = tmp_path / "configs" / "costs.yaml"
    costs.parent.mkdir()
    costs.write_text((REPO / "configs" / "costs.yaml").read_text())
    (tmp_path / "costs.patch").write_text(patch(costs.read_text(), load_json(tmp_path)))
    subprocess.run(["git", "apply", "costs.patch"], cwd=tmp_path, check=True)
    gpu = cost.load_figures(costs)["gpu"]
    assert gpu.name == "NVIDIA H100 80GB HBM3 (measured 2026-12-24, benchmarks/gpu_check.sh)"
    assert gpu.batch == 128 and gpu.train_step_s == {"paper": {"ddgan": 0.04}}
    assert gpu.nfe_ms_per_image == {"paper": {"ddgan": pytest.approx(0.03), "ddpm": pytest.approx(0.05)}}
    assert gpu.packing == {2: 1.5, 4: 1.75} and gpu.inception_ms_per_image == 0.8
    assert gpu.model is not None and cost.load_figures(costs)["cpu"] == cost.load_figures()["cpu"]


def test_calibrate_times_an_r1_step_at_the_grids_batch(monkeypatch):
    """The probe times plain steps and one R1 step (step r1_interval) of the trial's own batch, and
    samples one batch (on the CPU at most 64: the per-image cost does not depend on it)."""
    from ddgan.methods import build_method

    calls: dict[str, list] = {"steps": [], "batches": [], "samples": []}

    def recording(cfg, device):
        method = build_method(cfg, device)
        step, sample = method.train_step, method.sample

        def train_step(x0, n):
            calls["steps"].append(n)
            calls["batches"].append(x0.shape[0])
            return step(x0, n)

        def draw(n, generator):
            calls["samples"].append(n)
            return sample(n, generator)

        method.train_step, method.sample = train_step, draw
        return method

    monkeypatch.setattr(cost, "build_method", recording)
    plan = load_plan("test_pruning")
    cost.calibrate(plan, cost.load_figures()["cpu"], "cpu", steps=2)
    ddgan_steps = calls["steps"][: calls["steps"].index(15) + 1]
    assert ddgan_steps == [1, 2, 3, 15] and set(calls["batches"]) == {16}  # warm-up, 2 timed, R1 at 15
    assert calls["steps"][len(ddgan_steps):] == [1, 2, 3]  # DDPM: no R1
    assert calls["samples"] == [8, 64, 8, 64]  # a warm-up draw, then one batch of min(eval batch 128, 64)
