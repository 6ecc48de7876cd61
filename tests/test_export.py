"""`python -m study.export`: selection per cell / loss / overall, verified exports, the Model Registry."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image
from study_fixtures import fake_study, real_study  # noqa: F401 (session fixtures)

from ddgan.config import read_yaml, resolve_config
from ddgan.errors import CheckpointError
from ddgan.export import load_export, verify_export
from ddgan.methods import schedule_for
from ddgan.nets import build_networks
from ddgan.sampler import sample_ddgan, sample_ddpm
from ddgan.serving import NoiseToImages
from study.export import export_study, main, select_trials
from study.report.data import load_study
from study.stores.registry import build_sampler

REPO = Path(__file__).resolve().parents[1]
METRIC = "eval/fd_test-extractor_64"


@pytest.fixture(scope="module")
def fake_runs(fake_study):  # noqa: F811
    return load_study(fake_study.uri, fake_study.study)


def _picked(runs, per: str, k: int) -> list[tuple[str, str, int]]:
    frame = select_trials(runs.summary, runs.metric, runs.mode, per, k)
    return list(zip(frame["group"], frame["trial_key"], frame["rank"], strict=True))


def test_selection_per_cell_loss_and_overall(fake_runs):
    # per cell the best single completed training trial (not the best mean lr); pending,
    # pruned, failed and sampling-only (respaced) trials are never candidates
    assert sorted(_picked(fake_runs, "cell", 1)) == sorted([
        ("ddgan-ns-T1", "ddgan-ns-T1-lr0.01-s0", 1), ("ddgan-ns-T2", "ddgan-ns-T2-lr0.001-s0", 1),
        ("ddgan-hellinger-T1", "ddgan-hellinger-T1-lr0.001-s0", 1), ("ddpm-T4", "ddpm-T4-lr0.001-s0", 1),
        ("ddpm-T8", "ddpm-T8-lr0.001-s0", 1)])
    assert _picked(fake_runs, "loss", 2) == [
        ("ns", "ddgan-ns-T2-lr0.001-s0", 1), ("ns", "ddgan-ns-T2-lr0.001-s1", 2),
        ("hellinger", "ddgan-hellinger-T1-lr0.001-s0", 1),
        ("mse", "ddpm-T8-lr0.001-s0", 1), ("mse", "ddpm-T4-lr0.001-s0", 2)]
    assert _picked(fake_runs, "overall", 3) == [
        ("overall", "ddgan-ns-T2-lr0.001-s0", 1), ("overall", "ddgan-ns-T2-lr0.001-s1", 2),
        ("overall", "ddgan-ns-T1-lr0.01-s0", 3)]


def test_export_writes_verified_directories_and_rejects_tampering(fake_study, tmp_path):  # noqa: F811
    result = export_study(fake_study.uri, fake_study.study, "loss", 1, tmp_path, register=False)
    keys = {m.trial_key for m in result.models}
    assert keys == {"ddgan-ns-T2-lr0.001-s0", "ddgan-hellinger-T1-lr0.001-s0", "ddpm-T8-lr0.001-s0"}
    client = MlflowClient(fake_study.uri)
    for model in result.models:
        manifest = verify_export(model.directory)
        assert set(manifest["files"]) == {"model.safetensors", "config.yaml", "metrics.json"}
        metrics = json.loads((model.directory / "metrics.json").read_text())
        run = client.get_run(metrics["run_id"])
        assert metrics["trial_key"] == model.trial_key and metrics["value"] == run.data.metrics[METRIC]
        assert metrics["metrics"][METRIC] == run.data.metrics[METRIC] and metrics["selection"]["per"] == "loss"
    selection = json.loads((tmp_path / "fake" / "selection.json").read_text())
    assert [m["trial_key"] for m in selection["models"]] == [m.trial_key for m in result.models]
    target = tmp_path / "fake" / "ddgan-ns-T2-lr0.001-s0"
    weights = bytearray((target / "model.safetensors").read_bytes())
    weights[-1] ^= 0xFF
    (target / "model.safetensors").write_bytes(bytes(weights))
    with pytest.raises(CheckpointError, match="does not match its sha256"):
        load_export(target)
    other = tmp_path / "fake" / "ddpm-T8-lr0.001-s0"
    (other / "config.yaml").write_text((other / "config.yaml").read_text().replace("T: 8", "T: 9"))
    with pytest.raises(CheckpointError, match="tampered"):
        verify_export(other)


@pytest.mark.parametrize("method,sampler", [("ddgan", None), ("ddpm", "ancestral"), ("ddpm", "ddim")])
def test_registered_sampler_equals_the_library_sampler(method, sampler):
    torch.manual_seed(0)
    T = 3 if method == "ddgan" else 6
    cfg = resolve_config(read_yaml(REPO / "configs" / f"{method}.yaml"), ["model.preset=tiny", f"diffusion.T={T}"])
    net = build_networks(cfg.model, method)["generator" if method == "ddgan" else "denoiser"].eval()
    module = NoiseToImages(net, cfg, steps=None if method == "ddgan" else 2, sampler=sampler or "ancestral")
    noise = module.draw_noise(3, torch.Generator().manual_seed(5))
    assert noise.shape == (3, module.noise_dim)
    if method == "ddgan":
        expected, _ = sample_ddgan(net, schedule_for(cfg), 3, z_dim=cfg.model.z_dim,
                                   torch_generator=torch.Generator().manual_seed(5))
    else:
        expected, _ = sample_ddpm(net, schedule_for(cfg).respace(2), 3, method=sampler,
                                  torch_generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.allclose(module(noise), expected, atol=1e-5)


@pytest.mark.slow  # the real study (Ray); built once per session
def test_export_and_registry_of_a_real_study(real_study, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.chdir(tmp_path)  # nothing may fall back to MLflow's default ./mlruns or ./mlflow.db
    result = export_study(real_study.uri, real_study.study, "overall", 1, tmp_path / "exports")
    (model,) = result.models
    runs = load_study(real_study.uri, real_study.study)
    best = runs.summary[runs.summary["phase"] == "train"].sort_values(METRIC).iloc[0]
    assert model.trial_key == best["trial_key"]
    registered = model.registered
    assert result.champions == {registered["name"]: registered["version"]} and not registered["reused"]
    # the export samples with no study and no MLflow: a fresh process in an empty directory
    out = tmp_path / "grid.png"
    done = subprocess.run([sys.executable, "-m", "ddgan.sample", "--checkpoint", str(model.directory), "--n", "4",
                           "--out", str(out)], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    with Image.open(out) as image:
        assert image.size == (2 + 2 * 30, 2 + 2 * 30)
    # the registry serves the sampler: noise in, images out, the same images as the export
    import mlflow

    client = MlflowClient(real_study.uri)
    version = client.get_model_version_by_alias(registered["name"], "champion")
    assert version.run_id == best["run_id"] and float(version.tags[METRIC]) == pytest.approx(best[METRIC])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", real_study.uri)
    served = mlflow.pyfunc.load_model(f"models:/{registered['name']}@champion")
    module, _ = build_sampler(model.directory)  # the trial's sampler (DDPM: its eval sampler and S)
    noise = module.draw_noise(2, torch.Generator().manual_seed(1))
    images = np.asarray(served.predict(noise.numpy()))
    assert images.shape == (2, 1, 28, 28) and np.abs(images).max() <= 1.0
    with torch.no_grad():
        np.testing.assert_allclose(images, module(noise).numpy(), atol=1e-5)
    again = export_study(real_study.uri, real_study.study, "overall", 1, tmp_path / "exports")
    assert again.models[0].registered["reused"] and again.models[0].registered["version"] == registered["version"]
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlflow.db").exists()


def test_cli_rejects_bad_arguments_with_exit_2(fake_study, tmp_path, capsys):  # noqa: F811
    from ddgan.cli import run_cli

    args = ["--mlflow-uri", fake_study.uri, "--per", "cell", "--out", str(tmp_path), "--no-register"]
    assert run_cli(main, [*args, "--top-k", "0"]) == 2
    assert "--top-k must be in 1.." in capsys.readouterr().err
    assert run_cli(main, [*args, "--top-k", "1", "--study", "nope"]) == 2
    assert "no study 'nope'" in capsys.readouterr().err
