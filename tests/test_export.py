"""Export writes safetensors + recipe, reloads, and reproduces the in-memory approximation."""

import json

import pytest
import torch
from _helpers import assert_one_line_error, run_main, vit_sections, write_config
from conftest import tiny_config
from safetensors.torch import load_file

from rba._registry import FITS
from rba.apply import replaced
from rba.errors import RBAError
from rba.export import RECIPE_FORMAT, export_model, head_logits, load_export
from rba.fit import get_fit, list_fits
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


# ---------------------------------------------------------------------- recipe format 2


@pytest.fixture(scope="module")
def vit_session(tmp_path_factory):
    return Session(tiny_config(tmp_path_factory.mktemp("fmt2"), "vit"), progress=False, measure_latency=False)


def test_format_2_round_trip_for_every_fit_kind(vit_session, tmp_path, translator):
    session = vit_session
    spans = session.parse("1-3,4-5")
    # a kind that folds exports the model's own format, not a recipe (tests/test_fold.py)
    kinds = [k for k in list_fits() if not get_fit(k).folds]
    assert {"affine", "linear", "identity", "test-translator"} <= set(kinds)
    samples = session.splits.eval.samples[:6]
    for kind in kinds:
        out = export_model(session, spans, tmp_path / kind, kind=kind)
        recipe = json.loads((out / "recipe.json").read_text())
        assert recipe["format"] == RECIPE_FORMAT == 2
        trained = kind in ("test-translator", "mlp", "res-mlp", "mlp-wide", "identity-mlp", "affine-mlp")
        assert [(m["kind"], m["span"], m["trained"]) for m in recipe["span_modules"]] == \
            [(kind, [1, 3], trained), (kind, [4, 5], trained)]
        maps = session.maps(spans, kind)
        saved = load_file(str(out / "model.safetensors"))
        # the kind's weights are in model.safetensors under the replaced block, exactly as fitted
        for (i, j), m in zip(spans, maps):
            assert {k for k in saved if k.startswith(f"blocks.{i}.")} == {f"blocks.{i}.{n}" for n in m.state_dict()}
            for name, t in m.state_dict().items():
                torch.testing.assert_close(saved[f"blocks.{i}.{name}"], t, rtol=0, atol=0)
            assert not [k for k in saved for b in range(i + 1, j) if k.startswith(f"blocks.{b}.")]  # skipped
        reloaded = load_export(out)
        with torch.inference_mode():
            with replaced(session.adapter, spans, maps):
                ref = session.adapter.forward(session.adapter.collate(samples))
            got = reloaded.forward(reloaded.collate(samples))
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
        assert type(reloaded.blocks[1]) is type(maps[0])


def test_unknown_fit_kind_in_a_recipe_is_one_line(tmp_path, capsys, translator, monkeypatch):
    import rba.fit

    cfg = write_config(tmp_path / "vit.toml", vit_sections(tmp_path))
    from rba.config import load_config

    export_model(Session(load_config(cfg), progress=False), [(1, 3)], tmp_path / "exp", kind="test-translator")
    monkeypatch.setattr(FITS, "_targets", {k: v for k, v in FITS._targets.items() if k != "test-translator"})
    monkeypatch.delitem(rba.fit._PLUGINS, "test-translator")
    rc, _, err = run_main(capsys, "evaluate", cfg, "--export", tmp_path / "exp", "--quiet")
    assert_one_line_error(rc, err, "unknown fit kind 'test-translator'")


def _rewrite(folder, edit):
    """Edit recipe.json and recompute its checksum as anyone could, so that only the schema can refuse it."""
    import hashlib

    path = folder / "recipe.json"
    recipe = json.loads(path.read_text())
    edit(recipe)
    body = {k: v for k, v in recipe.items() if k != "recipe_sha256"}
    recipe["recipe_sha256"] = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    path.write_text(json.dumps(recipe))


@pytest.mark.parametrize("edit,needles", [
    (lambda r: r.update(trust_code=True), ["unknown keys: trust_code"]),
    (lambda r: r["span_modules"][0].update(module="linear", bias=True), ["unknown keys: span_modules.0.bias, span_modules.0.module"]),
    (lambda r: (r.pop("layout"), r["span_modules"][0].pop("dim_in")), ["missing fields: layout, span_modules.0.dim_in"]),
    (lambda r: r.update(format=1), ["recipe format 1", "reads format 2 only"]),
])
def test_recipe_keys_are_strict(tmp_path, capsys, edit, needles):
    cfg = write_config(tmp_path / "vit.toml", vit_sections(tmp_path))
    rc, _, err = run_main(capsys, "export", cfg, "--spans", "1-3", "--out", tmp_path / "exp", "--quiet")
    assert rc == 0, err
    _rewrite(tmp_path / "exp", edit)
    rc, _, err = run_main(capsys, "evaluate", cfg, "--export", tmp_path / "exp", "--quiet")
    assert_one_line_error(rc, err, *needles)
    with pytest.raises(RBAError, match=needles[0].split(":")[0]):
        load_export(tmp_path / "exp")


