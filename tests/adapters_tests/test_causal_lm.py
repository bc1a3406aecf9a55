"""Decoder LM adapter (rba.adapters._causal_lm) on tiny random configs of each family.

Every check compares against an independent computation: the model's own ``model(input_ids, attention_mask)``
logits (padded batch, and each text alone), the model's own forward with spans swapped in by
:func:`rba.apply.replace_`, a hand-written staged loop, or numpy sums over materialised vectors.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY_LMS, materialise, staged_forward, tiny_config

from rba.adapters import create_adapter
from rba.apply import Skip, SpanMap, replace_
from rba.config import Config
from rba.errors import ModelError

TEXTS = ["a cat", "the dog ran far away from every loud noise while the cat sat on a mat", "dogs ran"]
ATOL = 1e-5


def _cfg(**model) -> Config:
    return Config.from_dict({"model": {"kind": "causal-lm", "pretrained": False} | model})


@pytest.fixture(scope="module", params=sorted(TINY_LMS))
def lm(request):
    return create_adapter(_cfg(name=f"tiny-{request.param}"))


def _own_logits(adapter, inputs) -> torch.Tensor:
    """The model's own next-token logits on the real tokens of a padded batch."""
    mask = inputs["attention_mask"]
    return adapter.model(input_ids=inputs["input_ids"], attention_mask=mask).logits[mask.bool()]


def _staged_logits(adapter, inputs, replace=None) -> torch.Tensor:
    h, ctx = adapter.embed(inputs)
    return adapter.logits(adapter.pool(adapter.last_boundary(h, ctx, replace=replace), ctx))


@torch.no_grad()
def test_staged_forward_equals_the_models_own_logits(lm):
    x = lm.collate(TEXTS)
    mask = x["attention_mask"]
    assert (mask == 0).any() and bool(mask[:, 0].all())  # padding present, on the right
    logits = _staged_logits(lm, x)
    assert logits.shape == (int(mask.sum()), lm.model.config.vocab_size)
    torch.testing.assert_close(logits, _own_logits(lm, x), rtol=0, atol=ATOL)
    # each text alone (no padding at all): padding changes no real token's logits
    alone = torch.cat([_own_logits(lm, lm.collate([t])) for t in TEXTS])
    torch.testing.assert_close(logits, alone, rtol=0, atol=ATOL)
    # the adapter's own end-to-end forward returns the pooled rows
    h, ctx = lm.embed(x)
    torch.testing.assert_close(lm.forward(x), lm.pool(lm.last_boundary(h, ctx), ctx), rtol=0, atol=ATOL)


@torch.no_grad()
def test_vectors_are_the_real_tokens(lm):
    x = lm.collate(TEXTS)
    h, ctx = lm.embed(x)
    lengths = [len(lm.collate([t])["input_ids"][0]) for t in TEXTS]
    by_loop = torch.cat([h[i, :n] for i, n in enumerate(lengths)])  # each sample's first n positions
    torch.testing.assert_close(lm.vectors(h, ctx), by_loop, rtol=0, atol=0)
    assert lm.dims() == [h.shape[-1]] * (lm.num_blocks + 1)
    assert len(lm.valid_spans()) == lm.num_blocks * (lm.num_blocks + 1) // 2


@pytest.mark.parametrize("family", ["gemma3", "llama"])
@torch.no_grad()
def test_masks_follow_the_attention_implementation(family):
    """Eager attention takes its mask as a tensor where sdpa may take none: the staged forward builds the one
    the model's configuration asks for, and still equals the model's own logits."""
    adapter = create_adapter(_cfg(name=f"tiny-{family}"))
    adapter.model.set_attn_implementation("eager")
    x = adapter.collate(TEXTS)
    torch.testing.assert_close(_staged_logits(adapter, x), _own_logits(adapter, x), rtol=0, atol=ATOL)


