"""The learning-rate pilot (study/pilot.py): the choice rule on known inputs, the grid's pilot
rules, and a real two-stage study (Ray, MLflow on SQLite, Optuna storage) whose reported trials
run only at the rates the pilot chose, on other seeds, unpruned."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient
from test_study_e2e import optuna_trials, study_options, trial_runs

from ddgan.errors import UsageError
from study.driver import run_study
from study.grid import expand, load_grid, method_groups, pilot_grid
from study.pilot import CHOICE_FILE, PilotResult, choose_lr, read_choice
from study.prepare import StudyOptions, prepare


def r(lr, cell, seed, value, state="completed", group="ddgan-ns"):
    return PilotResult(group, cell, lr, seed, state, value)


def test_choice_is_the_best_mean_over_cells_of_seed_means():
    rows = [r(1e-4, "T2", 0, 10.0), r(1e-4, "T2", 1, 30.0), r(1e-4, "T4", 0, 20.0),  # (20 + 20) / 2 = 20
            r(2e-4, "T2", 0, 18.0), r(2e-4, "T4", 0, 24.0), r(2e-4, "T4", 1, 24.0)]  # (18 + 24) / 2 = 21
    choice = choose_lr(rows, "min")["ddgan-ns"]
    assert choice["lr"] == 1e-4 and choice["scores"] == {"0.0001": 20.0, "0.0002": 21.0}
    assert choose_lr(rows, "max")["ddgan-ns"]["lr"] == 2e-4  # max mode: the larger score
    # a seed-weighted mean (every trial alike) would rank them the other way: 20 vs 22 -> 60/3=20, 66/3=22
    assert choice["completed"] == {"0.0001": 3, "0.0002": 3} and choice["cells"] == 2


def test_a_rate_pruned_or_failed_in_some_cell_is_not_eligible():
    rows = [r(1e-4, "T2", 0, 5.0), r(1e-4, "T4", 0, None, "pruned"),  # best where it ran, pruned at T4
            r(2e-4, "T2", 0, 9.0), r(2e-4, "T4", 0, 9.0),
            r(4e-4, "T2", 0, 1.0), r(4e-4, "T4", 0, float("nan"))]  # a NaN is no result
    assert choose_lr(rows, "min")["ddgan-ns"]["lr"] == 2e-4
    with pytest.raises(UsageError, match="ddpm.*nothing to choose"):
        choose_lr([r(1e-4, "T10", 0, None, "failed", group="ddpm")], "min")


def test_a_rate_that_lost_a_seed_to_the_pruner_loses_to_one_that_lost_none():
    rows = [r(1e-4, "T2", 0, 3.0), r(1e-4, "T2", 1, None, "pruned"),  # its surviving seed is the best value
            r(2e-4, "T2", 0, 6.0), r(2e-4, "T2", 1, 7.0)]
    choice = choose_lr(rows, "min")["ddgan-ns"]
    assert choice["lr"] == 2e-4 and choice["lost"] == {"0.0001": 1, "0.0002": 0}
    rows.append(r(2e-4, "T4", 0, None, "failed"))  # now 2e-4 misses a cell: 1e-4 is the only one scored there
    rows.append(r(1e-4, "T4", 0, 4.0))
    assert choose_lr(rows, "min")["ddgan-ns"]["lr"] == 1e-4


def test_an_unfinished_pilot_chooses_nothing():
    with pytest.raises(UsageError, match="unfinished"):
        choose_lr([r(1e-4, "T2", 0, 3.0), r(2e-4, "T2", 0, None, "unfinished")], "min")


def test_a_choice_must_name_every_method_and_one_of_its_candidates():
    from ddgan.errors import ConfigError
    grid, path = load_grid("full")
    groups = method_groups(grid)
    with pytest.raises(ConfigError, match="chooses one for each"):
        expand(grid, path, {"ddgan-ns": 1.6e-4})
    with pytest.raises(ConfigError, match="not among the candidates"):
        expand(grid, path, {**{g: 1.6e-4 for g in groups if g != "ddpm"}, "ddpm": 3.0e-4})


def test_groups_are_chosen_separately():
    rows = [r(1e-4, "a", 0, 1.0), r(2e-4, "a", 0, 2.0), r(1e-4, "b", 0, 2.0, group="ddpm"),
            r(2e-4, "b", 0, 1.0, group="ddpm")]
    assert {g: c["lr"] for g, c in choose_lr(rows, "min").items()} == {"ddgan-ns": 1e-4, "ddpm": 2e-4}


def test_full_grid_pilot_and_study_plans():
    grid, path = load_grid("full")
    pilot = expand(pilot_grid(grid), path)
    assert {s.seed for s in pilot.trials} == {100, 101} and not pilot.phase("sample")
    assert {s.lr for s in pilot.trials if s.method == "ddgan"} == set(grid.ddgan.lr)
    assert pilot.grid.pruner.kind == "median" and not pilot.grid.eval.final_metrics
    assert all((pilot.configs[s.key]["eval"]["respaced_steps"], pilot.configs[s.key]["eval"]["sampler"]) == (50, "ddim")
               for s in pilot.trials if s.method == "ddpm")  # DDPM's rate is chosen on 50-step DDIM samples
    study = expand(grid, path, {g: 3.2e-4 if g != "ddpm" else 4.0e-4 for g in method_groups(grid)})
    assert grid.pruner.kind == "none" and {s.seed for s in study.trials} == {0, 1, 2}
    assert all(len({s.seed for s in specs}) >= 3 for specs in study.cells().values())
    assert {s.lr for s in study.trials if s.method == "ddgan"} == {3.2e-4}
    assert {c["train"]["lr_g"] for c in study.configs.values()} == {3.2e-4, 4.0e-4}
    assert {f"ddpm-{m}-S{s}" for m in ("ddim", "ancestral") for s in (1, 2, 4, 8)} <= set(study.cells())
    final = {(tuple(c["eval"]["final_metrics"]), c["eval"]["final_n_samples"]) for c in study.configs.values()}
    assert final == {(("fid_inception",), 10_000)}
    # the keys name no rate: they do not change when the pilot chooses
    assert [s.key for s in study.trials] == [s.key for s in expand(grid, path).trials]


@pytest.mark.parametrize("change, message", [
    ({"pilot": {"seeds": [0]}}, "also the grid's seeds"),
    ({"pruner": {"kind": "median"}}, "acts only inside it"),
])
def test_grid_pilot_rules(tmp_path, change, message):
    import yaml

    from study.grid import GRID_DIR
    raw = yaml.safe_load((GRID_DIR / "test_pilot.yaml").read_text())
    raw["base"] = {m: str((GRID_DIR / p).resolve()) for m, p in raw["base"].items()}
    raw.update(change)
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(UsageError, match=message):
        load_grid(str(path))


@pytest.mark.slow
def test_pilot_then_study_end_to_end(ray_session, tmp_path, fmnist_dir, reference_cache):
    options = study_options(tmp_path, "test_pilot", fmnist_dir, reference_cache)
    text = run_study(options)
    results = tmp_path / "results"
    pilot_runs, runs = trial_runs(results, "test_pilot-pilot"), trial_runs(results, "test_pilot")
    assert set(pilot_runs) == {"ddgan-ns-T1-lr0.002-s7", "ddgan-ns-T1-lr1e-07-s7", "ddpm-T10-lr1e-07-s7",
                               "ddpm-T10-lr0.002-s7"}
    assert set(runs) == {"ddgan-ns-T1-s0", "ddpm-T10-s0"}  # the report's experiment holds no pilot trial
    choice = json.loads((results / "test_pilot-pilot" / CHOICE_FILE).read_text())
    assert {g: e["lr"] for g, e in choice["groups"].items()} == {"ddgan-ns": 2e-3, "ddpm": 2e-3}
    # the choice agrees with the pilot's own final values, as Optuna holds them
    pilot = optuna_trials(results, "test_pilot-pilot")
    for group, prefix in (("ddgan-ns", "ddgan-ns-T1"), ("ddpm", "ddpm-T10")):
        done = {k: t.value for k, t in pilot.items() if k.startswith(prefix) and t.value is not None}
        assert choice["groups"][group]["lr"] == (2e-3 if done.get(f"{prefix}-lr0.002-s7", 1e9) <=
                                                 done.get(f"{prefix}-lr1e-07-s7", 1e9) else 1e-7)
    for found in runs.values():
        run = found[0]
        assert (run.info.status, run.data.tags["status"]) == ("FINISHED", "completed")
        assert float(run.data.params["train.lr_g"]) == 2e-3 and run.data.params["train.seed"] == "0"
    client = MlflowClient(f"sqlite:///{results}/mlflow.db")
    parent = client.search_runs([client.get_experiment_by_name("test_pilot").experiment_id],
                                "tags.role = 'study'")[0]
    assert parent.data.tags["pilot"] == "test_pilot-pilot"
    assert parent.data.tags["lr_chosen.ddgan-ns"] == "0.002" and parent.data.tags["lr_chosen.ddpm"] == "0.002"
    assert "learning rates chosen by the pilot" in text
    # --resume of a finished two-stage study: the choice is read, not made again; nothing reruns
    again = run_study(StudyOptions(**{**options.__dict__, "resume": True}))
    assert read_choice(results / "test_pilot-pilot" / CHOICE_FILE) == {"ddgan-ns": 2e-3, "ddpm": 2e-3}
    assert trial_runs(results, "test_pilot") .keys() == runs.keys()
    assert all(len(v) == 1 for v in trial_runs(results, "test_pilot").values())
    assert "learning rates chosen" not in again
    # the study's report holds its own trials only, and says where the rates came from
    from study.report.build import build_report
    build_report(f"sqlite:///{results}/mlflow.db", "test_pilot", tmp_path / "report", results)
    text = (tmp_path / "report" / "REPORT.md").read_text()
    assert "chosen once by the pilot study `test_pilot-pilot`" in text and "ddgan-ns 0.002" in text
    assert "-s7" not in text  # no pilot trial
    # a dry-run now shows the chosen rates
    plan = prepare(StudyOptions(**{**options.__dict__, "dry_run": True, "resume": True}))
    assert plan.options.lr_choice == {"ddgan-ns": 2e-3, "ddpm": 2e-3} and plan.pilot is not None


@pytest.mark.slow
def test_an_interrupted_pilot_chooses_nothing_and_starts_no_study(ray_session, tmp_path, fmnist_dir, reference_cache,
                                                                  monkeypatch):
    """Ctrl-C: Ray stops the trials and `fit` returns. Here the phase returns with no trial run at all
    (the extreme case): the pilot must not choose from it, and the study must not start."""
    import study.tuning
    from study.driver import StudyInterrupted

    monkeypatch.setattr(study.tuning, "run_phase", lambda *args, **kwargs: None)
    with pytest.raises(StudyInterrupted) as stopped:
        run_study(study_options(tmp_path, "test_pilot", fmnist_dir, reference_cache))
    text = stopped.value.text
    results = tmp_path / "results"
    assert "interrupted" in text and "--resume" in text
    assert not (results / "test_pilot-pilot" / CHOICE_FILE).exists()
    assert not (results / "test_pilot" / "plan.json").exists()  # the study never started
    client = MlflowClient(f"sqlite:///{results}/mlflow.db")
    parent = client.search_runs([client.get_experiment_by_name("test_pilot-pilot").experiment_id],
                                "tags.role = 'study'")[0]
    assert parent.info.status == "KILLED"
    # the command line: the summary so far, then exit code 130 (a script's `study.run && study.report` stops)
    from study.run import main

    argv = ["--grid", "test_pilot", "--resume", "--quiet", "--state-dir", str(results), "--data-dir", str(fmnist_dir),
            "--cache-dir", str(reference_cache)]
    assert main(argv) == 130
    assert not (results / "test_pilot-pilot" / CHOICE_FILE).exists()


def test_a_started_study_whose_pilot_choice_is_missing_is_refused(tmp_path, fmnist_dir):
    """plan.json of the study exists, the pilot's lr_choice.json does not: one clear refusal, not a
    'grid changed' or a silent run at the first candidate rate."""
    (tmp_path / "test_pilot").mkdir()
    (tmp_path / "test_pilot" / "plan.json").write_text("{}")
    options = StudyOptions(grid="test_pilot", results_dir=str(tmp_path), data_dir=str(fmnist_dir), resume=True)
    grid, path = load_grid("test_pilot")
    (tmp_path / "test_pilot-pilot").mkdir()  # the pilot as it was: its own plan, no choice file
    fingerprint = expand(pilot_grid(grid), path).fingerprint()
    (tmp_path / "test_pilot-pilot" / "plan.json").write_text(json.dumps({"fingerprint": fingerprint}))
    with pytest.raises(UsageError, match="choice of its pilot is missing"):
        prepare(options)
