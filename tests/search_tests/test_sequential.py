"""Sequential fitting (rba.sequential): identical to independent fitting for a configuration's first span,
different once an earlier span changes a later span's input, and equal to numpy lstsq on the activations of
the network with the earlier spans replaced (target: the unmodified network's boundary)."""

from __future__ import annotations

import json

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

from rba.sequential import SequentialFitter
from rba.session import Session
from search.objective import Objective


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sequential")
    return Session(make_config(tmp, tmp / "cache", fit={"mode": "sequential"}), need_labels=False, progress=False)


@pytest.fixture(scope="module")
def original(session):
    return materialise(session.adapter, session.splits.calibration.samples, batch_size=16)


def _wb(module):
    return module.linear.weight.detach().double().numpy().T, module.linear.bias.detach().double().numpy()


def _modified_vectors(session, spans, maps, boundary):
    """Vectors at ``boundary`` of the network with ``spans`` replaced, run by hand from the input."""
    a = session.adapter
    by_start = {i: (j, m) for (i, j), m in zip(spans, maps)}
    out = []
    samples = session.splits.calibration.samples
    with torch.inference_mode():
        for start in range(0, len(samples), 16):
            h, ctx = a.embed(a.collate(samples[start : start + 16]))
            k = 0
            while k < boundary:
                if k in by_start:
                    j, m = by_start[k]
                    h, k = m(h), j
                else:
                    h, k = a.run_block(k, h, ctx), k + 1
            assert k == boundary
            out.append(a.vectors(h, ctx).double().numpy())
    return np.concatenate(out)


def test_first_span_and_single_spans_identical_in_both_modes(session):
    seq = Objective(session, mode="sequential")
    ind = Objective(session, mode="independent")
    for text in ["0-1", "1-3", "3-4"]:
        spans = session.parse(text)
        (a,), (b,) = seq.maps(spans), ind.maps(spans)
        assert torch.equal(a.linear.weight, b.linear.weight) and torch.equal(a.linear.bias, b.linear.bias)
        assert seq(spans)["fidelity"] == ind(spans)["fidelity"]
    first_seq, second_seq = seq.maps(session.parse("0-1,1-2"))
    first_ind, second_ind = ind.maps(session.parse("0-1,1-2"))
    assert torch.equal(first_seq.linear.weight, first_ind.linear.weight)
    # the second span's input changed, so its fit and the configuration's fidelity change
    diff = (second_seq.linear.weight - second_ind.linear.weight).abs().max()
    assert diff > 1e-3 * second_ind.linear.weight.abs().max()
    assert seq(session.parse("0-1,1-2"))["fidelity"] != ind(session.parse("0-1,1-2"))["fidelity"]


@pytest.mark.parametrize("text", ["0-1,1-2", "0-1,2-3", "0-2,2-3,3-4"])
def test_sequential_fit_equals_lstsq_on_replaced_network(session, original, text):
    fitter = SequentialFitter(session)
    spans = session.parse(text)
    maps = fitter.maps(spans)
    ridge = session.cfg.fit.ridge
    for k, (i, j) in enumerate(spans):
        x = _modified_vectors(session, spans[:k], maps[:k], i) if k else original[i]
        w, b = lstsq_fit(x, original[j], ridge)
        gw, gb = _wb(maps[k])
        np.testing.assert_allclose(gw, w, rtol=1e-3, atol=3e-4)
        np.testing.assert_allclose(gb, b, rtol=1e-3, atol=3e-4)


def test_sequential_objective_uses_sequential_maps(session):
    objective = Objective(session, mode="sequential")
    spans = session.parse("0-1,1-2,2-4")
    got = objective(spans)["fidelity"]
    weights = {s: _wb(m) for s, m in zip(spans, objective.maps(spans))}
    samples = session.splits.eval.samples
    pooled = staged_forward(session.adapter, samples, spans, weights)
    ref = staged_forward(session.adapter, samples, [], {})
    assert got == pytest.approx(float(F.cosine_similarity(pooled, ref, dim=1).mean()), abs=2e-5)


def test_one_calibration_pass_per_prefix(session):
    fitter = SequentialFitter(session)
    fitter.fits(session.parse("0-1,1-2"))
    assert fitter.passes == 1
    fitter.fits(session.parse("0-1,2-4"))  # same prefix "0-1": no new pass
    fitter.fits(session.parse("0-1,1-2,3-4"))  # new prefix "0-1,1-2"
    assert fitter.passes == 2
    fitter.fits(session.parse("0-2"))  # a first span: the independent fit, no pass
    assert fitter.passes == 2


def test_sequential_mode_gives_the_same_maps_to_search_evaluate_and_export(session, tmp_path):
    """``[fit] mode = "sequential"`` is honoured in one place (Session.maps): the search's objective, ``rba
    evaluate`` (Session.evaluate) and ``rba export`` use the same sequential maps, not independent ones."""
    from safetensors.torch import load_file

    from rba.export import export_model, load_export

    assert session.cfg.fit.mode == "sequential"
    spans = session.parse("0-1,1-2,2-4")
    objective = Objective(session)
    searched = objective.maps(spans)
    evaluated = session.maps(spans)
    independent = session.maps(spans, mode="independent")
    out = export_model(session, spans, tmp_path / "exp")
    saved = load_file(str(out / "model.safetensors"))
    for (i, _), s, e, _ind in zip(spans, searched, evaluated, independent):
        assert torch.equal(s.linear.weight, e.linear.weight) and torch.equal(s.linear.bias, e.linear.bias)
        assert torch.equal(saved[f"blocks.{i}.linear.weight"], s.linear.weight)
        assert torch.equal(saved[f"blocks.{i}.linear.bias"], s.linear.bias)
    # the later spans' sequential fits differ from the independent ones, so the mode really took effect
    assert not torch.equal(searched[1].linear.weight, independent[1].linear.weight)
    assert json.loads((out / "recipe.json").read_text())["fit"]["mode"] == "sequential"
    # the same maps give the same score wherever the configuration is scored
    result = session.evaluate(spans)
    assert result["fidelity"] == objective(spans)["fidelity"]
    assert session.evaluate_export(out)["fidelity"] == pytest.approx(result["fidelity"], abs=1e-5)
    assert session.evaluate(spans, mode="independent")["fidelity"] != result["fidelity"]
    reloaded = load_export(out)
    assert torch.equal(reloaded.blocks[1].linear.weight, searched[1].linear.weight)
