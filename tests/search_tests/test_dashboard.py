"""The study storage opens in optuna-dashboard: the storage is read here the way the dashboard reads it (an
``RDBStorage`` that neither checks the schema version nor creates tables, ``get_all_studies``,
``get_all_trials``), and it holds the study with its objective names and every trial with its user attributes,
matching ``trials.csv`` and an evaluation of the same configuration outside the search."""

from __future__ import annotations

import pandas as pd
import pytest
from _search_helpers import make_config, single_thread  # noqa: F401  (autouse fixture)
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from rba.session import Session
from search import run_search


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dashboard")
    cfg = make_config(tmp, tmp / "cache", search={"trials": 3, "objectives": ["fidelity", "flops"]})
    result = run_search(cfg, progress=False)
    return cfg, result


def test_dashboard_finds_the_study_its_objectives_and_the_trials_with_their_user_attributes(study):
    cfg, result = study
    url = f"sqlite:///{(cfg.output_dir() / 'study.db').resolve()}"
    # what `optuna-dashboard sqlite:///…/study.db` opens (optuna_dashboard._storage_url.get_rdb_storage)
    storage = RDBStorage(url, skip_compatibility_check=True, skip_table_creation=True)
    [frozen] = [s for s in storage.get_all_studies() if s.study_name == "rba"]
    # the dashboard names the objectives from the study's metric names (Study.set_metric_names)
    assert frozen.system_attrs.get("study:metric_names") == ["fidelity", "flops_frac"]
    assert [d.name for d in frozen.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert frozen.user_attrs["rba_identity"]["model"]["name"] == "test_vit"

    trials = storage.get_all_trials(frozen._study_id, deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    table = pd.read_csv(cfg.output_dir() / "trials.csv").set_index("number")
    assert sorted(t.number for t in complete) == sorted(table.index)
    session = Session(cfg, need_labels=False, progress=False)
    for t in complete:
        row = table.loc[t.number]
        spans = t.user_attrs["spans"]
        assert spans == row["spans"] and t.user_attrs["worker"]
        attrs = t.user_attrs["result"]
        assert attrs["fidelity"] == pytest.approx(row["fidelity"])
        assert attrs["flops_frac"] == pytest.approx(row["flops_frac"])
        assert t.values == pytest.approx([attrs["fidelity"], attrs["flops_frac"]])
        # the same configuration evaluated outside the search, through the session
        direct = session.evaluate(spans)
        assert attrs["fidelity"] == pytest.approx(direct["fidelity"], abs=1e-6)
        assert attrs["flops_frac"] == pytest.approx(direct["flops_frac"], rel=1e-9)
