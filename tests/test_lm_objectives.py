"""The next-token objectives of decoder LMs (perplexity, kl, top1) against the model's own forward, by hand."""

import copy

import numpy as np
import pytest
import torch
from conftest import tiny_config
from torch import nn

from rba._next_token import NextTokenReference
from rba.errors import ConfigError
from rba.evaluate import _logits_of
from rba.session import Session

#: a tiny Llama whose next-token distributions are peaked as a trained LM's are (random weights of the default
#: scale give nearly uniform ones, on which any stored form of the reference is trivially close)
PEAKED = {"initializer_range": 0.2}


def _session(tmp_path, family="llama", options=None):
    cfg = tiny_config(tmp_path, family, data={"test": 12}, model={"options": options or {}})
    return Session(cfg, progress=False, measure_latency=False)


def _token_log_probs(model, tokenizer, texts):
    """float64 next-token log-probabilities of ``model``'s own forward on one right-padded batch, the next tokens
    and the mask of the positions that predict a real token."""
    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=128, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    logp = torch.log_softmax(logits.double(), dim=-1)[:, :-1]
    return logp, ids[:, 1:], mask[:, 1:].bool(), (ids, mask)


def _without_layers(model, drop):
    """A copy of the model with decoder layers ``drop`` deleted from its ModuleList."""
    pruned = copy.deepcopy(model)
    layers = pruned.model.layers
    pruned.model.layers = nn.ModuleList([layer for k, layer in enumerate(layers) if k not in drop])
    pruned.config.num_hidden_layers = len(pruned.model.layers)
    if getattr(pruned.config, "layer_types", None):
        pruned.config.layer_types = [t for k, t in enumerate(pruned.config.layer_types) if k not in drop]
    return pruned


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_nothing_replaced_is_the_models_own_perplexity(tmp_path, family):
    session = _session(tmp_path, family)
    model, tokenizer = session.adapter.model, session.adapter.tokenizer
    texts = session.splits.eval.samples
    got = session.evaluate("none", kind="identity")
    logp, nxt, valid, (ids, mask) = _token_log_probs(model, tokenizer, texts)
    nll = -logp.gather(-1, nxt[..., None])[..., 0]
    with torch.no_grad():  # transformers' own loss: mean NLL of the shifted labels, padding ignored
        loss = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
    assert got["perplexity"] == pytest.approx(float(torch.exp(nll[valid].mean())), rel=1e-5)
    assert got["perplexity"] == pytest.approx(float(torch.exp(loss)), rel=1e-5)
    assert got["kl"] == pytest.approx(0.0, abs=1e-9)
    assert got["top1"] == 1.0
    assert np.isnan(got["accuracy"]) and got["fidelity"] == pytest.approx(1.0)


def test_a_span_replaced_by_identity_is_the_model_without_its_layers(tmp_path):
    """Span 3-4 replaced by the identity = layer 3 deleted: perplexity, per-sample NLL, exact KL and top-1
    agreement from both models' own forwards; KL from the float16 reference within 2e-3 of the exact one, and
    recomputed from the pooled rows (a split whose table does not fit) equal to it."""
    session = _session(tmp_path, "llama", PEAKED)
    model, tokenizer = session.adapter.model, session.adapter.tokenizer
    pruned = _without_layers(model, {3})

    logp, nxt, valid, _ = _token_log_probs(model, tokenizer, session.splits.eval.samples)
    logq, _, _, _ = _token_log_probs(pruned, tokenizer, session.splits.eval.samples)
    kl = (logp.exp() * (logp - logq)).sum(-1)[valid]
    nll = -logq.gather(-1, nxt[..., None])[..., 0][valid]
    top1 = (logq.argmax(-1) == logp.argmax(-1))[valid].double()
    got = session.evaluate("3-4", kind="identity")
    assert got["perplexity"] == pytest.approx(float(torch.exp(nll.mean())), rel=1e-4)
    assert got["top1"] == pytest.approx(float(top1.mean()), abs=1e-12)
    assert 0.01 < float(kl.mean()) and 0.1 < got["top1"] < 0.9  # a real change, and not a total one
    assert session.evaluator.parts["eval"].reference.table is not None  # float16 table
    assert got["kl"] == pytest.approx(float(kl.mean()), rel=2e-3)

    # per sample on the test split, in the data set's order: mean NLL of each text's own tokens
    test = session.evaluate_split("3-4", "test", kind="identity")
    texts = [session.dataset.samples[i] for i in test.index]
    logq, nxt, valid, _ = _token_log_probs(pruned, tokenizer, texts)
    per_text = -logq.gather(-1, nxt[..., None])[..., 0]
    counts = valid.sum(1).numpy()
    np.testing.assert_array_equal(test.tokens, counts)
    np.testing.assert_allclose(test.nll, (per_text * valid).sum(1).numpy() / counts, rtol=1e-5)
    assert test.perplexity == pytest.approx(float(torch.exp(per_text[valid].mean())), rel=1e-5)

    # a split whose float16 table would not fit recomputes p from the pooled rows: the exact KL
    part = session.evaluator.parts["eval"]
    part.reference = NextTokenReference.build(_logits_of(session.adapter), part.pooled, part.reference.targets,
                                              store_bytes=0)
    assert part.reference.table is None
    session.evaluator.clear_memo()
    assert session.evaluate("3-4", kind="identity")["kl"] == pytest.approx(float(kl.mean()), rel=1e-5)


def test_lm_costs_count_the_head(tmp_path):
    """FLOPs per sample include the LM head (2·T·D·V for T tokens), the bulk of a small LM's compute; parameters
    count the embeddings and the head once (tied or not)."""
    session = _session(tmp_path, "llama")
    cost = session.cost_model
    model = session.adapter.model
    T, D = cost.vectors_per_sample[-1], model.config.hidden_size
    V = model.get_output_embeddings().weight.shape[0]
    assert cost.base_flops == 2 * T * D * V
    unique = {id(p): p.numel() for p in model.parameters()}
    assert cost.total_params == sum(unique.values())


@pytest.mark.parametrize("sections, match", [
    ({"search": {"objectives": ["accuracy", "flops"]}}, "decoder language model: use its next-token objectives"),
    ({"evaluate": {"head": "fixed-probe"}}, "remove evaluate.head"),
])
def test_classifier_objectives_on_an_lm_are_one_error(tmp_path, sections, match):
    with pytest.raises(ConfigError, match=match):
        tiny_config(tmp_path, "llama", **sections)


@pytest.mark.parametrize("objective", ["perplexity", "kl", "top1"])
def test_lm_objectives_on_an_encoder_are_one_error(tmp_path, objective):
    with pytest.raises(ConfigError, match=f"'{objective}', which scores a decoder language model.*use accuracy"):
        tiny_config(tmp_path, "vit", search={"objectives": [objective, "flops"]})


def test_lm_default_objectives(tmp_path):
    assert tiny_config(tmp_path, "llama").search.objectives == ["kl", "flops"]
    assert tiny_config(tmp_path, "vit").search.objectives == ["accuracy", "flops"]
