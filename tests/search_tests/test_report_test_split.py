"""The report's test-split results as data (search._comparisons), on hand-made per-sample arrays: per_sample.npz
round trips with and without labels, each method's pick within a budget is selected on eval, and the paired
tests and their Holm adjustment match computations written out here (binomial sums with math.comb, numpy means
and a numpy bootstrap), for data without labels too. No model runs."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from search._comparisons import PerSample, budget_picks, method_rows, paired_tests

N = 60


def _per_sample(labelled: bool) -> PerSample:
    rng = np.random.default_rng(3)
    configurations = [("affine", "none"), ("affine", "1-3"), ("affine", "0-2"), ("identity", "1-2"),
                      ("identity", "1-2,2-3")]
    cosine = np.vstack([np.ones(N)] + [rng.uniform(lo, 1.0, N) for lo in (0.85, 0.8, 0.6, 0.4)])
    label = rng.integers(0, 3, N)
    prediction = np.vstack([np.where(rng.random(N) < acc, label, (label + 1) % 3) for acc in (0.9, 0.8, 0.85, 0.6,
                                                                                              0.4)])
    return PerSample(split="test", index=np.arange(100, 100 + N), label=label if labelled else None,
                     kind=np.array([k for k, _ in configurations]), spans=np.array([s for _, s in configurations]),
                     cosine=cosine, prediction=prediction if labelled else None)


def _study_tables():
    """Eval results: the search's trials (1-3 is its best fidelity within half the FLOPs, 0-2 within 0.7) and one
    baseline (shortgpt: 1-2 within 0.7 only; nothing of it within 0.5)."""
    trials = pd.DataFrame({"spans": ["1-3", "0-2", "2-3"], "fidelity": [0.90, 0.95, 0.99],
                           "flops_frac": [0.45, 0.6, 0.8], "feasible": [True, True, True],
                           "state": ["COMPLETE"] * 3})
    baselines = pd.DataFrame({"method": ["shortgpt", "shortgpt"], "kind": ["identity", "identity"],
                              "spans": ["1-2", "1-2,2-3"], "fidelity": [0.97, 0.5], "flops_frac": [0.65, 0.55],
                              "feasible": [True, True]})
    info = {"quality": "fidelity", "cost": "flops_frac", "kind": "affine", "flops_points": [0.5, 0.7],
            "export": {"speed": {}}, "choice": {"spans": "1-3"}}
    return info, trials, baselines


@pytest.mark.parametrize("labelled", [True, False])
def test_per_sample_file_round_trips(tmp_path, labelled):
    per = _per_sample(labelled)
    per.save(tmp_path / "per_sample.npz")
    assert [p.name for p in tmp_path.iterdir()] == ["per_sample.npz"]  # no temporary file, no added suffix
    back = PerSample.load(tmp_path / "per_sample.npz")
    np.testing.assert_array_equal(back.cosine, per.cosine)
    assert list(back.spans) == list(per.spans) and list(back.kind) == list(per.kind)
    assert (back.prediction is None) == (not labelled) and (back.label is None) == (not labelled)
    x = back.scores("identity", "1-2")
    assert x["fidelity"] == pytest.approx(per.cosine[3].mean())
    assert x["fidelity_se"] == pytest.approx(per.cosine[3].std(ddof=1) / math.sqrt(N))
    if labelled:
        p = np.mean(per.prediction[3] == per.label)
        assert (x["accuracy"], x["accuracy_se"]) == (pytest.approx(p), pytest.approx(math.sqrt(p * (1 - p) / N)))
    else:
        assert math.isnan(x["accuracy"])
    assert back.row("identity", "none") == 0  # the unmodified model under any fit kind
    assert back.row("affine", "1-2") is None  # another fit kind is another configuration


def test_picks_are_selected_on_eval_within_each_budget():
    info, trials, baselines = _study_tables()
    picks = budget_picks(info, method_rows(info, trials, baselines))
    assert picks == {"search": {0.5: ("affine", "1-3"), 0.7: ("affine", "0-2")},
                     "shortgpt": {0.5: None, 0.7: ("identity", "1-2")}}


def _binomial_p(a: np.ndarray, b: np.ndarray) -> float:
    n01, n10 = int(np.sum(a & ~b)), int(np.sum(~a & b))
    n = n01 + n10
    return 1.0 if n == 0 else min(1.0, 2 * sum(math.comb(n, i) for i in range(min(n01, n10) + 1)) / 2 ** n)


@pytest.mark.parametrize("labelled", [True, False])
def test_paired_tests_against_hand_computations(labelled):
    info, trials, baselines = _study_tables()
    per = _per_sample(labelled)
    table = paired_tests(info, trials, baselines, per, resamples=4999)
    qualities = ["accuracy", "fidelity"] if labelled else ["fidelity"]
    # the export against the unmodified model, then the search against shortgpt within 0.7 (none within 0.5)
    pairs = [("export vs unmodified", (0, 1)), ("search vs shortgpt", (3, 2))]
    assert list(zip(table["comparison"], table["quality"], strict=True)) == [(c, q) for c, _ in pairs
                                                                            for q in qualities]
    assert table["budget"].iloc[-1] == 0.7 and math.isnan(table["budget"].iloc[0])
    rng = np.random.default_rng(11)
    for (_, (a, b)), rows in zip(pairs, [table.iloc[k:k + len(qualities)] for k in range(0, len(table),
                                                                                      len(qualities))], strict=True):
        for _, row in rows.iterrows():
            if row["quality"] == "accuracy":
                xa, xb = per.prediction[a] == per.label, per.prediction[b] == per.label
                assert row["p"] == pytest.approx(_binomial_p(xa, xb))
                assert row["test"] == "McNemar (exact)" and row["mid-p"] <= row["p"]
            else:
                xa, xb = per.cosine[a], per.cosine[b]
                boot = (xb - xa)[rng.integers(0, N, size=(20000, N))].mean(axis=1)
                p = min(1.0, 2 * (1 + min(np.sum(boot <= 0), np.sum(boot >= 0))) / (1 + len(boot)))
                assert abs(row["p"] - p) <= 0.02
                slack = 0.15 * (xb - xa).std(ddof=1) / math.sqrt(N)
                assert abs(row["low"] - np.percentile(boot, 2.5)) <= slack
                assert abs(row["high"] - np.percentile(boot, 97.5)) <= slack
            assert row["B − A"] == pytest.approx(np.mean(xb.astype(float)) - np.mean(xa.astype(float)))
            assert (row["A value"], row["B value"]) == (pytest.approx(np.mean(xa)), pytest.approx(np.mean(xb)))
    # Holm by hand: the k-th smallest of m p-values × (m − k + 1), running maximum, capped at 1
    p = table["p"].to_numpy()
    order = np.argsort(p, kind="stable")
    expected, running = np.empty(len(p)), 0.0
    for rank, k in enumerate(order):
        running = max(running, min(1.0, p[k] * (len(p) - rank)))
        expected[k] = running
    np.testing.assert_allclose(table["p (Holm)"].to_numpy(), expected)
