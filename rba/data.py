"""Data sets as raw samples (texts, or uint8 N×C×H×W images) with optional integer labels, and the disjoint
splits (calibration, probe, eval, and the held-out test split when ``data.test`` > 0) drawn once with
``data.seed``. For a cross-dataset transfer (``data.calibration_path``) the calibration split comes from a
second data set.

Preprocessing is the adapter's job (tokenizer, timm normalisation, EfficientNet-Lite scaling): data stays raw.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence

import numpy as np
import pandas as pd

from rba.datasets import DATASETS, data_file
from rba.errors import DataError

__all__ = ["Dataset", "Samples", "Splits", "ImageFiles", "load_dataset", "load_calibration_dataset", "make_splits",
           "data_identity", "CalibrationOverlapWarning"]

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
#: label cells that mean "no label" (pandas' default NA strings, compared lower-cased): never a class of their own
_MISSING_LABELS = {"", "nan", "-nan", "na", "n/a", "<na>", "#n/a", "null", "none"}


class Samples(Protocol):
    """Raw samples as a data set holds them and the pipeline reads them: a list of texts, a uint8 N×C×H×W array,
    or :class:`ImageFiles`; each has a length, iterates, and takes an index, a slice or an index array."""

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Any]: ...

    def __getitem__(self, index: Any, /) -> Any: ...


class CalibrationOverlapWarning(UserWarning):
    """A transfer's calibration data (``data.calibration_path``) is ``data.path`` itself, or shares samples with
    the probe or eval split: those are then not unseen data for the fits."""


@dataclass
class Dataset:
    samples: Samples
    """list[str] for text, uint8 array N×C×H×W (or :class:`ImageFiles`, decoded as read) for images"""
    labels: np.ndarray | None
    modality: str
    """"text" or "image\""""
    classes: list[str] | None = None
    source: str = ""

    def __len__(self) -> int:
        return len(self.samples)

    def subset(self, index: np.ndarray) -> "Dataset":
        if self.modality == "text":
            samples: Samples = [self.samples[i] for i in index]
        elif isinstance(self.samples, ImageFiles):
            samples = self.samples.subset(index)  # still files: nothing decoded
        else:
            samples = np.asarray(self.samples)[index]
        labels = None if self.labels is None else self.labels[index]
        return Dataset(samples, labels, self.modality, self.classes, self.source)

    def fingerprint(self) -> str:
        """A content hash of samples and labels (part of the statistics cache key)."""
        h = hashlib.sha256()
        if self.modality == "text":
            for s in self.samples:
                h.update(s.encode("utf-8", "replace"))
                h.update(b"\0")
        elif isinstance(self.samples, ImageFiles):
            self.samples.update_hash(h)
        else:
            arr = np.ascontiguousarray(self.samples)
            h.update(str(arr.shape).encode())
            h.update(arr.tobytes())
        if self.labels is not None:
            h.update(np.ascontiguousarray(self.labels).tobytes())
        return h.hexdigest()[:16]

    def num_classes(self) -> int:
        return 0 if self.labels is None else int(len(np.unique(self.labels)))


#: PIL's errors for unreadable image data
_PIL_ERRORS = (OSError, SyntaxError, ValueError)


def _unreadable_image(path: Path, exc: Exception) -> DataError:
    return DataError(f"cannot read the image {path}: {exc}; replace or remove the file")


