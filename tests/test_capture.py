"""Streamed statistics against direct numpy sums over materialised vectors, for each model family."""

import numpy as np
import pytest
import torch
from conftest import TINY_MODELS, materialise, tiny_config, tiny_samples

from rba.adapters import create_adapter
from rba.capture import capture_statistics, check_finite
from rba.errors import CacheError, DataError
from rba.statistics import Statistics, StatisticsCollector, statistics_nbytes


@pytest.fixture(params=list(TINY_MODELS))
def family(request, tmp_path):
    adapter = create_adapter(tiny_config(tmp_path, request.param))
    return request.param, adapter, tiny_samples(request.param)


def _some_spans(adapter):
    spans = adapter.valid_spans()
    longest = max(spans, key=lambda s: s[1] - s[0])
    return sorted({spans[0], spans[-1], longest})


@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-10), ("float32", 1e-5)])
def test_statistics_match_numpy_sums(family, dtype, rtol):
    _, adapter, samples = family
    pairs = adapter.valid_spans()
    stats = capture_statistics(adapter, samples, pairs=pairs, batch_size=5, dtype=dtype, progress=False)
    xs = materialise(adapter, samples, batch_size=5)
    assert stats.n == len(xs[0])
    for k in range(adapter.num_blocks + 1):
        xt = np.hstack([xs[k], np.ones((len(xs[k]), 1))])
        ref = xt.T @ xt
        assert stats.count(k) == len(xs[k])
        np.testing.assert_allclose(stats.gram[k].numpy(), ref, rtol=rtol, atol=rtol * np.abs(ref).max())
    for i, j in _some_spans(adapter):
        xt = np.hstack([xs[i], np.ones((len(xs[i]), 1))])
        ref = xt.T @ xs[j]
        np.testing.assert_allclose(stats.cross[(i, j)].numpy(), ref, rtol=rtol, atol=rtol * np.abs(ref).max())
        cos = (xs[i] * xs[j]).sum(1) / (np.linalg.norm(xs[i], axis=1) * np.linalg.norm(xs[j], axis=1))
        assert stats.cos_sum[(i, j)] == pytest.approx(cos.sum(), rel=rtol)


@pytest.mark.parametrize("min_rows", [1, 16, 10**6])
@pytest.mark.parametrize("dtype,blocks,rtol", [(torch.float64, 1, 1e-11), (torch.float64, 2, 1e-11),
                                               (torch.float64, 3, 1e-11), (torch.float64, 9, 1e-11),
                                               (torch.float32, 2, 1e-5)])
def test_collector_totals_match_numpy_products(dtype, blocks, rtol, min_rows):
    """The collector on its own, against numpy products of the materialised float64 vectors: Gram matrices
    multiplied as upper row blocks (1 to more blocks than rows) and mirrored, boundaries of different vector
    counts (a CNN stage change), a start boundary with several targets, batches of different sizes; batches
    multiplied as they come (min_rows 1), held and multiplied together (16: the first two batches, 12 + 4 rows at
    boundary 0, then the third alone) or all held until the result (10⁶)."""
    rng = np.random.default_rng(0)
    dims, counts = [5, 5, 7, 7, 7], [4, 4, 2, 2, 2]  # vectors per sample at each boundary
    pairs = [(0, 1), (2, 3), (2, 4), (3, 4)]
    batches = [[rng.normal(3.0, 2.0, size=(c * m, d)) for c, d in zip(counts, dims)] for m in (3, 1, 5)]
    collector = StatisticsCollector(dims, pairs, dtype=dtype, gram_blocks=blocks, min_rows=min_rows)
    for batch in batches:
        collector.update([torch.from_numpy(x) for x in batch])
    stats = collector.result()
    xs = [np.concatenate([b[k] for b in batches]) for k in range(len(dims))]
    xts = [np.hstack([x, np.ones((len(x), 1))]) for x in xs]
    assert stats.n == len(xs[0])
    for k, xt in enumerate(xts):
        ref = xt.T @ xt
        assert torch.equal(stats.centred_gram[k], stats.centred_gram[k].T)  # mirrored, so exactly symmetric
        np.testing.assert_allclose(stats.gram[k].numpy(), ref, rtol=rtol, atol=rtol * np.abs(ref).max())
        assert stats.sum_sq(k) == pytest.approx((xs[k] ** 2).sum(), rel=rtol)
    for i, j in pairs:
        ref = xts[i].T @ xs[j]
        np.testing.assert_allclose(stats.cross[(i, j)].numpy(), ref, rtol=rtol, atol=rtol * np.abs(ref).max())
        cos = (xs[i] * xs[j]).sum(1) / (np.linalg.norm(xs[i], axis=1) * np.linalg.norm(xs[j], axis=1))
        assert stats.cos_sum[(i, j)] == pytest.approx(cos.sum(), rel=rtol)


