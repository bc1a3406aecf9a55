"""Bad data files give one ``rba: error:`` line through the CLI (exit 2), before any work and with nothing written;
missing labels never become a class of their own."""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import assert_nothing_written, assert_one_line_error, run_main, text_sections, vit_sections, write_config
from PIL import Image

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
    pytest.param(lambda f: _csv(f, ["pos", "neg"] * 6) | {"data": {"kind": "npz", "path": "texts.csv", **SPLITS}},
                 ["scores"], ["texts.csv is not a numpy .npz file", "\"text-csv\""], id="csv-read-as-npz"),
]


@pytest.mark.parametrize("make,argv,needles", CASES)
def test_bad_data_one_line_error(tmp_path, capsys, make, argv, needles):
    cfg = write_config(tmp_path / "study.toml", make(tmp_path))
    out = ["--out", tmp_path / "out"] if argv[0] == "scores" else []
    rc, _, err = run_main(capsys, *argv, cfg, *out, "--quiet")
    assert_one_line_error(rc, err, *needles)
    assert "allow_pickle" not in err  # numpy's advice to unpickle a file that is no npz is never passed on
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


def test_image_folder_decodes_lazily_and_resized(tmp_path, monkeypatch):
    """A folder of large images: loading and splitting decode none of them, a batch decodes only its own images,
    each resized on load to data.image_size, so memory never holds a full-size image array; the pixels are
    PIL's own decode and resize of each file."""
    import tracemalloc

    from rba.config import Config
    from rba.data import ImageFiles, load_dataset, make_splits

    rng = np.random.default_rng(0)
    big = (1600, 1200)  # width, height: 5.8 MB per image as a uint8 array
    root = tmp_path / "images"
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(4):
            base = np.linspace(0, 255, big[0], dtype=np.uint8)[None, :, None].repeat(big[1], 0).repeat(3, 2)
            Image.fromarray(base ^ rng.integers(0, 32, size=(1, 1, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    cfg = Config.from_dict({"model": {"kind": "timm", "name": "test_vit", "pretrained": False},
                            "data": {"kind": "image-folder", "path": str(root), "image_size": 32,
                                     "calibration": 2, "probe": 2, "eval": 3}})
    decoded = []
    real = ImageFiles.decode
    monkeypatch.setattr(ImageFiles, "decode", lambda self, path: decoded.append(path) or real(self, path))
    tracemalloc.start()
    ds = load_dataset(cfg)
    splits = make_splits(ds, cfg, need_labels=True)
    assert decoded == [] and len(ds) == 8 and list(ds.labels) == [0] * 4 + [1] * 4
    ev = splits.eval.samples
    batch = ev[0:2]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert decoded == ev.files[0:2]  # the batch's two images, nothing else
    assert batch.shape == (2, 3, 32, 32) and batch.dtype == np.uint8
    assert peak < big[0] * big[1] * 3  # less than one full-size image was ever held as an array
    for k, f in enumerate(ev.files[0:2]):
        with Image.open(f) as img:
            want = np.asarray(img.convert("RGB").resize((32, 32), Image.Resampling.BILINEAR, reducing_gap=3.0))
        np.testing.assert_array_equal(batch[k], want.transpose(2, 0, 1))
    # the splits index the files the seed drew, and the fingerprint reads bytes, not pixels
    files = [f for c in ("cat", "dog") for f in sorted((root / c).iterdir())]
    assert ev.files == [files[i] for i in splits.indices["eval"]]
    decoded.clear()
    assert splits.calibration.fingerprint() != splits.probe.fingerprint() and decoded == []


def test_synthetic_data_larger_than_memory_stops_up_front_in_one_line(tmp_path):
    """A sample count whose arrays cannot fit stops before numpy allocates, naming the size and the limit."""
    from rba.config import Config
    from rba.data import load_dataset
    from rba.errors import DataError

    cfg = Config.from_dict({"model": {"kind": "timm", "name": "test_vit", "pretrained": False},
                            "data": {"kind": "synthetic", "calibration": 10, "probe": 10, "eval": 10,
                                     "options": {"modality": "image", "n": 10**12}}},
                           name="huge", base_dir=str(tmp_path))
    with pytest.raises(DataError) as err:
        load_dataset(cfg)
    text = str(err.value)
    assert "\n" not in text and "GiB" in text and "1,000,000,000,000 samples" in text
