"""Which code a process runs: every node of a cluster must run the driver's.

Ray ships no code for a study (no `runtime_env`): each node imports the project installed in
its own environment, and Ray puts the driver's working directory first on every worker's
`sys.path`. So the project must sit at the same path on every node, at the same commit,
with the same environment (study/README.md, "Cluster"). The driver records its identity
(`this_project`) in the trials' context; each trial compares its own (`check_same_project`)
and fails with both identities in the reason instead of training other code.
"""

from __future__ import annotations

import functools
import hashlib
import socket
from pathlib import Path

import ddgan
import study

SUFFIXES = (".py", ".pt", ".json")  # the code and the committed feature-extractor weights
TRIAL_CODE = ("tuning", "stores")  # the parts of `study` a trial runs (with all of `ddgan`); the
# rest (report, export, ...) may change while a study runs without changing what trials compute


class ProjectMismatch(RuntimeError):
    """A trial's node runs other code than the driver."""


def code_fingerprint(packages: tuple[Path, ...]) -> str:
    """sha256 over every code file of the packages (relative path and bytes, in sorted order)."""
    digest = hashlib.sha256()
    for package in packages:
        files = sorted(p for p in package.rglob("*") if p.suffix in SUFFIXES and "__pycache__" not in p.parts)
        for path in files:
            digest.update(f"{package.name}/{path.relative_to(package).as_posix()}\0".encode())  # not its place
            digest.update(path.read_bytes())
            digest.update(b"\0")
    return digest.hexdigest()[:16]


@functools.cache
def this_project() -> dict[str, str]:
    """This process's project: where `study` was imported from, the fingerprint of the code a
    trial runs (`ddgan`, `study.tuning`, `study.stores`), the host.

    Computed once per process, when first asked (the code it imported then)."""
    root = Path(study.__file__).resolve().parents[1]
    packages = (Path(ddgan.__file__).resolve().parent, *(root / "study" / name for name in TRIAL_CODE))
    return {"path": str(root), "code": code_fingerprint(packages), "host": socket.gethostname()}


def describe(project: dict[str, str]) -> str:
    return f"{project['path']} on {project['host']} (code {project['code']})"


def check_same_project(driver: dict[str, str] | None) -> None:
    """Raise ProjectMismatch when this process runs other code than the driver (`driver` is the
    driver's `this_project()`; None or empty: nothing to compare)."""
    if not driver:
        return
    here = this_project()
    if here["code"] != driver["code"]:
        raise ProjectMismatch(
            f"this node runs other code than the driver: the trial imports {describe(here)}, the driver "
            f"{describe(driver)}; install the same commit at the same path, with the same environment, on "
            "every node (study/README.md, Cluster)")
