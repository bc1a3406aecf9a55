"""Cross-dataset transfer (``data.calibration_path``): statistics and fits come from the calibration data set,
probe and eval from ``data.path``; the calibration source is part of the statistics key and the study identity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _helpers import assert_nothing_written, assert_one_line_error, run_main, vit_sections, write_config

N_EVAL, N_CAL = 16, 8  # target.npz: calibration 8 (unused in a transfer) + probe 4 + eval 4


def _save(path, images, labels=None):
    arrays = {"images": images} | ({} if labels is None else {"labels": labels})
    np.savez(path, **arrays)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Two image sets of different content: ``target.npz`` (labelled) and ``source.npz`` (darker, unlabelled)."""
    d = tmp_path_factory.mktemp("transfer")
    rng = np.random.default_rng(7)
    _save(d / "target.npz", rng.integers(0, 256, (N_EVAL, 3, 32, 32), dtype=np.uint8), np.arange(N_EVAL) % 2)
    _save(d / "source.npz", rng.integers(0, 96, (N_CAL, 3, 32, 32), dtype=np.uint8))
    _save(d / "gray.npz", rng.integers(0, 256, (N_CAL, 1, 32, 32), dtype=np.uint8))
    return d


def _config(folder, **data):
    from rba.config import load_config

    sections = vit_sections(folder, data={"kind": "npz", "path": "target.npz", "calibration": N_CAL, "probe": 4,
                                          "eval": 4, "options": {}} | data)
    return load_config(write_config(folder / f"study{len(list(folder.glob('study*.toml')))}.toml", sections))


def _hand_grams(model, images: np.ndarray) -> list[torch.Tensor]:
    """Σ x̃ x̃ᵀ (x̃ = [x, 1], every token) at every boundary of a timm ViT, by forward hooks on its blocks, with the
    preprocessing written out (timm's mean and std, no resize at 32 px): independent of rba's capture."""
    import timm.data

    cfg = timm.data.resolve_data_config({}, model=model)
    x = torch.as_tensor(images).float() / 255
    x = (x - torch.tensor(cfg["mean"]).view(1, -1, 1, 1)) / torch.tensor(cfg["std"]).view(1, -1, 1, 1)
    seen: list[torch.Tensor] = []
    hooks = [b.register_forward_pre_hook(lambda m, a: seen.append(a[0])) for b in model.blocks]
    hooks.append(model.blocks[-1].register_forward_hook(lambda m, a, out: seen.append(out)))
    try:
        with torch.no_grad():
            model.forward_features(x)
    finally:
        for h in hooks:
            h.remove()
    grams = []
    for h in seen:
        v = h.reshape(-1, h.shape[-1]).double()
        v = torch.cat([v, torch.ones(len(v), 1, dtype=torch.float64)], 1)
        grams.append(v.T @ v)
    return grams


def test_statistics_come_from_the_calibration_data(files):
    """Every boundary's Gram equals the one computed by hand on source.npz (all of it is the calibration split),
    and not the one of target.npz; probe and eval are drawn from target.npz."""
    from rba.session import Session

    session = Session(_config(files, calibration_path="source.npz"), progress=False, measure_latency=False)
    source = np.load(files / "source.npz")["images"]
    target = np.load(files / "target.npz")
    np.testing.assert_array_equal(session.splits.calibration.samples, source)
    for name in ("probe", "eval"):
        split = getattr(session.splits, name)
        np.testing.assert_array_equal(split.samples, target["images"][session.splits.indices[name]])
        np.testing.assert_array_equal(split.labels, target["labels"][session.splits.indices[name]])
    plain = Session(_config(files), progress=False, measure_latency=False).splits.indices
    for name in ("probe", "eval"):  # the config without the transfer is the baseline on the same probe and eval
        np.testing.assert_array_equal(session.splits.indices[name], plain[name])
    model = session.adapter.model
    want = _hand_grams(model, source)
    other = _hand_grams(model, target["images"][:N_CAL])
    for k, g in enumerate(want):
        got = session.stats.gram[k]
        scale = g.abs().max()
        torch.testing.assert_close(got / scale, g / scale, rtol=0, atol=1e-5)  # float32 batch products
        assert (got - other[k]).abs().max() > 1e-2 * scale  # the target's statistics would fail the check


