"""Fit kind ``fold`` (ReplaceMe's map on the MLP output of the block before a span, folded into its down projection).

Checked against independent computations: numpy least squares on MLP outputs and residual streams materialised
with plain torch forward hooks on the transformers model, and the transformers model's own forward with the span's
layers deleted and the down projection's weight replaced by hand.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import ridge_lstsq, tiny_config

from rba.errors import ModelError, SpanError
from rba.session import Session

SPANS = {"llama": [(1, 3), (2, 4)], "gpt2": [(1, 3), (2, 3)]}
RIDGE = 1e-4


def _session(tmp_path, family, **sections) -> Session:
    cfg = tiny_config(tmp_path, family, fit={"kind": "fold", "ridge": RIDGE}, capture={"dtype": "float64"},
                      **sections)
    # no labels: a probe on token rows is the LM objectives' business, not this fit's
    session = Session(cfg, need_labels=False, progress=False, measure_latency=False)
    session.adapter.model.double()  # float64 forward: the materialised reference rounds as the capture does
    return session


def _ids(inputs) -> dict:
    """The model's inputs without the (BERT) tokenizer's token_type_ids, which GPT-2 would embed."""
    return {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}


def _layers(model):
    return model.model.layers if hasattr(model, "model") else model.transformer.h


def _down_proj(layer):
    return layer.mlp.down_proj if hasattr(layer.mlp, "down_proj") else layer.mlp.c_proj


@torch.no_grad()
def _materialise(model, inputs) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(residual stream leaving each layer, each layer's down-projection output), real tokens only, from forward
    hooks on the model's own forward."""
    layers = _layers(model)
    outs: dict[int, torch.Tensor] = {}
    mlps: dict[int, torch.Tensor] = {}
    hooks = [layer.register_forward_hook(lambda m, a, o, k=k: outs.__setitem__(k, o[0] if isinstance(o, tuple) else o))
             for k, layer in enumerate(layers)]
    hooks += [_down_proj(layer).register_forward_hook(lambda m, a, o, k=k: mlps.__setitem__(k, o))
              for k, layer in enumerate(layers)]
    try:
        model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    finally:
        for h in hooks:
            h.remove()
    mask = inputs["attention_mask"].bool()
    return ([outs[k][mask].numpy() for k in range(len(layers))], [mlps[k][mask].numpy() for k in range(len(layers))])


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_fold_fit_equals_numpy_least_squares_on_materialised_mlp_outputs(tmp_path, family):
    session = _session(tmp_path, family)
    adapter = session.adapter
    out, mlp = _materialise(adapter.model, adapter.collate(session.splits.calibration.samples))
    bias = family == "gpt2"  # GPT-2's c_proj has a bias, Llama's down_proj none
    for i, j in SPANS[family]:
        fit = session.fit((i, j))
        m, h_i, h_j = mlp[i - 1], out[i - 1], out[j - 1]  # layer k's output is boundary k + 1
        w, xt = ridge_lstsq(m, h_j - h_i + m, RIDGE, bias=bias)
        got = fit.weight.numpy() if not bias else np.vstack([fit.weight.numpy(), fit.bias.numpy()[None]])
        assert (fit.bias is not None) == bias
        np.testing.assert_allclose(got, w, rtol=0, atol=1e-6 * np.abs(w).max())
        # its SSE is that of boundary j: the block's output h_i − m + m·T (+ c) against h_j
        sse = float(((h_i - m + xt @ w - h_j) ** 2).sum())
        assert fit.sse == pytest.approx(sse, rel=1e-6)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_folded_model_equals_the_transformers_model_with_layers_deleted_by_hand(tmp_path, family):
    from rba.apply import replaced

    session = _session(tmp_path, family)
    adapter = session.adapter
    spans = [SPANS[family][0]]
    (i, j), = spans
    fit = session.fit((i, j))
    maps = session.maps(spans)
    x = adapter.collate(session.splits.eval.samples[:8])
    with torch.no_grad():
        with replaced(adapter, spans, maps):
            ours = adapter.model(**_ids(x), use_cache=False).logits[x["attention_mask"].bool()]
        h, ctx = adapter.embed(x)
        walked = adapter.logits(adapter.pool(adapter.last_boundary(h, ctx, replace={(i - 1, j): maps[0]}), ctx))
        # by hand: a copy of the model without layers i..j-1, the down projection of layer i-1 replaced
        import copy

        model = copy.deepcopy(adapter.model)
        layers = _layers(model)
        proj = _down_proj(layers[i - 1])
        t = fit.weight
        if family == "gpt2":  # Conv1D: y = x·W + b
            proj.weight.copy_(proj.weight @ t)
            proj.bias.copy_(proj.bias @ t + fit.bias)
        else:  # nn.Linear: y = x·Wᵀ
            proj.weight.copy_(t.T @ proj.weight)
        kept = torch.nn.ModuleList([layer for k, layer in enumerate(layers) if not i <= k < j])
        if family == "gpt2":
            model.transformer.h = kept
        else:
            model.model.layers = kept
        model.config.num_hidden_layers = model.config.n_layer = len(kept)
        if getattr(model.config, "layer_types", None):
            model.config.layer_types = [t for k, t in enumerate(model.config.layer_types) if not i <= k < j]
        hand = model(**_ids(x), use_cache=False).logits[x["attention_mask"].bool()]
    torch.testing.assert_close(ours, hand, rtol=0, atol=1e-9)
    torch.testing.assert_close(walked, hand, rtol=0, atol=1e-9)
    # the model is restored
    assert all(type(b).__name__ != "FoldedBlock" for b in adapter.blocks)


