"""The driver's reference statistics run where the trials run: one Ray task with a trial's
resources (a whole GPU when trials get GPUs), on the trials' device, returning the Inception
weights it used; a worker without the weights fails the study in one line, before any trial."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from test_metrics_inception import FidHelperStandIn, save_script

from ddgan.errors import UsageError
from ddgan.metrics.inception import ENV_WEIGHTS
from study.tuning.references import distinct_eval_configs, reference_resources

REPO = Path(__file__).resolve().parents[1]


def test_the_reference_task_asks_for_what_a_trial_gets():
    assert reference_resources(2, 0.25) == {"num_cpus": 2.0, "num_gpus": 1.0}  # a whole GPU, not a packed slot
    assert reference_resources(1, 0) == {"num_cpus": 1.0, "num_gpus": 0.0}


def _prep(tmp_path: Path, fmnist_dir: Path, weights: Path):
    from study.prepare import StudyOptions, prepare

    text = (REPO / "configs" / "grids" / "smoke.yaml").read_text()
    for name in ("ddgan", "ddpm"):
        text = text.replace(f"../{name}.yaml", str(REPO / "configs" / f"{name}.yaml"))
    replaced = {"  n_samples: 256\n": "  n_samples: 16\n", "  batch_size: 256\n": "  batch_size: 16\n",
                "  metrics: [fd_fmnist]\n": "  metrics: [fd_test-extractor]\n  final_metrics: [fid_inception]\n  final_n_samples: 2048\n",
                "  reference_n: 10000 ": "  reference_n: 32 ", "metric: eval/fd_fmnist_256": "metric: eval/fd_test-extractor_16"}
    for old, new in replaced.items():
        assert old in text, old
        text = text.replace(old, new)
    (tmp_path / "grid.yaml").write_text(text)
    return prepare(StudyOptions(grid=str(tmp_path / "grid.yaml"), results_dir=str(tmp_path / "state"),
                                data_dir=str(fmnist_dir), fid_weights=str(weights), cache_dir=str(tmp_path / "cache")))


def test_references_are_computed_in_a_ray_task_on_the_trials_device(ray_session, tmp_path, fmnist_dir, monkeypatch):
    from study.driver import prepare_references

    monkeypatch.delenv(ENV_WEIGHTS, raising=False)
    weights = save_script(FidHelperStandIn(), tmp_path / "shared" / "default_1.pt")
    prep = _prep(tmp_path, fmnist_dir, weights)
    assert len(distinct_eval_configs(prep.plan.configs)) == 1  # DDGAN and DDPM cells share one protocol
    done = prepare_references(prep)
    assert done.fid_weights == str(weights.resolve())
    assert done.fid_weights_sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()
    entries = sorted(p.name for p in (tmp_path / "cache" / "reference").glob("*.npz"))
    assert len(entries) == 2 and all("_cpu-fp32_" in name for name in entries), entries  # train.device=cpu
    for entry in (tmp_path / "cache" / "reference").glob("*.npz"):
        with np.load(entry) as data:
            host, _, pid = json.loads(str(data["meta"]))["computed_by"].partition(" pid ")
        assert int(pid) != os.getpid(), "the reference must be computed by a Ray worker, not in the driver's process"


def test_a_worker_without_the_weights_stops_the_study_in_one_line(ray_session, tmp_path, fmnist_dir, monkeypatch):
    from study.driver import prepare_references

    monkeypatch.delenv(ENV_WEIGHTS, raising=False)
    weights = save_script(FidHelperStandIn(), tmp_path / "head-only" / "default_1.pt")
    prep = _prep(tmp_path, fmnist_dir, weights)
    weights.unlink()  # the driver saw it; the worker does not
    with pytest.raises(UsageError, match="Ray task on a worker.*not found on this node") as info:
        prepare_references(prep)
    assert "Traceback" not in str(info.value)
