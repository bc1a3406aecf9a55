"""``rba report DIR`` on the committed study reports: rendering a copy of each folder of the current report format
from its files gives the committed report.md byte for byte (no model is loaded, so the renderer alone decides the
text); a folder of an older format is refused in one line that says how to write it again. Library code draws
without pyplot."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPORTS = Path(__file__).resolve().parents[2] / "studies" / "reports"
#: every committed ``rba run`` folder (those with a report.md; transfer/ and translators_*/ hold other tables)
RENDERED = sorted(p.parent.name for p in REPORTS.glob("*/report.md"))


def test_the_committed_reports_are_found():
    assert {"quickstart", "vit_fashion", "minilm_reviews", "efficientnet_lite0_fashion"} <= set(RENDERED)


@pytest.mark.parametrize("name", RENDERED)
def test_committed_report_text_renders_byte_for_byte(tmp_path, name):
    """report.md's text of each committed report (the plots aside: drawing them takes most of the time; tests/
    test_run.py renders a whole folder). The committed reports are regenerated with the code of a round at its end:
    until then a folder of an older report format must be refused with the one-line fix."""
    import json

    from search._render import _read, _report_text
    from search._report_files import REPORT_FORMAT, ReportError

    folder = shutil.copytree(REPORTS / name, tmp_path / name)
    if json.loads((folder / "report.json").read_text())["format"] != REPORT_FORMAT:
        with pytest.raises(ReportError, match=r"has report format \d+, and this rba reads format \d+: rerun `rba run`"):
            _read(folder)
        return
    text = _report_text(folder, _read(folder))
    assert text.encode() == (REPORTS / name / "report.md").read_bytes()


def test_library_code_draws_without_pyplot():
    """Plots go through matplotlib.figure.Figure: no library module switches the backend or imports pyplot
    (its figures and backend are process-wide state)."""
    root = Path(__file__).resolve().parents[2]
    offenders = [f"{path.relative_to(root)}: {needle}" for package in ("rba", "search")
                 for path in sorted((root / package).rglob("*.py"))
                 for needle in ("matplotlib.use(", "matplotlib.pyplot")
                 if needle in path.read_text()]
    assert not offenders, offenders
