"""Speed measured alone (ddgan.speed, study.tuning.speed), one memory format for every network
placement, and what train/img_per_s counts (issue 23, defect 6)."""

from __future__ import annotations

import math

import pytest
import torch
from study_fixtures import real_study  # noqa: F401 (session fixture)

from ddgan.config import resolve_config
from ddgan.nets import memory_format_for


def tiny(method="ddgan", **overrides):
    base = {"method": method, "model": {"preset": "tiny"}, "diffusion": {"T": 2 if method == "ddgan" else 20},
            "train": {"steps": 6, "batch_size": 4, "device": "cpu"}, "eval": {"batch_size": 8}}
    return resolve_config(base, [f"{k}={v}" for k, v in overrides.items()])


def test_measure_speed_times_the_sampling_chain_and_one_r1_step_per_window(monkeypatch):
    import ddgan.methods
    from ddgan.speed import measure_speed

    calls = []
    real = ddgan.methods.r1_penalty
    monkeypatch.setattr(ddgan.methods, "r1_penalty", lambda *a, **k: calls.append(1) or real(*a, **k))
    figures = measure_speed(tiny(**{"diffusion.T": 3, "objective.r1_interval": 4}), "cpu", sample_batch=5)
    assert figures.nfe == 3 and figures.sample_batch == 5
    assert figures.train_steps_timed == 4
    assert len(calls) == 1  # CPU: warm-up step 1, then steps 2..5 timed, R1 at step 4
    for value in figures.as_metrics().values():
        assert math.isfinite(value) and value > 0
    assert set(figures.as_metrics()) == {"speed/sample_ms_per_image", "speed/train_img_per_s"}
    assert figures.as_tags()["speed.device"].startswith("cpu: ")


class FakeClock:
    """time.perf_counter that only the timed function advances: its first call costs `cold`
    seconds (start-up), every later one `warm`."""

    def __init__(self, cold: float, warm: float):
        self.now, self.cold, self.warm, self.calls = 0.0, cold, warm, 0

    def __call__(self) -> float:
        return self.now

    def work(self) -> None:
        self.now += self.cold if self.calls == 0 else self.warm
        self.calls += 1


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_a_cheap_chain_is_timed_warm_over_enough_calls(monkeypatch, device):
    """Before: one cold call on a CPU, so DDGAN at T=1 (NFE 1) timed slower than at T=2 (cpu study)."""
    import ddgan.speed

    clock = FakeClock(cold=1 / 16, warm=1 / 256)  # binary fractions: the clock's sums are exact
    monkeypatch.setattr(ddgan.speed.time, "perf_counter", clock)
    monkeypatch.setattr(ddgan.speed, "synchronize", lambda device: None)
    seconds, calls = ddgan.speed.time_calls(clock.work, torch.device(device), min_seconds=1.0)
    assert seconds == 1 / 256  # the start-up is not in the figure
    # A warm call decides how many fill the second (256), not the cold one (16 would time 1/16 s):
    # before them the first call (CPU), or an autotuning call and the first (CUDA), and the probe.
    assert calls == 256 and clock.calls == (3 if device == "cuda" else 2) + calls
    assert calls * (1 / 256) >= 1.0  # the timed window is the second asked for


def test_a_chain_of_a_second_or_more_is_timed_once(monkeypatch):
    """The slowest chain (DDPM, 1000 steps: seconds per batch) is not run twice on a CPU."""
    import ddgan.speed

    clock = FakeClock(cold=2.5, warm=2.4)
    monkeypatch.setattr(ddgan.speed.time, "perf_counter", clock)
    assert ddgan.speed.time_calls(clock.work, torch.device("cpu"), min_seconds=1.0) == (2.5, 1)
    assert clock.calls == 1


def test_speed_figures_name_their_protocol_and_calls():
    from ddgan.speed import PROTOCOL, measure_speed

    figures = measure_speed(tiny(**{"diffusion.T": 1}), "cpu", sample_batch=2, min_sample_seconds=0.05)
    tags = figures.as_tags()
    assert tags["speed.protocol"] == PROTOCOL and int(tags["speed.sample_calls_timed"]) >= 1


