"""Fits from statistics against numpy lstsq on the materialised, ridge-augmented system."""

import warnings

import numpy as np
import pytest
import torch
from conftest import TINY_MODELS, materialise, ridge_lstsq, tiny_config, tiny_samples
from torch import nn

from rba.adapters import create_adapter
from rba.capture import capture_statistics
from rba.fit import RankDeficientWarning, fit_span


@pytest.fixture(scope="module", params=list(TINY_MODELS))
def captured(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fit")
    adapter = create_adapter(tiny_config(tmp, request.param))
    samples = tiny_samples(request.param, 16, seed=1)
    s64 = capture_statistics(adapter, samples, pairs=adapter.valid_spans(), batch_size=5, dtype="float64", progress=False)
    s32 = capture_statistics(adapter, samples, pairs=adapter.valid_spans(), batch_size=5, dtype="float32", progress=False)
    return adapter, materialise(adapter, samples, batch_size=5), s64, s32


def _spans(adapter):
    spans = adapter.valid_spans()
    longest = max(spans, key=lambda s: s[1] - s[0])
    return sorted({spans[0], spans[len(spans) // 2], spans[-1], longest})


@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-8), ("float32", 1e-4)])
def test_affine_fit_matches_lstsq(captured, dtype, rtol):
    """Predictions and SSE agree with lstsq: ≈1e-8 relative for float64 accumulation, ≈1e-4 for float32."""
    adapter, xs, s64, s32 = captured
    stats = s64 if dtype == "float64" else s32
    for i, j in _spans(adapter):
        w, xt = ridge_lstsq(xs[i], xs[j], 1e-6)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RankDeficientWarning)  # post-LN BERT boundaries
            fit = fit_span(stats, (i, j), "affine", 1e-6)
        pred = fit.predict(torch.from_numpy(xs[i])).numpy()
        ref = xt @ w
        np.testing.assert_allclose(pred, ref, rtol=rtol, atol=rtol * np.abs(ref).max())
        sse_ref = ((ref - xs[j]) ** 2).sum()
        assert fit.sse == pytest.approx(sse_ref, rel=rtol * 10, abs=rtol * (xs[j] ** 2).sum())


def test_linear_fit_matches_lstsq_without_bias(captured):
    adapter, xs, s64, _ = captured
    i, j = _spans(adapter)[1]
    w, xt = ridge_lstsq(xs[i], xs[j], 1e-3, bias=False)
    fit = fit_span(s64, (i, j), "linear", 1e-3)
    assert fit.bias is None
    np.testing.assert_allclose(fit.weight.numpy(), w, rtol=1e-6, atol=1e-8 * np.abs(w).max())
    assert fit.sse == pytest.approx(((xt @ w - xs[j]) ** 2).sum(), rel=1e-6)


def test_identity_fit_sse_is_squared_distance(captured):
    adapter, xs, s64, _ = captured
    i, j = _spans(adapter)[0]
    fit = fit_span(s64, (i, j), "identity")
    assert fit.num_params == 0
    assert fit.sse == pytest.approx(((xs[i] - xs[j]) ** 2).sum(), rel=1e-8)