class ImageFiles:
    """The images of an ``image-folder`` data set, decoded only when a batch is read: ``files[a:b]`` (or an index
    array through :meth:`subset`) stays a list of files, ``images[a:b]`` decodes those images into a uint8
    N×C×H×W array, resized on load to ``size`` (width, height), so that a folder of large images never sits in
    memory at full size, nor all at once. ``np.asarray`` decodes them all."""

    def __init__(self, files: Sequence[Path], size: tuple[int, int]):
        self.files = list(files)
        self.size = (int(size[0]), int(size[1]))

    def __len__(self) -> int:
        return len(self.files)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.files), 3, self.size[1], self.size[0])

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            return self.decode(self.files[key])
        files = self.files[key] if isinstance(key, slice) else [self.files[i] for i in np.asarray(key)]
        if not files:
            return np.empty((0, 3, self.size[1], self.size[0]), dtype=np.uint8)
        return np.stack([self.decode(f) for f in files])

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self.decode(f) for f in self.files)

    def __array__(self, dtype=None, copy=None):
        arr = self[:]
        return arr if dtype is None else arr.astype(dtype)

    def subset(self, index: np.ndarray) -> "ImageFiles":
        return ImageFiles([self.files[i] for i in index], self.size)

    def decode(self, path: Path) -> np.ndarray:
        """One image as uint8 C×H×W (RGB), resized to ``size`` as it is decoded (a JPEG decodes at a reduced scale
        first where that is still at least ``size``)."""
        from PIL import Image  # lazy: PIL, for image files only

        try:
            with Image.open(path) as opened:
                if opened.size != self.size:
                    opened.draft("RGB", self.size)  # JPEG only: decode at the smallest scale ≥ size
                img = opened.convert("RGB")
        except _PIL_ERRORS as exc:
            raise _unreadable_image(path, exc) from None
        if img.size != self.size:
            img = img.resize(self.size, Image.Resampling.BILINEAR, reducing_gap=3.0)
        return np.asarray(img).transpose(2, 0, 1)

    def update_hash(self, h) -> None:
        """The files' bytes and the decoding size (the statistics cache key), read without decoding."""
        h.update(f"image-folder {self.size}".encode())
        for f in self.files:
            h.update(f.name.encode("utf-8", "replace"))
            h.update(hashlib.sha256(f.read_bytes()).digest())


@dataclass
class Splits:
    calibration: Dataset
    probe: Dataset
    eval: Dataset
    indices: dict[str, np.ndarray]
    """each split's sample indices into its data set (``"test"`` only when ``data.test`` > 0)"""
    test: Dataset | None = None
    """the held-out split (``data.test`` samples; None when 0)"""


def data_identity(cfg, splits: Splits) -> dict[str, Any]:
    """What results depend on in ``[data]``, for a study's or a comparison's identity: the settings, with the
    files named by ``path`` and ``calibration_path`` replaced by a content digest of each split drawn from them
    (:meth:`Dataset.fingerprint`). A file whose contents change gives another identity; the same contents at
    another path give the same one."""
    data = dataclasses.asdict(cfg.data)
    for key in ("path", "calibration_path"):
        data.pop(key, None)
    if data.get("calibration_kind") is None:  # unset: absent, as in identities from before transfers existed
        data.pop("calibration_kind", None)
    # the test split is held out after the others, which stay as they were: the search never sees it (where more
    # test samples change the data, synthetic data sized by the splits, the content digests change with it)
    data.pop("test", None)
    data["content"] = {name: getattr(splits, name).fingerprint() for name in ("calibration", "probe", "eval")}
    return data


def load_dataset(cfg, *, need_labels: bool | None = None) -> Dataset:
    """Load the data set that ``cfg.data`` describes (``cfg`` is the whole :class:`~rba.config.Config`).

    ``need_labels=False`` (label-free commands such as ``rba scores``): a text-csv file without the
    ``data.label`` column loads unlabelled instead of failing."""
    d = cfg.data
    check_data_paths(cfg)  # a missing calibration file fails with the data, before any capture
    if d.kind == "synthetic":
        return _synthetic(d)
    return _load(cfg, d.kind, d.path, "data.path", need_labels=need_labels)


