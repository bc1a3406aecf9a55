"""No wasted trials: ``trials`` counts distinct configurations (capped at the size of the space), a repeated
proposal is told with the earlier values and a ``duplicate_of`` attribute but never evaluated nor written to
the tables, and priors whose exact cost breaks a budget are not enqueued. Both backends."""

from __future__ import annotations

import optuna
import pandas as pd
import pytest
from _search_helpers import (
    make_config,
    single_thread,  # noqa: F401  (autouse fixture)
)

from rba.session import Session
from search import run_search
from search.objective import Objective


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("no-waste-cache")


def _all_configurations(num_blocks: int) -> set[str]:
    """Every set of non-overlapping spans over ``num_blocks`` blocks (all spans valid), by brute force."""
    out = set()
    spans = [(i, j) for i in range(num_blocks) for j in range(i + 1, num_blocks + 1)]

    def extend(k: int, chosen: list) -> None:
        if k >= num_blocks:
            out.add(",".join(f"{i}-{j}" for i, j in chosen) or "none")
            return
        extend(k + 1, chosen)
        for i, j in spans:
            if i == k:
                extend(j, chosen + [(i, j)])

    extend(0, [])
    return out


def _study(res):
    return optuna.load_study(study_name=res.study_name, storage=res.storage)


@pytest.mark.parametrize("backend", ["optuna", "ray"])
def test_trials_capped_at_the_space_and_repeats_not_evaluated(tmp_path, cache, backend):
    """A 2-block model has 5 configurations; asking for 12 trials evaluates each exactly once and stops."""
    if backend == "ray":
        pytest.importorskip("ray")
    space = _all_configurations(2)
    assert len(space) == 5
    cfg = make_config(tmp_path, cache, depth=2,
                      search={"trials": 12, "priors": False, "sampler": "random", "seed": 3, "backend": backend,
                              "max_concurrent": 1})
    session = Session(cfg, need_labels=False, progress=False)
    objective = Objective(session)
    res = run_search(cfg, progress=False, session=session, objective=objective)
    trials = pd.read_csv(res.out / "trials.csv")
    front = pd.read_csv(res.out / "pareto.csv")
    assert set(trials["spans"]) == space and trials["spans"].is_unique
    assert (trials["state"] == "COMPLETE").all()
    assert front["spans"].is_unique and set(front["spans"]) <= space
    if backend == "optuna":
        assert objective.evaluations == len(space)  # a repeat never reaches the objective (+ "none" for the plot)
    study = _study(res)
    repeats = [t for t in study.trials if "duplicate_of" in t.user_attrs]
    assert repeats  # 5 configurations drawn at random: the sampler repeats itself (seeded), and nothing loops
    first = {}
    for t in study.trials:
        if t.state.name == "COMPLETE" and "duplicate_of" not in t.user_attrs:
            first.setdefault(t.user_attrs["spans"], t)
    for t in repeats:  # told with the values of the earlier trial of the same configuration
        earlier = study.trials[t.user_attrs["duplicate_of"]]
        assert earlier.user_attrs["spans"] == t.user_attrs["spans"] and "duplicate_of" not in earlier.user_attrs
        if t.state.name == "COMPLETE":
            assert t.values == earlier.values
        assert t.number not in set(trials["number"]) and t.number not in set(front["number"])


def test_an_enqueued_repeat_costs_no_evaluation(tmp_path, cache):
    """A configuration proposed again after it completed: COMPLETE with the earlier values and constraints,
    ``duplicate_of`` naming the earlier trial, left out of trials.csv, and ``trials`` still counts distinct
    configurations."""
    cfg = make_config(tmp_path, cache, search={"trials": 3, "priors": False, "budget_flops": 0.9})
    res = run_search(cfg, progress=False)
    study = _study(res)
    earlier = next(t for t in study.trials if t.state.name == "COMPLETE")
    study.enqueue_trial(earlier.params)
    more = make_config(tmp_path, cache, search={"trials": 5, "priors": False, "budget_flops": 0.9})
    session = Session(more, need_labels=False, progress=False)
    objective = Objective(session)
    res = run_search(more, progress=False, session=session, objective=objective)
    study = _study(res)
    repeat = next(t for t in study.trials if "duplicate_of" in t.user_attrs)
    assert repeat.user_attrs["duplicate_of"] == earlier.number
    assert repeat.state.name == "COMPLETE" and repeat.values == earlier.values
    assert repeat.constraints == earlier.constraints
    trials = pd.read_csv(res.out / "trials.csv")
    assert len(trials) == 5 and trials["spans"].is_unique and repeat.number not in set(trials["number"])
    # 2 new configurations; the repeat and the 3 earlier ones never reached this objective (+ "none" for the plot)
    assert objective.evaluations == 2 + ("none" not in set(trials["spans"]))


def test_priors_over_budget_are_not_enqueued(tmp_path, cache):
    from search.baselines import front_priors, prior_configurations, span_scores

    budget = 0.7
    cfg = make_config(tmp_path, cache, search={"trials": 12, "budget_flops": budget})
    session = Session(cfg, need_labels=False, progress=False)
    objective = Objective(session)
    table = span_scores(session.stats, session.pairs, cfg.fit.ridge)
    priors = prior_configurations(table, front_priors(table, objective))
    # the test can fail: without the rule, some prior would be evaluated over budget
    over = [s for _, s in priors if not objective.feasible(s)]
    assert over
    res = run_search(cfg, progress=False, session=session, objective=objective)
    study = _study(res)
    enqueued = [t for t in study.trials if str(t.user_attrs.get("source", "")).startswith("prior")]
    assert enqueued
    # flops fraction recomputed from the absolute counts, not the stored fraction or the feasible flag
    base = objective.base_cost()["flops"]
    for t in enqueued:
        assert t.user_attrs["result"]["flops"] / base <= budget + 1e-12, t.user_attrs["spans"]
    from rba.spans import format_spans

    assert not {format_spans(s) for s in over} & {t.user_attrs["spans"] for t in enqueued}


@pytest.mark.slow
def test_search_quality_rows_show_no_waste(tmp_path):
    """benchmarks/search_quality.py --quick under a FLOPs budget: every TPE row evaluated only distinct
    configurations and enqueued no prior over the budget (counted from the study, not from rba's counters)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "sq.json"
    proc = subprocess.run([sys.executable, str(root / "benchmarks" / "search_quality.py"), "--quick", "--threads", "1",
                           "--no-fresh", "--budget-flops", "0.7", "--json", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=root,
                          env=dict(os.environ, PYTHONWARNINGS="ignore", PYTHONPATH=str(root)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["tpe"]
    assert rows
    for row in rows:
        assert row["repeats_evaluated"] == 0 and row["infeasible_priors"] == 0, row
        assert row["distinct_configurations"] == 12, row  # --quick: 12 trials in a space of 34
