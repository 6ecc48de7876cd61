"""Studies the report and export tests read, each built once per test session.

`real_study`: the real driver (`study.driver.run_study`, real Ray, MLflow, Optuna) on a
tiny grid: DDGAN ns at T=1 and T=2, a DDPM T=2 model and its respaced DDIM S=1 cell.
`fake_study`: tests/fake_study.py (seeds, pruned, failed and pending trials, known values).

Both test modules import these fixtures; a module-level memo makes the second import
reuse what the first built (a session fixture defined outside conftest.py would
otherwise run once per importing module).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_BUILT: dict[str, object] = {}

TINY_GRID = f"""
name: report_test
base:
  ddgan: {REPO}/configs/ddgan.yaml
  ddpm: {REPO}/configs/ddpm.yaml
overrides: [model.preset=tiny, train.batch_size=16, train.log_every=10, train.device=cpu]
ddgan:
  losses: [ns]
  T: [1, 2]
  lr: [2.0e-3]
ddpm:
  lr: [2.0e-3]
  respaced:
    T: 2
    steps: [1]
    samplers: [ddim]
    schedule: vp  # the default linear betas are >= 1 at T=2
budget:
  steps: 20
eval:
  every: 10
  n_samples: 64
  batch_size: 64
  metrics: [fd_test-extractor]
  grid_size: 4
metric: eval/fd_test-extractor_64
mode: min
pruner:
  kind: none
resources:
  cpus: 1
max_concurrent: 2
max_failures: 0
"""


@dataclass(frozen=True)
class BuiltStudy:
    results: Path
    uri: str
    study: str


@pytest.fixture(scope="session")
def real_study(ray_session, tmp_path_factory, fmnist_dir, reference_cache) -> BuiltStudy:
    if "real" not in _BUILT:
        from study.driver import StudyOptions, run_study

        root = tmp_path_factory.mktemp("real-study")
        grid = root / "report_test.yaml"
        grid.write_text(TINY_GRID)
        run_study(StudyOptions(grid=str(grid), results_dir=str(root / "results"), data_dir=str(fmnist_dir),
                               cache_dir=str(reference_cache), verbose=0))
        _BUILT["real"] = BuiltStudy(root / "results", f"sqlite:///{root / 'results' / 'mlflow.db'}", "report_test")
    return _BUILT["real"]


@pytest.fixture(scope="session")
def fake_study(tmp_path_factory) -> BuiltStudy:
    if "fake" not in _BUILT:
        from fake_study import build_fake_study

        results = tmp_path_factory.mktemp("fake-study") / "results"
        _BUILT["fake"] = BuiltStudy(results, build_fake_study(results, "fake"), "fake")
    return _BUILT["fake"]
