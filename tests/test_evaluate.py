"""Evaluation: prefix reuse equals a full staged forward; replacement in the real model equals evaluation;
fidelity of an exactly-affine block's span is 1; costs follow the block table."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import staged_forward, tiny_vit_config

from rba.apply import replaced
from rba.session import Session


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval")
    return Session(tiny_vit_config(tmp), progress=False)


def _full_forward(adapter, samples, spans, maps):
    """Hand-written forward: every block from the input, spans applied where they start."""
    with torch.inference_mode():
        return staged_forward(adapter, adapter.collate(samples), dict(zip(spans, maps)))


@pytest.mark.parametrize("text", ["none", "2-4", "1-3,4-6", "0-1,1-2,5-6", "3-6"])
def test_prefix_reuse_equals_full_forward(session, text):
    spans = session.parse(text)
    maps = session.maps(spans)
    pooled = session.evaluator.pooled(spans, maps, tag="affine")
    ref = _full_forward(session.adapter, session.splits.eval.samples, spans, maps)
    torch.testing.assert_close(pooled["eval"], ref, rtol=1e-4, atol=1e-5)
    # a second call goes through the prefix memo and must agree too
    again = session.evaluator.pooled(spans, maps, tag="affine")
    torch.testing.assert_close(again["eval"], pooled["eval"], rtol=0, atol=0)


def test_memo_shared_prefix_gives_same_result(session):
    for text in ["1-2", "1-2,3-5", "1-2,4-6"]:
        spans = session.parse(text)
        maps = session.maps(spans)
        got = session.evaluator.pooled(spans, maps, tag="affine")["eval"]
        ref = _full_forward(session.adapter, session.splits.eval.samples, spans, maps)
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


def test_replacement_in_real_model_matches_evaluation(session):
    spans = session.parse("1-3,4-5")
    maps = session.maps(spans)
    samples = session.splits.eval.samples[:8]
    staged = _full_forward(session.adapter, samples, spans, maps)
    with torch.inference_mode():
        before = session.adapter.forward(session.adapter.collate(samples))
        with replaced(session.adapter, spans, maps):
            swapped = session.adapter.forward(session.adapter.collate(samples))
        after = session.adapter.forward(session.adapter.collate(samples))
    torch.testing.assert_close(swapped, staged, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    assert not torch.allclose(swapped, before)


def test_unmodified_model_scores(session):
    r = session.evaluate([])
    assert r["spans"] == "none"
    assert r["fidelity"] == pytest.approx(1.0)
    assert r["flops_frac"] == 1.0 and r["params_frac"] == 1.0
    assert 0.0 <= r["accuracy"] <= 1.0


def test_fidelity_and_costs_of_a_span(session):
    spans = session.parse("2-5")
    r = session.evaluate(spans)
    maps = session.maps(spans)
    ref = _full_forward(session.adapter, session.splits.eval.samples, spans, maps)
    fid = F.cosine_similarity(ref.double(), session.evaluator.parts["eval"].pooled.double(), dim=1).mean()
    assert r["fidelity"] == pytest.approx(float(fid), rel=1e-5)
    cm = session.cost_model
    d = session.adapter.dims()[2]
    blocks = session.adapter.model.blocks
    removed = sum(p.numel() for k in (2, 3, 4) for p in blocks[k].parameters())
    assert r["params"] == cm.total_params - removed + d * d + d
    # flops: 3 blocks out, one (T×D)·(D×D) matmul in
    tokens = cm.vectors_per_sample[2]
    assert r["flops"] == pytest.approx(cm.total_flops - sum(cm.block_flops[2:5]) + 2 * tokens * d * d)
    assert r["flops_frac"] < 1.0 and r["latency_ms"] > 0


def test_flop_table_matches_direct_count(session):
    from torch.utils.flop_counter import FlopCounterMode

    adapter = session.adapter
    x = adapter.collate(session.splits.eval.samples[:1])
    with FlopCounterMode(display=False) as fc, torch.inference_mode():
        adapter.model(x)
    assert session.cost_model.total_flops == fc.get_total_flops()


def test_probe_accuracy_agrees_with_sklearn(session):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    ev, pr = session.evaluator.parts["eval"], session.evaluator.parts["probe"]
    scaler = StandardScaler().fit(pr.pooled.numpy())
    clf = LogisticRegression(C=1.0, max_iter=2000).fit(scaler.transform(pr.pooled.numpy()), pr.labels.numpy())
    sk = (clf.predict(scaler.transform(ev.pooled.numpy())) == ev.labels.numpy()).mean()
    ours = session.evaluate([])["accuracy"]
    assert abs(ours - sk) <= 2.0 / len(ev.labels)  # two eval samples either way: solver tolerance


@pytest.fixture(scope="module", params=["cnn", "bert"])
def other_session(request, tmp_path_factory):
    from conftest import tiny_config

    return Session(tiny_config(tmp_path_factory.mktemp(request.param), request.param), progress=False)


def test_prefix_reuse_and_swapped_model_other_families(other_session):
    """CNN stages of different resolution and BERT batches with padding: prefix reuse equals a full forward,
    and the model's own forward with replacements swapped in equals both."""
    s = other_session
    spans = s.adapter.valid_spans()
    chosen = [spans[-1]] + [sp for sp in spans if sp[1] <= spans[-1][0]][:1]
    chosen = sorted(chosen)
    maps = s.maps(chosen)
    pooled = s.evaluator.pooled(chosen, maps, tag="affine")["eval"]
    samples = s.splits.eval.samples
    ref = torch.cat([_full_forward(s.adapter, samples[k:k + 32], chosen, maps) for k in range(0, len(samples), 32)])
    order = s.evaluator.parts["eval"].order  # texts are cached in length order
    pooled = pooled[torch.as_tensor(np.argsort(order))]
    torch.testing.assert_close(pooled, ref, rtol=1e-4, atol=1e-5)
    with torch.inference_mode(), replaced(s.adapter, chosen, maps):
        own = torch.cat([s.adapter.forward(s.adapter.collate(samples[k:k + 32])) for k in range(0, len(samples), 32)])
    torch.testing.assert_close(own, ref, rtol=1e-4, atol=1e-5)
    r = s.evaluate(chosen)
    assert 0 < r["flops_frac"] < 1 and r["fidelity"] < 1