@torch.no_grad()
def test_gemma3_sliding_layers_get_their_own_mask_and_rotary():
    """The tiny Gemma 3's 4-token window is shorter than the texts, so a sliding layer run with the full mask
    (or the global rotary frequencies) would change the logits: the test above can fail."""
    adapter = create_adapter(_cfg(name="tiny-gemma3"))
    x = adapter.collate(TEXTS)
    h, ctx = adapter.embed(x)
    assert adapter.layer_types.count("sliding_attention") == 2
    assert not torch.equal(ctx.extra["mask:sliding_attention"], ctx.extra["mask:full_attention"])
    assert not torch.equal(ctx.extra["rope:sliding_attention:cos"], ctx.extra["rope:full_attention:cos"])
    wrong = dict(ctx.extra, **{"mask:sliding_attention": ctx.extra["mask:full_attention"]})
    ctx_wrong = type(ctx)(mask=ctx.mask, extra=wrong)
    bad = adapter.logits(adapter.pool(adapter.last_boundary(h, ctx_wrong), ctx_wrong))
    assert (bad - _own_logits(adapter, x)).abs().max() > 1e-3


@torch.no_grad()
def test_gemma_final_logit_softcapping():
    """Gemma's soft-capping (tanh(logits / cap) · cap, off in Gemma 3's default config) is part of the head."""
    adapter = create_adapter(_cfg(name="tiny-gemma3", options={"final_logit_softcapping": 0.05}))
    x = adapter.collate(TEXTS)
    logits = _staged_logits(adapter, x)
    assert float(logits.abs().max()) <= 0.05 + 1e-6
    torch.testing.assert_close(logits, _own_logits(adapter, x), rtol=0, atol=ATOL)


@torch.no_grad()
def test_gemma3_embedding_scale_is_applied():
    adapter = create_adapter(_cfg(name="tiny-gemma3"))
    x = adapter.collate(TEXTS[:1])
    h, _ = adapter.embed(x)
    raw = adapter.model.get_input_embeddings().weight[x["input_ids"][0]]
    torch.testing.assert_close(h[0], raw * adapter.model.config.hidden_size ** 0.5)


@torch.no_grad()
def test_gpt2_boundary_zero_adds_position_embeddings():
    adapter = create_adapter(_cfg(name="tiny-gpt2"))
    x = adapter.collate(TEXTS[:1])
    h, _ = adapter.embed(x)
    t = x["input_ids"].shape[1]
    gpt2 = adapter.model.transformer
    torch.testing.assert_close(h[0], gpt2.wte.weight[x["input_ids"][0]] + gpt2.wpe.weight[:t])


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2"])
@torch.no_grad()
def test_replaced_spans_match_the_models_own_forward_and_a_hand_written_loop(family):
    """Spans (0, 2) and (2, 3) replaced by random affine maps: the staged forward with ``replace`` equals the
    hand-written staged loop (maps applied in float64 through ``apply_map``) and the model's own forward with
    the maps swapped into its layers (``replace_``), on the real tokens."""
    adapter = create_adapter(_cfg(name=f"tiny-{family}"))
    d = adapter.dims()[0]
    gen = torch.Generator().manual_seed(0)
    wb = {s: (torch.eye(d) + 0.1 * torch.randn(d, d, generator=gen), 0.1 * torch.randn(d, generator=gen))
          for s in [(0, 2), (2, 3)]}
    modules = {s: SpanMap.from_solution(w, b, layout="tokens", span=s) for s, (w, b) in wb.items()}
    x = adapter.collate(TEXTS)
    staged = _staged_logits(adapter, x, replace=modules)
    by_hand = adapter.logits(staged_forward(adapter, x, maps=wb))
    torch.testing.assert_close(staged, by_hand, rtol=0, atol=1e-4)
    assert (staged - _staged_logits(adapter, x)).abs().max() > 1e-3  # the maps change the output
    with replace_(adapter, list(modules), list(modules.values())):
        assert isinstance(adapter.blocks[1].module, Skip)
        own = _own_logits(adapter, x)
    torch.testing.assert_close(staged, own, rtol=0, atol=ATOL)
    torch.testing.assert_close(_own_logits(adapter, x), _staged_logits(adapter, x), rtol=0, atol=ATOL)  # restored


