"""``rba report DIR`` on the committed study reports: rendering a copy of each folder from its files gives the
committed report.md byte for byte (no model is loaded, so the renderer alone decides the text), and writes
nothing else but the plots."""

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
def test_committed_report_text_renders_byte_for_byte(tmp_path, name):
    """report.md's text of each committed report (the plots aside: drawing them takes most of the time, and the
    next test draws them for one report)."""
    from search._render import _read, _report_text

    folder = shutil.copytree(REPORTS / name, tmp_path / name)
    text = _report_text(folder, _read(folder))
    assert text.encode() == (REPORTS / name / "report.md").read_bytes()


def test_rendering_writes_only_the_report_and_its_plots_and_keeps_the_backend(tmp_path):
    """A folder of an older rba (its pareto.csv lists the "none" trial next to the reference row) renders without
    its inputs changing: every file but report.md and the plots keeps its bytes, and the report shows the front
    without the "none" trial, as the committed report does. The caller's matplotlib backend (here svg, not the Agg
    the plots draw with) is the same afterwards."""
    import matplotlib

    from search._render import PLOTS

    folder = shutil.copytree(REPORTS / "quickstart", tmp_path / "quickstart")
    lines = (folder / "pareto.csv").read_text().splitlines(keepends=True)
    assert lines[1].startswith(",none,") and "REFERENCE" in lines[1]
    older = "0" + lines[1].replace("REFERENCE", "COMPLETE")  # trial 0: the unmodified model, as a trial
    (folder / "pareto.csv").write_text("".join(lines[:2] + [older] + lines[2:]))
    (folder / "report.md").unlink()  # written again, not left over
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    backend = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        render_report(folder)
        assert matplotlib.get_backend().lower() == "svg"
    finally:
        matplotlib.use(backend)
    after = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert after.keys() == before.keys() | {"report.md"}
    changed = {name for name in before if after[name] != before[name]}
    assert changed <= set(PLOTS), changed
    assert after["report.md"] == (REPORTS / "quickstart" / "report.md").read_bytes()


def test_library_code_draws_without_pyplot():
    """Plots go through matplotlib.figure.Figure: no library module switches the backend or imports pyplot
    (its figures and backend are process-wide state)."""
    root = Path(__file__).resolve().parents[2]
    offenders = [f"{path.relative_to(root)}: {needle}" for package in ("rba", "search")
                 for path in sorted((root / package).rglob("*.py"))
                 for needle in ("matplotlib.use(", "matplotlib.pyplot")
                 if needle in path.read_text()]
    assert not offenders, offenders
