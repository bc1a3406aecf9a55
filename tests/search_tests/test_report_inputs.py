"""``rba report DIR`` (and ``--measure``) on a finished study whose files were damaged: report.json with keys of
the wrong type, tables without their columns or with text where numbers belong, a summary.json that is not JSON.
Each ends in one line naming the file, what is wrong and how to write it again (exit 2), before anything is
written or any model loads. The folder is a copy of one tiny finished study (made once for the module)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from _helpers import assert_one_line_error, run_main
from _search_helpers import make_config, single_thread  # noqa: F401  (autouse fixture)

REPORTS = Path(__file__).resolve().parents[2] / "studies" / "reports"
REWRITE = "rerun `rba run` on this study"


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished `rba run` folder of the current report format: a tiny ViT, baselines, an export."""
    from search import run_study

    tmp = tmp_path_factory.mktemp("finished")
    cfg = make_config(tmp, tmp / "cache", search={"trials": 4, "objectives": ["fidelity", "flops"]},
                      run={"max_drop": 0.5})
    return Path(run_study(cfg, progress=False)).parent


def _edit_json(name, edit):
    def damage(folder):
        path = folder / name
        record = json.loads(path.read_text())
        edit(record)
        path.write_text(json.dumps(record))
    return damage


def _write(name, text):
    def damage(folder):
        (folder / name).write_text(text)
    return damage


def _edit_csv(name, edit):
    def damage(folder):
        import pandas as pd

        path = folder / name
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
        edit(table)
        table.to_csv(path, index=False)
    return damage


def _set(table, column, row, value):
    table.loc[row, column] = value


CASES = {
    "report-truncated": (lambda f: (f / "report.json").write_bytes((f / "report.json").read_bytes()[:200]),
                         "report.json", ["not JSON"]),
    "choice-a-string": (_edit_json("report.json", lambda r: r.update(choice="3-4")), "report.json", ["choice"]),
    "metrics-a-number": (_edit_json("report.json", lambda r: r.update(metrics=5)), "report.json", ["metrics"]),
    "within-a-number": (_edit_json("report.json", lambda r: r["choice"].update(within=1)), "report.json",
                        ["choice.within"]),
    "max-drop-text": (_edit_json("report.json", lambda r: r.update(max_drop="0.05")), "report.json", ["max_drop"]),
    "speed-text": (_edit_json("report.json", lambda r: r["export"]["speed"].update(speedup="fast")), "report.json",
                   ["export.speed.speedup"]),
    "unknown-objective-column": (_edit_json("report.json", lambda r: r.update(objective_columns=["nosuch"])),
                                 "report.json", ["objective_columns.0"]),
    "phases-a-table": (_edit_json("report.json", lambda r: r["timing"].update(phases={"search": 1})), "report.json",
                       ["timing.phases"]),
    "trials-no-state": (_edit_csv("trials.csv", lambda t: t.drop(columns="state", inplace=True)), "trials.csv",
                        ["no column state"]),
    "pareto-no-state": (_edit_csv("pareto.csv", lambda t: t.drop(columns="state", inplace=True)), "pareto.csv",
                        ["no column state"]),
    "pareto-text-fidelity": (_edit_csv("pareto.csv", lambda t: _set(t, "fidelity", 1, "high")), "pareto.csv",
                             ["column fidelity holds 'high' in data row 2"]),
    "scores-text": (_edit_csv("scores.csv", lambda t: _set(t, "cka", 0, "unknown")), "scores.csv", ["column cka"]),
    "baselines-no-spans": (_edit_csv("baselines.csv", lambda t: t.drop(columns="spans", inplace=True)),
                           "baselines.csv", ["no column spans"]),
    "trials-empty": (_write("trials.csv", ""), "trials.csv", ["cannot be read"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_damaged_report_files_are_one_line(finished, tmp_path, capsys, case):
    damage, name, needles = CASES[case]
    folder = shutil.copytree(finished, tmp_path / "study")
    damage(folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    rc, _, err = run_main(capsys, "report", folder)
    assert_one_line_error(rc, err, str(folder / name), *needles, REWRITE)
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before  # nothing written


def test_summary_that_is_not_json_stops_measure_before_the_model_loads(finished, tmp_path, capsys, monkeypatch):
    import rba.session

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(rba.session.Session, "__init__", no_model)
    folder = shutil.copytree(finished, tmp_path / "study")
    (folder / "summary.json").write_text('{"trials_complete": 24,')
    rc, _, err = run_main(capsys, "report", folder, "--measure")
    assert_one_line_error(rc, err, str(folder / "summary.json"), "not JSON", REWRITE)
    (folder / "summary.json").write_text(json.dumps({"trials_complete": "24"}))
    rc, _, err = run_main(capsys, "report", folder, "--measure")
    assert_one_line_error(rc, err, str(folder / "summary.json"), "trials_complete", REWRITE)


def test_the_committed_reports_follow_the_schema_or_are_refused_as_older(finished):
    """The readers' schema accepts a report of the current format as rba run writes it, and every committed report
    of that format as it is; a committed report of an older format is refused in one line until it is regenerated."""
    from search._report_files import REPORT_FORMAT, ReportError, read_report_inputs, read_summary

    for folder in [finished, *sorted(p.parent for p in REPORTS.glob("*/report.json"))]:
        if json.loads((folder / "report.json").read_text())["format"] != REPORT_FORMAT:
            with pytest.raises(ReportError, match="has report format"):
                read_report_inputs(folder)
            continue
        data = read_report_inputs(folder)
        assert {"info", "scores", "trials", "pareto"} <= set(data)
        assert read_summary(folder)["trials_complete"] >= 1
