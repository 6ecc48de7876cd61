"""Dependencies point one way: `ddgan` never imports ray, mlflow or optuna (docs/DESIGN.md).

A fresh interpreter imports every module of `ddgan` (found by walking the package, so a
new module is covered without editing this test) and lists what landed in `sys.modules`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN = ("ray", "mlflow", "optuna")
PROBE = f"""
import importlib, json, pkgutil, sys
import ddgan
names = [m.name for m in pkgutil.walk_packages(ddgan.__path__, "ddgan.")]
for name in names:
    importlib.import_module(name)
print(json.dumps([names, sorted(m for m in sys.modules if m.split(".")[0] in {FORBIDDEN!r})]))
"""


def test_ddgan_imports_no_ray_mlflow_or_optuna():
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    names, loaded = json.loads(done.stdout.splitlines()[-1])
    assert {"ddgan.trainer", "ddgan.metrics.evaluator", "ddgan.nets.unet"} <= set(names), names
    assert loaded == [], f"importing ddgan loaded {', '.join(loaded)}"