class AffineBlock(nn.Module):
    def __init__(self, d, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.m = nn.Parameter(torch.eye(d) * 0.7 + 0.1 * torch.randn(d, d, generator=g))
        self.c = nn.Parameter(torch.randn(d, generator=g))

    def forward(self, x):
        return x @ self.m + self.c


def test_exactly_affine_block_is_recovered(tmp_path, images):
    from rba.metrics import LSResidual
    from rba.session import Session

    session = Session(tiny_config(tmp_path, "vit", fit={"ridge": 1e-12}), progress=False)
    session.adapter.model.blocks[2] = AffineBlock(64)
    stats = session.stats
    fit = fit_span(stats, (2, 3), "affine", 1e-12)
    torch.testing.assert_close(fit.weight, session.adapter.model.blocks[2].m.detach().double(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fit.bias, session.adapter.model.blocks[2].c.detach().double(), rtol=1e-4, atol=1e-4)
    assert LSResidual(1e-12)(stats, (2, 3)) < 1e-9
    assert LSResidual(1e-12)(stats, (1, 3)) > 1e-4  # a real block is not affine
    assert session.evaluate([(2, 3)])["fidelity"] == pytest.approx(1.0, abs=1e-5)
    assert session.evaluate([(1, 3)])["fidelity"] < 1 - 1e-4


def test_rank_deficient_statistics_warn_and_stay_finite(tmp_path, images):
    adapter = create_adapter(tiny_config(tmp_path, "vit"))

    class Collapse(nn.Module):  # output lives in a 3-dim subspace: rank-deficient Gram
        def forward(self, x):
            return torch.cat([x[..., :3], torch.zeros_like(x[..., 3:])], dim=-1)

    adapter.model.blocks[1] = Collapse()
    stats = capture_statistics(adapter, images, pairs=adapter.valid_spans(), dtype="float64", progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = fit_span(stats, (2, 4), "affine", 1e-6)
    assert any(issubclass(w.category, RankDeficientWarning) and "span 2-4" in str(w.message) for w in caught)
    assert torch.isfinite(fit.weight).all() and torch.isfinite(fit.bias).all()
    with pytest.warns(RankDeficientWarning):  # ridge 0 cannot factor: raised until it can
        fit0 = fit_span(stats, (2, 3), "affine", 0.0)
    assert torch.isfinite(fit0.weight).all()


def test_cached_inverse_is_the_symmetric_row_major_inverse(captured):
    """The per-boundary inverse every span from that boundary multiplies by is kept as the row-major view of LAPACK's
    column-major result: that is only right because it is exactly symmetric; and it is the inverse of the ridged
    system (checked with numpy on the same matrix)."""
    from rba.fit import _inverse, _ridged

    adapter, _, s64, _ = captured
    i, j = _spans(adapter)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RankDeficientWarning)
        fit_span(s64, (i, j), "affine", 1e-6)
    inv, lam = _inverse(s64, i, 1e-6, (i, j), with_bias=True)
    assert inv.is_contiguous()
    assert torch.equal(inv, inv.mT)
    system = _ridged(s64.centred_gram[i], lam, s64.center[i]).numpy()
    np.testing.assert_allclose(inv.numpy() @ system, np.eye(len(system)), atol=1e-6)


def test_sse_is_computed_when_first_read_and_travels_resolved():
    """The closed-form fit leaves its SSE to the first read; the value equals numpy's on the materialised vectors,
    pickling and dataclasses.replace carry the number, and plug-ins may still pass a plain float."""
    import dataclasses
    import pickle

    from rba.fit import SpanFit
    from rba.statistics import StatisticsCollector

    rng = np.random.default_rng(4)
    x = rng.standard_normal((500, 6)) + 2.0
    y = x @ rng.standard_normal((6, 6)) + 0.1 * rng.standard_normal((500, 6)) + 1.0
    col = StatisticsCollector([6, 6], [(0, 1)], dtype=torch.float64)
    col.update([torch.from_numpy(x), torch.from_numpy(y)])
    fit = fit_span(col.result(), (0, 1), "affine", 0.0)
    assert callable(fit.__dict__["_sse"])  # not computed yet
    xt = np.hstack([x, np.ones((500, 1))])
    w, *_ = np.linalg.lstsq(xt, y, rcond=None)
    ref = float(((xt @ w - y) ** 2).sum())
    assert fit.sse == pytest.approx(ref, rel=1e-8)
    assert not callable(fit.__dict__["_sse"])
    fresh = fit_span(col.result(), (0, 1), "affine", 0.0)
    assert pickle.loads(pickle.dumps(fresh)).sse == pytest.approx(ref, rel=1e-8)
    assert dataclasses.replace(fresh, kind="affine").sse == pytest.approx(ref, rel=1e-8)
    assert SpanFit((0, 1), "affine", 6, 6, {}, 1.5).sse == 1.5
