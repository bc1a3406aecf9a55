"""Export writes safetensors + recipe, reloads, and reproduces the in-memory approximation."""

import json

import pytest
import torch

from conftest import tiny_config
from rba.apply import replaced
from rba.export import export_model, load_export
from rba.session import Session


# the CNN runs channels-last: its convolution weights are saved from non-contiguous tensors and reloaded into them
@pytest.mark.parametrize("model,text", [("vit", "1-3,4-6"), ("cnn", "0-2,3-4")])
def test_export_reloads_and_reproduces(tmp_path, model, text):
    session = Session(tiny_config(tmp_path, model), progress=False)
    spans = session.parse(text)
    out = export_model(session, spans, tmp_path / "exp")
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["spans"] == text and recipe["statistics_hash"] == session.stats.key
    assert "torch" in recipe["versions"] and recipe["fit"]["kind"] == "affine"
    assert not list(out.glob(".*tmp"))
    reloaded = load_export(out)
    samples = session.splits.eval.samples[:6]
    with torch.inference_mode():
        with replaced(session.adapter, spans, session.maps(spans)):
            ref = session.adapter.forward(session.adapter.collate(samples))
        got = reloaded.forward(reloaded.collate(samples))
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    assert sum(p.numel() for p in reloaded.model.parameters()) < sum(p.numel() for p in session.adapter.model.parameters())
    # scoring the export matches scoring the configuration
    a = session.evaluate(spans)
    b = session.evaluate_export(out)
    assert abs(a["fidelity"] - b["fidelity"]) < 1e-5 and a["accuracy"] == b["accuracy"] and a["params"] == b["params"]
