"""`python -m study.ui --optuna`: Optuna's dashboard of a study's storage, on 127.0.0.1 only."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest

from ddgan.cli import run_cli
from study import ui

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _state_with_one_study(tmp_path: Path) -> Path:
    """A state directory as study.run leaves it: <state>/<study>/optuna.db, one Optuna study per cell."""
    db = tmp_path / "state" / "demo" / "optuna.db"
    db.parent.mkdir(parents=True)
    study = optuna.create_study(storage=f"sqlite:///{db}", study_name="demo/ddgan-ns-T1", direction="minimize")
    trial = study.ask()
    trial.report(3.5, 10)
    study.tell(trial, 2.5)
    return db.parent.parent


def _get(url: str, timeout: float = 60.0) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (loopback)
                return response.read()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_optuna_dashboard_serves_the_study_on_loopback(tmp_path):
    state, port = _state_with_one_study(tmp_path), _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "study.ui", "--optuna", "--state-dir", str(state), "--port", str(port)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        studies = json.loads(_get(f"http://127.0.0.1:{port}/api/studies"))
        names = [s["study_name"] for s in studies["study_summaries"]]
        assert names == ["demo/ddgan-ns-T1"]
        page = _get(f"http://127.0.0.1:{port}/dashboard").decode()
        assert "<html" in page.lower()
        addresses = [a for a in _listening(proc.pid, port)]
        assert addresses and all(a == "127.0.0.1" for a in addresses), addresses
    finally:
        proc.terminate()
        try:
            out, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert f"http://127.0.0.1:{port}" in out


def _listening(pid: int, port: int) -> list[str]:
    """Local addresses of the TCP sockets listening on `port` (from /proc/net/tcp, IPv4 and IPv6)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).is_file():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.append(_address(address))
    return found


def _address(hex_address: str) -> str:
    if len(hex_address) == 8:  # IPv4, little-endian
        return ".".join(str(int(hex_address[i:i + 2], 16)) for i in (6, 4, 2, 0))
    return "::" if set(hex_address) == {"0"} else hex_address


def test_optuna_needs_a_study_when_the_state_holds_several(tmp_path, capsys):
    state = _state_with_one_study(tmp_path)
    (state / "other").mkdir()
    (state / "other" / "optuna.db").write_bytes((state / "demo" / "optuna.db").read_bytes())
    assert run_cli(ui.main, ["--optuna", "--state-dir", str(state)]) == 2
    err = capsys.readouterr().err
    assert "demo, other" in err and "--study" in err
    assert run_cli(ui.main, ["--optuna", "--state-dir", str(state), "--study", "other", "--print-command"]) == 0
    out = capsys.readouterr().out
    assert f"sqlite:///{state.resolve()}/other/optuna.db --host 127.0.0.1 --port 8080" in out


@pytest.mark.parametrize("argv", [["--optuna"], ["--optuna", "--study", "nope"]])
def test_optuna_without_a_storage_is_a_usage_error(tmp_path, capsys, argv):
    assert run_cli(ui.main, [*argv, "--state-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
