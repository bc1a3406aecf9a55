"""``Adapter.boundaries``, the one forward loop through the blocks, against the hand-written staged forward
(conftest) and a plain ``run_block`` chain, for a tiny model of each family."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_MODELS, staged_forward, tiny_config, tiny_samples

from rba.adapters import create_adapter


@pytest.fixture(scope="module", params=sorted(TINY_MODELS))
def tiny(request, tmp_path_factory):
    adapter = create_adapter(tiny_config(tmp_path_factory.mktemp(request.param), request.param))
    x = adapter.collate(tiny_samples(request.param, n=6))
    return adapter, x


def _chain(adapter, x):
    """Every boundary by calling run_block in turn (no replacement)."""
    h, ctx = adapter.embed(x)
    out = [h]
    for k in range(adapter.num_blocks):
        h = adapter.run_block(k, h, ctx)
        out.append(h)
    return out


def _two_spans(adapter):
    """Two non-overlapping valid spans, the first one longer than one block when the model allows it."""
    spans = adapter.valid_spans()
    pairs = [(a, b) for a in spans for b in spans if b[0] >= a[1]]
    return max(pairs, key=lambda p: (p[0][1] - p[0][0], -p[0][0]))


@torch.inference_mode()
def test_every_boundary_in_order(tiny):
    adapter, x = tiny
    walked = list(adapter.boundaries(*adapter.embed(x)))
    assert [k for k, _ in walked] == list(range(adapter.num_blocks + 1))
    for (_, got), want in zip(walked, _chain(adapter, x)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@torch.inference_mode()
def test_replaced_spans_match_staged_forward(tiny):
    adapter, x = tiny
    (i1, j1), (i2, j2) = _two_spans(adapter)
    replace = {(i1, j1): lambda h: 0.5 * h + 0.25, (i2, j2): lambda h: torch.tanh(h)}
    h, ctx = adapter.embed(x)
    walked = list(adapter.boundaries(h, ctx, replace=replace))
    skipped = set(range(i1 + 1, j1)) | set(range(i2 + 1, j2))
    assert [k for k, _ in walked] == [k for k in range(adapter.num_blocks + 1) if k not in skipped]
    torch.testing.assert_close(adapter.pool(walked[-1][1], ctx), staged_forward(adapter, x, replace), rtol=0, atol=0)
    torch.testing.assert_close(adapter.pool(adapter.last_boundary(h, ctx, replace=replace), ctx),
                               staged_forward(adapter, x, replace), rtol=0, atol=0)


@torch.inference_mode()
def test_start_and_stop(tiny):
    adapter, x = tiny
    states = _chain(adapter, x)
    _, ctx = adapter.embed(x)
    L = adapter.num_blocks
    start, stop = 1, L - 1
    walked = list(adapter.boundaries(states[start], ctx, start=start, stop=stop))
    assert [k for k, _ in walked] == list(range(start, stop + 1))
    torch.testing.assert_close(walked[-1][1], states[stop], rtol=0, atol=0)
    # from a cached boundary through a span to the end: what prefix reuse does
    (i, j), _ = _two_spans(adapter)
    span = {(i, j): lambda h: h * 2.0}
    got = adapter.last_boundary(states[i], ctx, start=i, replace=span)
    torch.testing.assert_close(adapter.pool(got, ctx), staged_forward(adapter, x, span), rtol=0, atol=0)


@torch.inference_mode()
def test_staged_forward_equals_the_models_own_forward(tiny):
    """``embed`` → every block → ``pool`` equals the model's own forward (``adapter.forward`` calls the
    library's forward, e.g. timm's ``forward_features`` / transformers' ``BertModel``), padding included."""
    adapter, x = tiny
    torch.testing.assert_close(staged_forward(adapter, x), adapter.forward(x), rtol=1e-5, atol=1e-6)
