"""Paths checked before anything is written: the one place for output and input paths.

Every CLI that writes calls one of these first (through the argument types of `ddgan.cli`),
so a bad `--out` is one line and exit code 2 before a file, a store or a process exists.
What is refused: a symlink loop anywhere in the path, a regular file where a directory has
to be (the path itself or one of its parents), a directory where a file has to be, a missing
parent of an output file, and a location the user cannot write or read. Nothing here creates
anything. `flag` names the input in the message (empty: argparse names it).
"""

from __future__ import annotations

import os
from pathlib import Path

from ddgan.errors import UsageError


def _resolve(path: str | os.PathLike, flag: str) -> Path:
    """Absolute path with symlinks resolved; a loop is a UsageError (Python raises RuntimeError or OSError)."""
    given = Path(path).expanduser()
    try:
        return given.resolve()
    except (RuntimeError, OSError) as err:  # "Symlink loop from ...", ELOOP, ENAMETOOLONG
        reason = "a symlink loop" if "loop" in str(err).lower() else (getattr(err, "strerror", None) or str(err))
        raise UsageError(f"{flag} {str(given)!r} cannot be resolved: {reason}") from None


def _nearest_existing(path: Path, flag: str, shown: Path) -> Path:
    """The deepest existing ancestor of `path` (itself included); it must be a writable directory."""
    probe = path
    try:
        while not probe.exists():
            probe = probe.parent
        is_dir = probe.is_dir()
    except OSError as err:  # EACCES on a parent
        raise UsageError(f"{flag} {str(shown)!r} is not writable: {err.strerror or err}") from None
    if not is_dir:
        raise UsageError(f"{flag} {str(shown)!r} is not writable: {str(probe)!r} is a file, not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {str(shown)!r} is not writable: no write permission on {str(probe)!r}")
    return probe


def check_output_dir(path: str | os.PathLike, flag: str = "output directory") -> Path:
    """The resolved directory `path` once it is known that it is, or can be made, a writable directory."""
    resolved = _resolve(path, flag)
    if resolved.exists() and not resolved.is_dir():
        raise UsageError(f"{flag} {str(path)!r} is a file, not a directory")
    _nearest_existing(resolved, flag, Path(path))
    return resolved


def check_output_file(path: str | os.PathLike, flag: str = "output file", *, parents: bool = False) -> Path:
    """The resolved file `path` once it is known that its directory exists (or, with `parents`,
    can be made) and can be written, and that `path` is not itself a directory."""
    resolved = _resolve(path, flag)
    if resolved.is_dir():
        raise UsageError(f"{flag} {str(path)!r} is a directory; give a file name, e.g. {str(Path(path) / 'out.png')!r}")
    parent = resolved.parent
    if not parent.is_dir() and not parents:
        _nearest_existing(parent, flag, Path(path))  # names a regular file on the way, if that is the problem
        raise UsageError(f"{flag} {str(path)!r}: directory {str(parent)!r} does not exist; create it first")
    _nearest_existing(parent, flag, Path(path))
    return resolved


def check_input_path(path: str | os.PathLike, flag: str = "input", kind: str = "any", *,
                     missing_ok: bool = False) -> Path:
    """The resolved `path` once it is known to exist (unless `missing_ok`), to be a `kind`
    (file | dir | any) and to be readable."""
    resolved = _resolve(path, flag)
    shown = str(path)
    if not resolved.exists():
        if missing_ok:
            return resolved
        raise UsageError(f"{flag} {shown!r} not found")
    if kind == "file" and not resolved.is_file():
        raise UsageError(f"{flag} {shown!r} is a directory, not a file")
    if kind == "dir" and not resolved.is_dir():
        raise UsageError(f"{flag} {shown!r} is a file, not a directory")
    wanted = os.R_OK | (os.X_OK if resolved.is_dir() else 0)
    if not os.access(resolved, wanted):
        raise UsageError(f"{flag} {shown!r} is not readable: no read permission")
    return resolved
