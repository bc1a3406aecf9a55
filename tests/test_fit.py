"""Fits from statistics against numpy lstsq on the materialised, ridge-augmented system."""

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from conftest import materialise, ridge_lstsq, tiny_vit_config
from rba.adapters import create_adapter
from rba.capture import capture_statistics
from rba.fit import RankDeficientWarning, fit_span


@pytest.fixture(scope="module")
def vit_stats(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fit")
    adapter = create_adapter(tiny_vit_config(tmp))
    imgs = np.random.default_rng(1).integers(0, 256, size=(16, 3, 32, 32), dtype=np.uint8)
    s64 = capture_statistics(adapter, imgs, pairs=adapter.valid_spans(), batch_size=5, dtype="float64", progress=False)
    s32 = capture_statistics(adapter, imgs, pairs=adapter.valid_spans(), batch_size=5, dtype="float32", progress=False)
    return adapter, materialise(adapter, imgs, batch_size=5), s64, s32


@pytest.mark.parametrize("span", [(0, 1), (1, 4), (0, 6), (3, 5)])
@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-8), ("float32", 1e-4)])
def test_affine_fit_matches_lstsq(vit_stats, span, dtype, rtol):
    adapter, xs, s64, s32 = vit_stats
    stats = s64 if dtype == "float64" else s32
    i, j = span
    w, xt = ridge_lstsq(xs[i], xs[j], 1e-6)
    fit = fit_span(stats, span, "affine", 1e-6)
    pred = fit.predict(torch.from_numpy(xs[i])).numpy()
    ref = xt @ w
    np.testing.assert_allclose(pred, ref, rtol=rtol, atol=rtol * np.abs(ref).max())
    sse_ref = ((ref - xs[j]) ** 2).sum()
    assert fit.sse == pytest.approx(sse_ref, rel=rtol * 10)


def test_linear_fit_matches_lstsq_without_bias(vit_stats):
    _, xs, s64, _ = vit_stats
    w, xt = ridge_lstsq(xs[2], xs[4], 1e-3, bias=False)
    fit = fit_span(s64, (2, 4), "linear", 1e-3)
    assert fit.bias is None
    np.testing.assert_allclose(fit.weight.numpy(), w, rtol=1e-7, atol=1e-9)
    assert fit.sse == pytest.approx(((xt @ w - xs[4]) ** 2).sum(), rel=1e-7)


def test_identity_fit_sse_is_squared_distance(vit_stats):
    _, xs, s64, _ = vit_stats
    fit = fit_span(s64, (1, 3), "identity")
    assert fit.num_params == 0
    assert fit.sse == pytest.approx(((xs[1] - xs[3]) ** 2).sum(), rel=1e-8)


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

    adapter = create_adapter(tiny_vit_config(tmp_path))
    adapter.model.blocks[2] = AffineBlock(64)
    stats = capture_statistics(adapter, images, pairs=adapter.valid_spans(), dtype="float64", progress=False)
    fit = fit_span(stats, (2, 3), "affine", 1e-12)
    torch.testing.assert_close(fit.weight, adapter.model.blocks[2].m.detach().double(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fit.bias, adapter.model.blocks[2].c.detach().double(), rtol=1e-5, atol=1e-5)
    assert LSResidual(1e-12)(stats, (2, 3)) < 1e-9
    assert LSResidual(1e-12)(stats, (1, 3)) > 1e-4  # a real block is not affine


def test_rank_deficient_statistics_warn_and_stay_finite(tmp_path, images):
    adapter = create_adapter(tiny_vit_config(tmp_path))

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
