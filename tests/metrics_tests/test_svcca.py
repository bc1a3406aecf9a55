"""SVCCA from statistics alone against a direct computation on materialised vectors: numpy SVD of the centred
data (keep the leading directions holding 99% of the variance), then CCA by QR of the two reductions."""

import numpy as np
import pytest
import torch
from conftest import materialise, tiny_config, tiny_samples

from rba.adapters import create_adapter
from rba.capture import capture_statistics
from rba.metrics import SVCCA, list_metrics, score_table
from rba.statistics import StatisticsCollector


def svcca_numpy(x, y, keep=0.99):
    def reduce(a):
        a = a - a.mean(0)
        u, s, _ = np.linalg.svd(a, full_matrices=False)
        var = s**2
        k = int(np.argmax(np.cumsum(var) / var.sum() >= keep)) + 1
        return u[:, :k] * s[:k]

    qx, _ = np.linalg.qr(reduce(x))
    qy, _ = np.linalg.qr(reduce(y))
    rho = np.linalg.svd(qx.T @ qy, compute_uv=False)
    return float(np.clip(rho, 0, 1).mean())


@pytest.mark.parametrize("model,dtype,rtol", [("vit", "float32", 1e-4), ("bert", "float64", 1e-7)])
def test_svcca_matches_numpy(tmp_path, model, dtype, rtol):
    """A ViT with float32 batch products, and a post-LN model (rank-deficient boundaries, which the 99%
    reduction drops). SVCCA reads only statistics, whose capture per layout test_scores covers."""
    adapter = create_adapter(tiny_config(tmp_path, model))
    samples = tiny_samples(model)
    spans = adapter.valid_spans()
    stats = capture_statistics(adapter, samples, pairs=spans, dtype=dtype, progress=False)
    xs = materialise(adapter, samples)
    metric = SVCCA()
    for i, j in {spans[0], spans[len(spans) // 2], spans[-1]}:
        want = svcca_numpy(xs[i], xs[j])
        assert metric(stats, (i, j)) == pytest.approx(want, rel=rtol), (i, j)
        assert 0 < want <= 1


def test_svcca_is_one_for_a_rotation_and_low_for_noise():
    """A rotated, uniformly rescaled and shifted copy keeps the same variance-keeping subspace (SVCCA 1);
    independent noise shares none."""
    g = torch.Generator().manual_seed(0)
    scales = torch.linspace(3, 0.05, 12, dtype=torch.float64)
    x = torch.randn(2000, 12, generator=g, dtype=torch.float64) * scales
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=g, dtype=torch.float64))
    rotated = 2.5 * x @ q + 4.0
    noise = torch.randn(2000, 12, generator=g, dtype=torch.float64)
    collector = StatisticsCollector([12, 12, 12], [(0, 1), (0, 2)], dtype=torch.float64)
    collector.update([x, rotated, noise])
    stats = collector.result()
    assert SVCCA()(stats, (0, 1)) == pytest.approx(1.0, abs=1e-9)
    assert SVCCA()(stats, (0, 2)) < 0.1
    assert SVCCA()(stats, (0, 2)) == pytest.approx(svcca_numpy(x.numpy(), noise.numpy()), rel=1e-9)
    # a registered metric: a scores.csv column (and a heatmap panel) with no other change
    assert "svcca" in list_metrics()
    table = score_table(stats)
    assert table["svcca"].tolist() == [SVCCA()(stats, (0, 1)), SVCCA()(stats, (0, 2))]