def test_measure_speed_of_a_respaced_ddpm_counts_its_own_steps():
    from ddgan.speed import measure_speed

    figures = measure_speed(tiny("ddpm", **{"eval.respaced_steps": 4, "eval.sampler": "ddim"}), "cpu", 3)
    assert figures.nfe == 4 and figures.train_steps_timed == 8


def test_every_network_placement_takes_the_configs_memory_format(tmp_path, monkeypatch):
    assert memory_format_for(True, "cuda") is torch.channels_last
    assert memory_format_for(True, torch.device("cuda", 0)) is torch.channels_last
    assert memory_format_for(False, "cuda") is torch.preserve_format
    assert memory_format_for(True, "cpu") is torch.preserve_format
    # The sample phase and export load through ddgan.export: they must place the network as the
    # training run's evaluations did. Forcing channels_last here shows the loader applies the rule.
    import ddgan.export
    from ddgan.checkpoint import save_checkpoint
    from ddgan.methods import build_method

    cfg = tiny()
    method = build_method(cfg, torch.device("cpu"))
    save_checkpoint(tmp_path / "ckpt_0000001.pt", {"step": 1, "config": cfg.to_dict(), **method.state_dict()})
    monkeypatch.setattr(ddgan.export, "memory_format_for", lambda wanted, device: torch.channels_last)
    _, net = ddgan.export.load_for_sampling(tmp_path)
    convs = [m.weight for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
                         for w in convs if w.shape[1] > 1 and w.shape[-1] > 1)


def test_img_per_s_counts_training_only_not_evaluations_or_checkpoints(tmp_path, monkeypatch):
    """A fake clock that only the evaluator and checkpoint writes advance: the windows after them must
    not be charged. Before the fix the window after each evaluation included it."""
    import ddgan.checkpoint
    import ddgan.trainer
    from ddgan.callbacks import Callback
    from ddgan.trainer import train

    clock = [0.0]
    monkeypatch.setattr(ddgan.trainer.time, "perf_counter", lambda: clock[0])
    real_save = ddgan.trainer.save_checkpoint

    def slow_save(*args, **kwargs):
        clock[0] += 500.0
        return real_save(*args, **kwargs)

    monkeypatch.setattr(ddgan.trainer, "save_checkpoint", slow_save)
    step_cost = 0.25

    class Steps:
        def __iter__(self):
            return self

        def __next__(self):
            clock[0] += step_cost  # the only time a training step "takes"
            return torch.zeros(4, 1, 28, 28)

    def evaluator(sample_fn, step, out_dir, final=False):
        clock[0] += 1000.0
        return {}, {}

    rates = []

    class Rates(Callback):
        def on_train_step(self, step, metrics):
            rates.append((step, metrics["train/img_per_s"]))

    cfg = tiny(**{"train.steps": 8, "train.log_every": 2, "eval.every": 4, "checkpoint.every": 3})
    train(cfg, tmp_path, data=Steps(), callbacks=[Rates()], evaluator=evaluator)
    assert [s for s, _ in rates] == [2, 4, 6, 8]
    for step, rate in rates:
        assert rate == pytest.approx(4 / step_cost), (step, rates)  # batch 4 per 0.25 s, every window


def test_speed_groups_share_a_measurement_only_where_speed_cannot_differ(tmp_path):
    from study.grid import load_grid
    from study.prepare import StudyOptions, prepare
    from study.tuning.speed import speed_groups

    prep = prepare(StudyOptions(grid="smoke", dry_run=True, results_dir=str(tmp_path)))
    groups = speed_groups(prep.plan)
    by_trial = {key: group for group, (_, keys) in groups.items() for key in keys}
    assert set(by_trial) == {t.key for t in prep.plan.trials}
    configs = prep.plan.configs

    def what_speed_depends_on(key):  # the smoke grid varies only these among speed-relevant settings
        c = configs[key]
        return c["method"], c["diffusion"]["T"], c["eval"]["respaced_steps"], c["eval"]["sampler"]

    for a in by_trial:
        for b in by_trial:
            assert (by_trial[a] == by_trial[b]) == (what_speed_depends_on(a) == what_speed_depends_on(b)), (a, b)
    losses_at_t = {}
    for t in prep.plan.trials:
        if t.method == "ddgan":
            losses_at_t.setdefault((t.T, by_trial[t.key]), set()).add(t.loss)
    assert any(len(losses) > 1 for losses in losses_at_t.values())  # the loss's formula is not a speed
    assert load_grid("smoke")  # the grid the plan came from still loads