def test_any_batch_size_gives_the_same_statistics(family):
    _, adapter, samples = family
    pairs = adapter.valid_spans(2)
    a = capture_statistics(adapter, samples, pairs=pairs, batch_size=1, dtype="float64", progress=False)
    b = capture_statistics(adapter, samples, pairs=pairs, batch_size=24, dtype="float64", progress=False)
    c = capture_statistics(adapter, samples, pairs=pairs, batch_size=7, dtype="float32", progress=False)
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


def test_padding_is_excluded(tmp_path):
    """Batching a short text with a long one (padding) leaves the statistics of the short text unchanged."""
    adapter = create_adapter(tiny_config(tmp_path, "bert"))
    short, long = "a cat sat", " ".join(["the dog ran far away"] * 12)
    pairs = adapter.valid_spans()
    alone = capture_statistics(adapter, [short], pairs=pairs, dtype="float64", progress=False)
    both = capture_statistics(adapter, [short, long], pairs=pairs, dtype="float64", progress=False)
    only_long = capture_statistics(adapter, [long], pairs=pairs, dtype="float64", progress=False)
    assert both.n == alone.n + only_long.n
    assert alone.n == len(adapter.collate([short])["input_ids"][0])
    for k in range(len(alone.gram)):
        torch.testing.assert_close(both.gram[k], alone.gram[k] + only_long.gram[k], rtol=1e-5, atol=1e-4)
    for p in pairs:
        torch.testing.assert_close(both.cross[p], alone.cross[p] + only_long.cross[p], rtol=1e-5, atol=1e-4)


def test_max_span_bounds_the_pairs_and_memory(tmp_path):
    vit = create_adapter(tiny_config(tmp_path, "vit"))
    short = vit.valid_spans(2)
    assert all(j - i <= 2 for i, j in short) and len(short) == 6 + 5
    assert statistics_nbytes(vit.dims(), short) < statistics_nbytes(vit.dims(), vit.valid_spans())
    stats = capture_statistics(vit, tiny_samples("vit", 4), pairs=short, progress=False)
    assert set(stats.cross) == set(short)


def test_save_load_roundtrip_and_checksum(tmp_path):
    vit = create_adapter(tiny_config(tmp_path, "vit"))
    stats = capture_statistics(vit, tiny_samples("vit", 6), pairs=vit.valid_spans(2), progress=False, key="k1")
    path = tmp_path / "s.safetensors"
    stats.save(path)
    back = Statistics.load(path)
    assert back.n == stats.n and back.pairs == stats.pairs and back.key == "k1"
    for p in stats.pairs:
        torch.testing.assert_close(back.cross[p], stats.cross[p], rtol=0, atol=0)
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CacheError, match="checksum"):
        Statistics.load(path)


@pytest.mark.parametrize("values,bad", [
    ([1.0, float("nan"), 2.0], 1),
    ([float("inf"), float("-inf"), 0.0], 2),  # their sum is NaN
    ([3e38, 3e38, float("inf")], 1),          # overflowing sum and a real Inf
])
def test_check_finite_names_the_bad_values(values, bad):
    with pytest.raises(DataError, match=rf"^{bad} NaN/Inf values at boundary 4 on the eval split"):
        check_finite(torch.tensor([values, [0.0, 0.0, 0.0]]), 4, "eval split")


def test_check_finite_accepts_finite_values_whose_sum_overflows():
    check_finite(torch.full((4, 3), 3e38), 0, "calibration split")  # sum = inf in float32, every value finite
    check_finite(torch.zeros(0, 3), 0, "calibration split")