def test_fold_refuses_what_it_cannot_fold(tmp_path):
    session = _session(tmp_path, "llama")
    with pytest.raises(SpanError, match="no block precedes boundary 0.*affine"):
        session.maps([(0, 2)])
    with pytest.raises(SpanError, match="spans 1-2 and 2-3.*leave a block between them"):
        session.maps([(1, 2), (2, 3)])
    gemma = Session(tiny_config(tmp_path / "g", "gemma3", fit={"kind": "fold"}), progress=False,
                    measure_latency=False)
    with pytest.raises(ModelError, match="post_feedforward_layernorm.*affine"):
        gemma.stats  # noqa: B018 (the statistics pass refuses before it runs)


def test_fold_statistics_reload_from_their_cache_and_score(tmp_path):
    session = _session(tmp_path, "llama")
    fit = session.fit((1, 3))
    again = _session(tmp_path, "llama")  # same cache folder: the statistics, MLP outputs included, are read back
    assert again.stats.key == session.stats.key and again.stats.mlp is not None
    torch.testing.assert_close(again.fit((1, 3)).weight, fit.weight, rtol=0, atol=0)
    # without a fit that folds, the request (the cache key) is today's: no MLP outputs
    plain = Session(tiny_config(tmp_path, "llama"), progress=False, measure_latency=False)
    assert "mlp_outputs" not in plain.statistics_request() and session.statistics_request()["mlp_outputs"] is True
    row = session.evaluate("1-3")
    blocks = sum(p.numel() for k in (1, 2) for p in session.adapter.blocks[k].parameters())
    assert row["params"] == session.cost_model.total_params - blocks  # the map is folded: it adds nothing
    assert 0 < row["fidelity"] < 1


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_folded_export_reloads_in_plain_transformers(tmp_path, family):
    from transformers import AutoModelForCausalLM

    from rba.apply import replaced
    from rba.export import FOLD_RECORD, load_export

    cfg = tiny_config(tmp_path, family, fit={"kind": "fold"})
    session = Session(cfg, need_labels=False, progress=False, measure_latency=False)
    adapter = session.adapter
    spans = [SPANS[family][0]]
    (i, j), = spans
    out = session.export(spans, tmp_path / "export")
    assert (out / "model.safetensors").is_file() and (out / FOLD_RECORD).is_file()
    assert not (out / "recipe.json").exists()
    x = _ids(adapter.collate(session.splits.eval.samples[:8]))
    mask = x["attention_mask"].bool()
    with torch.no_grad():
        with replaced(adapter, spans, session.maps(spans)):
            ours = adapter.model(**x, use_cache=False).logits[mask]
        reloaded = AutoModelForCausalLM.from_pretrained(out)  # no rba code involved
        assert reloaded.config.num_hidden_layers == adapter.num_blocks - (j - i)
        theirs = reloaded(**x).logits[mask]
        torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-5)
        generated = reloaded.generate(x["input_ids"][:1, :4], max_new_tokens=3, do_sample=False)
    assert generated.shape == (1, 7)
    # rba reads it back through the folder's own loader, as the same configuration
    result = session.evaluate_export(out)
    assert result["spans"] == f"{i}-{j}"
    assert result["fidelity"] == pytest.approx(session.evaluate(spans)["fidelity"], abs=1e-5)
    assert load_export(out).num_blocks == adapter.num_blocks - (j - i)