@pytest.mark.parametrize("skip", [False, True])
def test_statistics_capture_through_a_session(tmp_path, skip):
    """Session(...).stats on a tiny Llama with synthetic texts: Gram and cross totals equal numpy sums over
    the real tokens materialised by running the layers directly; with ``capture.skip_first_token``, without each
    text's first token (column 0: texts are padded on the right)."""
    from rba.session import Session

    capture = {"dtype": "float64"} | ({"skip_first_token": True} if skip else {})
    cfg = tiny_config(tmp_path, "llama", capture=capture)
    session = Session(cfg, progress=False)
    stats = session.stats
    samples = sorted(session.splits.calibration.samples, key=len)
    xs = materialise(session.adapter, samples, batch_size=cfg.capture.batch_size)
    lengths = [len(session.adapter.collate([s])["input_ids"][0]) for s in samples]
    if skip:  # the rows of every text's first token (materialise keeps the real tokens, text by text)
        first = np.cumsum([0] + lengths[:-1])
        xs = [np.delete(x, first, axis=0) for x in xs]
    assert stats.n == len(xs[0]) == sum(lengths) - (len(samples) if skip else 0)
    for k in range(session.adapter.num_blocks + 1):
        xt = np.hstack([xs[k], np.ones((len(xs[k]), 1))])
        ref = xt.T @ xt
        np.testing.assert_allclose(stats.gram[k].numpy(), ref, rtol=1e-6, atol=1e-6 * np.abs(ref).max())
    for i, j in [(0, 1), (1, 3), (0, 4)]:
        ref = np.hstack([xs[i], np.ones((len(xs[i]), 1))]).T @ xs[j]
        np.testing.assert_allclose(stats.cross[(i, j)].numpy(), ref, rtol=1e-6, atol=1e-6 * np.abs(ref).max())


@torch.no_grad()
def test_a_local_folder_loads_as_saved(tmp_path):
    """``name`` = a transformers folder (what save_pretrained writes): the same logits as the model saved."""
    tiny = create_adapter(_cfg(name="tiny-qwen3", options={"seed": 3}))
    tiny.model.save_pretrained(tmp_path / "m")
    tiny.tokenizer.save_pretrained(tmp_path / "m")
    loaded = create_adapter(_cfg(name=str(tmp_path / "m"), pretrained=True))
    assert loaded.identity["weights"] not in ("random", None)
    x = tiny.collate(TEXTS)
    torch.testing.assert_close(_staged_logits(loaded, x), _own_logits(tiny, x), rtol=0, atol=ATOL)
    # pretrained = false: the folder's architecture with seeded random weights
    random = create_adapter(_cfg(name=str(tmp_path / "m"), options={"seed": 5}))
    assert random.identity["weights"] == "random" and random.num_blocks == tiny.num_blocks
    assert random.dtype == torch.float32
    assert not torch.equal(random.blocks[0].mlp.up_proj.weight, tiny.blocks[0].mlp.up_proj.weight)


def test_seeded_and_options():
    a = create_adapter(_cfg(name="tiny-llama"))
    b = create_adapter(_cfg(name="tiny-llama", options={"seed": 1, "num_hidden_layers": 2}))
    assert a.num_blocks == 4 and b.num_blocks == 2
    assert a.identity["weights"] == "random" and b.identity["seed"] == 1
    again = create_adapter(_cfg(name="tiny-llama"))
    assert torch.equal(a.blocks[0].mlp.down_proj.weight, again.blocks[0].mlp.down_proj.weight)


@pytest.mark.parametrize("model,match", [
    ({"name": "tiny-lama"}, "Did you mean 'tiny-llama'"),
    ({"name": "tiny-llama", "options": {"hidden": 8}}, "unknown tiny-llama options"),
    ({"name": "tiny-llama", "pretrained": True}, "no pretrained weights"),
])
def test_bad_models_are_one_clear_error(model, match):
    with pytest.raises(ModelError, match=match):
        create_adapter(_cfg(**model))

