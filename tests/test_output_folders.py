"""Output folders know which study or comparison they hold: no command overwrites another's finished files, and a
comparison rerun with other spans keeps the rows it finished before."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import tiny_config

from rba.cli import main as cli_main

ROOT = Path(__file__).resolve().parent.parent
SMALL = {"calibration": 16, "probe": 16, "eval": 16}


def _config(tmp_path: Path, name: str = "c", **sections) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(tiny_config(tmp_path, "vit", data=SMALL, **sections).to_toml())
    return path


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _one_line(err: str, *needles: str) -> None:
    assert err.startswith("rba: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


@pytest.fixture(scope="module")
def study_folder(tmp_path_factory):
    """A finished two-trial search of the tiny ViT, and its config."""
    tmp = tmp_path_factory.mktemp("folders")
    cfg = _config(tmp, search={"trials": 2, "objectives": ["fidelity", "flops"], "max_span": 2})
    assert cli_main(["search", str(cfg), "--out", str(tmp / "study"), "--quiet"]) == 0
    return tmp, cfg, tmp / "study"


def test_scores_and_compare_fits_refuse_a_study_folder(study_folder, capsys):
    tmp, cfg, study = study_folder
    before = _files(study)
    assert {"study.json", "run.json", "config.resolved.toml", "trials.csv"} <= set(before)
    # another config (other max_span): its scores would replace the study's run.json and config.resolved.toml
    other = _config(tmp, "other", search={"max_span": 1})
    assert cli_main(["scores", str(other), "--out", str(study), "--quiet"]) == 2
    _one_line(capsys.readouterr().err, f"output folder {study} holds a study (study.json", "`rba scores`",
              "choose another --out")
    # the real binary: exit 2, one line, before any model is loaded
    r = subprocess.run([sys.executable, "-m", "rba.cli", "compare-fits", str(cfg), "--out", str(study), "--kinds",
                        "affine", "--spans", "1-2", "--quiet"], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=tmp)
    assert r.returncode == 2, r.stderr
    _one_line(r.stderr, "holds a study", "`rba compare-fits`")
    assert _files(study) == before  # nothing of the study changed


def test_a_study_refuses_a_comparison_folder(tmp_path, capsys):
    cfg = _config(tmp_path, search={"trials": 2, "objectives": ["fidelity", "flops"], "max_span": 2})
    cmp = tmp_path / "cmp"
    assert cli_main(["compare-fits", str(cfg), "--out", str(cmp), "--kinds", "identity", "--spans", "1-2",
                     "--quiet"]) == 0
    capsys.readouterr()
    before = _files(cmp)
    assert cli_main(["search", str(cfg), "--out", str(cmp), "--quiet"]) == 2
    _one_line(capsys.readouterr().err, "holds a comparison (compare.json", "a study (`rba search` / `rba run`)")
    assert _files(cmp) == before


def test_compare_fits_keeps_the_finished_rows_of_spans_not_asked_again(tmp_path, capsys):
    cfg = _config(tmp_path)
    cmp = tmp_path / "cmp"
    args = ["compare-fits", str(cfg), "--out", str(cmp), "--kinds", "identity,affine", "--quiet"]
    assert cli_main(args + ["--spans", "1-3,2-4"]) == 0
    first = pd.read_csv(cmp / "fits.csv", dtype={"span": str})
    assert cli_main(args + ["--spans", "2-4,4-5,4-5"]) == 0  # one span again, one new (asked twice: compared once)
    capsys.readouterr()
    both = pd.read_csv(cmp / "fits.csv", dtype={"span": str})
    assert list(dict.fromkeys(both["span"])) == ["1-3", "2-4", "4-5"]
    assert list(zip(both["span"], both["kind"]))[-2:] == [("4-5", "identity"), ("4-5", "affine")]
    # the earlier rows are the same rows (fit times included: nothing refitted), not recomputed ones
    pd.testing.assert_frame_equal(both[both.span != "4-5"].reset_index(drop=True), first)
    assert "1-3" in (cmp / "fits.md").read_text()


def test_compare_fits_refusal_names_the_keys_that_differ(tmp_path, capsys):
    cfg = _config(tmp_path)
    cmp = tmp_path / "cmp"
    args = ["compare-fits", str(cfg), "--out", str(cmp), "--spans", "1-2", "--quiet"]
    assert cli_main(args + ["--kinds", "identity"]) == 0
    capsys.readouterr()
    before = _files(cmp)
    assert cli_main(args + ["--kinds", "affine"]) == 2
    _one_line(capsys.readouterr().err, f"{cmp} holds a comparison with a different identity (differing keys: kinds)",
              '["identity"] → ["affine"]')
    assert _files(cmp) == before


def test_compare_fits_does_not_reuse_an_edited_row(tmp_path, capsys):
    """compare.json holds a checksum of each span's rows: a fidelity edited to 123.0 is computed again (and said
    so), not carried into the table and plot."""
    cfg = _config(tmp_path)
    cmp = tmp_path / "cmp"
    args = ["compare-fits", str(cfg), "--out", str(cmp), "--kinds", "identity,affine", "--spans", "1-2,2-4", "--quiet"]
    assert cli_main(args) == 0
    first = pd.read_csv(cmp / "fits.csv", dtype={"span": str})
    edited = first.copy()
    edited.loc[(edited.span == "2-4") & (edited.kind == "affine"), "fidelity"] = 123.0
    edited.to_csv(cmp / "fits.csv", index=False, float_format="%.6g")
    capsys.readouterr()
    assert cli_main(args) == 0
    err = capsys.readouterr().err
    assert "rba: warning: " in err and "span(s) 2-4 do not match their checksums" in err, err
    again = pd.read_csv(cmp / "fits.csv", dtype={"span": str})
    assert (again["fidelity"] <= 1).all()
    # the untouched span is reused as it was (its fit times too); the edited one is fitted again, to the same value
    pd.testing.assert_frame_equal(again[again.span == "1-2"], first[first.span == "1-2"])
    assert not again[again.span == "2-4"]["fit_s"].equals(first[first.span == "2-4"]["fit_s"])
    assert again["fidelity"].tolist() == pytest.approx(first["fidelity"].tolist(), abs=1e-5)


def _recompute_row_sums(cmp: Path) -> None:
    """compare.json's checksums made to match fits.csv again, as anyone could, so that only the schema checks of
    the reader stand between the edited rows and the table."""
    import hashlib
    import json

    lines = (cmp / "fits.csv").read_text().splitlines()
    by_span: dict[str, list[str]] = {}
    for line in lines[1:]:
        by_span.setdefault(line.split(",", 1)[0], []).append(line)
    record = json.loads((cmp / "compare.json").read_text())
    record["rows"] = {s: hashlib.sha256("\n".join([lines[0], *rows]).encode()).hexdigest() for s, rows in by_span.items()}
    (cmp / "compare.json").write_text(json.dumps(record))


def test_damaged_comparison_files_are_one_line(tmp_path, capsys):
    """A compare.json that is not JSON or holds keys of the wrong type, and fits.csv rows with text where numbers
    belong (their checksums recomputed), end in one line naming the file; a file where the default fits/ folder goes
    is named before the model loads."""
    import json

    cfg = _config(tmp_path)
    cmp = tmp_path / "cmp"
    args = ["compare-fits", str(cfg), "--out", str(cmp), "--kinds", "identity", "--spans", "1-2", "--quiet"]
    assert cli_main(args) == 0
    capsys.readouterr()
    record, fits = (cmp / "compare.json").read_text(), (cmp / "fits.csv").read_text()
    (cmp / "compare.json").write_text(record[:40])
    assert cli_main(args) == 2
    _one_line(capsys.readouterr().err, f"{cmp / 'compare.json'} is damaged (not JSON", "choose another --out")
    (cmp / "compare.json").write_text(json.dumps(json.loads(record) | {"rows": ["1-2"]}))
    assert cli_main(args) == 2
    _one_line(capsys.readouterr().err, f"{cmp / 'compare.json'} is damaged (invalid values: rows")
    (cmp / "compare.json").write_text(record)
    table = pd.read_csv(cmp / "fits.csv", dtype=str)
    table.loc[0, "fidelity"] = "high"
    table.to_csv(cmp / "fits.csv", index=False)
    _recompute_row_sums(cmp)
    assert cli_main(args) == 2
    _one_line(capsys.readouterr().err, f"{cmp / 'fits.csv'} is damaged (column fidelity holds 'high'",
              f"remove {cmp / 'fits.csv'}")
    (cmp / "fits.csv").write_text(fits)
    # output.dir's fits/ (compare-fits' default folder) is a file: named before the model loads
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "fits").write_text("not a folder")
    other = _config(tmp_path, "other", output={"dir": str(tmp_path / "study")})
    assert cli_main(["compare-fits", str(other), "--kinds", "identity", "--spans", "1-2", "--quiet"]) == 2
    _one_line(capsys.readouterr().err, f"compare-fits output folder {tmp_path / 'study' / 'fits'} is an existing file")


def test_an_output_folder_name_longer_than_the_file_system_allows_is_one_line(tmp_path, capsys):
    cfg = _config(tmp_path)
    out = tmp_path / ("é" * 130)  # 260 bytes: NAME_MAX is 255 bytes on the usual file systems
    assert cli_main(["scores", str(cfg), "--out", str(out), "--quiet"]) == 2
    _one_line(capsys.readouterr().err, "output folder", "is 260 bytes long", "choose a shorter one")
