"""The fit plug-in point (rba.fit.Fit): the registry, the cost model reading a plug-in's module, and a fit that
trains on calibration vectors (defined here, test-only) going through the same fit, evaluate and export path as
the closed-form fits, with no change to the interface."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rba.fit
from conftest import materialise, staged_forward, tiny_config
from rba._registry import FITS
from rba.errors import SpanError, UnknownNameError
from rba.fit import Fit, FitInput, SpanFit, fit_span, get_fit, list_fits, register_fit
from rba.session import Session


class Translator(nn.Module):
    """Linear D→D/2, GELU, Linear D/2→D on every vector (the trained translators' shape)."""

    def __init__(self, dim_in: int, dim_out: int, layout: str):
        super().__init__()
        self.fc1 = nn.Linear(dim_in, dim_in // 2)
        self.fc2 = nn.Linear(dim_in // 2, dim_out)
        self.layout = layout

    def forward(self, h):
        if self.layout == "pixels":
            return self.fc2(F.gelu(self.fc1(h.movedim(1, -1)))).movedim(-1, 1)
        return self.fc2(F.gelu(self.fc1(h)))


class VectorTranslatorFit(Fit):
    """Trains a :class:`Translator` with Adam on the (x_i, x_j) pairs it is handed; remembers what it got."""

    needs = "vectors"
    trained = True
    steps = 60

    def __init__(self):
        self.seen: dict = {}

    def fit(self, data: FitInput) -> SpanFit:
        x, y = (t.double() for t in data.vectors)
        self.seen[data.span] = (x.clone(), y.clone())
        torch.manual_seed(data.seed)
        m = self.module(data.dim_in, data.dim_out, layout="tokens", span=data.span).double()
        opt = torch.optim.Adam(m.parameters(), lr=1e-2)
        with torch.inference_mode(False), torch.enable_grad():
            first = float(((m(x) - y) ** 2).sum().detach())
            for _ in range(self.steps):
                opt.zero_grad()
                loss = ((m(x) - y) ** 2).mean()
                loss.backward()
                opt.step()
        tensors = {k: v.detach().clone() for k, v in m.state_dict().items()}
        with torch.no_grad():
            sse = float(((m(x) - y) ** 2).sum())
        return SpanFit(data.span, self.name, data.dim_in, data.dim_out, tensors, sse, info={"initial_sse": first})

    def module(self, dim_in, dim_out, *, layout, span):
        return Translator(dim_in, dim_out, layout)


@pytest.fixture
def translator(monkeypatch):
    """``test-translator`` registered for this test only."""
    monkeypatch.setattr(FITS, "_targets", dict(FITS._targets))
    monkeypatch.setattr(rba.fit, "_PLUGINS", dict(rba.fit._PLUGINS))
    register_fit("test-translator")(VectorTranslatorFit)
    return get_fit("test-translator")


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