@pytest.mark.parametrize("head", ["probe", "fixed-probe"])
def test_exported_probe_head_classifies_like_the_session(tmp_path, head):
    session = Session(tiny_config(tmp_path, "vit", evaluate={"head": head}), progress=False, measure_latency=False)
    spans = session.parse("1-3,4-6")
    out = export_model(session, spans, tmp_path / "exp")
    recipe = json.loads((out / "recipe.json").read_text())
    # what each logit means: the data's class names, in label order
    assert recipe["head"] == {"kind": head, "features": 64, "classes": 4, "class_names": ["0", "1", "2", "3"]}
    assert recipe["head"]["class_names"] == session.dataset.classes
    # the export folder says what made it, as every output folder does
    assert json.loads((out / "run.json").read_text())["command"] == "export"
    assert (out / "config.resolved.toml").is_file()
    # the session's probe for this configuration: fitted on the approximated network's probe-split features
    # (head "probe"), or once on the unmodified network's (head "fixed-probe")
    ev = session.evaluator
    pooled = ev.pooled(spans, session.maps(spans), tag="affine/independent")
    probe = ev.probe_for(pooled)
    assert (probe is ev.fixed_probe) == (head == "fixed-probe")
    expected = probe.predict(pooled["eval"])
    reloaded = load_export(out)
    logits = head_logits(reloaded, reloaded.collate(session.splits.eval.samples))
    assert logits.shape == (len(session.splits.eval), 4)
    assert torch.equal(logits.argmax(1), expected)
    # and the logits are the probe's own: ((x − mean) / std)·w + b on the reloaded model's features
    z = (reloaded.forward(reloaded.collate(session.splits.eval.samples)).double() - probe.mean) / probe.std
    torch.testing.assert_close(logits, z @ probe.w + probe.b, rtol=1e-9, atol=1e-9)
    acc = float((logits.argmax(1) == ev.parts["eval"].labels).double().mean())
    assert acc == session.evaluate(spans)["accuracy"]


def test_export_without_labels_has_no_head(tmp_path):
    session = Session(tiny_config(tmp_path, "vit"), need_labels=False, progress=False, measure_latency=False)
    out = export_model(session, session.parse("1-3"), tmp_path / "exp")
    assert json.loads((out / "recipe.json").read_text())["head"] is None
    reloaded = load_export(out)
    with pytest.raises(RBAError, match="no classifier head"):
        head_logits(reloaded, reloaded.collate(session.splits.eval.samples[:2]))


@pytest.mark.parametrize("other,needle", [
    ({"model": {"options": {"depth": 4}}}, "'depth': 4"),
    ({"data": {"image_size": 48}}, "image_size=48"),
])
def test_evaluate_export_of_another_model_is_refused(tmp_path, capsys, other, needle):
    cfg = write_config(tmp_path / "vit.toml", vit_sections(tmp_path))
    rc, _, err = run_main(capsys, "export", cfg, "--spans", "1-3", "--out", tmp_path / "exp", "--quiet")
    assert rc == 0, err
    sections = vit_sections(tmp_path)
    for key, value in other.items():
        sections[key] = sections[key] | value
    wrong = write_config(tmp_path / "other.toml", sections)
    rc, _, err = run_main(capsys, "evaluate", wrong, "--export", tmp_path / "exp", "--quiet")
    assert_one_line_error(rc, err, "was exported from timm:test_vit", "but this config describes timm:test_vit",
                          "image_size=32", "with the config it was exported from")
    assert needle.replace("'", '"') in err or needle in err


def test_evaluate_export_of_another_model_through_the_real_binary(tmp_path, capsys):
    from _helpers import run_cli, run_main

    cfg = write_config(tmp_path / "vit.toml", vit_sections(tmp_path))
    rc, _, err = run_main(capsys, "export", cfg, "--spans", "1-3", "--out", tmp_path / "exp", "--quiet")  # in-process
    assert rc == 0, err
    sections = vit_sections(tmp_path)
    sections["data"] = sections["data"] | {"image_size": 48}
    wrong = write_config(tmp_path / "other.toml", sections)
    proc = run_cli("evaluate", wrong, "--export", tmp_path / "exp", "--quiet", cwd=tmp_path)
    assert_one_line_error(proc.returncode, proc.stderr, "image_size=32 max_length=128, but this config",
                          "image_size=48 max_length=128:")
