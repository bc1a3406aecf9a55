"""The fit plug-in point (rba.fit.Fit): the registry, the cost model reading a plug-in's module, and a fit that
trains on calibration vectors (defined here, test-only) going through the same fit, evaluate and export path as
the closed-form fits, with no change to the interface."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import materialise, staged_forward, tiny_config

from rba.errors import SpanError, UnknownNameError
from rba.fit import fit_span, get_fit, list_fits, register_fit
from rba.session import Session


def hand_translator(h: torch.Tensor, t: dict[str, torch.Tensor]) -> torch.Tensor:
    """The translator written out from its tensors (float64), independent of the module class."""
    z = h.double() @ t["fc1.weight"].T.double() + t["fc1.bias"].double()
    z = 0.5 * z * (1 + torch.erf(z / math.sqrt(2)))
    return z @ t["fc2.weight"].T.double() + t["fc2.bias"].double()


def test_registry_lists_finds_and_refuses():
    assert list_fits() == sorted(list_fits()) and {"affine", "linear", "identity"} <= set(list_fits())
    assert get_fit("affine").needs == "statistics" and not get_fit("affine").trained
    with pytest.raises(UnknownNameError, match="Did you mean 'affine'"):
        get_fit("afine")
    with pytest.raises(ValueError, match="already registered"):
        register_fit("affine")(type(get_fit("affine")))
    with pytest.raises(TypeError):
        register_fit("not-a-plugin")(object)


def test_plugin_registers_and_costs_what_its_module_costs(translator, tmp_path):
    assert "test-translator" in list_fits() and get_fit("test-translator").trained
    session = Session(tiny_config(tmp_path, "vit"), progress=False, measure_latency=False)
    cm = session.cost_model
    span = (1, 3)
    d = cm.dims[1]
    base = cm.cost([], "affine")
    got = cm.cost([span], "test-translator")
    # by hand: two linear layers of the translator (GELU has no FLOPs in torch's counter)
    hand_params = d * (d // 2) + d // 2 + (d // 2) * d + d
    hand_flops = 2 * d * (d // 2) * 2 * cm.vectors_per_sample[1]
    assert got["params"] == base["params"] - sum(cm.block_params[1:3]) + hand_params
    assert got["flops"] == base["flops"] - sum(cm.block_flops[1:3]) + round(hand_flops)
    # the built-in fits keep their closed-form costs: D² + D (affine), D² (linear), 0 (identity); 2·D² FLOPs
    for kind, params, flops in [("affine", d * d + d, 2 * d * d), ("linear", d * d, 2 * d * d), ("identity", 0, 0)]:
        c = cm.cost([span], kind)
        assert c["params"] == base["params"] - sum(cm.block_params[1:3]) + params
        assert c["flops"] == base["flops"] - sum(cm.block_flops[1:3]) + round(flops * cm.vectors_per_sample[1])


def test_vector_fit_from_handed_vectors(translator):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 16, generator=g, dtype=torch.float64)
    y = torch.tanh(x @ torch.randn(16, 16, generator=g, dtype=torch.float64))
    fit = fit_span(None, (2, 4), "test-translator", vectors=(x, y))
    assert fit.kind == "test-translator" and (fit.dim_in, fit.dim_out) == (16, 16)
    assert torch.equal(translator.seen[(2, 4)][0], x)
    ref = hand_translator(x, fit.tensors)
    assert fit.sse == pytest.approx(float(((ref - y) ** 2).sum()), rel=1e-10)
    assert fit.sse < 0.5 * fit.info["initial_sse"]  # it trained
    torch.testing.assert_close(fit.predict(x), ref, rtol=1e-10, atol=1e-12)
    assert fit.num_params == 16 * 8 + 8 + 8 * 16 + 16
    with pytest.raises(SpanError, match="trains on calibration vectors"):
        fit_span(None, (2, 4), "test-translator")


def test_vector_fit_through_the_session(translator, tmp_path):
    """The session hands the plug-in the calibration vectors of boundaries i and j, evaluates the translator
    through the same path as the closed-form maps, and refuses it in sequential mode."""
    session = Session(tiny_config(tmp_path, "vit"), progress=False, measure_latency=False)
    spans = session.parse("1-3,4-5")
    result = session.evaluate(spans, kind="test-translator")
    xs = materialise(session.adapter, session.splits.calibration.samples, batch_size=session.cfg.capture.batch_size)
    for i, j in spans:
        x, y = translator.seen[(i, j)]
        np.testing.assert_allclose(x.numpy(), xs[i], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(y.numpy(), xs[j], rtol=1e-6, atol=1e-6)
    tensors = {s: session.fit(s, "test-translator").tensors for s in spans}
    samples = session.splits.eval.samples
    a = session.adapter
    with torch.inference_mode():
        maps = {s: (lambda h, t=tensors[s]: hand_translator(h, t).to(h.dtype)) for s in spans}
        pooled = torch.cat([staged_forward(a, a.collate(samples[k : k + 16]), maps) for k in range(0, len(samples), 16)])
        ref = torch.cat([staged_forward(a, a.collate(samples[k : k + 16])) for k in range(0, len(samples), 16)])
    fidelity = float(F.cosine_similarity(pooled.double(), ref.double(), dim=1).mean())
    assert result["fidelity"] == pytest.approx(fidelity, abs=2e-5)
    assert result["fidelity"] < 1 - 1e-4
    with pytest.raises(SpanError, match="sequential fitting supports fits from statistics only"):
        session.maps(spans, "test-translator", mode="sequential")
