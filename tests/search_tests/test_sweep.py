"""``rba run`` over several studies: a sweep file (cartesian product of dotted keys, one folder per study), several
configs, ``summary.csv`` matching each study's files, ``fronts.png``; bad sweep files as one-line errors before
any study runs."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from _search_helpers import (
    single_thread,  # noqa: F401  (autouse fixture)
    study_dict,
    write_config,
)

from rba.cli import main as cli_main
from search.sweep import SUMMARY_COLUMNS


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("sweep-cache")


def _base(tmp_path, cache, **sections):
    raw = study_dict(cache, tmp_path / "unused", **sections)
    raw.pop("output")
    return write_config(tmp_path / "base.toml", raw)


def test_sweep_runs_every_combination_and_summarises(tmp_path, cache, capsys):
    _base(tmp_path, cache, search={"trials": 3}, run={"max_drop": 0.2})
    (tmp_path / "sweep.toml").write_text('base = "base.toml"\nout = "batch"\n\n[sweep]\n'
                                         '"search.seed" = [0, 1]\n"search.budget_flops" = [0.5, 0.9]\n')
    assert cli_main(["run", str(tmp_path / "sweep.toml"), "--quiet"]) == 0
    out = tmp_path / "batch"
    labels = [f"search.seed={s},search.budget_flops={b}" for s in (0, 1) for b in (0.5, 0.9)]
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary.columns) == SUMMARY_COLUMNS and list(summary["study"]) == labels
    assert (out / "fronts.png").stat().st_size > 0
    for label, row in zip(labels, summary.itertuples()):
        folder = out / label
        assert row.out == str(folder)
        resolved = (folder / "config.resolved.toml").read_text()
        seed, budget = label.split(",")
        assert f"seed = {seed.split('=')[1]}" in resolved and f"budget_flops = {budget.split('=')[1]}" in resolved
        trials = pd.read_csv(folder / "trials.csv")
        assert row.trials_complete == (trials["state"] == "COMPLETE").sum() == 3
        pareto = pd.read_csv(folder / "pareto.csv")
        assert row.front_size == len(pareto) - 1
        recipe = json.loads((folder / "export" / "recipe.json").read_text())
        assert row.export_spans == recipe["spans"]
        chosen = pareto[pareto["spans"] == recipe["spans"]].iloc[0]
        assert row.export_quality == pytest.approx(chosen["fidelity"]) and row.export_cost == pytest.approx(chosen["flops_frac"])
        assert chosen["flops_frac"] <= float(budget.split("=")[1]) + 1e-9
        assert row.reference_quality == pytest.approx(pareto.iloc[0]["fidelity"])


def test_several_configs_under_out(tmp_path, cache):
    a = write_config(tmp_path / "a.toml", study_dict(cache, tmp_path / "x", search={"trials": 2}))
    b = write_config(tmp_path / "b.toml", study_dict(cache, tmp_path / "x", search={"trials": 2, "seed": 3}))
    assert cli_main(["run", str(a), str(b), "--out", str(tmp_path / "both"), "--quiet"]) == 0
    summary = pd.read_csv(tmp_path / "both" / "summary.csv")
    assert list(summary["study"]) == ["a", "b"]
    assert all((tmp_path / "both" / n / "report.md").exists() for n in "ab")


@pytest.mark.parametrize("text,needle", [
    ('base = "base.toml"\n[sweep]\n"search.nope" = [1, 2]\n', "nope"),
    ('base = "base.toml"\n[sweep]\n"search.seed" = []\n', "non-empty list"),
    ('base = "missing.toml"\n[sweep]\n"search.seed" = [0]\n', "not found"),
    ('base = "base.toml"\nextra = 1\n[sweep]\n"search.seed" = [0]\n', "unknown key"),
    ('base = "base.toml"\n[sweep]\n"search.trials" = ["many"]\n', "search.trials"),
    ('[sweep]\n"search.seed" = [0]\n', "base"),
    ('base = "base.toml"\n[sweep]\n"nosuch.key" = [1]\n', "unknown section in the key 'nosuch.key'"),
    ('base = "base.toml"\n[sweep]\n"name.x" = [1]\n', "unknown section in the key 'name.x'"),
    ('base = "base.toml"\n[sweep]\nseed = [1]\n', "'seed' is not a dotted config key"),
    ('base = "base.toml"\n[sweep]\n"search.seed" = [' + "1" * 300 + "]\n", "allows 255 for one name"),
    ('base = "sweep.toml"\n[sweep]\n"search.seed" = [0]\n', "sweep.toml: base "),
])
def test_bad_sweep_files_are_one_line_errors(tmp_path, cache, capsys, text, needle):
    _base(tmp_path, cache)
    (tmp_path / "sweep.toml").write_text(text)
    assert cli_main(["run", str(tmp_path / "sweep.toml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rba: error:") and needle in err[0], err
    assert not (tmp_path / "runs").exists()


def test_a_sweeps_base_may_be_a_shipped_study_name(tmp_path):
    """``base = "quickstart"``: each study is the shipped study (as `rba run quickstart` loads it) with the
    sweep's keys overridden; nothing runs here."""
    from rba.config import load_study
    from search.sweep import read_sweep

    sweep = tmp_path / "seeds.toml"
    sweep.write_text('base = "quickstart"\n\n[sweep]\n"search.seed" = [3, 4]\n')
    studies = read_sweep(sweep, tmp_path / "out", lambda cfg: cfg)
    shipped = load_study("quickstart")
    assert [s.cfg.search.seed for s in studies] == [3, 4]
    assert all(s.cfg.model == shipped.model and s.cfg.data.path == shipped.data.path for s in studies)


def test_a_failed_study_does_not_stop_the_others(tmp_path, cache, capsys):
    """The first study's budget no configuration meets: it fails with its error in summary.csv, the second still
    runs and is summarised, and the command ends with one error line naming the failed study, exit 2."""
    _base(tmp_path, cache, search={"trials": 2}, run={"max_drop": 0.5})
    (tmp_path / "sweep.toml").write_text('base = "base.toml"\nout = "batch"\n\n[sweep]\n'
                                         '"search.budget_flops" = [0.001, 0.9]\n')
    capsys.readouterr()
    assert cli_main(["run", str(tmp_path / "sweep.toml"), "--quiet"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("rba: error: 1 of 2 studies failed (search.budget_flops=0.001)"), err
    assert any(line.startswith("rba: warning: run: study 1 of 2 (search.budget_flops=0.001) failed: ") for line in err)
    summary = pd.read_csv(tmp_path / "batch" / "summary.csv")
    assert list(summary["study"]) == ["search.budget_flops=0.001", "search.budget_flops=0.9"]
    failed, done = summary.iloc[0], summary.iloc[1]
    assert "budget" in failed["error"] and pd.isna(failed["trials_complete"])
    assert pd.isna(done["error"]) and done["trials_complete"] == 2
    assert (tmp_path / "batch" / "search.budget_flops=0.9" / "report.md").exists()
    assert (tmp_path / "batch" / "fronts.png").stat().st_size > 0
