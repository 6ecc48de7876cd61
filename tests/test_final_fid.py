"""`python -m study.final_fid`: the winners' final FID, scored afresh and logged to their runs.

Uses a fresh fake study (tests/fake_study.py: real MLflow, saved random-weight models) and the
labelled test extractor in place of Inception (never
reported as Inception FID: its metric is `eval/fd_test-extractor_<n>`); the value is checked against an independent computation.
The FID protocol: the distance at N and N/2 and its 1/N extrapolation from N/2, 3N/4 and N
(`eval/fd_test-extractor_inf`); Inception FID below 2048 samples is refused.
"""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from ddgan.errors import UsageError
from ddgan.metrics.extractors import get_extractor
from ddgan.metrics.fid_infinity import fit_fid_infinity
from ddgan.metrics.frechet import feature_stats, frechet_distance
from ddgan.metrics.reference import reference_images
from ddgan.sample import generate
from study.final_fid import fid_metric_names, final_fid, main, sampling_args
from study.report.data import load_study

N, REFERENCE_N = 32, 48
NAME = "eval/fd_test-extractor_32"  # "fid" is kept for Inception
HALF, INF = "eval/fd_test-extractor_16", "eval/fd_test-extractor_inf"  # at N/2; from N/2, 3N/4, N


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
        features = extractor.features(images)
        at = {c: frechet_distance(*feature_stats(features[:c]), mu_r, sigma_r) for c in (16, 24, 32)}
        expected = at[32]
        fit = fit_fid_infinity(list(at), list(at.values()))
        assert model[NAME] == pytest.approx(expected, rel=1e-6)
        assert model[HALF] == pytest.approx(at[16], rel=1e-6) and model[HALF] != pytest.approx(expected)
        assert model[INF] == pytest.approx(fit.fid_inf, rel=1e-6, abs=1e-9)
        assert model["fid_slope"] == pytest.approx(fit.slope, rel=1e-6, abs=1e-9)
        run = client.get_run(model["run_id"])
        assert run.data.metrics[NAME] == pytest.approx(expected, rel=1e-6)
        assert run.data.metrics[HALF] == pytest.approx(at[16], rel=1e-6)
        assert run.data.metrics[INF] == pytest.approx(fit.fid_inf, rel=1e-6, abs=1e-9)
        assert run.data.tags[f"{NAME}.extractor"] == "test-extractor"
        assert run.data.tags[f"{NAME}.sample_seed"] == "3"
        assert (run.data.tags[f"{NAME}.n"], run.data.tags[f"{HALF}.n"], run.data.tags[f"{INF}.n"]) == (
            "32", "16", "16,24,32")  # each number names the counts behind it
        assert float(run.data.tags[f"{INF}.slope"]) == pytest.approx(fit.slope, rel=1e-6, abs=1e-9)
    assert record["metrics"] == [NAME, HALF, INF] and record["protocol"]["fid_counts"] == [16, 24, 32]
    assert "Chong & Forsyth" in record["protocol"]["fid_infinity"]
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


def test_fid_is_named_at_n_at_half_and_extrapolated():
    assert fid_metric_names("fid", "inception", (5000, 7500, 10_000)) == {
        "eval/fid_inception_10k": 10_000, "eval/fid_inception_5k": 5000,
        "eval/fid_inception_inf": (5000, 7500, 10_000)}
    assert fid_metric_names("fid", "inception", (4000,)) == {"eval/fid_inception_4k": 4000}  # N/2 < 2048


def test_inception_fid_below_2048_samples_is_refused_before_any_work(tmp_path):
    with pytest.raises(UsageError, match=r"^--n 2047: Inception FID needs >= 2048 samples .*use KID"):
        final_fid("sqlite:///nowhere.db", None, "loss", 1, 2047, None, None, tmp_path)


@pytest.mark.parametrize("argv, match", [
    (["--n", "1"], r"--n must be in 2048\.\..* \(Inception FID needs its 2048 feature dimensions; use KID below "
                   r"that\), got 1"),
    (["--n", "2047"], r"--n must be in 2048\.\..*use KID below that\), got 2047"),
    (["--top-k", "0"], r"--top-k must be in 1\.\."),
    (["--reference-n", "1"], "--reference-n must be in 2..60000"),
    (["--reference-n", "70000"], "--reference-n must be in 2..60000"),
])
def test_bad_sizes_are_refused_before_any_work(tmp_path, argv, match):
    with pytest.raises(UsageError, match=match):
        main(["--results-dir", str(tmp_path), *argv])