def test_replaceme_picks_the_span_of_least_last_token_angular_distance(tmp_path):
    from types import SimpleNamespace

    from rba.methods import get_method
    from search.baselines import replaceme_distances
    from search.methods import plan_replaceme

    cfg = tiny_config(tmp_path, "llama", model={"options": {"num_hidden_layers": 8}}, search={"method": "replaceme"})
    session = Session(cfg, need_labels=False, progress=False, measure_latency=False)
    adapter = session.adapter
    assert get_method("replaceme").kind == "fold" and session.folds()  # one pass: MLP outputs in the statistics
    # by hand: each layer's output (boundary k + 1) at each sample's last real token, from forward hooks
    outs: dict[int, torch.Tensor] = {}
    layers = _layers(adapter.model)
    hooks = [layer.register_forward_hook(lambda m, a, o, k=k: outs.__setitem__(k, o[0] if isinstance(o, tuple) else o))
             for k, layer in enumerate(layers)]
    last_tokens = {k: [] for k in range(len(layers))}
    samples = session.splits.calibration.samples
    with torch.no_grad():
        for start in range(0, len(samples), 16):
            x = _ids(adapter.collate(samples[start:start + 16]))
            adapter.model(**x)
            last = x["attention_mask"].sum(1) - 1
            for k in last_tokens:
                last_tokens[k].append(outs[k][torch.arange(len(last)), last].double().numpy())
    for h in hooks:
        h.remove()
    x = {k + 1: np.concatenate(v) for k, v in last_tokens.items()}
    n = 2  # 25% of 8 layers
    expected = {}
    for i in range(1, 8 - n + 1):
        a, b = x[i], x[i + n]
        cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        expected[(i, i + n)] = float(np.mean(np.arccos(np.clip(cos, -1, 1)) / np.pi))
    got = replaceme_distances(session, [n])
    assert got.keys() == expected.keys()
    for span in got:
        assert got[span] == pytest.approx(expected[span], rel=1e-5)
    plans = plan_replaceme(SimpleNamespace(session=session, cfg=cfg, method="replaceme"), True)
    assert plans[0] == ("replaceme n=2", [min(expected, key=expected.get)])
    assert [len(p[1]) for p in plans] == [1] * 7 and sorted(j - i for _, [(i, j)] in plans) == list(range(1, 8))
    assert 0 < session.evaluate(plans[0][1], kind="fold")["fidelity"] < 1


def test_a_fold_search_proposes_only_foldable_configurations(tmp_path):
    """The priors (proxy fronts, best spans, BR-greedy) and the sampler on a 6-layer Llama with fit kind fold: every
    trial completes, and every configuration keeps block i − 1 of each span (i, j) (checked on the spans here, not
    through the space)."""
    from search import run_search

    cfg = tiny_config(tmp_path, "llama", model={"options": {"num_hidden_layers": 6}}, fit={"kind": "fold"},
                      search={"trials": 14, "objectives": ["fidelity", "params"]}, output={"dir": str(tmp_path / "out")})
    session = Session(cfg, need_labels=False, progress=False, measure_latency=False)
    trials = run_search(cfg, progress=False, session=session).trials
    assert (trials["state"] == "COMPLETE").all() and len(trials) == 14, trials[["spans", "state"]]
    configurations = [session.check(s) for s in trials["spans"]]
    for spans in configurations:
        assert all(i >= 1 for i, _ in spans) and all(c > b for (_, b), (c, _) in zip(spans, spans[1:])), spans
    assert any(len(s) >= 2 for s in configurations)  # the rule was exercised, not avoided by single spans


