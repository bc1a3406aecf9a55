"""Studies end to end (Optuna backend): files and columns, the front, resume after SIGKILL, identity,
baselines, screening, ``rba run``."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from _search_helpers import (
    dominates,
    make_config,
    single_thread,  # noqa: F401  (autouse fixture)
    study_dict,
    write_config,
)
from conftest import slowed_cli, wait_for

from rba.config import load_config
from rba.errors import RBAError
from rba.session import Session
from search import run_search
from search.objective import OBJECTIVES
from search.pareto import TRIAL_COLUMNS
from search.space import SpanSpace

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("search-cache")


def _check_front(trials: pd.DataFrame, front: pd.DataFrame, objectives: list[str]) -> None:
    cols = [OBJECTIVES[o][0] for o in objectives]
    dirs = [OBJECTIVES[o][1] for o in objectives]
    assert front["spans"].is_unique
    assert front["feasible"].all() and (front["state"] == "COMPLETE").all()
    done = trials[(trials["state"] == "COMPLETE") & trials["feasible"].astype(bool)]
    pts = {r.spans: [getattr(r, c) for c in cols] for r in done.itertuples()}
    front_pts = [[r[c] for c in cols] for _, r in front.iterrows()]
    for a in front_pts:  # mutually non-dominated, and nothing feasible dominates a front member
        assert not any(dominates(b, a, dirs) for b in pts.values())
    for spans, p in pts.items():  # every feasible configuration off the front is dominated by the front
        if spans not in set(front["spans"]):
            assert any(dominates(f, p, dirs) or f == p for f in front_pts), spans


def test_exhaustive_front_budget_and_files(tmp_path, cache):
    cfg = make_config(tmp_path, cache, search={"method": "exhaustive", "budget_flops": 0.75})
    res = run_search(cfg, progress=False)
    space = SpanSpace(4, [(i, j) for i in range(4) for j in range(i + 1, 5)])
    trials = pd.read_csv(res.out / "trials.csv")
    assert list(trials.columns) == TRIAL_COLUMNS
    parquet = pd.read_parquet(res.out / "trials.parquet")
    assert list(parquet.columns) == TRIAL_COLUMNS and len(parquet) == len(trials) == space.count()
    assert sorted(trials["spans"]) == sorted(s if s else "none" for s in
                                             (",".join(f"{i}-{j}" for i, j in c) for c in space.configurations()))
    front = pd.read_csv(res.out / "pareto.csv")
    assert list(front.columns) == TRIAL_COLUMNS and len(front) >= 2
    # infeasible trials are on record but never on the front
    assert (~trials["feasible"]).any() and (trials.loc[~trials["feasible"], "flops_frac"] > 0.75).all()
    assert (front["flops_frac"] <= 0.75).all()
    _check_front(trials, front, ["fidelity", "flops"])
    for name in ("pareto.png", "config.resolved.toml", "run.json", "study.json"):
        assert (res.out / name).stat().st_size > 0


def test_identity_refused_with_differing_keys(tmp_path, cache):
    cfg = make_config(tmp_path, cache, search={"trials": 2, "priors": False})
    run_search(cfg, progress=False)
    other = make_config(tmp_path, cache, search={"trials": 2, "priors": False, "objectives": ["fidelity", "params"],
                                                  "budget_flops": 0.9})
    with pytest.raises(RBAError) as err:
        run_search(other, progress=False)
    msg = str(err.value)
    assert "objectives" in msg and "budgets.flops" in msg and "fit" not in msg.split("differing keys:")[1].split(")")[0]
    # same identity with a larger total resumes: trials is a total, earlier trials are kept
    first = pd.read_csv(cfg.output_dir() / "trials.csv")
    more = make_config(tmp_path, cache, search={"trials": 4, "priors": False})
    res = run_search(more, progress=False)
    assert (res.trials["state"] == "COMPLETE").sum() == 4
    pd.testing.assert_frame_equal(res.trials.iloc[:2][["number", "spans", "fidelity"]].reset_index(drop=True),
                                  first[["number", "spans", "fidelity"]].astype(res.trials[["number", "spans", "fidelity"]].dtypes))


def _states(db: Path) -> dict[str, int]:
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        rows = con.execute("select state, count(*) from trials group by state").fetchall()
        con.close()
        return dict(rows)
    except sqlite3.Error:
        return {}


def test_sigkill_then_resume_keeps_finished_trials(tmp_path, cache):
    total = 10
    raw = study_dict(cache, tmp_path / "out", search={"trials": total, "objectives": ["fidelity", "flops"]})
    path = write_config(tmp_path / "kill.toml", raw)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    # each trial of the killed run held for 0.5 s: the kill lands while one is RUNNING on any machine
    proc = subprocess.Popen([*slowed_cli("search.objective", "Objective.__call__", 0.5), "search", str(path),
                             "--quiet"], cwd=str(REPO), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    db = tmp_path / "out" / "study.db"

    def mid_trial() -> bool:
        st = _states(db) if db.exists() else {}
        return st.get("COMPLETE", 0) >= 3 and st.get("RUNNING", 0) >= 1

    killed_running = wait_for(mid_trial, timeout_s=120, proc=proc, interval_s=0.02)
    if killed_running:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert killed_running, f"the study finished or failed before it could be killed: {proc.stderr.read()[-2000:]}"
    import optuna

    before = {t.number: (t.user_attrs.get("spans"), t.values) for t in
              optuna.load_study(study_name="rba", storage=f"sqlite:///{db}").get_trials(deepcopy=False)
              if t.state.name == "COMPLETE"}
    assert 3 <= len(before) < total
    res = run_search(load_config(path), progress=False)
    study = optuna.load_study(study_name="rba", storage=f"sqlite:///{db}")
    after = {t.number: t for t in study.get_trials(deepcopy=False)}
    for number, (spans, values) in before.items():  # every finished trial kept as it was
        assert after[number].state.name == "COMPLETE"
        assert (after[number].user_attrs["spans"], after[number].values) == (spans, values)
    assert sum(t.state.name == "COMPLETE" for t in after.values()) == total
    assert not any(t.state.name == "RUNNING" for t in after.values())
    failed = [t for t in after.values() if t.state.name == "FAIL"]
    assert failed and all("interrupted" in t.user_attrs["error"] for t in failed)
    reruns = [t for t in after.values() if str(t.user_attrs.get("source", "")).startswith("rerun of trial")]
    assert {int(t.user_attrs["source"].split()[-1]) for t in reruns} == {t.number for t in failed}
    assert all(t.state.name == "COMPLETE" for t in reruns)
    assert (res.trials["state"] == "COMPLETE").sum() == total


def test_baselines_and_priors(tmp_path, cache):
    base = {"trials": 5}
    session = None
    out = {}
    for method in ("br-greedy", "block-drop", "random"):
        cfg = make_config(tmp_path, cache, name=method, search=base | {"method": method})
        if session is None:
            session = Session(cfg, need_labels=False, progress=False)
        res = run_search(cfg, progress=False, session=session)
        out[method] = res.trials
        assert (res.trials["state"] == "COMPLETE").all() and res.trials["spans"].is_unique
    # BR-greedy: configuration k holds k spans and contains configuration k - 1
    greedy = [set(s.split(",")) for s in out["br-greedy"]["spans"]]
    assert [len(g) for g in greedy] == list(range(1, len(greedy) + 1))
    assert all(a < b for a, b in zip(greedy, greedy[1:]))
    # block-drop: single blocks replaced by the identity, which costs no parameters and no FLOPs
    drop = out["block-drop"]
    cm = session.cost_model
    for r in drop.itertuples():
        blocks = [int(s.split("-")[0]) for s in r.spans.split(",")]
        assert r.params == cm.total_params - sum(cm.block_params[k] for k in blocks)
        assert r.flops == cm.total_flops - sum(cm.block_flops[k] for k in blocks)
    assert len(drop) == 4 and len(out["random"]) == 5
    # priors: an Optuna study starts with the first Pareto layers of (Σ ls_residual, FLOPs) over every
    # configuration, computed here by brute force from the score table and the exact cost of each configuration
    # (independent of the DP and of the per-span cost deltas), then the BR priors; TPE after them
    from search.baselines import bisection_order, span_scores

    total = 16
    cfg = make_config(tmp_path, cache, name="priors", search={"trials": total})
    res = run_search(cfg, progress=False, session=session)
    import optuna

    study = optuna.load_study(study_name="rba", storage=res.storage)
    trials = sorted(study.trials, key=lambda t: t.number)
    sources = [t.user_attrs.get("source", "") for t in trials]
    table = span_scores(session.stats, session.pairs, cfg.fit.ridge)
    ls = dict(zip(zip(table["start"], table["end"]), table["ls_residual"]))
    space = SpanSpace(session.adapter.num_blocks, session.pairs)
    points = {",".join(f"{i}-{j}" for i, j in c): (sum(ls[s] for s in c), session.cost_model.cost(c)["flops"])
              for c in space.configurations() if c}
    layer = {k for k, (p, c) in points.items() if not any(q <= p and d <= c and (q < p or d < c) for q, d in points.values())}
    # at most half the trials go to the fronts: here the first layer's 8 coarsest members (its members sorted by
    # cost, in bisection order: test_search_space checks that order and the later layers)
    expected = total // 2
    assert len(layer) > expected
    by_cost = sorted(layer, key=lambda k: points[k][1])
    assert [t.user_attrs["spans"] for t in trials[:expected]] == [by_cost[k] for k in bisection_order(len(by_cost))][:expected]
    assert sources[:expected] == ["prior: proxy front"] * expected
    # then the BR priors (those not already run), then the sampler; no configuration evaluated twice
    sampled = next(k for k, s in enumerate(sources) if not s)
    assert all(s.startswith(("prior: best", "prior: br-greedy")) for s in sources[expected:sampled])
    assert not any(s.startswith("prior") for s in sources[sampled:])
    assert res.trials["spans"].is_unique and (res.trials["state"] == "COMPLETE").sum() == total


def test_exhaustive_refused_above_limit(tmp_path, cache, monkeypatch):
    import search.baselines

    monkeypatch.setattr(search.baselines, "EXHAUSTIVE_LIMIT", 10)
    cfg = make_config(tmp_path, cache, search={"method": "exhaustive"})
    with pytest.raises(RBAError, match="34 configurations"):
        run_search(cfg, progress=False)


def test_screening_counts_only_full_evaluations(tmp_path, cache):
    cfg = make_config(tmp_path, cache, search={"trials": 8, "screening": True, "priors": False, "sampler": "random"})
    res = run_search(cfg, progress=False)
    t = res.trials
    assert (t["state"] == "COMPLETE").sum() == 8
    pruned = t[t["state"] == "PRUNED"]
    assert pruned["fidelity"].isna().all() and pruned["flops_frac"].notna().all()


def test_run_study_exports_and_reports(tmp_path, cache):
    cfg = make_config(tmp_path, cache, search={"trials": 3, "objectives": ["accuracy", "flops"]},
                      evaluate={"head": "fixed-probe"})
    from search import run_study

    report = run_study(cfg, progress=False)
    text = report.read_text()
    out = cfg.output_dir()
    for name in ("scores.csv", "trials.csv", "pareto.csv", "pareto.png", "export/model.safetensors",
                 "export/recipe.json"):
        assert (out / name).exists(), name
    pareto = pd.read_csv(out / "pareto.csv")
    ref, front = pareto.iloc[0], pareto.iloc[1:]
    assert ref["state"] == "REFERENCE" and ref["spans"] == "none"
    # the export rule on accuracy (the first quality objective), default max_drop 0.01
    cand = front[front["spans"] != "none"]
    within = cand[ref["accuracy"] - cand["accuracy"] <= 0.01 + 1e-12]
    chosen = (within.sort_values(["flops_frac", "accuracy"], ascending=[True, False]) if len(within)
              else cand.sort_values(["accuracy", "flops_frac"], ascending=[False, True])).iloc[0]["spans"]
    assert f"`{chosen}`" in text and "export (measured)" in text
