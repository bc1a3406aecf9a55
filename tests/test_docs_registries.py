"""Every built-in name of every registry appears in the table of docs/ that lists its kind: a name
added to a registry without its documentation fails here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rba._registry import ADAPTERS, FITS
from rba.methods import list_methods
from rba.metrics import list_metrics
from rba.names import OBJECTIVES
from rba.samplers import list_samplers

ROOT = Path(__file__).resolve().parents[1]

#: what lists the names → (file, how the table row starts, the registry's names)
TABLES = {
    "model kinds": ("docs/cli.md", "| `[model]` | `kind` |", lambda: ADAPTERS.names()),
    "fit kinds": ("docs/cli.md", "| `[fit]` | `kind` |", lambda: FITS.names()),
    "samplers": ("docs/cli.md", "| `--sampler` |", list_samplers),
    "search methods": ("docs/cli.md", "| `--method` |", list_methods),
    "objectives": ("docs/cli.md", "| `--objectives", lambda: list(OBJECTIVES)),
    "metrics": ("docs/method.md", None, list_metrics),
}


def _documented(path: str, row: str | None) -> set[str]:
    """The names on the table row starting with ``row`` (in backticks, or words of its last cell); for ``None``, the
    first cells of every table row (a table with one row per name)."""
    lines = (ROOT / path).read_text().splitlines()
    if row is None:
        return {m.group(1) for line in lines if (m := re.match(r"\|\s*`([^`]+)`\s*\|", line))}
    found = [line for line in lines if line.startswith(row)]
    assert len(found) == 1, f"{path}: expected one table row starting {row!r}, found {len(found)}"
    return set(re.findall(r"`([^`]+)`", found[0])) | set(re.findall(r"[\w-]+", found[0].split("|")[-2]))


@pytest.mark.parametrize("what", TABLES)
def test_every_built_in_name_is_documented(what):
    path, row, names = TABLES[what]
    missing = [name for name in names() if name not in _documented(path, row)]
    assert not missing, f"{what} missing from {path}: {', '.join(missing)}"
