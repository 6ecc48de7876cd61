"""benchmarks/cluster_rehearsal.sh: its grid keeps the `full` grid's shape, the script parses.

The rehearsal itself (two Ray nodes, an MLflow server, PostgreSQL, a node and the driver killed)
took 824 s on a 2-core machine at a load average of 10-14, too long for CI: its log is committed
(benchmarks/cluster_rehearsal.log). What can drift without anyone running it is checked here.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from benchmarks.cluster_rehearsal import STEPS, derive_grid
from study.grid import load_plan

REPO = Path(__file__).resolve().parents[1]


def test_rehearsal_grid_is_full_shrunk_not_reshaped(tmp_path):
    full = load_plan("full")
    small = load_plan(str(derive_grid(tmp_path / "grid.yaml")))
    full_cells = {s.cell for s in full.trials}
    assert {s.cell for s in small.trials} <= full_cells  # only cells the full grid has
    for phase in ("train", "sample"):
        assert {s.method for s in small.phase(phase)} == {s.method for s in full.phase(phase)}
    assert {s.loss for s in small.trials if s.loss} == {s.loss for s in full.trials if s.loss}  # every loss
    assert {s.sampler for s in small.trials if s.sampler} == {s.sampler for s in full.trials if s.sampler}
    assert len({s.T for s in small.trials if s.method == "ddgan"}) >= 2
    assert (small.grid.metric, small.grid.mode, small.grid.pruner.kind) == \
        (full.grid.metric.replace("2k", "128"), full.grid.mode, full.grid.pilot.pruner.kind)  # full prunes in its pilot
    assert small.grid.pilot is None and len(small.trials) == 12
    assert small.grid.eval.final_metrics == full.grid.eval.final_metrics  # Inception (a stand-in) too
    assert 0 < small.grid.resources.gpus < 1 and small.grid.max_failures == full.grid.max_failures
    for spec in small.trials:
        config = small.configs[spec.key]
        assert (config["model"]["preset"], config["train"]["device"]) == ("tiny", "cpu")
        if spec.phase == "train":
            assert config["train"]["steps"] == STEPS


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_rehearsal_script_parses():
    done = subprocess.run(["bash", "-n", str(REPO / "benchmarks" / "cluster_rehearsal.sh")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
