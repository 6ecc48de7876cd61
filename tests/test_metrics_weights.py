"""Inception weights on a cluster: resolved once by the driver (absolute path, sha256) and found by
a trial from its own working directory; downloads atomic and locked against concurrent trials;
the reference cache keyed by content, not by which copy of the file. No network: the
downloader is a function given to `download_weights` (or a file:// URL)."""

from __future__ import annotations

import hashlib
import multiprocessing
import shutil
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from netguard import refuse_network
from test_metrics_inception import FidHelperStandIn, NvidiaStandIn, save_script

from ddgan.config import Config
from ddgan.errors import UsageError
from ddgan.metrics import get_extractor, reference_stats
from ddgan.metrics import inception as inception_module
from ddgan.metrics.inception import ENV_WEIGHTS, download_weights, resolve_weights

REPO = Path(__file__).resolve().parents[1]
CHUNKS = 8
REAL_URLOPEN = urllib.request.urlopen  # before the no-network fixture replaces it (file:// URLs only)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    yield from refuse_network(monkeypatch)


@pytest.fixture(autouse=True)
def no_installed_weights(monkeypatch, tmp_path):
    monkeypatch.delenv(ENV_WEIGHTS, raising=False)
    monkeypatch.setattr(inception_module, "CLEAN_FID_DIR", tmp_path / "clean-fid")
    monkeypatch.setattr(inception_module, "fid_helper_weights_path", lambda: None)


@pytest.fixture(scope="module")
def payload(tmp_path_factory) -> bytes:
    """The bytes of a valid TorchScript stand-in (what a download delivers)."""
    return save_script(NvidiaStandIn(), tmp_path_factory.mktemp("payload") / "w.pt").read_bytes()


def slow_fetch(payload: bytes, calls: Path):
    """A downloader that writes `payload` in CHUNKS pieces, slowly, and leaves one marker per call."""
    def fetch(destination: Path) -> None:
        calls.mkdir(parents=True, exist_ok=True)
        (calls / f"{multiprocessing.current_process().pid}-{threading.get_ident()}").touch()
        step = len(payload) // CHUNKS + 1
        with open(destination, "wb") as handle:
            for start in range(0, len(payload), step):
                handle.write(payload[start:start + step])
                handle.flush()
                time.sleep(0.02)
    return fetch


class Watcher(threading.Thread):
    """Reads the target whenever it exists; records every read that is not the whole file."""

    def __init__(self, target: Path, payload: bytes):
        super().__init__(daemon=True)
        self.target, self.payload, self.bad, self.reads, self.stop = target, payload, [], 0, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            time.sleep(0.001)
            try:
                data = self.target.read_bytes()
            except FileNotFoundError:
                continue
            self.reads += 1
            if data != self.payload:
                self.bad.append(len(data))


def _download_in_process(target: str, payload: bytes, calls: str) -> None:
    download_weights(Path(target), fetch=slow_fetch(payload, Path(calls)))


def _check_one_complete_download(target: Path, payload: bytes, calls: Path, watcher: Watcher) -> None:
    assert len(list(calls.iterdir())) == 1, "exactly one download per node"
    assert target.read_bytes() == payload
    assert not watcher.bad, f"a reader saw a half-written file ({watcher.bad[:3]} of {len(payload)} bytes)"
    assert watcher.reads > 0
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name, target.name + ".lock"]


def test_concurrent_threads_download_once_and_never_expose_a_partial_file(tmp_path, payload):
    target = tmp_path / "node-tmp" / "inception-2015-12-05.pt"
    watcher = Watcher(target, payload)
    watcher.start()
    fetch = slow_fetch(payload, tmp_path / "calls")
    threads = [threading.Thread(target=download_weights, args=(target, fetch)) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    watcher.stop.set()
    watcher.join()
    _check_one_complete_download(target, payload, tmp_path / "calls", watcher)


def test_concurrent_processes_download_once_and_never_expose_a_partial_file(tmp_path, payload):
    target = tmp_path / "node-tmp" / "inception-2015-12-05.pt"
    watcher = Watcher(target, payload)
    watcher.start()
    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=_download_in_process, args=(str(target), payload, str(tmp_path / "calls")))
                 for _ in range(4)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=60)
    watcher.stop.set()
    watcher.join()
    assert [p.exitcode for p in processes] == [0] * 4
    _check_one_complete_download(target, payload, tmp_path / "calls", watcher)


