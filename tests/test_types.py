"""The type checker the project holds itself to (pyproject.toml's [tool.mypy]: rba/ and search/, untyped function
bodies checked too) passes, so the README's test command also type-checks. A fresh cache each run: a stale one
could hide an error, and a cold run takes seconds (~12 s of CPU), because the huge typed dependencies are read
as Any (pyproject.toml says which and why)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_mypy_passes_on_rba_and_search(tmp_path):
    done = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "mypy-cache")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
