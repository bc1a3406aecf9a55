"""The real `rba` binary, via subprocess: outputs, exit codes, one-line errors, no partial files."""

import json
import subprocess
import sys

import pandas as pd
import pytest

TOML = """
[model]
kind = "timm"
name = "test_vit"
pretrained = false
[data]
kind = "synthetic"
image_size = 32
calibration = 32
probe = 32
eval = 32
options = {{ modality = "image", classes = 3 }}
[capture]
cache_dir = "{cache}"
[evaluate]
latency_repeats = 1
"""


def rba(*args, cwd):
    return subprocess.run([sys.executable, "-m", "rba.cli", *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    cfg = tmp / "tiny.toml"
    cfg.write_text(TOML.format(cache=tmp / "cache"))
    return tmp, cfg


def test_scores_writes_csv_png_and_run_info(study):
    tmp, cfg = study
    r = rba("scores", cfg, "--out", tmp / "out", "--max-span", "3", "--quiet", cwd=tmp)
    assert r.returncode == 0, r.stderr
    table = pd.read_csv(tmp / "out" / "scores.csv")
    assert list(table.columns) == ["start", "end", "br", "cosine", "cka", "ls_residual"]
    assert len(table) == 6 + 5 + 4 and (table.end - table.start).max() == 3
    assert (tmp / "out" / "scores.png").stat().st_size > 1000
    info = json.loads((tmp / "out" / "run.json").read_text())
    assert len(info["statistics_hash"]) == 16 and "torch" in info["versions"]
    assert "max_span = 3" in (tmp / "out" / "config.resolved.toml").read_text()


def test_evaluate_json_and_export_roundtrip(study):
    tmp, cfg = study
    r = rba("evaluate", cfg, "--spans", "2-4", "--json", "--quiet", cwd=tmp)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["spans"] == "2-4" and 0 < res["flops_frac"] < 1 and 0 < res["fidelity"] <= 1
    r = rba("export", cfg, "--spans", "2-4", "--out", tmp / "exp", "--quiet", cwd=tmp)
    assert r.returncode == 0, r.stderr
    r = rba("evaluate", cfg, "--export", tmp / "exp", "--json", "--quiet", cwd=tmp)
    assert r.returncode == 0, r.stderr
    exp = json.loads(r.stdout)
    assert exp["fidelity"] == pytest.approx(res["fidelity"], abs=1e-5) and exp["accuracy"] == res["accuracy"]


@pytest.mark.parametrize("spans,needle", [
    ("2-", "malformed span '2-'"),
    ("", "empty span list"),
    ("1-3,2-5", "spans 1-3 and 2-5 overlap"),
    ("4-9", "span 4-9 is out of range: boundaries run from 0 to 6"),
    ("3-3", "END must be greater than START"),
])
def test_bad_spans_one_line_error_exit_2(study, spans, needle):
    tmp, cfg = study
    r = rba("evaluate", cfg, "--spans", spans, "--quiet", cwd=tmp)
    assert r.returncode == 2
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0


def test_unknown_key_and_missing_config(study):
    tmp, _ = study
    bad = tmp / "bad.toml"
    bad.write_text('[model]\nknd = "timm"\n')
    r = rba("scores", bad, "--out", tmp / "bad_out", cwd=tmp)
    assert r.returncode == 2 and "unknown key in [model] 'knd'" in r.stderr and "Valid:" in r.stderr
    assert not (tmp / "bad_out").exists()
    r = rba("scores", tmp / "missing.toml", cwd=tmp)
    assert r.returncode == 2 and "config file not found" in r.stderr