def test_calibration_source_changes_key_and_identity(files, tmp_path):
    """The statistics key and the study identity follow the calibration data's contents, not its path: a transfer
    differs from the plain config in the calibration split's digest, the same file named another way (or copied
    elsewhere) is the same study, and a config without a transfer has no transfer keys."""
    import shutil

    from rba.session import Session
    from search.identity import identity_diff, study_identity

    def both(folder=files, **data):
        s = Session(_config(folder, **data), progress=False, measure_latency=False)
        return s.statistics_key(), study_identity(s.cfg, s, kind="affine", method="optuna")

    (key_plain, id_plain), (key_src, id_src) = both(), both(calibration_path="source.npz")
    key_src2, id_src2 = both(calibration_path=str(files / "source.npz"), calibration_kind="npz")
    assert key_plain != key_src and key_src == key_src2  # the key follows the calibration content
    assert "calibration_path" not in id_plain["data"] and "calibration_kind" not in id_plain["data"]
    cal = Session(_config(files, calibration_path="source.npz"), progress=False).splits.calibration.fingerprint()
    assert [line.split(":")[0] for line in identity_diff(id_plain, id_src)] == ["data.content.calibration"]
    assert id_src["data"]["content"]["calibration"] == cal
    assert identity_diff(id_src, id_src2) == ['data.calibration_kind: "<unset>" → "npz"']
    for name in ("target.npz", "source.npz"):
        shutil.copy(files / name, tmp_path / f"moved-{name}")
    _, id_moved = both(tmp_path, path="moved-target.npz", calibration_path="moved-source.npz")
    assert id_moved == id_src


@pytest.mark.parametrize("data,needles", [
    ({"calibration_path": "missing.npz"}, ["calibration data path not found", "missing.npz", "data.calibration_path"]),
    ({"calibration_path": "gray.npz", "calibration_kind": "text-csv"}, ["gray.npz as CSV"]),
    ({"calibration_kind": "npz"}, ["data.calibration_kind = 'npz' but data.calibration_path is not set"]),
    ({"calibration_path": "source.npz", "calibration_kind": "csv"},
     ["data.calibration_kind = 'csv' is not one of text-csv, npz, image-folder"]),
    ({"calibration_path": "source.npz", "calibration": N_CAL + 1, "probe": 3},
     [f"data.calibration = {N_CAL + 1} but the calibration data set", f"has only {N_CAL} samples"]),
    ({"calibration_path": "source.npz", "probe": 5},
     ["the splits ask for 17 samples", "the data.calibration samples of data.path stay unused"]),
])
def test_bad_calibration_source_one_line_error(files, tmp_path, capsys, data, needles):
    for name in ("target.npz", "source.npz", "gray.npz"):
        (tmp_path / name).write_bytes((files / name).read_bytes())
    sections = vit_sections(tmp_path, data={"kind": "npz", "path": "target.npz", "calibration": N_CAL, "probe": 4,
                                            "eval": 4, "options": {}} | data)
    rc, _, err = run_main(capsys, "scores", write_config(tmp_path / "study.toml", sections), "--out", tmp_path / "out",
                          "--quiet")
    assert_one_line_error(rc, err, *needles)
    assert_nothing_written(tmp_path)


def test_text_calibration_for_an_image_model_is_refused(files, tmp_path):
    from rba.config import load_config
    from rba.data import load_calibration_dataset, load_dataset
    from rba.errors import DataError

    (tmp_path / "texts.csv").write_text("text\nsome words\nmore words\n")
    cfg = load_config(write_config(tmp_path / "study.toml", vit_sections(tmp_path, data={
        "kind": "npz", "path": str(files / "target.npz"), "calibration_path": "texts.csv",
        "calibration_kind": "text-csv", "options": {}})))
    with pytest.raises(DataError, match="holds texts but data.path holds images"):
        load_calibration_dataset(cfg, load_dataset(cfg))


def test_changed_calibration_file_is_another_study(files, tmp_path, capsys):
    """A search resumed after the calibration file's contents changed would mix trials fitted on two calibration
    sets in one front: it is refused like any identity change, and the finished study stays as it was."""
    for name in ("target.npz", "source.npz"):
        (tmp_path / name).write_bytes((files / name).read_bytes())
    sections = vit_sections(tmp_path, data={"kind": "npz", "path": "target.npz", "calibration_path": "source.npz",
                                            "calibration": N_CAL, "probe": 4, "eval": 4, "options": {}},
                            search={"trials": 2, "objectives": ["fidelity", "flops"], "max_span": 2})
    cfg = write_config(tmp_path / "study.toml", sections)
    args = ("search", cfg, "--out", tmp_path / "out", "--quiet")
    rc, _, err = run_main(capsys, *args)
    assert rc == 0, err
    trials = (tmp_path / "out" / "trials.csv").read_bytes()
    _save(tmp_path / "source.npz", np.random.default_rng(8).integers(0, 96, (N_CAL, 3, 32, 32), dtype=np.uint8))
    rc, _, err = run_main(capsys, *args)
    assert_one_line_error(rc, err, "holds a study with a different identity (differing keys: data.content.calibration)")
    assert (tmp_path / "out" / "trials.csv").read_bytes() == trials


