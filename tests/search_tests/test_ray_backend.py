"""The Ray Tune backend on a real local Ray (no mocks): same files as the Optuna backend, constraints recorded
before tell, a failing trial retried then recorded FAIL with its error while the study goes on."""

from __future__ import annotations

import pandas as pd
import pytest
from _search_helpers import (
    faulty_objective,
    make_config,
    single_thread,  # noqa: F401  (autouse fixture)
)

from search.pareto import TRIAL_COLUMNS


def test_ray_backend_writes_the_same_files(tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    # where a cluster is already known on this machine (RAY_ADDRESS, or `ray start`'s record of its last cluster),
    # a run without --address still starts a local Ray of its own (ray.init would join that one instead)
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:9")
    from rba.session import Session
    from search import run_search
    from search.baselines import front_priors, prior_configurations, span_scores

    cfg = make_config(tmp_path, tmp_path / "cache",
                      search={"backend": "ray", "trials": 4, "max_concurrent": 2, "max_failures": 1,
                              "budget_flops": 0.8})
    session = Session(cfg, need_labels=False, progress=False)
    # the first prior enqueued (within the budget: priors over it are not enqueued) raises in the worker, every time
    from search.objective import Objective

    table, objective = span_scores(session.stats, session.pairs, cfg.fit.ridge), Objective(session)
    first = next(s for _, s in prior_configurations(table, front_priors(table, objective)) if objective.feasible(s))
    fault = ",".join(f"{i}-{j}" for i, j in first)
    import signal

    before = signal.getsignal(signal.SIGINT)
    res = run_search(cfg, progress=False, session=session, objective=faulty_objective(fault)(session))
    assert not ray.is_initialized()  # the backend shut down the Ray it started
    assert signal.getsignal(signal.SIGINT) is before  # Tune's Ctrl-C handler does not outlive the run
    for name in ("trials.csv", "trials.parquet", "pareto.csv", "pareto.png", "config.resolved.toml", "run.json"):
        assert (res.out / name).exists(), name
    trials = pd.read_csv(res.out / "trials.csv")
    assert list(trials.columns) == TRIAL_COLUMNS
    assert list(pd.read_parquet(res.out / "trials.parquet").columns) == TRIAL_COLUMNS
    assert (trials["state"] == "COMPLETE").sum() == 4
    failed = trials[trials["state"] == "FAIL"]
    assert len(failed) >= 1 and set(failed["spans"]) == {fault}

    import optuna

    study = optuna.load_study(study_name="rba", storage=res.storage)
    bad = [t for t in study.trials if t.state.name == "FAIL"]
    assert "injected fault" in bad[0].user_attrs["error"]  # recorded with its error after the retry
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    for t in done:  # constraint values recorded before tell, and consistent with the result columns
        assert t.constraints["flops"] == pytest.approx(t.user_attrs["result"]["flops_frac"] - 0.8)
    front = pd.read_csv(res.out / "pareto.csv")
    assert (front["flops_frac"] <= 0.8).all() and front["spans"].is_unique
    # the objective in the workers gives the driver's numbers
    from search.objective import Objective

    local = Objective(session)
    row = trials[trials["state"] == "COMPLETE"].iloc[0]
    assert local(session.parse(row["spans"]))["fidelity"] == pytest.approx(row["fidelity"], abs=1e-6)