def test_a_real_study_logs_speed_measured_alone_on_every_trial(real_study):  # noqa: F811
    from mlflow.tracking import MlflowClient

    client = MlflowClient(real_study.uri)
    experiment = client.get_experiment_by_name(real_study.study)
    runs = client.search_runs([experiment.experiment_id], "tags.role = 'trial'")
    assert len(runs) == 4
    nfe = {}
    for run in runs:
        metrics, tags = run.data.metrics, run.data.tags
        assert metrics["speed/sample_ms_per_image"] > 0 and metrics["speed/train_img_per_s"] > 0, tags["trial_key"]
        assert tags["speed.device"].startswith("cpu") and "alone" in tags["speed.protocol"]
        assert int(tags["speed.nfe"]) == metrics["eval/nfe"], tags["trial_key"]  # the chain it was scored on
        nfe[tags["cell"]] = int(tags["speed.nfe"])
    # ddpm-T2's model is the one respaced to S=1, so its own evaluations sample with DDIM S=1 too
    assert nfe == {"ddgan-ns-T1": 1, "ddgan-ns-T2": 2, "ddpm-T2": 1, "ddpm-ddim-S1": 1}



def test_a_group_timed_under_another_protocol_is_timed_again_and_becomes_the_latest(tmp_path, monkeypatch):
    """`--resume` of a finished study after the timing protocol changed: the groups whose runs carry
    another `speed.protocol` are timed again, the new figure becomes each run's latest value; groups
    already on the current protocol are left alone."""
    from mlflow.entities import Metric, RunTag

    import study.tuning.speed as tuning_speed
    from ddgan.speed import PROTOCOL
    from study.grid import load_plan
    from study.stores.tracking import Tracker
    from study.tuning.speed import log_speed, speed_groups

    plan = load_plan("smoke")
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = tracker.experiment("smoke")
    parent = tracker.parent_run(experiment, "smoke", {})
    run_ids = tracker.trial_runs(experiment, parent, [(t.key, {}, plan.configs[t.key]) for t in plan.trials])
    groups = list(speed_groups(plan).values())
    old, current = groups[0][1], [k for _, keys in groups[1:] for k in keys]
    for keys, protocol in ((old, "an older protocol"), (current, PROTOCOL)):
        for key in keys:
            tracker.client.log_batch(run_ids[key], metrics=[Metric("speed/sample_ms_per_image", 99.0, 0, 0)],
                                     tags=[RunTag("speed.protocol", protocol)])
    timed = []

    def fake_measure(configs, threads):
        timed.extend(configs)
        return [{"metrics": {"speed/sample_ms_per_image": 1.5}, "tags": {"speed.protocol": PROTOCOL}} for _ in configs]

    monkeypatch.setattr(tuning_speed, "_single_node_here", lambda: True)
    monkeypatch.setattr(tuning_speed, "_measured_here", fake_measure)
    assert log_speed(plan, tracker.client, run_ids, 1.0, 0.0) == 1 and timed == [groups[0][0]]
    for key in old:
        data = tracker.client.get_run(run_ids[key]).data
        assert data.metrics["speed/sample_ms_per_image"] == 1.5 and data.tags["speed.protocol"] == PROTOCOL
    for key in current:
        assert tracker.client.get_run(run_ids[key]).data.metrics["speed/sample_ms_per_image"] == 99.0
    assert log_speed(plan, tracker.client, run_ids, 1.0, 0.0) == 0  # all on the current protocol now
