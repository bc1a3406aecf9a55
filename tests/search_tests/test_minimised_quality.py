"""The report's rules for a minimised quality (perplexity, kl): the export rule's max_rise, the fixed hypervolume
reference, best-at-budget and the eval front, against hand-written selections."""

import math

import numpy as np
import pandas as pd
import pytest

from search._comparisons import fixed_reference, front_2d
from search._results import choose_export
from search.analysis import best_quality_at, hypervolume


def _front(quality, values, costs):
    return pd.DataFrame({"spans": [f"{k}-{k + 1}" for k in range(len(values))], quality: values,
                         "flops_frac": costs, "feasible": True, "state": "COMPLETE"})


@pytest.mark.parametrize("quality, reference, values, limit", [
    ("perplexity", 20.0, [20.2, 20.9, 21.1, 26.0, 40.0], 20.0 * 1.05),
    ("kl", 0.0, [0.01, 0.045, 0.05, 0.2, 0.9], math.log(1.05)),
])
def test_max_rise_exports_the_cheapest_member_within_a_relative_rise(quality, reference, values, limit):
    costs = [0.9, 0.8, 0.7, 0.6, 0.5]
    front = _front(quality, values, costs)
    choice = choose_export(front, {quality: reference}, [quality, "flops"], max_drop=0.01, max_rise=0.05)
    within = [k for k, v in enumerate(values) if v <= limit]
    expected = min(within, key=lambda k: costs[k])
    assert choice.within and choice.row["spans"] == f"{expected}-{expected + 1}"
    assert "relative rise of 0.05" in choice.reason

    # nothing within: the lowest (best) value, not the highest
    tight = choose_export(front.assign(**{quality: [v + 1.0 for v in values]}), {quality: reference},
                          [quality, "flops"], max_drop=0.01, max_rise=0.05)
    assert not tight.within and tight.row["spans"] == "0-1" and "--max-rise" in tight.reason


def test_max_drop_still_rules_a_maximised_quality():
    front = _front("fidelity", [0.999, 0.995, 0.97], [0.9, 0.8, 0.7])
    choice = choose_export(front, {"fidelity": 1.0}, ["fidelity", "flops"], max_drop=0.01, max_rise=0.5)
    assert choice.row["spans"] == "1-2"


def test_fixed_reference_is_a_tenth_worse_for_maximised_and_twice_for_minimised_qualities():
    assert fixed_reference(0.8, 1.0, "fidelity") == pytest.approx((0.72, 1.0))
    assert fixed_reference(0.8, 1.0, "top1") == pytest.approx((0.72, 1.0))
    assert fixed_reference(30.0, 1.0, "perplexity") == pytest.approx((60.0, 1.0))
    assert fixed_reference(0.0, 1.0, "kl") == pytest.approx((math.log(2.0), 1.0))


def test_minimised_hypervolume_against_a_grid():
    """The area of (quality ↓, cost ↓) dominated up to the reference, against counting the cells of a fine grid."""
    rng = np.random.default_rng(0)
    q, c = rng.uniform(10, 14, 12), rng.uniform(0.3, 1.0, 12)
    ref = (13.0, 0.95)
    got = hypervolume(q, c, *ref, higher=False)
    qs = np.linspace(10, ref[0], 801)[:-1] + (ref[0] - 10) / 1600  # cell centres
    cs = np.linspace(0.3, ref[1], 801)[:-1] + (ref[1] - 0.3) / 1600
    Q, C = np.meshgrid(qs, cs, indexing="ij")
    covered = np.zeros_like(Q, dtype=bool)
    for qi, ci in zip(q, c):
        covered |= (Q >= qi) & (C >= ci)
    expected = covered.mean() * (ref[0] - 10) * (ref[1] - 0.3)
    assert got == pytest.approx(expected, rel=5e-3)
    # the same points as a maximised quality of −q give the same area
    assert hypervolume(-q, c, -ref[0], ref[1]) == pytest.approx(got)


def test_best_at_budget_and_eval_front_take_the_lowest_perplexity():
    rows = _front("perplexity", [30.0, 25.0, 28.0, 24.0, 50.0], [0.9, 0.85, 0.6, 0.7, 0.5])
    value, spans = best_quality_at(rows, "perplexity", 0.75)
    allowed = rows[rows["flops_frac"] <= 0.75]
    assert (value, spans) == (allowed["perplexity"].min(), allowed.loc[allowed["perplexity"].idxmin(), "spans"])
    front = front_2d(rows, "perplexity", "flops_frac")
    # by hand: sorted by cost, a row joins when its perplexity is below every cheaper one's
    kept, best = [], math.inf
    for _, r in rows.sort_values("flops_frac").iterrows():
        if r["perplexity"] < best:
            kept.append(r["spans"])
            best = r["perplexity"]
    assert list(front["spans"]) == kept


def test_priors_orient_a_minimised_quality():
    """A metric that calls the spans of lowest kl most redundant is a perfect prior: ρ = +1, as it is for fidelity."""
    from search.analysis import prior_correlations

    singles = pd.DataFrame({"start": [0, 1, 2, 3], "end": [1, 2, 3, 4], "kl": [0.4, 0.1, 0.3, 0.2],
                            "fidelity": [0.6, 0.9, 0.7, 0.8]})
    scores = singles[["start", "end"]].assign(br=[0.1, 0.9, 0.3, 0.5])  # higher: more redundant
    table = prior_correlations(singles, scores, {"br": True}, ("fidelity", "kl")).set_index("quality")
    assert table.loc["kl", "spearman"] == pytest.approx(1.0)
    assert table.loc["fidelity", "spearman"] == pytest.approx(1.0)
