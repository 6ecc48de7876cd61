"""When each invocation of a study ran and for how long (`<state>/<study>/history.json`, one of the study's stores).

The end-of-run summary reports the study's own time (every invocation, `--resume`s
included), not just the last call's. An invocation whose driver was killed has no end:
it is counted as unknown, never guessed.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


def load(path: Path) -> list[dict[str, Any]]:
    try:
        entries = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return []
    return entries if isinstance(entries, list) else []


def _write(path: Path, entries: list[dict[str, Any]]) -> None:
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text(json.dumps(entries, indent=2))
    tmp.replace(path)


def start(path: Path, command: str) -> int:
    """Record an invocation's start; returns its index for `finish`."""
    entries = load(path)
    entries.append({"started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"), "command": command,
                    "seconds": None})
    _write(path, entries)
    return len(entries) - 1


def finish(path: Path, index: int, seconds: float) -> list[dict[str, Any]]:
    entries = load(path)
    if 0 <= index < len(entries):
        entries[index]["seconds"] = round(seconds, 1)
        _write(path, entries)
    return entries


def describe(entries: list[dict[str, Any]], this_call_s: float) -> str:
    """'0.9 min over 2 invocations since 2026-12-01 23:36:51 UTC (this one 0.1 min)'."""
    known = [e["seconds"] for e in entries if isinstance(e.get("seconds"), (int, float))]
    unknown = len(entries) - len(known)
    total = sum(known) if entries else this_call_s
    text = f"{total / 60:.1f} min"
    if len(entries) > 1:
        text += f" over {len(entries)} invocations since {entries[0]['started']} (this one {this_call_s / 60:.1f} min"
        text += f"; {unknown} interrupted, not counted)" if unknown else ")"
    return text
