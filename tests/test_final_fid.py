"""`python -m study.final_fid`: the winners' final FID, scored afresh and logged to their runs.

Uses a fresh fake study (tests/fake_study.py: real MLflow, saved random-weight models) and the
labelled test extractor in place of Inception (never
reported as Inception FID: its metric is `eval/fd_test-extractor_<n>`); the value is checked against an independent computation.
"""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from ddgan.errors import UsageError
from ddgan.metrics.extractors import get_extractor
from ddgan.metrics.frechet import feature_stats, frechet_distance
from ddgan.metrics.reference import reference_images
from ddgan.sample import generate
from study.final_fid import final_fid, main, sampling_args
from study.report.data import load_study

N, REFERENCE_N = 32, 48
NAME = "eval/fd_test-extractor_32"  # "fid" is kept for Inception


@pytest.fixture(scope="module")
def scored(tmp_path_factory, fmnist_dir):
    from fake_study import build_fake_study

    results = tmp_path_factory.mktemp("final-fid") / "results"
    uri = build_fake_study(results, "fake")
    out = results.parent / "exports"
    extractor = get_extractor("test-extractor", "cpu")
    first = final_fid(uri, "fake", "loss", 1, N, REFERENCE_N, str(fmnist_dir), out, sample_seed=3,
                      cache_dir=results / ".cache", extractor=extractor, methods=["ddgan"], device="cpu")
    assert {m["trial_key"] for m in first["models"]} == {"ddgan-ns-T2-lr0.001-s0", "ddgan-hellinger-T1-lr0.001-s0"}
    record = final_fid(uri, "fake", "loss", 1, N, REFERENCE_N, str(fmnist_dir), out, sample_seed=3,
                       cache_dir=results / ".cache", extractor=extractor, methods=["ddpm"], device="cpu")
    assert [m["trial_key"] for m in record["models"]][-1] == "ddpm-T8-lr0.001-s0"  # merged with the first call
    return uri, out, extractor, record


def test_scores_the_best_model_of_each_loss_and_logs_it(scored, fmnist_dir):
    uri, out, extractor, record = scored
    assert record["metric"] == NAME
    assert {m["trial_key"] for m in record["models"]} == {
        "ddgan-ns-T2-lr0.001-s0", "ddgan-hellinger-T1-lr0.001-s0", "ddpm-T8-lr0.001-s0"}
    assert record["protocol"]["reference_n"] == REFERENCE_N and record["protocol"]["sample_seed"] == 3
    assert (record["protocol"]["sample_device"], record["protocol"]["device"], record["protocol"]["precision"]) == (
        "cpu", "cpu", "fp32")  # the device of the samples and of the features, the features' precision
    reference = extractor.features(reference_images(fmnist_dir, "train", REFERENCE_N)[0])
    mu_r, sigma_r = feature_stats(reference)
    client = MlflowClient(uri)
    summary = load_study(uri, "fake").summary.set_index("trial_key")
    for model in record["models"]:
        row = summary.loc[model["trial_key"]]
        if row["method"] == "ddpm":  # sampled as the trial's own metric was: its S and sampler
            assert (model["steps"], model["sampler"]) == (int(row["sampling_steps"]), row["sampler"] or "ancestral")
        images, _ = generate(out / "fake" / model["trial_key"], N, seed=3, steps=model["steps"],
                             sampler=model["sampler"], device="cpu")
        mu, sigma = feature_stats(extractor.features(images))
        expected = frechet_distance(mu, sigma, mu_r, sigma_r)
        assert model[NAME] == pytest.approx(expected, rel=1e-6)
        run = client.get_run(model["run_id"])
        assert run.data.metrics[NAME] == pytest.approx(expected, rel=1e-6)
        assert run.data.tags[f"{NAME}.extractor"] == "test-extractor"
        assert run.data.tags[f"{NAME}.sample_seed"] == "3"
    saved = json.loads((out / "fake" / "final_fid.json").read_text())
    assert [m["trial_key"] for m in saved["models"]] == [m["trial_key"] for m in record["models"]]


def test_the_report_summary_carries_the_final_fid_column(scored):
    uri, _, _, record = scored
    summary = load_study(uri, "fake").summary.set_index("trial_key")
    scored_keys = {m["trial_key"] for m in record["models"]}
    assert summary.loc[sorted(scored_keys), NAME].notna().all()
    assert summary.drop(index=sorted(scored_keys))[NAME].isna().all()


def test_sampling_follows_the_trials_own_sampler():
    import pandas as pd

    assert sampling_args(pd.Series({"method": "ddgan", "sampling_steps": 4, "sampler": None})) == {
        "steps": None, "sampler": "ancestral"}
    assert sampling_args(pd.Series({"method": "ddpm", "sampling_steps": 10, "sampler": "ddim"})) == {
        "steps": 10, "sampler": "ddim"}


@pytest.mark.parametrize("argv, match", [
    (["--n", "1"], r"--n must be in 2\.\..* \(a covariance needs two samples\), got 1"),
    (["--top-k", "0"], r"--top-k must be in 1\.\."),
    (["--reference-n", "1"], "--reference-n must be in 2..60000"),
    (["--reference-n", "70000"], "--reference-n must be in 2..60000"),
])
def test_bad_sizes_are_refused_before_any_work(tmp_path, argv, match):
    with pytest.raises(UsageError, match=match):
        main(["--results-dir", str(tmp_path), *argv])
