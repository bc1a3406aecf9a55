"""benchmarks/equal_evaluation.py: fronts selected on eval and scored on test against hand-computed
hypervolumes, the SLEB charge against its algorithm, and a replay on a table against a fresh run."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import equal_evaluation as E  # noqa: E402  (a script in benchmarks/, importable once the path above is set)

#: spans → (flops_frac, eval fidelity, test fidelity). On eval A beats B (same cost); on test B beats A, and C
#: (cheaper) beats A too
CONFIGS = {"none": (1.0, 1.0, 1.0), "0-1": (0.5, 0.97, 0.93), "1-2": (0.5, 0.95, 0.96), "0-2": (0.25, 0.92, 0.94)}


@pytest.fixture
def pool() -> E.Pool:
    spans = list(CONFIGS)
    table = pd.DataFrame({"spans": spans, "flops_frac": [v[0] for v in CONFIGS.values()],
                          "fidelity": [v[1] for v in CONFIGS.values()], "accuracy": np.nan})
    # four test samples per configuration whose mean is its test fidelity
    cosine = np.array([[t - 0.01, t + 0.01, t, t] for _, _, t in CONFIGS.values()])
    return E.Pool.from_table(table, {"spans": np.array(spans), "cosine": cosine}, "fidelity", "flops_frac", "affine")


def test_true_front_hypervolume_is_hand_computed_and_its_share_is_one(pool):
    # reference (0.9 × 1.0, 1.0); on test the front is B (0.96 at 0.5) and C (0.94 at 0.25):
    # C: 0.04 × 0.75 = 0.03, B: 0.06 × 0.5 = 0.03, overlap 0.04 × 0.5 = 0.02 → 0.04
    assert pool.reference == pytest.approx((0.9, 1.0))
    assert pool.true_hv == pytest.approx(0.04)
    assert E.hv_share(pool, ["affine:1-2", "affine:0-2"]) == pytest.approx(1.0)


def test_fronts_are_selected_on_eval_and_scored_on_test(pool):
    every = list(pool.rows.index)
    # on eval A dominates B (same cost, 0.97 > 0.95): the front is none, A, C; on test A adds nothing beyond C
    assert list(E.selected(pool, every)["spans"]) == ["0-2", "0-1", "none"]
    assert E.hv_share(pool, every) == pytest.approx(0.03 / 0.04)
    # B alone, then B and A: A displaces B on eval, and the test score drops to A's (0.03 × 0.5)
    run = E.Run("m", 0, None, "affine", ["affine:1-2", "affine:0-1"], [1, 2])
    rows = E.curve_rows(pool, [run], 2, [0.5])
    assert [r["hv_share"] for r in rows] == pytest.approx([0.03 / 0.04, 0.015 / 0.04])
    # best within half the FLOPs: A on eval, scored on test (B would win on test)
    assert rows[1]["best_0.5"] == pytest.approx(0.93) and rows[1]["best_0.5_spans"] == "0-1"
    assert rows[1]["best_0.5_se"] == pytest.approx(np.std([0.92, 0.94, 0.93, 0.93], ddof=1) / 2)


def test_sleb_charges_count_its_subset_evaluations():
    # 8 blocks, first and last never removed: steps try 6, 5, 4, 3, 2, 1 blocks
    assert E.sleb_charges(8, 6) == [6 + 1, 11 + 2, 15 + 3, 18 + 4, 20 + 5, 21 + 6]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from rba.session import Session

    tmp = tmp_path_factory.mktemp("equal-evaluation")
    cfg = tiny_config(tmp, "vit", model={"options": {"depth": 4}},
                      search={"objectives": ["fidelity", "flops"], "trials": 13}).validate()
    return cfg, Session(cfg, progress=False), tmp


def test_replay_on_a_table_equals_a_fresh_run(tiny):
    """TPE after its priors and 10 start-up trials proposes from the values it has seen: the replay, whose
    every value comes from the table, must propose the fresh run's configurations in the same order."""
    from search_quality import _with

    from search import run_search
    from search.objective import Objective

    cfg, session, tmp = tiny
    fresh_objective = Objective(session)
    fresh = run_search(_with(cfg, tmp / "fresh", None, objectives=["fidelity", "flops"], method="optuna",
                             trials=13, seed=0, priors=True), progress=False, session=session, objective=fresh_objective)
    picks = E._distinct_picks(fresh.trials)
    assert len(picks) == 13
    table = pd.DataFrame([fresh_objective(s) for s in [[]] + [session.parse(p) for p in picks]])
    replayed = E.run_method(cfg, session, E.TableObjective(session, table), "optuna", {"priors": True}, 0, 13,
                            tmp / "replay")
    assert replayed == picks


def test_sleb_charge_matches_the_evaluations_sleb_makes(tiny):
    from search.baselines import sleb_order
    from search.objective import Objective

    cfg, session, _ = tiny
    order, evaluations = sleb_order(Objective(session, kind="identity"))
    singles = [i for i, j in session.pairs if j == i + 1 and session.stats.dims[i] == session.stats.dims[j]]
    charges = E.sleb_charges(len(singles), len(order))
    assert charges[-1] - len(order) == evaluations
