"""Bad data files give one ``rba: error:`` line through the CLI (exit 2), before any work and with nothing written;
missing labels never become a class of their own."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from test_reliability import assert_nothing_written, assert_one_line_error, run_main, text_sections, vit_sections, \
    write_config

SPLITS = {"calibration": 4, "probe": 4, "eval": 4}


def _images(n: int = 12) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(n, 3, 8, 8), dtype=np.uint8)


def _npz(folder, labels) -> dict:
    np.savez(folder / "images.npz", images=_images(len(labels)), labels=labels)
    return vit_sections(folder, data={"kind": "npz", "path": "images.npz", **SPLITS})


def _csv(folder, label_cells) -> dict:
    rows = "".join(f"some words number {i},{cell}\n" for i, cell in enumerate(label_cells))
    (folder / "texts.csv").write_text("text,label\n" + rows)
    return text_sections(folder, data=SPLITS)


def _image_folder(folder, damage) -> dict:
    root = folder / "images"
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i, img in enumerate(_images(6)):
            Image.fromarray(img.transpose(1, 2, 0)).save(root / c / f"{i}.png")
    damage(root)
    return vit_sections(folder, data={"kind": "image-folder", "path": "images", **SPLITS})


def _truncate(path):
    path.write_bytes(path.read_bytes()[:60])


LABELS = [0, 1, 2] * 4
CASES = [
    pytest.param(lambda f: _npz(f, np.array(LABELS[:-1] + [np.nan])), ["scores"],
                 ["images.npz: 'labels' holds 1 NaN/Inf values"], id="npz-nan-label"),
    pytest.param(lambda f: _npz(f, np.eye(3)[LABELS]), ["scores"],
                 ["images.npz: 'labels' must be 1-D (one class id per image), got shape (12, 3)", "labels.argmax(1)"],
                 id="npz-2d-labels"),
    pytest.param(lambda f: _npz(f, np.array(LABELS[:-1] + [-1])), ["scores"],
                 ["images.npz: 'labels' holds negative values (-1)"], id="npz-negative-label"),
    pytest.param(lambda f: _csv(f, ["pos", "neg", ""] * 4), ["evaluate", "--spans", "none"],
                 ["texts.csv: 4 rows have no label in column 'label' (empty or NaN: data rows 3, 6, 9, 12)", "data.label = \"\""],
                 id="csv-empty-label"),
    pytest.param(lambda f: _csv(f, ["pos", "neg", "pos", "NaN"] * 3), ["evaluate", "--spans", "none"],
                 ["texts.csv: 3 rows have no label in column 'label' (empty or NaN: data rows 4, 8, 12)"], id="csv-nan-label"),
    pytest.param(lambda f: _image_folder(f, lambda root: _truncate(root / "dog" / "3.png")), ["scores"],
                 ["cannot read the image", "dog/3.png", "replace or remove the file"], id="image-folder-truncated"),
    pytest.param(lambda f: _image_folder(f, lambda root: (root / "cat" / "0.png").write_bytes(b"not a png")),
                 ["scores"], ["cannot read the image", "cat/0.png"], id="image-folder-corrupt"),
    pytest.param(lambda f: _npz(f, np.array(LABELS)) | {"data": {"kind": "image-folder", "path": "images.npz",
                                                                 **SPLITS}},
                 ["scores"], ["data.path", "images.npz is a file", "kind = \"npz\""], id="image-folder-is-a-file"),
]


@pytest.mark.parametrize("make,argv,needles", CASES)
def test_bad_data_one_line_error(tmp_path, capsys, make, argv, needles):
    cfg = write_config(tmp_path / "study.toml", make(tmp_path))
    out = ["--out", tmp_path / "out"] if argv[0] == "scores" else []
    rc, _, err = run_main(capsys, *argv, cfg, *out, "--quiet")
    assert_one_line_error(rc, err, *needles)
    assert_nothing_written(tmp_path)


def test_labels_are_read_as_given(tmp_path):
    """Valid labels: npz float labels that are whole numbers, CSV class names (sorted) -- no extra class."""
    from rba.config import load_config
    from rba.data import load_dataset

    cfg = load_config(write_config(tmp_path / "npz.toml", _npz(tmp_path, np.array(LABELS, dtype=np.float32))))
    np.testing.assert_array_equal(load_dataset(cfg).labels, LABELS)
    cfg = load_config(write_config(tmp_path / "csv.toml", _csv(tmp_path, ["pos", "neg", "pos"] * 4)))
    ds = load_dataset(cfg)
    assert ds.classes == ["neg", "pos"] and list(ds.labels) == [1, 0, 1] * 4


def test_missing_labels_where_none_are_needed_load_unlabelled(tmp_path, capsys):
    cfg = write_config(tmp_path / "study.toml", _csv(tmp_path, ["pos", "neg", ""] * 4))
    from rba.config import load_config
    from rba.data import load_dataset

    assert load_dataset(load_config(cfg), need_labels=False).labels is None
