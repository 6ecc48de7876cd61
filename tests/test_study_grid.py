"""Grid files: strict schema, expansion into cells and trials, every config validated up front."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ddgan.config import Config
from ddgan.errors import ConfigError, UsageError
from study.grid import GRID_DIR, expand, grid_cells, grid_names, load_grid, load_plan
from study.report.contrasts import plan_from_grid

BASE = {
    "name": "g",
    "base": {"ddgan": str(GRID_DIR.parent / "ddgan.yaml"), "ddpm": str(GRID_DIR.parent / "ddpm.yaml")},
    "overrides": ["model.preset=tiny"],
    "ddgan": {"losses": ["ns", "tv"], "T": [1, 4], "lr": [1e-4, 2e-4]},
    "budget": {"steps": 100},
    "eval": {"every": 50, "n_samples": 64, "metrics": ["fd_test-extractor"]},
    "metric": "eval/fd_test-extractor_64",
}


def write_grid(tmp_path: Path, **changes) -> Path:
    grid = {**BASE, **changes}
    grid = {k: v for k, v in grid.items() if v is not None}
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


def test_builtin_grids_expand_and_validate():
    assert {"smoke", "cpu", "full", "test_pruning"} <= set(grid_names())
    for name in ("smoke", "cpu", "full", "test_pruning"):
        plan = load_plan(name)
        assert plan.trials and len({t.key for t in plan.trials}) == len(plan.trials)
        for spec in plan.trials:
            Config.from_dict(plan.configs[spec.key])  # every trial's config is a valid Config


def test_full_grid_covers_the_seed_study():
    plan = load_plan("full")
    cells = plan.cells()
    for loss in ("ns", "hellinger", "rkl", "tv"):
        for T in range(1, 11):
            specs = cells[f"ddgan-{loss}-T{T}"]
            assert len({s.seed for s in specs}) >= 3 and len({s.lr for s in specs}) == 1  # the pilot's rate
    assert len(plan.grid.ddgan.lr) >= 3 and plan.grid.pilot is not None  # searched in the pilot
    for T in (10, 20, 50, 100, 200, 500, 1000):
        assert f"ddpm-T{T}" in cells
    sample_cells = [c for c, specs in cells.items() if specs[0].phase == "sample"]
    assert sample_cells and all(s.source.startswith("ddpm-T1000") for c in sample_cells for s in cells[c])


def test_expansion_is_the_product_of_the_axes(tmp_path):
    plan = expand(*load_grid(str(write_grid(tmp_path, seeds=[0, 1]))))
    assert len(plan.trials) == 2 * 2 * 2 * 2
    assert set(plan.cells()) == {"ddgan-ns-T1", "ddgan-ns-T4", "ddgan-tv-T1", "ddgan-tv-T4"}
    spec = next(t for t in plan.trials if t.key == "ddgan-tv-T4-lr0.0002-s1")
    cfg = Config.from_dict(plan.configs[spec.key])
    assert (cfg.objective.loss, cfg.diffusion.T, cfg.train.lr_g, cfg.train.seed) == ("tv", 4, 2e-4, 1)
    assert (cfg.train.steps, cfg.eval.every, cfg.model.base_channels) == (100, 50, 8)  # tiny preset


def test_budget_in_images_seen_gives_equal_images_per_trial(tmp_path):
    path = write_grid(tmp_path, budget={"images": 1000}, overrides=["model.preset=tiny", "train.batch_size=64"])
    plan = expand(*load_grid(str(path)))
    assert {t.total_steps for t in plan.trials} == {16}  # ceil(1000 / 64)


def test_ddpm_cells_and_respaced_sampling_phase(tmp_path):
    ddpm = {"T": [10, 100], "lr": [2e-4], "respaced": {"T": 100, "steps": [5, 10], "samplers": ["ancestral", "ddim"]}}
    plan = expand(*load_grid(str(write_grid(tmp_path, ddgan=None, ddpm=ddpm))))
    assert [t.key for t in plan.phase("train")] == ["ddpm-T10-lr0.0002-s0", "ddpm-T100-lr0.0002-s0"]
    samples = plan.phase("sample")
    assert {t.cell for t in samples} == {"ddpm-ancestral-S5", "ddpm-ancestral-S10", "ddpm-ddim-S5", "ddpm-ddim-S10"}
    assert all(t.source == "ddpm-T100-lr0.0002-s0" for t in samples)
    cfg = Config.from_dict(plan.configs["ddpm-ddim-S10-of-ddpm-T100-lr0.0002-s0"])
    assert (cfg.diffusion.T, cfg.eval.respaced_steps, cfg.eval.sampler) == (100, 10, "ddim")
    source = Config.from_dict(plan.configs["ddpm-T100-lr0.0002-s0"])
    assert (source.eval.respaced_steps, source.eval.sampler) == (5, "ddim")  # cheap evaluation while training


@pytest.mark.parametrize("name", ["cpu", "full"])
def test_study_grids_meet_ddpm_at_equal_nfe_on_one_schedule_at_equal_budgets(name):
    """Issues 15 and 25: every seed's DDPM T=1000 model is sampled at S = 1, 2, 4 (the DDGAN cells'
    NFE); the full grid also with all its 1000 ancestral steps; every DDPM model on the VP schedule;
    every DDGAN and DDPM training cell sees the same number of images; every cell is scored on the
    same sample count (the grid's metric)."""
    plan = load_plan(name)
    configs = {k: Config.from_dict(c) for k, c in plan.configs.items()}
    seeds = set(plan.grid.seeds)
    for S in (1, 2, 4):
        assert {t.seed for t in plan.phase("sample") if t.sampling_steps == S and t.sampler == "ddim"} == seeds
    if name == "full":
        full = [t for t in plan.phase("sample") if t.sampling_steps == 1000 and t.sampler == "ancestral"]
        assert {t.seed for t in full} == seeds and {configs[t.key].diffusion.T for t in full} == {1000}
    assert {configs[t.key].diffusion.schedule for t in plan.trials if t.method == "ddpm"} == {"vp"}
    images = {t.method: set() for t in plan.phase("train")}
    for t in plan.phase("train"):
        images[t.method].add(t.total_steps * configs[t.key].train.batch_size)
    assert len(images["ddgan"]) == 1 and images["ddgan"] == images["ddpm"]
    assert all(t.metric is None for t in plan.trials)  # no cell on another sample count
    assert {configs[t.key].eval.n_samples for t in plan.trials} == {plan.grid.eval.n_samples}


def test_respaced_sample_counts_must_name_planned_steps(tmp_path):
    ddpm = {"T": [10], "lr": [2e-4], "respaced": {"T": 10, "steps": [5, 10], "n_samples": {7: 32}}}
    with pytest.raises(UsageError, match=r"names steps \[7\]"):
        load_grid(str(write_grid(tmp_path, ddgan=None, ddpm=ddpm)))


def test_respaced_sampling_can_be_limited_to_some_seeds(tmp_path):
    ddpm = {"T": [10], "lr": [2e-4], "respaced": {"T": 10, "steps": [5, 10], "samplers": ["ancestral"], "seeds": [1]}}
    plan = expand(*load_grid(str(write_grid(tmp_path, ddgan=None, ddpm=ddpm, seeds=[0, 1, 2]))))
    train = sorted(t.key for t in plan.trials if t.phase == "train")
    assert train == [f"ddpm-T10-lr0.0002-s{s}" for s in (0, 1, 2)]  # every seed's model trains
    assert sorted(t.key for t in plan.trials if t.phase == "sample") == [
        "ddpm-ancestral-S10-of-ddpm-T10-lr0.0002-s1", "ddpm-ancestral-S5-of-ddpm-T10-lr0.0002-s1"]
    bad = {**ddpm, "respaced": {**ddpm["respaced"], "seeds": [3]}}
    with pytest.raises(UsageError, match=r"ddpm.respaced.seeds \[3\] are not among the grid's seeds"):
        load_grid(str(write_grid(tmp_path, ddgan=None, ddpm=bad, seeds=[0, 1, 2])))


def test_method_overrides_win_over_the_grid_eval_plan(tmp_path):
    ddpm = {"T": [10], "lr": [2e-4], "overrides": ["eval.every=25"]}
    plan = expand(*load_grid(str(write_grid(tmp_path, ddgan={**BASE["ddgan"], "overrides": ["eval.n_samples=32"]},
                                            ddpm=ddpm))))
    ddpm_cfg = Config.from_dict(plan.configs["ddpm-T10-lr0.0002-s0"])
    ddgan_cfg = Config.from_dict(plan.configs["ddgan-ns-T1-lr0.0001-s0"])
    assert (ddpm_cfg.eval.every, ddpm_cfg.eval.n_samples) == (25, 64)
    assert (ddgan_cfg.eval.every, ddgan_cfg.eval.n_samples) == (50, 32)


BAD = [
    ("unknown top-level key", {"pruner_kind": "median"}, "valid keys"),
    ("unknown nested key", {"ddgan": {"losses": ["ns"], "T": [1], "lr": [1e-4], "lrs": [1]}}, "'ddgan.lrs'"),
    ("unknown loss", {"ddgan": {"losses": ["kl"], "T": [1], "lr": [1e-4]}}, "hellinger"),
    ("T below 1", {"ddgan": {"losses": ["ns"], "T": [0], "lr": [1e-4]}}, "ddgan.T"),
    ("T not an integer", {"ddgan": {"losses": ["ns"], "T": [2.5], "lr": [1e-4]}}, "ddgan.T"),
    ("lr not positive", {"ddgan": {"losses": ["ns"], "T": [1], "lr": [0.0]}}, "ddgan.lr.0: Input should be greater than 0"),
    ("empty axis", {"ddgan": {"losses": [], "T": [1], "lr": [1e-4]}}, "ddgan.losses"),
    ("eval interval zero", {"eval": {"every": 0}}, "eval.every"),
    ("unknown pruner", {"pruner": {"kind": "asha"}}, "pruner.kind"),
    ("budget with both", {"budget": {"steps": 1, "images": 2}}, "exactly one"),
    ("respaced S above T", {"ddpm": {"lr": [1e-4], "respaced": {"T": 10, "steps": [20]}}}, "respaced.steps"),
    ("bad override", {"overrides": ["train.lrr=1"]}, "valid keys"),
    ("missing base", {"base": {"ddgan": "nope.yaml"}}, "not found"),
    ("contrast of an unknown cell", {"contrasts": {"planned": [{"name": "x", "a": ["ddgan-kl-T1"], "b": ["ddgan-ns-T1"]}]}},
     "'x' names no cell of this grid: ['ddgan-kl-T1'] (cells: ddgan-ns-T1, ddgan-ns-T4, ddgan-tv-T1, ddgan-tv-T4)"),
    ("contrast cell on both sides", {"contrasts": {"planned": [
        {"name": "x", "a": ["ddgan-ns-T1", "ddgan-tv-T1"], "b": ["ddgan-ns-T1"]}]}}, "are on both sides"),
    ("contrast names repeated", {"contrasts": {"planned": [{"name": "x", "a": ["ddgan-ns-T1"], "b": ["ddgan-tv-T1"]},
                                                           {"name": "x", "a": ["ddgan-ns-T4"], "b": ["ddgan-tv-T4"]}]}},
     "must be unique"),
    ("contrast key typo", {"contrasts": {"planned": [{"name": "x", "a": ["ddgan-ns-T1"], "bb": ["ddgan-tv-T1"]}]}},
     "contrasts.planned.0.b: Field required"),
    ("contrast variance", {"contrasts": {"variance": "welch"}}, "contrasts.variance"),
    ("contrast kind", {"contrasts": {"planned": [{"name": "x", "kind": "best", "a": ["ddgan-ns-T1"],
                                                  "b": ["ddgan-tv-T1"]}]}}, "contrasts.planned.0.kind"),
]


@pytest.mark.parametrize(("name", "changes", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_grids_are_one_line_errors(tmp_path, name, changes, message):
    with pytest.raises(UsageError) as err:
        expand(*load_grid(str(write_grid(tmp_path, **changes))))
    text = str(err.value)
    assert message in text and "\n" not in text


def test_unknown_grid_name_lists_the_valid_ones():
    with pytest.raises(UsageError, match="valid: .*smoke"):
        load_grid("nope")


def test_grid_file_that_is_not_yaml(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text("name: [1, 2")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_grid(str(path))


def test_fingerprint_changes_with_the_grid(tmp_path):
    a = expand(*load_grid(str(write_grid(tmp_path))))
    b = expand(*load_grid(str(write_grid(tmp_path, ddgan={"losses": ["ns"], "T": [1], "lr": [1e-4]}))))
    assert a.fingerprint() == expand(*load_grid(str(write_grid(tmp_path)))).fingerprint()
    assert a.fingerprint() != b.fingerprint()


def test_grid_cells_are_the_cells_expand_makes():
    for name in grid_names():
        plan = load_plan(name)
        assert sorted(grid_cells(plan.grid)) == sorted(plan.cells()), name


def test_contrasts_default_from_the_axes_and_explicit_ones_are_kept(tmp_path):
    ddpm = {"T": [10], "lr": [2e-4], "respaced": {"T": 1000, "steps": [10, 100, 1000], "samplers": ["ancestral"]}}
    axes = {"losses": ["ns", "hellinger", "rkl", "tv"], "T": [1, 2, 4], "lr": [1e-4]}
    defaults = plan_from_grid(load_grid(str(write_grid(tmp_path, ddgan=axes, ddpm=ddpm)))[0], "g")
    names = {c.name: c for c in defaults.contrasts}
    assert (defaults.variance, defaults.alpha, defaults.power) == ("study", 0.05, 0.8)
    assert {"hellinger vs ns at T=1", "tv vs ns at T=4", "rkl: T=4 vs T=1, equal images"} <= set(names)
    assert "1/T of the updates" in names["T at equal updates per denoising step"].absent
    assert "DDPM is sampled with NFE [10, 100, 1000]" in names["DDGAN vs DDPM at equal NFE"].absent  # no S <= 4
    axes["T"] = [1, 2, 10]
    matched = plan_from_grid(load_grid(str(write_grid(tmp_path, ddgan=axes, ddpm=ddpm)))[0], "g")
    assert {c.name for c in matched.contrasts if "(NFE 10)" in c.name} == {
        f"ns T=10 vs {c} (NFE 10)" for c in ("ddpm-T10", "ddpm-ancestral-S10")}
    for name in ("cpu", "full"):  # the committed grids name their own, DDGAN meets DDPM at equal NFE
        committed = plan_from_grid(load_grid(name)[0], name)
        kinds = {c.kind for c in committed.contrasts if c.absent is None}
        assert {"objective_at_T", "T_at_equal_images", "ddgan_vs_ddpm_at_equal_nfe"} <= kinds, name
    # full: one variance per group of alike cells (tv scatters far more than ns); cpu: each contrast
    # on its own cells, as planned before its run
    assert [plan_from_grid(load_grid(n)[0], n).variance for n in ("cpu", "full")] == ["contrast", "groups"]
    planned = [{"name": "T 4 vs 1, both objectives", "kind": "T_at_equal_images",
                "a": ["ddgan-ns-T4", "ddgan-tv-T4"], "b": ["ddgan-ns-T1", "ddgan-tv-T1"]}]
    path = write_grid(tmp_path, contrasts={"variance": "contrast", "planned": planned})
    grid, _ = load_grid(str(path))
    plan = plan_from_grid(grid, "g")
    first = plan.contrasts[0]
    assert (first.name, first.a, first.b, first.absent) == (planned[0]["name"], ("ddgan-ns-T4", "ddgan-tv-T4"),
                                                           ("ddgan-ns-T1", "ddgan-tv-T1"), None)
    assert plan.variance == "contrast" and "contrasts.planned" in plan.source
    assert {c.kind for c in plan.contrasts[1:]} == {"objective_at_T", "T_at_equal_updates",
                                                    "ddgan_vs_ddpm_at_equal_nfe"}
    absent = {c.kind: c.absent for c in plan.contrasts[1:]}
    assert absent["objective_at_T"] == "not planned in this grid's `contrasts:`"
    # what the design itself cannot answer says why, not merely "not planned"
    assert "every DDGAN cell trains on the same number of images" in absent["T_at_equal_updates"]
    assert "the grid has no DDPM cell" in absent["ddgan_vs_ddpm_at_equal_nfe"]
    # the analysis plan is not the trial plan: a study resumes after its contrasts change
    assert expand(grid, path).fingerprint() == expand(*load_grid(str(write_grid(tmp_path)))).fingerprint()


def test_T_by_loss_gives_an_objective_its_own_T(tmp_path):
    axes = {"losses": ["ns", "tv"], "T": [2], "lr": [1e-4], "T_by_loss": {"ns": [1, 2, 4]}}
    plan = expand(*load_grid(str(write_grid(tmp_path, ddgan=axes))))
    assert set(plan.cells()) == {"ddgan-ns-T1", "ddgan-ns-T2", "ddgan-ns-T4", "ddgan-tv-T2"}
    assert sorted(grid_cells(plan.grid)) == sorted(plan.cells())
    assert {Config.from_dict(plan.configs[s.key]).diffusion.T for s in plan.cells()["ddgan-ns-T4"]} == {4}
    for bad, message in (({"tv2": [1]}, "T_by_loss names"), ({"ns": []}, "at least one T"),
                         ({"ns": [0]}, "T_by_loss")):
        with pytest.raises(UsageError, match=message):
            load_grid(str(write_grid(tmp_path, ddgan={**axes, "T_by_loss": bad})))
