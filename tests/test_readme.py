"""README.md runs as written: each command in its code blocks is either run here, in order, in a
scratch directory laid out like a fresh clone (`configs/`, `../shared/data/fashion-mnist`), or
listed in LONG with the reason it is not (the README says the same in its "Tests" section)."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest
from study_fixtures import readme_smoke  # noqa: F401 (session fixture)

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"

LONG = {  # command prefix -> why this test does not run it
    "python3 -m venv": "builds a virtual environment (minutes; CI runs the tests block itself)",
    ". .venv/bin/activate": "part of the install line",
    "pip install": "installs packages (minutes)",
    "ruff check .": "CI's lint step, part of the tests block",
    "DDGAN_DATA_DIR=../shared/data/fashion-mnist python -m pytest": "the whole test suite, this test included",
    "python -m study.ui": "a server that runs until Ctrl-C (tests/test_study_ui.py starts one and reads a page)",
}


def readme_commands(text: str) -> list[str]:
    """Every shell command in the README's fenced code blocks, in order: continuation lines joined,
    comments dropped, `a && b` lines split."""
    commands = []
    for block in re.findall(r"^```[^\n]*\n(.*?)^```", text, re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                commands += [" ".join(part.split()) for part in line.split(" && ")]
    return commands


def long_reason(command: str) -> str | None:
    return next((why for prefix, why in LONG.items() if command.startswith(prefix)), None)


def test_every_command_is_runnable_or_explained():
    text = README.read_text()
    commands = readme_commands(text)
    assert any(c.startswith("python -m study.run --grid smoke") for c in commands)
    for command in commands:
        assert "..." not in command and not re.search(r"<[a-z_]+>", command), f"placeholder in: {command}"
    cheap = [c for c in commands if long_reason(c) is None]
    assert cheap and all(c.startswith("python -m ") for c in cheap), cheap
    assert "tests/test_readme.py" in text  # the README says which commands are long, and why


@pytest.mark.slow
def test_readme_commands_run_as_written(readme_smoke):  # noqa: F811
    """The smoke study (run once per session by the `readme_smoke` fixture, whose stores
    tests/test_study_e2e.py checks), what follows it, and the library examples, in the README's order."""
    work, env = readme_smoke.work, readme_smoke.env
    print(f"{readme_smoke.seconds:6.1f} s  {readme_smoke.command}", flush=True)
    assert readme_smoke.returncode == 0, f"{readme_smoke.command}\n{readme_smoke.output[-3000:]}"
    assert "Traceback" not in readme_smoke.output and "Exception ignored" not in readme_smoke.output
    commands = [c for c in readme_commands(README.read_text()) if long_reason(c) is None]
    assert commands[0] == readme_smoke.command
    for command in commands[1:]:
        start = time.monotonic()
        done = subprocess.run(["bash", "-c", command], cwd=work, env=env, capture_output=True, text=True,
                              timeout=1200)
        print(f"{time.monotonic() - start:6.1f} s  {command}", flush=True)  # pytest -s: each command's time
        output = done.stdout + done.stderr
        assert done.returncode == 0, f"{command}\n{output[-3000:]}"
        assert "Traceback" not in output and "Exception ignored" not in output, f"{command}\n{output[-3000:]}"
    for made in ("results/smoke/REPORT.md", "exports/smoke/ns.png", "runs/tiny-ddgan/grid.png", "runs/tiny-ddpm/grid.png"):
        assert (work / made).is_file(), made
    assert not list(work.glob("*.png"))  # nothing lands in the checkout's root