def test_a_failed_download_leaves_nothing_and_a_later_one_succeeds(tmp_path, payload):
    target = tmp_path / "node-tmp" / "inception-2015-12-05.pt"

    def broken(destination: Path) -> None:
        destination.write_bytes(payload[: len(payload) // 2])
        raise OSError("connection reset")

    with pytest.raises(OSError, match="connection reset"):
        download_weights(target, fetch=broken)
    truncated = lambda destination: destination.write_bytes(payload[:1000])  # noqa: E731
    with pytest.raises(UsageError, match="not a TorchScript file"):
        download_weights(target, fetch=truncated)  # an HTML error page or a cut file never takes the name
    assert [p.name for p in target.parent.iterdir()] == [target.name + ".lock"]
    download_weights(target, fetch=lambda destination: destination.write_bytes(payload))
    assert target.read_bytes() == payload


def test_clean_fid_path_missing_on_a_node_is_downloaded_there_and_checked(tmp_path, payload, monkeypatch):
    """The driver found clean-fid's copy (/tmp on the head); a worker without it downloads it."""
    source = tmp_path / "server" / "inception-2015-12-05.pt"
    source.parent.mkdir()
    source.write_bytes(payload)
    monkeypatch.setattr(inception_module, "WEIGHTS_URL", source.as_uri())  # file://: no network
    monkeypatch.setattr(urllib.request, "urlopen", REAL_URLOPEN)  # sockets stay refused
    sha = hashlib.sha256(payload).hexdigest()
    on_driver = inception_module.CLEAN_FID_DIR / "inception-2015-12-05.pt"  # absent on this "node"
    weights, _ = resolve_weights(on_driver, expected_sha256=sha)
    assert weights.path == on_driver.resolve() and weights.sha256 == sha and on_driver.read_bytes() == payload


def test_a_node_with_other_weights_is_refused(tmp_path):
    path = save_script(FidHelperStandIn(), tmp_path / "w.pt")
    with pytest.raises(UsageError, match="differ from the file the study resolved"):
        resolve_weights(path, expected_sha256="0" * 64)


def test_reference_cache_is_keyed_by_content_not_by_copy(tmp_path, fmnist_dir):
    first = save_script(FidHelperStandIn(), tmp_path / "a" / "default_1.pt")
    second = tmp_path / "b" / "copy.pt"
    second.parent.mkdir()
    shutil.copy(first, second)
    _, _, meta = reference_stats(get_extractor("inception", weights=first), fmnist_dir, "train", 8, tmp_path / "cache")
    assert not meta["from_cache"]
    _, _, meta = reference_stats(get_extractor("inception", weights=second), fmnist_dir, "train", 8, tmp_path / "cache")
    assert meta["from_cache"]


# --- driver -> trial ------------------------------------------------------------------------


def _grid(tmp_path: Path) -> Path:
    text = (REPO / "configs" / "grids" / "smoke.yaml").read_text()
    text = text.replace("../ddgan.yaml", str(REPO / "configs" / "ddgan.yaml"))
    text = text.replace("../ddpm.yaml", str(REPO / "configs" / "ddpm.yaml"))
    text = text.replace("  metrics: [fd_fmnist]\n", "  metrics: [fd_fmnist]\n  final_metrics: [fid_inception]\n  final_n_samples: 2048\n")
    assert "final_metrics: [fid_inception]" in text
    path = tmp_path / "grid.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("how", ["--fid-weights", ENV_WEIGHTS])
def test_relative_weights_reach_a_trial_in_its_own_working_directory(tmp_path, fmnist_dir, monkeypatch, how):
    from study.prepare import StudyOptions, prepare
    from study.tuning.trial import TrialContext, make_evaluator

    weights = save_script(FidHelperStandIn(), tmp_path / "driver" / "weights" / "inception.pt")
    grid = _grid(tmp_path)
    monkeypatch.chdir(tmp_path / "driver")
    given = {"fid_weights": "weights/inception.pt"} if how == "--fid-weights" else {}
    if how == ENV_WEIGHTS:
        monkeypatch.setenv(ENV_WEIGHTS, "weights/inception.pt")
    prep = prepare(StudyOptions(grid=str(grid), results_dir=str(tmp_path / "state"), data_dir=str(fmnist_dir),
                                **given))
    assert prep.fid_weights == str(weights.resolve())
    assert prep.fid_weights_sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()
    # A trial: its own working directory (Ray's trial folder), the driver's environment not there.
    trial_dir = tmp_path / "ray" / "train" / "trial" / "work"
    trial_dir.mkdir(parents=True)
    monkeypatch.chdir(trial_dir)
    monkeypatch.delenv(ENV_WEIGHTS, raising=False)
    config = next(iter(prep.plan.configs.values()))
    config["eval"].update(final_metrics=["fid_inception"], reference_n=16, final_n_samples=2048)
    context = TrialContext(study="s", metric="m", mlflow_uri="", run_ids={}, optuna_numbers={}, specs={},
                           configs={}, data_dir=str(fmnist_dir), cache_dir=str(tmp_path / "cache"),
                           fid_weights=prep.fid_weights, fid_weights_sha256=prep.fid_weights_sha256)
    evaluator = make_evaluator(Config.from_dict(config), context, torch.device("cpu"))
    assert evaluator.extractors["inception"].weights.path == weights.resolve()
    assert evaluator.protocol()["metrics"]["eval/fid_inception_2048"]["weights_sha256"] == prep.fid_weights_sha256