@pytest.mark.parametrize("calibration,needle", [
    ("target.npz", "is data.path itself (target.npz)"),
    ("copy.npz", "shares samples with data.path target.npz"),
    ("source.npz", None),
])
def test_calibration_on_the_eval_data_is_said(files, tmp_path, capsys, calibration, needle):
    """A transfer whose calibration data is data.path itself, or a copy of it, scores fits on samples they were
    fitted on: one warning line with the counts (found here by comparing the split indices), exit 0."""
    for name in ("target.npz", "source.npz"):
        (tmp_path / name).write_bytes((files / name).read_bytes())
    (tmp_path / "copy.npz").write_bytes((files / "target.npz").read_bytes())
    data = {"kind": "npz", "path": "target.npz", "calibration_path": calibration, "calibration": N_CAL, "probe": 4,
            "eval": 4, "options": {}}
    cfg = write_config(tmp_path / "study.toml", vit_sections(tmp_path, data=data))
    rc, _, err = run_main(capsys, "scores", cfg, "--out", tmp_path / "out", "--quiet", "--max-span", "1")
    assert rc == 0, err
    warned = [line for line in err.splitlines() if "data.calibration_path" in line]
    if needle is None:
        assert not warned, err
        return
    from rba.config import load_config
    from rba.session import Session

    idx = Session(load_config(cfg), progress=False).splits.indices  # the same file: overlap by index
    counts = {name: len(set(idx["calibration"]) & set(idx[name])) for name in ("probe", "eval")}
    assert len(warned) == 1 and warned[0].startswith("rba: warning: ") and needle in warned[0], err
    for name, n in counts.items():
        assert (f"{n} of the 4 {name} samples" in warned[0]) == (n > 0), warned[0]


def test_transfer_table_scores_both_fits_on_one_test_split_with_paired_tests(files, capsys):
    """studies/transfer_table.py: own fits (the config less calibration_path) and transfer fits scored on the same
    test samples; each value's standard error and each transfer − own difference recomputed from the printed table."""
    import importlib.util
    from pathlib import Path

    from rba.config import load_config

    spec = importlib.util.spec_from_file_location("transfer_table", Path(__file__).parents[1] / "studies" / "transfer_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    path = write_config(files / "table.toml", vit_sections(files, data={
        "kind": "npz", "path": "target.npz", "calibration_path": "source.npz", "calibration": 4, "probe": 4,
        "eval": 2, "test": 6, "options": {}}))
    assert module.main([str(path), "--spans", "0-2"]) == 0
    text = capsys.readouterr().out
    plain = [line for line in text.splitlines() if line.startswith("| ") and " ± " not in line]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in plain]
    header, body = rows[0], {r[0]: dict(zip(rows[0], r)) for r in rows[1:]}
    assert header[:2] == ["spans", "FLOPs"] and {"none", "0-2"} <= set(body)
    assert float(body["none"]["fidelity, own"]) == pytest.approx(1.0) == float(body["none"]["fidelity, transfer"])
    assert body["none"]["accuracy, own"] == body["none"]["accuracy, transfer"]  # one unmodified model, one probe
    own = load_config(path)
    own.data.calibration_path = None
    from rba.session import Session

    per = Session(own, progress=False, measure_latency=False).evaluate_split("0-2", "test")
    assert len(per.cosine) == 6
    assert float(body["0-2"]["fidelity, own"]) == pytest.approx(per.cosine.mean(), abs=1e-4)
    detail = [line for line in text.splitlines() if line.startswith("| 0-2 | fidelity |")][0]
    cells = [c.strip() for c in detail.strip("|").split("|")]
    (own_value, own_se), (xfer_value, _) = (map(float, cells[k].split(" ± ")) for k in (2, 3))
    assert own_se == pytest.approx(per.cosine.std(ddof=1) / np.sqrt(6), abs=1e-4)
    assert float(cells[4]) == pytest.approx(xfer_value - own_value, abs=2e-4)
    assert float(cells[9]) >= float(cells[8])  # Holm never lowers a p-value
