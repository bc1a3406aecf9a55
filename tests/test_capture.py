"""Streamed statistics against direct numpy sums over materialised vectors."""

import numpy as np
import pytest
import torch

from conftest import materialise, tiny_vit_config
from rba.adapters import create_adapter
from rba.capture import Statistics, capture_statistics, statistics_nbytes


@pytest.fixture
def vit(tmp_path):
    return create_adapter(tiny_vit_config(tmp_path))


def _direct(xs, i, j):
    xi, xj = xs[i], xs[j]
    xt = np.hstack([xi, np.ones((len(xi), 1))])
    return xt.T @ xt, xt.T @ xj


@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-10), ("float32", 1e-5)])
def test_statistics_match_numpy_sums(vit, images, dtype, rtol):
    pairs = vit.valid_spans()
    stats = capture_statistics(vit, images, pairs=pairs, batch_size=5, dtype=dtype, progress=False)
    xs = materialise(vit, images, batch_size=5)
    assert stats.n == xs[0].shape[0] == len(images) * xs[0].shape[0] // len(images)
    for k in range(vit.num_blocks + 1):
        xt = np.hstack([xs[k], np.ones((len(xs[k]), 1))])
        np.testing.assert_allclose(stats.gram[k].numpy(), xt.T @ xt, rtol=rtol, atol=rtol * np.abs(xt.T @ xt).max())
    for i, j in [(0, 1), (1, 4), (2, 6)]:
        _, b = _direct(xs, i, j)
        np.testing.assert_allclose(stats.cross[(i, j)].numpy(), b, rtol=rtol, atol=rtol * np.abs(b).max())
        cos = (xs[i] * xs[j]).sum(1) / (np.linalg.norm(xs[i], axis=1) * np.linalg.norm(xs[j], axis=1))
        assert stats.cos_sum[(i, j)] == pytest.approx(cos.sum(), rel=rtol)


def test_any_batch_size_gives_the_same_statistics(vit, images):
    pairs = vit.valid_spans(2)
    a = capture_statistics(vit, images, pairs=pairs, batch_size=1, dtype="float64", progress=False)
    b = capture_statistics(vit, images, pairs=pairs, batch_size=24, dtype="float64", progress=False)
    c = capture_statistics(vit, images, pairs=pairs, batch_size=7, dtype="float32", progress=False)
    # the model itself runs in float32 and its kernels round differently per batch size (~1e-7 relative),
    # so agreement is measured relative to each matrix's scale
    for k in range(len(a.gram)):
        scale = float(a.gram[k].abs().max())
        torch.testing.assert_close(a.gram[k], b.gram[k], rtol=1e-6, atol=1e-6 * scale)
        torch.testing.assert_close(a.gram[k], c.gram[k], rtol=1e-5, atol=1e-5 * scale)
    for p in pairs:
        scale = float(a.cross[p].abs().max())
        torch.testing.assert_close(a.cross[p], b.cross[p], rtol=1e-6, atol=1e-6 * scale)
        assert a.cos_sum[p] == pytest.approx(b.cos_sum[p], rel=1e-6)


def test_max_span_bounds_the_pairs_and_memory(vit, images):
    short = vit.valid_spans(2)
    assert all(j - i <= 2 for i, j in short) and len(short) == 6 + 5
    assert statistics_nbytes(vit.dims(), short) < statistics_nbytes(vit.dims(), vit.valid_spans())
    stats = capture_statistics(vit, images[:4], pairs=short, progress=False)
    assert set(stats.cross) == set(short)


def test_save_load_roundtrip_and_checksum(vit, images, tmp_path):
    stats = capture_statistics(vit, images[:6], pairs=vit.valid_spans(2), progress=False, key="k1")
    path = tmp_path / "s.safetensors"
    stats.save(path)
    back = Statistics.load(path)
    assert back.n == stats.n and back.pairs == stats.pairs and back.key == "k1"
    for p in stats.pairs:
        torch.testing.assert_close(back.cross[p], stats.cross[p], rtol=0, atol=0)
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0xFF
    path.write_bytes(bytes(raw))
    from rba.errors import CacheError

    with pytest.raises(CacheError, match="checksum"):
        Statistics.load(path)
