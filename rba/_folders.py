"""Output folders that know which work they hold, and the refusal when a run would mix in other work.

A study folder (``rba search`` / ``rba run``) holds ``study.json``, a comparison folder (``rba compare-fits``)
``compare.json``; each records the identity of its work, a plain JSON dict of what its results depend on. A run
whose identity differs from the recorded one is refused with a message naming the keys that differ, and a command
that would write into a folder holding another kind of work (its ``run.json``, ``config.resolved.toml`` and
tables would be overwritten) is refused naming the work found, before any long work starts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rba.errors import ConfigError

__all__ = ["FolderError", "WORK_MARKERS", "identity_diff", "refusal", "work_in", "refuse_other_work"]

#: the kinds of work an output folder can hold, each with the file that records its identity
WORK_MARKERS = {"study": "study.json", "comparison": "compare.json"}
_MADE_BY = {"study": "`rba search` / `rba run`", "comparison": "`rba compare-fits`"}


class FolderError(ConfigError):
    """The output folder holds other work: another study or comparison, or another kind of work."""


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out |= _flatten(v, f"{prefix}{k}.")
        return out
    return {prefix.rstrip("."): d}


def _short(v: Any) -> str:
    s = json.dumps(v, default=str)
    return s if len(s) <= 60 else s[:57] + "..."


def identity_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """One ``"key: old → new"`` line per dotted key whose value differs."""
    a, b = _flatten(old), _flatten(new)
    lines = []
    for key in sorted(set(a) | set(b)):
        if a.get(key, "<unset>") != b.get(key, "<unset>"):
            lines.append(f"{key}: {_short(a.get(key, '<unset>'))} → {_short(b.get(key, '<unset>'))}")
    return lines


def refusal(where: str, old: dict[str, Any], new: dict[str, Any], *, what: str = "a study",
            fix: str = "Use another --out (or --study-name with its own --storage), or delete the old study to start "
                       "over", error: type[FolderError] = FolderError) -> FolderError:
    """The error for ``what`` at ``where`` whose recorded identity ``old`` differs from ``new``."""
    diff = identity_diff(old, new)
    keys = ", ".join(line.split(":", 1)[0] for line in diff)
    detail = "; ".join(diff[:8]) + (f"; and {len(diff) - 8} more" if len(diff) > 8 else "")
    return error(f"{where} holds {what} with a different identity (differing keys: {keys}): {detail}. {fix}")


def work_in(folder: str | Path) -> str | None:
    """The kind of work (a key of :data:`WORK_MARKERS`) whose record ``folder`` holds, or None."""
    folder = Path(folder)
    return next((work for work, marker in WORK_MARKERS.items() if (folder / marker).is_file()), None)


def refuse_other_work(folder: str | Path, work: str | None, command: str) -> None:
    """Refuse ``command`` (as the message names it, e.g. ``"`rba scores`"``), which does ``work`` (None: work that keeps no record, e.g. ``rba scores``), when
    ``folder`` holds another kind of work, whose files it would overwrite."""
    found = work_in(folder)
    if found is None or found == work:
        return
    raise FolderError(f"output folder {folder} holds a {found} ({WORK_MARKERS[found]}, "
                      f"written by {_MADE_BY[found]}): {command} would overwrite its run.json, config.resolved.toml "
                      "and tables; choose another --out")
