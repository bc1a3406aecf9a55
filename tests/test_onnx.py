"""ONNX export (``rba export --format onnx``) and its ONNX Runtime speed-up (``rba evaluate --export``).

Every check runs the written graphs in ONNX Runtime itself, on inputs the export never saw (another batch size,
other token lengths), against the reloaded PyTorch export and a freshly built unmodified model."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from _helpers import assert_one_line_error, run_main, vit_sections, write_config
from conftest import tiny_config, tiny_samples

from rba.config import load_config
from rba.export import head_logits, load_export
from rba.onnx import MAX_REL_DIFF, export_onnx
from rba.session import Session
from search._markdown import _onnx_lines
from search._measure import measure_export


def _rel(got, want) -> float:
    want = np.asarray(want, dtype=np.float64)
    return float(np.abs(np.asarray(got, dtype=np.float64) - want).max() / np.abs(want).max())


def _ort(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _feed(adapter, samples) -> dict[str, np.ndarray]:
    batch = adapter.collate(samples)
    if isinstance(samples[0], str):
        return {"input_ids": batch["input_ids"].numpy(), "attention_mask": batch["attention_mask"].numpy()}
    return {"pixels": batch.numpy()}


def _torch_inputs(feed):
    if "pixels" in feed:
        return torch.from_numpy(feed["pixels"])
    return {k: torch.from_numpy(v) for k, v in feed.items()}


def _initialised(path) -> int:
    import onnx

    return sum(int(np.prod(t.dims)) for t in onnx.load(str(path)).graph.initializer)


def test_vit_export_onnx_matches_pytorch_writes_the_unmodified_model_once_and_measures_speedup(tmp_path, capsys, caplog):
    cfg = write_config(tmp_path / "vit.toml", vit_sections(tmp_path, model={"options": {"depth": 4}},
                                                           search={"max_span": 3}))
    out = tmp_path / "exp"
    rc, _, err = run_main(capsys, "export", cfg, "--spans", "1-3", "--out", out, "--format", "onnx")
    assert rc == 0, err
    assert "max relative difference" in err
    exported = load_export(out)
    session = Session(load_config(cfg), progress=False, measure_latency=False)
    base = session.adapter  # the unmodified model, built afresh from the config
    samples = tiny_samples("vit", 5, seed=7)  # a batch size and images the export never saw
    feed = _feed(exported, samples)
    pooled, logits = _ort(out / "model.onnx").run(["pooled", "logits"], feed)
    with torch.inference_mode():
        want_pooled = exported.forward(_torch_inputs(feed))
        want_logits = head_logits(exported, _torch_inputs(feed))
        base_pooled = base.forward(_torch_inputs(feed))
    assert pooled.shape == (5, want_pooled.shape[1]) and logits.shape == (5, 3)
    assert _rel(pooled, want_pooled) <= MAX_REL_DIFF and _rel(logits, want_logits) <= MAX_REL_DIFF
    u_pooled, u_logits = _ort(out / "unmodified.onnx").run(["pooled", "logits"], feed)
    assert _rel(u_pooled, base_pooled) <= MAX_REL_DIFF and u_logits.shape == (5, 3)
    assert _rel(pooled, u_pooled) > 1e-3  # two spans replaced: a different model
    # two blocks less: fewer weights in the graph (the head is tiny next to a block)
    assert _initialised(out / "model.onnx") < _initialised(out / "unmodified.onnx")

    # the same model exported again into the folder by `rba run`'s report step ([run] onnx = true, one session):
    # unmodified.onnx is kept, and the report gets the measured ONNX Runtime speed-up next to FLOPs
    before = (out / "unmodified.onnx").stat()
    session.cfg.run.onnx = True
    folder = session.export("2-4", out)
    export_onnx(session, folder)  # as the report step's export does with [run] onnx, then it measures
    records = measure_export(session.cfg, session, folder)
    onnx = records["onnx"]
    ratios = np.array(onnx["unmodified_times_ms"]) / np.array(onnx["export_times_ms"])
    assert onnx["onnx_speedup"] == pytest.approx(np.median(ratios))  # the paired headline, not a ratio of medians
    assert onnx["onnx_export_faster"] == pytest.approx(np.mean(ratios > 1))
    assert onnx["max_rel_diff"] <= MAX_REL_DIFF
    lines = _onnx_lines(onnx, 0.5, records["ceiling"])
    assert "ONNX Runtime" in lines[0] and "at flops_frac 0.5" in lines[0]
    assert f"speed-up {onnx['onnx_speedup']:.3g}× (median of {len(ratios)} paired per-repeat ratios" in lines[0]
    after = (out / "unmodified.onnx").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # written once, kept
    assert json.loads((out / "onnx.json").read_text())["spans"] == "2-4"

    # `rba evaluate --export` scores the export and times both graphs in ONNX Runtime, interleaved
    result = session.evaluate_export(out)
    assert result["spans"] == "2-4"
    assert result["onnx_unmodified_ms"] > 0 and result["onnx_export_ms"] > 0
    # the speed-up is the median of the paired per-repeat ratios, inside its bootstrap interval
    assert result["onnx_speedup_low"] <= result["onnx_speedup"] <= result["onnx_speedup_high"]
    assert 0 <= result["onnx_export_faster"] <= 1

    # exported again without ONNX: the ONNX files belong to the earlier export and are not timed as this one
    with caplog.at_level("WARNING", logger="rba"):  # a note from the API is a log record (the CLI prints it)
        result = session.evaluate_export(session.export("1-3", out))
    assert "onnx_speedup" not in result and "belongs to an earlier export" in caplog.text


@pytest.mark.parametrize("family,head,spans", [("cnn", "native", "0-1"), ("bert", None, "1-2")])
def test_cnn_and_text_exports_match_pytorch_in_onnx_runtime(tmp_path, family, head, spans):
    """The CNN with its native head; text (token ids + attention mask, padded) without labels: no head."""
    small = {"model": {"options": {"layers": [1, 1, 1, 1]}}} if family == "cnn" else {}
    cfg = tiny_config(tmp_path, family, data={"calibration": 16, "probe": 16, "eval": 16},
                      evaluate={"head": head or "probe"}, search={"max_span": 1}, **small)
    session = Session(cfg, progress=False, measure_latency=False, need_labels=head is not None)
    out = session.export(spans, tmp_path / "exp")
    meta = export_onnx(session, out)
    assert meta["outputs"] == (["pooled", "logits"] if head else ["pooled"])
    exported = load_export(out)
    samples = tiny_samples(family, 7, seed=5)
    feed = _feed(exported, samples)
    if family == "bert":
        mask = feed["attention_mask"]
        assert (mask == 0).any() and mask.shape[1] != 2  # padded, and not the traced token length
    got = _ort(out / "model.onnx").run(None, feed)
    with torch.inference_mode():
        want = [exported.forward(_torch_inputs(feed))]
        if head:
            want.append(head_logits(exported, _torch_inputs(feed)))
        base = session.adapter.forward(_torch_inputs(feed))
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == tuple(w.shape) and _rel(g, w) <= MAX_REL_DIFF
    assert _rel(_ort(out / "unmodified.onnx").run(None, feed)[0], base) <= MAX_REL_DIFF


def test_onnx_export_of_a_half_precision_forward_is_one_line_before_any_work(tmp_path, capsys):
    cfg = write_config(tmp_path / "vit.toml", vit_sections(tmp_path))
    rc, _, err = run_main(capsys, "export", cfg, "--spans", "1-3", "--out", tmp_path / "exp", "--format", "onnx",
                          "--forward-dtype", "bfloat16", "--quiet")
    assert_one_line_error(rc, err, "model.forward_dtype = 'bfloat16'", "ONNX export writes float32 models only")
    assert not (tmp_path / "exp").exists() and not (tmp_path / "cache").exists()
    # `rba run` with [run] onnx = true refuses it before the search, not after
    cfg = write_config(tmp_path / "run.toml", vit_sections(tmp_path, run={"onnx": True},
                                                           model={"forward_dtype": "bfloat16"}))
    rc, _, err = run_main(capsys, "run", cfg, "--out", tmp_path / "out", "--quiet")
    assert_one_line_error(rc, err, "ONNX export writes float32 models only")
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_swapped_or_corrupted_onnx_files_are_refused_or_rewritten(tmp_path, capsys):
    """onnx.json records each file's SHA-256: unmodified.onnx copied over model.onnx is refused before it is timed
    as "the export's speed-up" (one line naming the file and the fix), and a corrupted unmodified.onnx is written
    again by the next export instead of being kept and vouched for."""
    import hashlib
    import shutil

    cfg = write_config(tmp_path / "vit.toml", vit_sections(tmp_path, model={"options": {"depth": 4}},
                                                           search={"max_span": 3}))
    out = tmp_path / "exp"
    export = ("export", cfg, "--spans", "1-3", "--out", out, "--format", "onnx", "--quiet")
    rc, _, err = run_main(capsys, *export)
    assert rc == 0, err
    model = (out / "model.onnx").read_bytes()
    shutil.copy(out / "unmodified.onnx", out / "model.onnx")
    rc, _, err = run_main(capsys, "evaluate", cfg, "--export", out, "--quiet")
    assert_one_line_error(rc, err, f"{out / 'model.onnx'} does not match the checksum in {out / 'onnx.json'}",
                          "--format onnx")
    (out / "model.onnx").write_bytes(model)
    unmodified = out / "unmodified.onnx"
    unmodified.write_bytes(unmodified.read_bytes()[:-1000])  # truncated
    rc, _, err = run_main(capsys, *export)
    assert rc == 0, err
    recorded = json.loads((out / "onnx.json").read_text())["sha256"]
    assert recorded["unmodified.onnx"] == hashlib.sha256(unmodified.read_bytes()).hexdigest()
    _ort(unmodified)  # a whole graph again: ONNX Runtime loads it
    # onnx.json itself damaged (not JSON, keys of the wrong type): one line naming it, not an earlier export's note
    meta = (out / "onnx.json").read_text()
    for damaged, needle in ((meta[:50], "not JSON"),
                            (json.dumps(json.loads(meta) | {"max_rel_diff": {"model": "0.0"}}), "max_rel_diff.model")):
        (out / "onnx.json").write_text(damaged)
        rc, _, err = run_main(capsys, "evaluate", cfg, "--export", out, "--quiet")
        assert_one_line_error(rc, err, f"{out / 'onnx.json'} is damaged", needle, "--format onnx")