def load_calibration_dataset(cfg, main: Dataset | None = None) -> Dataset | None:
    """The calibration data set of a cross-dataset transfer (``data.calibration_path``, read as
    ``data.calibration_kind``, default ``data.kind``), or None when the calibration split comes from ``data.path``.

    Its labels are never needed (statistics are label-free). ``main``: the data set of ``data.path``, whose
    modality (texts or images) the calibration data must share."""
    d = cfg.data
    if d.calibration_path is None:
        return None
    kind = d.calibration_kind or d.kind
    if kind == "synthetic":
        raise DataError("data.calibration_path needs a file kind: set data.calibration_kind to text-csv, npz or "
                        "image-folder (data.kind is synthetic)")
    ds = _load(cfg, kind, d.calibration_path, "data.calibration_path", need_labels=False)
    if main is not None and ds.modality != main.modality:
        raise DataError(f"data.calibration_path {ds.source} holds {ds.modality}s but data.path holds "
                        f"{main.modality}s: calibrate on data of the same modality")
    return ds


def check_data_paths(cfg) -> None:
    """The data files the config names exist (one line naming the missing one otherwise): checked before the model
    loads, so a wrong path costs no model load."""
    d = cfg.data
    if d.calibration_path is not None:
        _existing(cfg, d.calibration_path, "data.calibration_path")
    if d.kind != "synthetic":
        if d.path is None:
            raise DataError(f"[data] kind = {d.kind!r} needs a path: set data.path in the config")
        _existing(cfg, d.path, "data.path")


def _existing(cfg, raw_path: str, key: str) -> Path:
    """``raw_path`` resolved, or a DataError naming the key and, for a file ``rba data`` makes, the command."""
    path = cfg.resolve_path(raw_path)
    if not path.exists():
        made_by = [name for name in DATASETS if data_file(name) == path.name]
        how = ("relative paths are read from the config's folder, or from the working directory for a study run "
               "by name")
        if made_by:
            source = " --source FOLDER_OR_TAR" if made_by[0].startswith("cifar") else ""
            how = f"make it with `rba data {made_by[0]}{source} --out {path}`, or set {key}"
        else:
            how = f"set {key}; {how}"
        raise DataError(f"{'calibration ' if key != 'data.path' else ''}data path not found: {path} ({how})")
    return path


def _load(cfg, kind: str, raw_path: str | None, key: str, *, need_labels: bool | None) -> Dataset:
    if raw_path is None:
        raise DataError(f"[data] kind = {kind!r} needs a path: set {key} in the config")
    path = _existing(cfg, raw_path, key)
    d = cfg.data
    if kind == "text-csv":
        ds = _text_csv(path, d.text, d.label, label_required=need_labels is not False)
    elif kind == "npz":
        ds = _npz(path)
    elif kind == "image-folder":
        ds = _image_folder(path, d.image_size)
    else:  # validated by the config
        raise DataError(f"unknown data kind {kind!r}")
    if len(ds) == 0:
        raise DataError(f"the data set at {path} holds no samples (e.g. a CSV with only its header row, or only "
                        f"blank texts): point {key} at a file with data")
    return ds