def test_report_baselines_hold_replaceme_only_where_the_model_folds(tmp_path, monkeypatch):
    """replaceme among the report's baselines: fitted with fold on a Llama (its results those of evaluating its spans
    with fold), skipped with a one-line note on a CNN (no tokens, no block that folds), and the note in report.md's
    baselines section."""
    import search._results as results
    from search._render import _baselines_section
    from search.study import prepare

    monkeypatch.setattr(results, "REPORT_BASELINES", ("replaceme",))
    found = {}
    for family in ("llama", "cnn"):
        cfg = tiny_config(tmp_path / family, family, search={"objectives": ["fidelity", "params"]},
                          output={"dir": str(tmp_path / family / "out")})
        session = Session(cfg, need_labels=False, progress=False, measure_latency=False)
        found[family] = results._baseline_rows(prepare(cfg, progress=False, session=session), {})
    rows, skipped = found["llama"]
    assert skipped == [] and set(rows["kind"]) == {"fold"}
    spans = list(rows["spans"])
    assert sorted(j - i for i, j in (map(int, s.split("-")) for s in spans)) == [1, 2, 3]  # one span per length
    assert all(int(s.split("-")[0]) >= 1 for s in spans)
    session = Session(tiny_config(tmp_path / "llama", "llama"), need_labels=False, progress=False, measure_latency=False)
    for _, row in rows.iterrows():
        assert row["fidelity"] == pytest.approx(session.evaluate(row["spans"], kind="fold")["fidelity"], abs=1e-6)
    rows, skipped = found["cnn"]
    assert rows.empty and len(skipped) == 1 and skipped[0].startswith("replaceme: ") and "\n" not in skipped[0]
    assert "has no tokens" in skipped[0]
    info = {"quality": "fidelity", "cost": "params_frac", "method": "optuna", "kind": "affine",
            "objectives": ["fidelity", "params"], "max_drop": 0.1, "baselines_skipped": skipped}
    reference = {"fidelity": 1.0, "params_frac": 1.0}
    text = "\n".join(_baselines_section(info, found["llama"][0].iloc[:0], reference, found["llama"][0], {"spans": None},
                                        None))
    assert f"- replaceme: skipped ({skipped[0].removeprefix('replaceme: ')})" in text


def test_folded_vit_export_reloads_as_a_plain_timm_model(tmp_path):
    """A fold configuration on a timm ViT exports in timm's own format, fewer blocks: reloaded with timm alone (by
    hand from config.json and the safetensors file, and through timm's local-dir source), its logits equal the
    in-memory approximated model's; rba reads it back as the same configuration."""
    import json

    import timm
    from safetensors.torch import load_file

    from rba.apply import replaced

    cfg = tiny_config(tmp_path, "vit", model={"options": {"depth": 5}}, fit={"kind": "fold"})
    session = Session(cfg, need_labels=False, progress=False, measure_latency=False)
    adapter = session.adapter
    spans = [(1, 2), (3, 5)]  # the second span reaches the last block
    out = session.export(spans, tmp_path / "export")
    record = json.loads((out / "config.json").read_text())
    assert record["architecture"] == "test_vit" and record["model_args"]["depth"] == 5 - 3
    x = adapter.collate(session.splits.eval.samples[:8])
    with torch.no_grad():
        with replaced(adapter, spans, session.maps(spans)):
            ours = adapter.model(x)
        by_hand = timm.create_model(record["architecture"], pretrained=False, **record["model_args"])
        by_hand.load_state_dict(load_file(out / "model.safetensors"), strict=True)
        local = timm.create_model(f"local-dir:{out}", pretrained=True)
        for reloaded in (by_hand.eval(), local.eval()):
            assert len(reloaded.blocks) == 2
            torch.testing.assert_close(reloaded(x), ours, rtol=0, atol=1e-5)
    assert not torch.allclose(ours, adapter.model(x), atol=1e-3)  # the fold changed the model's output
    result = session.evaluate_export(out)
    assert result["spans"] == "1-2,3-5"
    assert result["fidelity"] == pytest.approx(session.evaluate(spans)["fidelity"], abs=1e-5)
