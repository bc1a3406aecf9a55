"""The report's analysis functions on small hand-made tables, against values worked out by hand (no model)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from search.analysis import (
    best_quality_at,
    compare_methods,
    hypervolume,
    multi_span,
    prior_correlations,
    redundant_spans,
    search_cost,
    span_count,
)


def _rows(points, feasible=None):
    """(spans, quality, flops_frac) → rows with the result columns the analysis reads."""
    df = pd.DataFrame(points, columns=["spans", "fidelity", "flops_frac"])
    df["accuracy"] = math.nan
    df["feasible"] = True if feasible is None else feasible
    df["state"] = "COMPLETE"
    return df


def test_hypervolume_of_a_two_point_front_by_hand():
    # (quality 0.9, cost 0.5) and (0.8, 0.3) against the reference (0.5, 1.0): two rectangles,
    # 0.5 × 0.4 (cost 0.5..1.0, quality up to 0.9) + 0.2 × 0.3 (cost 0.3..0.5, quality up to 0.8)
    assert hypervolume([0.9, 0.8], [0.5, 0.3], 0.5, 1.0) == pytest.approx(0.26, abs=1e-12)
    # a dominated point, one worse than the reference in quality, one beyond it in cost and a NaN add nothing
    assert hypervolume([0.9, 0.8, 0.7, 0.4, 0.95, math.nan], [0.5, 0.3, 0.6, 0.1, 1.2, 0.2], 0.5, 1.0) == \
        pytest.approx(0.26, abs=1e-12)
    assert hypervolume([], [], 0.5, 1.0) == 0.0


def test_compare_methods_hypervolume_and_best_quality_at_flops():
    search = _rows([("0-2", 0.9, 0.5), ("0-3", 0.8, 0.3), ("1-2", 0.95, 0.8), ("0-4", 0.99, 0.2)],
                   feasible=[True, True, True, False])  # the infeasible one must count nowhere
    failed = _rows([("0-1", 0.99, 0.1)]).assign(state="FAIL")  # nor a trial that did not complete
    search = pd.concat([search, failed], ignore_index=True)
    greedy = _rows([("1-2", 0.95, 0.8), ("1-2,2-3", 0.6, 0.45)])
    table, ref = compare_methods({"search": search, "BR-greedy": greedy}, quality="fidelity", cost="flops_frac",
                                 reference={"flops_frac": 1.0}, flops_points=[0.5, 0.7])
    assert ref == (0.6, 1.0)  # the lowest feasible quality of all methods, the unmodified model's cost
    s, g = table.set_index("method").loc["search"], table.set_index("method").loc["BR-greedy"]
    # search, by hand over cost slices: 0.8..1.0 → 0.95, 0.5..0.8 → 0.9, 0.3..0.5 → 0.8 (minus the reference 0.6)
    hv_search = 0.2 * 0.35 + 0.3 * 0.3 + 0.2 * 0.2
    hv_greedy = 0.2 * 0.35  # its second point sits at the reference quality
    assert s["hypervolume"] == pytest.approx(hv_search) and g["hypervolume"] == pytest.approx(hv_greedy)
    assert s["share of best"] == 1.0 and g["share of best"] == pytest.approx(hv_greedy / hv_search)
    assert s["configurations"] == 3 and g["configurations"] == 2
    assert s["best fidelity at flops_frac ≤ 0.5"] == 0.9 and s["spans at 0.5"] == "0-2"
    assert s["best fidelity at flops_frac ≤ 0.7"] == 0.9
    assert g["best fidelity at flops_frac ≤ 0.5"] == 0.6 and g["spans at 0.5"] == "1-2,2-3"
    assert g["best fidelity at flops_frac ≤ 0.7"] == 0.6  # 1-2 (0.95) costs 0.8
    assert best_quality_at(greedy, "fidelity", 0.4) == (pytest.approx(math.nan, nan_ok=True), "")


def _hand_spearman(x, y) -> float:
    """Pearson correlation of the average ranks (ties share their mean rank), written out."""
    def ranks(v):
        v = list(v)
        order = sorted(range(len(v)), key=lambda k: v[k])
        r = [0.0] * len(v)
        k = 0
        while k < len(order):
            m = k
            while m + 1 < len(order) and v[order[m + 1]] == v[order[k]]:
                m += 1
            for t in range(k, m + 1):
                r[order[t]] = (k + m) / 2 + 1
            k = m + 1
        return np.array(r)

    rx, ry = ranks(x), ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float((rx * ry).sum() / np.sqrt((rx * rx).sum() * (ry * ry).sum()))


def test_prior_correlations_match_a_hand_rank_computation():
    scores = pd.DataFrame({"start": [0, 0, 1, 1, 2], "end": [1, 2, 2, 3, 3],
                           "br": [-0.1, -0.5, -0.2, -0.2, -0.05],
                           "ls_residual": [0.2, 0.6, 0.1, 0.4, 0.3]})
    singles = pd.DataFrame({"start": [0, 0, 1, 1, 2], "end": [1, 2, 2, 3, 3],
                            "fidelity": [0.9, 0.5, 0.8, 0.85, 0.95], "accuracy": [0.7, 0.6, 0.6, 0.65, 0.71]})
    table = prior_correlations(singles, scores, {"br": True, "ls_residual": False}).set_index(["metric", "quality"])
    for metric, sign in (("br", 1), ("ls_residual", -1)):
        for q in ("fidelity", "accuracy"):
            expected = _hand_spearman(sign * scores[metric], singles[q])
            assert table.loc[(metric, q), "spearman"] == pytest.approx(expected, abs=1e-12), (metric, q)
            assert table.loc[(metric, q), "spans"] == 5
    # a constant quality has no correlation
    flat = prior_correlations(singles.assign(accuracy=0.5), scores, {"br": True}).set_index("quality")
    assert math.isnan(flat.loc["accuracy", "spearman"])


def test_redundant_spans_ranks_each_metric_in_its_direction():
    scores = pd.DataFrame({"start": [0, 0, 1], "end": [1, 2, 2], "br": [-0.3, -0.9, -0.1],
                           "ls_residual": [0.05, 0.5, 0.2]})
    table = redundant_spans(scores, {"br": True, "ls_residual": False}, top=2).set_index("metric")
    assert table.loc["br", "most redundant"] == "1-2, 0-1"
    assert table.loc["ls_residual", "most redundant"] == "0-1, 1-2"
    assert table.loc["ls_residual", "spearman vs br"] == pytest.approx(
        _hand_spearman(scores["br"], -scores["ls_residual"]))


def test_multi_span_answer_and_single_span_share():
    front = _rows([("none", 1.0, 1.0), ("0-1", 0.95, 0.8), ("0-1,2-3", 0.9, 0.6), ("0-3", 0.7, 0.3)])
    evaluated = pd.concat([front, _rows([("2-3", 0.8, 0.8), ("1-2,2-3", 0.5, 0.6)])], ignore_index=True)
    m = multi_span(front, evaluated, quality="fidelity", cost="flops_frac", reference={"flops_frac": 1.0})
    assert m["front_members"] == 3 and m["multi_span_members"] == 1 and m["multi_span_spans"] == ["0-1,2-3"]
    assert m["by_count"] == {1: 2, 2: 1}
    # reference (0.5, 1.0); all: 0.8..1.0 → 0.95, 0.6..0.8 → 0.9, 0.3..0.6 → 0.7; single-span only: no 0-1,2-3
    hv_all = 0.2 * 0.45 + 0.2 * 0.4 + 0.3 * 0.2
    hv_single = 0.2 * 0.45 + 0.5 * 0.2
    assert m["hypervolume_all"] == pytest.approx(hv_all) and m["hypervolume_single"] == pytest.approx(hv_single)
    assert m["single_share"] == pytest.approx(hv_single / hv_all)
    assert [span_count(s) for s in ("none", "2-3", "0-1,2-3,4-6")] == [0, 1, 3]


def test_search_cost_estimates_the_exhaustive_sweep():
    trials = pd.DataFrame({"state": ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE"], "duration_s": [0.2, 0.4, 9.0, 0.3]})
    c = search_cost(trials, search_wall_s=6.0, configurations=233, exhaustive_run=False)
    assert c["one_evaluation_s"] == pytest.approx(0.3) and c["trials"] == 3
    assert c["exhaustive_s"] == pytest.approx(233 * 0.3) and c["exhaustive_estimated"]
    assert c["exhaustive_over_search"] == pytest.approx(233 * 0.3 / 6.0)
    assert c["search_in_evaluations"] == pytest.approx(20.0)
    ran = search_cost(trials, search_wall_s=6.0, configurations=233, exhaustive_run=True)
    assert ran["exhaustive_s"] == 6.0 and not ran["exhaustive_estimated"]