def make_splits(ds: Dataset, cfg, *, need_labels: bool, calibration: Dataset | None = None) -> Splits:
    """Disjoint calibration / probe / eval / test splits drawn with ``data.seed``: consecutive slices of one
    permutation, test last, so that adding a test split leaves the others (and the statistics cache) as they were.

    ``need_labels``: accuracy is asked for, so labels must exist and hold at least two classes.
    ``calibration``: the data set of a cross-dataset transfer (:func:`load_calibration_dataset`): the
    calibration split is drawn from it (``indices["calibration"]`` then index it), while probe and eval are drawn
    from ``ds`` exactly as without a transfer (the samples the calibration split would have taken stay unused),
    so that the same config without ``calibration_path`` is the baseline on identical probe and eval splits.
    """
    d = cfg.data
    total = d.calibration + d.probe + d.eval + d.test
    if total > len(ds):
        unused = (" (in a transfer the data.calibration samples of data.path stay unused, so that probe and eval "
                  "match the same config without calibration_path)" if calibration is not None else "")
        test = f" + test {d.test}" if d.test else ""
        raise DataError(
            f"the splits ask for {total} samples (calibration {d.calibration} + probe {d.probe} + eval {d.eval}{test}) "
            f"but {ds.source or 'the data set'} has only {len(ds)}: lower data.calibration/probe/eval"
            f"{'/test' if d.test else ''}{unused}"
        )
    if calibration is not None and d.calibration > len(calibration):
        raise DataError(f"data.calibration = {d.calibration} but the calibration data set {calibration.source} has "
                        f"only {len(calibration)} samples: lower data.calibration")
    if need_labels:
        if ds.labels is None:
            raise DataError(
                f"accuracy needs labels but {ds.source or 'the data set'} has none: set data.label "
                "(text-csv), add a 'labels' array (npz), or search on fidelity instead"
            )
        if ds.num_classes() < 2:
            raise DataError(
                f"accuracy needs at least two classes but the labels of {ds.source or 'the data set'} hold one: "
                "use a labelled data set with several classes, or search on fidelity instead"
            )
    rng = np.random.default_rng(d.seed)
    perm = rng.permutation(len(ds))
    cuts = np.cumsum([d.calibration, d.probe, d.eval, d.test])
    idx = {
        "calibration": np.sort(perm[: cuts[0]]),
        "probe": np.sort(perm[cuts[0] : cuts[1]]),
        "eval": np.sort(perm[cuts[1] : cuts[2]]),
    }
    if d.test:
        idx["test"] = np.sort(perm[cuts[2] : cuts[3]])
    source = ds
    if calibration is not None:
        idx["calibration"] = np.sort(rng.permutation(len(calibration))[: d.calibration])
        source = calibration
    splits = Splits(source.subset(idx["calibration"]), ds.subset(idx["probe"]), ds.subset(idx["eval"]), idx,
                    test=ds.subset(idx["test"]) if d.test else None)
    if calibration is not None:
        _warn_if_overlapping(cfg, splits)
    return splits


def _sample_digests(ds: Dataset) -> list[bytes]:
    """One digest per sample: a text's, an image's pixels, an image file's bytes."""
    if ds.modality == "text":
        return [hashlib.sha1(s.encode("utf-8", "replace")).digest() for s in ds.samples]
    if isinstance(ds.samples, ImageFiles):
        return [hashlib.sha1(f.read_bytes()).digest() for f in ds.samples.files]
    return [hashlib.sha1(np.ascontiguousarray(x).tobytes()).digest() for x in np.asarray(ds.samples)]


def _warn_if_overlapping(cfg, splits: Splits) -> None:
    """A transfer calibrated on ``data.path`` itself, or on samples of its probe or eval split, measures its fits on
    data they were fitted on: said in one warning (the run goes on; a deliberate choice is the user's)."""
    d = cfg.data
    same = cfg.resolve_path(d.calibration_path).resolve() == cfg.resolve_path(d.path).resolve() if d.path else False
    calibration = set(_sample_digests(splits.calibration))
    shared = {name: sum(x in calibration for x in _sample_digests(getattr(splits, name))) for name in ("probe", "eval")}
    if not same and not any(shared.values()):
        return
    what = (f"is data.path itself ({d.path})" if same else
            f"shares samples with data.path {d.path}")
    counts = ", ".join(f"{n} of the {len(getattr(splits, name))} {name} samples" for name, n in shared.items() if n)
    warnings.warn(f"data.calibration_path {d.calibration_path} {what}: the calibration split holds "
                  f"{counts or 'none of the probe or eval samples this time'}, so fits are scored on data they "
                  "were fitted on; calibrate on another data set, or drop calibration_path for the disjoint splits of "
                  "data.path", CalibrationOverlapWarning, stacklevel=2)


