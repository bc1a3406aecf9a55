"""``rba report DIR`` on the committed study reports: rendering a copy of each folder from its files writes the
committed report.md byte for byte (no model is loaded, so the renderer alone decides the text)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from search.report import render_report

REPORTS = Path(__file__).resolve().parents[2] / "studies" / "reports"
#: every committed ``rba run`` folder (those with a report.md; transfer/ and translators_*/ hold other tables)
RENDERED = sorted(p.parent.name for p in REPORTS.glob("*/report.md"))


def test_the_committed_reports_are_found():
    assert {"quickstart", "vit_fashion", "minilm_reviews", "efficientnet_lite0_fashion"} <= set(RENDERED)


@pytest.mark.parametrize("name", RENDERED)
def test_committed_report_renders_byte_for_byte(tmp_path, name):
    folder = shutil.copytree(REPORTS / name, tmp_path / name)
    (folder / "report.md").unlink()  # written again, not left over
    render_report(folder)
    assert (folder / "report.md").read_bytes() == (REPORTS / name / "report.md").read_bytes()
