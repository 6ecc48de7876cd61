"""Studies the report and export tests read, each built once per test session.

`real_study`: the real driver (`study.driver.run_study`, real Ray, MLflow, Optuna) on a
tiny grid: DDGAN ns at T=1 and T=2, a DDPM T=2 model and its respaced DDIM S=1 cell.
`fake_study`: tests/fake_study.py (seeds, pruned, failed and pending trials, known values).
`readme_smoke`: the README's main command (`python -m study.run --grid smoke ...`), run as written in
a scratch directory laid out like a fresh clone; tests/test_readme.py runs the README's next
commands there, tests/test_study_e2e.py checks the study's stores (one smoke study, not two).

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


@dataclass
class ReadmeSmoke:
    work: Path  # the scratch "clone": configs/ linked, ../shared/data/fashion-mnist beside it
    env: dict[str, str]  # what every README command runs with
    command: str  # the README's study command
    returncode: int
    output: str  # stdout + stderr
    seconds: float

    @property
    def results(self) -> Path:
        """The study's state: `--state-dir` left at its default, results/runs/ under the clone."""
        return self.work / "results" / "runs"


@pytest.fixture(scope="session")
def readme_smoke(tmp_path_factory, fmnist_dir) -> ReadmeSmoke:
    """The README's first runnable command (the smoke study), once per session."""
    if "readme_smoke" in _BUILT:
        return _BUILT["readme_smoke"]
    import os
    import subprocess
    import time

    from test_readme import README, long_reason, readme_commands

    tmp = tmp_path_factory.mktemp("readme")
    work = tmp / "clone"
    work.mkdir()
    (work / "configs").symlink_to(REPO / "configs")
    (tmp / "shared" / "data").mkdir(parents=True)
    (tmp / "shared" / "data" / "fashion-mnist").symlink_to(fmnist_dir)
    env = {**os.environ, "DDGAN_CACHE_DIR": str(tmp / "cache")}
    env.pop("DDGAN_DATA_DIR", None)  # the commands name their data themselves
    command = next(c for c in readme_commands(README.read_text()) if long_reason(c) is None)
    assert command.startswith("python -m study.run --grid smoke"), command
    start = time.monotonic()
    done = subprocess.run(["bash", "-c", command], cwd=work, env=env, capture_output=True, text=True, timeout=1200)
    _BUILT["readme_smoke"] = ReadmeSmoke(work, env, command, done.returncode, done.stdout + done.stderr,
                                         time.monotonic() - start)
    return _BUILT["readme_smoke"]