# ---------------------------------------------------------------------- readers
def _text_csv(path: Path, text_col: str, label_col: str | None, *, label_required: bool = True) -> Dataset:
    try:
        frame = pd.read_csv(path, keep_default_na=False)
    except Exception as exc:  # pandas raises many kinds on malformed files
        raise DataError(f"cannot read {path} as CSV: {exc}") from None
    if text_col not in frame.columns:
        raise DataError(f"{path} has no text column {text_col!r} (columns: {', '.join(map(str, frame.columns))}); set data.text")
    texts = [str(t) for t in frame[text_col].tolist()]
    labels = classes = None
    if label_col and (label_required or label_col in frame.columns):
        if label_col not in frame.columns:
            raise DataError(
                f"{path} has no label column {label_col!r} (columns: {', '.join(map(str, frame.columns))}); "
                "set data.label, or data.label = \"\" for unlabelled data"
            )
        cells = [str(v) for v in frame[label_col].tolist()]
        missing = [row for row, cell in enumerate(cells) if cell.strip().lower() in _MISSING_LABELS]
        if missing and label_required:
            rows = ", ".join(str(r + 1) for r in missing[:5]) + (", …" if len(missing) > 5 else "")
            raise DataError(
                f"{path}: {len(missing)} rows have no label in column {label_col!r} (empty or NaN: data rows {rows}); fill in or "
                "remove those rows, or set data.label = \"\" to read the data unlabelled"
            )
        if not missing:  # (with missing labels where none are needed, the data loads unlabelled)
            classes = sorted(set(cells))
            lookup = {c: i for i, c in enumerate(classes)}
            labels = np.array([lookup[c] for c in cells], dtype=np.int64)
    keep = [i for i, t in enumerate(texts) if t.strip()]
    texts = [texts[i] for i in keep]
    if labels is not None:
        labels = labels[keep]
    return Dataset(texts, labels, "text", classes, source=str(path))


#: how a file numpy writes begins: an .npz is a zip archive (np.savez), an .npy numpy's own header
_NPZ_MAGIC = (b"PK\x03\x04", b"PK\x05\x06", b"\x93NUMPY")


def _npz(path: Path) -> Dataset:
    try:
        with open(path, "rb") as f:
            head = f.read(6)
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    if not head.startswith(_NPZ_MAGIC):  # numpy would try it as a pickle and advise allow_pickle: never
        raise DataError(f"{path} is not a numpy .npz file (it begins {head!r}): data kind \"npz\" reads arrays saved "
                        "with numpy.savez ('images', optionally 'labels'); for a CSV of texts set the kind to "
                        "\"text-csv\", for a folder of images \"image-folder\"")
    try:
        with np.load(path, allow_pickle=False) as z:
            if "images" not in z:
                raise DataError(f"{path} has no 'images' array (arrays: {', '.join(z.files)})")
            images = z["images"]
            labels = _npz_labels(path, z["labels"]) if "labels" in z else None
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"cannot read {path} as .npz: {exc}") from None
    if images.ndim == 3:  # N×H×W grayscale
        images = images[:, None]
    if images.ndim != 4 or images.dtype != np.uint8:
        raise DataError(f"{path}: 'images' must be uint8 N×C×H×W (0..255), got {images.dtype} {images.shape}")
    if labels is not None and len(labels) != len(images):
        raise DataError(f"{path}: {len(labels)} labels for {len(images)} images")
    return Dataset(images, labels, "image", source=str(path))


def _npz_labels(path: Path, labels: np.ndarray) -> np.ndarray:
    """``labels`` as int64 class ids, or one DataError: a label must be one whole number ≥ 0 per image."""
    if labels.ndim != 1:
        raise DataError(f"{path}: 'labels' must be 1-D (one class id per image), got shape {labels.shape}; "
                        "one-hot labels: save labels.argmax(1)")
    if labels.dtype.kind == "f":
        bad = int((~np.isfinite(labels)).sum())
        if bad:
            raise DataError(f"{path}: 'labels' holds {bad} NaN/Inf values: give every image a class id, or drop "
                            "the 'labels' array for unlabelled data")
        if (labels != np.round(labels)).any():
            raise DataError(f"{path}: 'labels' holds fractional values; class ids are whole numbers")
    elif labels.dtype.kind not in "iub":
        raise DataError(f"{path}: 'labels' must hold integer class ids, got dtype {labels.dtype}")
    if len(labels) and labels.min() < 0:
        raise DataError(f"{path}: 'labels' holds negative values ({labels.min():g}); class ids run from 0")
    return labels.astype(np.int64)


