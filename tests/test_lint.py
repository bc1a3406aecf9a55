"""The lint the project holds itself to (pyproject.toml's [tool.ruff]: pycodestyle errors, pyflakes, import order,
bugbear) passes on the whole tree, so the README's test command also lints."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_passes_on_the_tree():
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]


#: a lint or type-check suppression, its codes, and whatever follows them on the line
SUPPRESSION = re.compile(r"#\s*(?:noqa|type:\s*ignore)(?::\s*[A-Z]+\d+(?:\s*,\s*[A-Z]+\d+)*|\[[\w\-, ]+\])?(?P<rest>.*)$")


def test_every_suppression_says_why():
    """A ``# noqa`` or ``# type: ignore`` carries its reason: after its codes, in a comment before it on the same
    line, or in a comment on the line above."""
    unexplained = []
    for folder in ("rba", "search", "tests", "benchmarks", "studies", "tools"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            lines = path.read_text(encoding="utf-8").splitlines()
            for n, line in enumerate(lines):
                found = SUPPRESSION.search(line)
                if found is None:
                    continue
                why = (found["rest"].strip(" -()#") or "#" in line[:found.start()]
                       or (n > 0 and lines[n - 1].lstrip().startswith("#")))
                if not why:
                    unexplained.append(f"{path.relative_to(ROOT)}:{n + 1}: {line.strip()}")
    assert not unexplained, "say why on the line or the one above:\n" + "\n".join(unexplained)
