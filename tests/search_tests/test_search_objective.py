"""The shared objective against independent computations: numpy lstsq fits on materialised activations, a
hand-run staged forward, FLOPs counted on the real model with the spans swapped in, parameter counts;
prefix reuse against a from-scratch forward; budgets, constraints and the unreachable-budget error."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _search_helpers import (
    lstsq_fit,
    make_config,
    materialise,
    single_thread,  # noqa: F401  (autouse fixture)
    staged_forward,
)
from torch.utils.flop_counter import FlopCounterMode

from rba.apply import SpanMap, replaced
from rba.errors import BudgetError
from rba.evaluate import LinearProbe
from rba.session import Session
from search.objective import Objective

CONFIGS = ["none", "1-3", "0-1,1-2,3-4"]


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("objective")
    cfg = make_config(tmp, tmp / "cache", search={"objectives": ["accuracy", "flops"]})
    return Session(cfg, progress=False)


@pytest.fixture(scope="module")
def calibration(session):
    return materialise(session.adapter, session.splits.calibration.samples, batch_size=16)


@pytest.fixture(scope="module")
def reference(session):
    a = session.adapter
    return {name: staged_forward(a, getattr(session.splits, name).samples, [], {}) for name in ("probe", "eval")}


@pytest.fixture(scope="module")
def objective(session):
    return Objective(session)


@pytest.mark.parametrize("text", CONFIGS)
def test_objective_equals_direct_fit_and_forward(session, objective, calibration, reference, text):
    spans = session.parse(text)
    got = objective(spans)
    ridge = session.cfg.fit.ridge
    weights = {(i, j): lstsq_fit(calibration[i], calibration[j], ridge) for i, j in spans}
    # the fitted maps themselves (float32 batch products → ~1e-5 relative)
    for (i, j), m in zip(spans, objective.maps(spans)):
        w, b = weights[(i, j)]
        np.testing.assert_allclose(m.linear.weight.detach().double().numpy().T, w, rtol=1e-3, atol=2e-4)
        np.testing.assert_allclose(m.linear.bias.detach().double().numpy(), b, rtol=1e-3, atol=2e-4)
    pooled = {name: staged_forward(session.adapter, getattr(session.splits, name).samples, spans, weights)
              for name in ("probe", "eval")}
    fidelity = float(F.cosine_similarity(pooled["eval"], reference["eval"], dim=1).mean())
    assert got["fidelity"] == pytest.approx(fidelity, abs=2e-5)
    labels = {name: torch.as_tensor(getattr(session.splits, name).labels) for name in ("probe", "eval")}
    classes = int(max(labels["probe"].max(), labels["eval"].max())) + 1
    probe = LinearProbe(session.cfg.evaluate.probe_c).fit(pooled["probe"].float(), labels["probe"], classes)
    accuracy = float((probe.predict(pooled["eval"].float()) == labels["eval"]).double().mean())
    assert abs(got["accuracy"] - accuracy) <= 1 / len(labels["eval"]) + 1e-12
    # FLOPs and parameters of the real model with the spans swapped in
    maps = [SpanMap(64, 64, layout="tokens") for _ in spans]
    x = session.adapter.collate(session.splits.eval.samples[:1])
    with replaced(session.adapter, spans, maps), FlopCounterMode(display=False) as counter:
        session.adapter.model(x)
    with replaced(session.adapter, spans, maps):
        params = sum(p.numel() for p in session.adapter.model.parameters())
    base = objective([])
    assert got["flops"] == counter.get_total_flops()
    assert got["params"] == params
    assert got["flops_frac"] == pytest.approx(got["flops"] / base["flops"])
    assert got["params_frac"] == pytest.approx(got["params"] / base["params"])
    assert got["spans"] == text and got["feasible"] is True and got["constraints"] == {}


def test_prefix_reuse_equals_full_forward(session, objective):
    """Configurations sharing prefixes (so the evaluator's prefix memo is used) against a forward that runs
    every block from the input."""
    for text in ["1-2", "1-2,2-3", "1-2,2-3,3-4", "1-2,3-4", "0-1,1-2,3-4", "2-4"]:
        spans = session.parse(text)
        maps = objective.maps(spans)
        got = session.evaluator.pooled(spans, maps, tag=objective.tag)["eval"]
        weights = {s: (m.linear.weight.detach().double().numpy().T, m.linear.bias.detach().double().numpy())
                   for s, m in zip(spans, maps)}
        ref = staged_forward(session.adapter, session.splits.eval.samples, spans, weights)
        torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-5)


def test_memo_and_constraints(session):
    objective = Objective(session, budgets={"flops": 0.7, "params": 0.9})
    a = objective(session.parse("0-2"))
    n = objective.evaluations
    b = objective(session.parse("0-2"))
    assert objective.evaluations == n and a == b
    assert a["constraints"]["flops"] == pytest.approx(a["flops_frac"] - 0.7)
    assert a["constraints"]["params"] == pytest.approx(a["params_frac"] - 0.9)
    assert a["feasible"] == (a["flops_frac"] <= 0.7 and a["params_frac"] <= 0.9)
    small = objective(session.parse("0-1,1-2,2-3,3-4"))
    assert small["feasible"] and not objective(session.parse("3-4"))["feasible"]


def _all_configurations(pairs):
    for r in range(len(pairs) + 1):
        for combo in itertools.combinations(sorted(pairs), r):
            if all(b <= c for (_, b), (c, _) in zip(combo, combo[1:])):
                yield list(combo)


@pytest.mark.parametrize("kind", ["affine", "identity"])
def test_unreachable_budget_names_smallest_cost(session, kind):
    objective = Objective(session, kind=kind, budgets={"flops": 0.01})
    low = min(objective.cost(c)["flops_frac"] for c in _all_configurations(session.pairs))
    assert objective.reachable("flops")[0] == pytest.approx(low)
    with pytest.raises(BudgetError, match=f"{low:.4f}"):
        objective.check_budgets()
    Objective(session, kind=kind, budgets={"flops": low + 1e-9}).check_budgets()
