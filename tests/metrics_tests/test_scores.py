"""br, cosine, cka and ls_residual from statistics against direct numpy computations."""

import numpy as np
import pytest
from conftest import TINY_MODELS, materialise, ridge_lstsq, tiny_config, tiny_samples

from rba.adapters import create_adapter
from rba.capture import capture_statistics
from rba.metrics import BlockRedundancy, Cosine, LinearCKA, LSResidual, score_table


def _cka(x, y):
    x = x - x.mean(0)
    y = y - y.mean(0)
    return np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


@pytest.mark.parametrize("model", list(TINY_MODELS))
@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-8), ("float32", 1e-4)])
def test_scores_match_numpy(tmp_path, model, dtype, rtol):
    adapter = create_adapter(tiny_config(tmp_path, model))
    samples = tiny_samples(model)
    stats = capture_statistics(adapter, samples, pairs=adapter.valid_spans(), dtype=dtype, progress=False)
    xs = materialise(adapter, samples)
    table = score_table(stats).set_index(["start", "end"])
    assert len(table) == len(adapter.valid_spans())
    spans = adapter.valid_spans()
    for i, j in {spans[0], spans[len(spans) // 2], spans[-1]}:
        x, y = xs[i], xs[j]
        row = table.loc[(i, j)]
        # br is a difference of sums of size Σ‖x‖²: its error is relative to that energy
        energy = ((x**2).sum() + (y**2).sum()) / x.size
        assert row.br == pytest.approx(-((x - y) ** 2).mean(), rel=rtol, abs=rtol * energy)
        cos = ((x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))).mean()
        assert row.cosine == pytest.approx(cos, rel=rtol)
        assert row.cka == pytest.approx(_cka(x, y), rel=rtol * 10)
        w, xt = ridge_lstsq(x, y, 1e-6)
        var = ((y - y.mean(0)) ** 2).sum()
        resid = ((xt @ w - y) ** 2).sum() / var
        # the SSE comes from a cancellation of terms of size Σ‖y‖²: its error is relative to that energy
        assert row.ls_residual == pytest.approx(resid, rel=rtol * 100, abs=rtol * (y**2).sum() / var)


def test_ls_residual_sees_rescaling_that_br_penalises(tmp_path, images):
    """A block that only rescales is perfectly linear (ls_residual ≈ 0) though its MSE is large."""
    from torch import nn

    class Rescale(nn.Module):
        def forward(self, x):
            return 5.0 * x

    adapter = create_adapter(tiny_config(tmp_path, "vit"))
    adapter.model.blocks[3] = Rescale()
    stats = capture_statistics(adapter, images, pairs=adapter.valid_spans(), dtype="float64", progress=False)
    br = {s: BlockRedundancy()(stats, s) for s in [(2, 3), (3, 4)]}
    ls = {s: LSResidual(1e-12)(stats, s) for s in [(2, 3), (3, 4)]}
    assert br[(3, 4)] < br[(2, 3)]  # by MSE, the rescaling block looks least redundant
    assert ls[(3, 4)] < 1e-9 < ls[(2, 3)]  # by least squares it is exactly replaceable
    assert Cosine()(stats, (3, 4)) == pytest.approx(1.0, abs=1e-9)
    assert LinearCKA()(stats, (3, 4)) == pytest.approx(1.0, abs=1e-9)