def _image_folder(path: Path, image_size: int | None = None) -> Dataset:
    """One sub-folder of images per class, read lazily (:class:`ImageFiles`): every file is checked here (its
    header and, where the format allows, its structure: PIL's ``verify``), none is decoded. Images are resized on
    load to ``image_size`` squared, else to the first image's size."""
    from PIL import Image  # lazy: PIL, for image files only

    if not path.is_dir():
        raise DataError(f"data.path {path} is a file, but kind = \"image-folder\" reads a folder with one "
                        "sub-folder of images per class (for an .npz file set kind = \"npz\")")
    classes = sorted(p.name for p in path.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{path} holds no class sub-folders (image-folder wants one sub-folder per class)")
    files, labels = [], []
    size = (image_size, image_size) if image_size else None
    for ci, c in enumerate(classes):
        for f in sorted((path / c).iterdir()):
            if f.suffix.lower() not in _IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(f) as opened:  # reads the header only
                    size = size or opened.size
                    opened.verify()  # a truncated or damaged file fails here, before any work
            except _PIL_ERRORS as exc:
                raise _unreadable_image(f, exc) from None
            files.append(f)
            labels.append(ci)
    if not files or size is None:  # (size is known from the first file on)
        raise DataError(f"{path} holds no images in its class folders")
    return Dataset(ImageFiles(files, size), np.array(labels, dtype=np.int64), "image", classes, source=str(path))


_WORDS = (
    "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau "
    "upsilon phi chi psi omega red green blue cyan magenta yellow black white"
).split()


def _available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux's MemAvailable, else free physical pages)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _check_fits_in_memory(nbytes: int, what: str) -> None:
    available = _available_memory()
    if available is not None and nbytes > 0.8 * available:
        raise DataError(f"{what} would need {nbytes / 2**30:.1f} GiB of memory and {available / 2**30:.1f} GiB is "
                        "available: lower data.options.n (or calibration / probe / eval / test), or the image shape")


def _synthetic(d) -> Dataset:
    """Deterministic toy data for tests: texts whose label depends on their words, or images whose label
    sets the mean brightness of a quadrant."""
    opts = dict(d.options)
    n = int(opts.get("n", d.calibration + d.probe + d.eval + d.test))  # options.n keeps it fixed as splits change
    classes = int(opts.get("classes", 2))
    rng = np.random.default_rng(int(opts.get("seed", 1234)))
    modality = opts.get("modality", "text")
    c, h, w = opts.get("shape", [3, 32, 32])
    # bytes while generating: the int64 image array (or ~256 bytes per short text) and the labels
    _check_fits_in_memory(n * (int(c) * int(h) * int(w) * 9 if modality != "text" else 256) + 8 * n,
                          f"synthetic data of {n:,} samples")
    labels = rng.integers(0, classes, size=n)
    if modality == "text":
        texts = []
        for y in labels:
            length = int(rng.integers(3, int(opts.get("max_words", 12)) + 1))
            words = list(rng.choice(_WORDS[8:], size=length))
            words[int(rng.integers(0, length))] = _WORDS[int(y) % 8]
            texts.append(" ".join(words))
        return Dataset(texts, labels.astype(np.int64), "text", [str(c) for c in range(classes)], source="synthetic")
    images = rng.integers(0, 160, size=(n, c, h, w)).astype(np.int64)
    for i, y in enumerate(labels):
        qy, qx = divmod(int(y) % 4, 2)
        images[i, :, qy * h // 2 : (qy + 1) * h // 2, qx * w // 2 : (qx + 1) * w // 2] += 90
    return Dataset(images.clip(0, 255).astype(np.uint8), labels.astype(np.int64), "image", [str(c) for c in range(classes)], source="synthetic")
