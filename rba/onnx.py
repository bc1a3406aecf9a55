"""ONNX export of an rba export, checked in ONNX Runtime, and its measured ONNX Runtime speed-up.

``rba export CONFIG --spans S --out DIR --format onnx`` writes, next to ``model.safetensors`` and
``recipe.json``:

- ``model.onnx``: the approximated model as reloaded from the export (what users deploy), classifier head
  included; outputs ``pooled`` (the model's pooled representation) and, when the export has a head, ``logits``;
- ``unmodified.onnx``: the unmodified model with its own head (the probe of the unmodified network, the fixed
  probe, or the native head), written once: a later export of the same model into the same folder keeps it;
- ``onnx_feed.npz``: one batch of the eval split, collated (the inputs both graphs were checked on, and what
  :func:`onnx_speedup` times);
- ``onnx.json``: input and output names, the measured differences, the export it belongs to, and the SHA-256 of
  the three files above: they are verified before any is timed, evaluated or kept (:func:`verify_onnx`), so a
  swapped, edited or truncated file is refused, never measured as the export's.

Inputs: images ``pixels`` (N×C×H×W float32, the model's own preprocessing applied); text ``input_ids`` and
``attention_mask`` (N×T int64). The batch axis (and the token axis) are dynamic. Before anything is renamed into
place, both graphs run in ONNX Runtime on the feed and their outputs must equal the PyTorch models' to a max
relative difference (max |onnx − torch| / max |torch|, per output) of at most :data:`MAX_REL_DIFF`.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np
import torch
from pydantic import model_validator
from torch import nn

from rba._io import atomic_path, atomic_write_json, disk_full, file_sha256, package_versions
from rba._records import Record, checked, read_record
from rba.errors import ConfigError, RBAError
from rba.export import load_export, read_recipe
from rba.fit import get_fit
from rba.names import HEAD_ATTR, config_hash, maps_tag
from rba.timing import compare

if TYPE_CHECKING:
    from rba.adapters import Adapter
    from rba.config import Config
    from rba.data import Samples
    from rba.export import SessionParts

__all__ = ["export_onnx", "onnx_speedup", "onnx_state", "verify_onnx", "read_onnx_meta", "OnnxRecord", "check_onnx_exportable", "MAX_REL_DIFF",
           "ONNX_MODEL", "ONNX_UNMODIFIED"]

ONNX_MODEL = "model.onnx"
ONNX_UNMODIFIED = "unmodified.onnx"
ONNX_FEED = "onnx_feed.npz"
ONNX_META = "onnx.json"
#: onnx.json's format: 2 records the files' checksums
ONNX_FORMAT = 2
#: the files onnx.json vouches for, by checksum
_CHECKED = (ONNX_MODEL, ONNX_UNMODIFIED, ONNX_FEED)


class OnnxRecord(Record):
    """onnx.json (format 2), written by :func:`export_onnx`, read before any ONNX file is timed, evaluated or kept."""

    format: Literal[2]
    sha256: dict[str, str]
    inputs: list[str]
    outputs: list[str]
    batch_size: int
    max_rel_diff: dict[str, float]
    tolerance: float
    opset: int
    recipe_sha256: str
    spans: str
    unmodified_key: str
    versions: dict[str, str]

    @model_validator(mode="after")
    def _every_file_and_graph(self):
        lacking = [n for n in _CHECKED if n not in self.sha256] + [g for g in ("model", "unmodified")
                                                                     if g not in self.max_rel_diff]
        if lacking:
            raise ValueError(f"no entry for {', '.join(lacking)}")
        return self


#: the largest max relative difference accepted between ONNX Runtime's and PyTorch's outputs
MAX_REL_DIFF = 1e-4
OPSET = 17


def check_onnx_exportable(cfg: Config) -> None:
    """Refuse, before any model is loaded, what the ONNX export does not cover."""
    if get_fit(cfg.fit.kind).folds:
        raise ConfigError(f"fit.kind = {cfg.fit.kind!r} exports the model in its own format (fewer blocks), which "
                          "--format onnx does not cover: export without --format onnx, or with [fit] kind = \"affine\"")
    if cfg.model.forward_dtype != "float32":
        raise ConfigError(f"model.forward_dtype = {cfg.model.forward_dtype!r}: the ONNX export writes float32 models "
                          "only (ONNX Runtime's CPU kernels are float32); export with --forward-dtype float32")
    try:  # imported only to see that they are installed (lazy: heavy, and needed only by --format onnx)
        import onnx  # noqa: F401  (unused: the import is the check)
        import onnxruntime  # noqa: F401  (unused: the import is the check)
    except ImportError as exc:
        raise ConfigError(f"--format onnx needs the packages onnx and onnxruntime ({exc}): pip install onnx "
                          "onnxruntime") from None


class _Deployed(nn.Module):
    """An adapter's end-to-end forward plus its classifier head, as one module with tensor inputs."""

    def __init__(self, adapter: Adapter, head: nn.Module | None, native: bool):
        super().__init__()
        self.adapter = adapter
        self.model = adapter.model  # registered, so the weights are the graph's initialisers
        self.head = None if head is None else copy.deepcopy(head).float()
        self.native = native
        self.text = _is_text(adapter)

    def forward(self, *inputs: torch.Tensor):
        x = {"input_ids": inputs[0], "attention_mask": inputs[1]} if self.text else inputs[0]
        pooled = self.adapter.forward(x).float()
        if self.native:
            return pooled, cast(torch.Tensor, self.adapter.logits(pooled)).float()  # (native: the model has a head)
        if self.head is not None:
            return pooled, self.head(pooled)
        return pooled


def _is_text(adapter: Adapter) -> bool:
    return hasattr(adapter, "tokenizer")


def _input_names(adapter: Adapter) -> list[str]:
    return ["input_ids", "attention_mask"] if _is_text(adapter) else ["pixels"]


def _feed(adapter: Adapter, samples: Samples) -> dict[str, np.ndarray]:
    batch = adapter.collate(samples)
    if _is_text(adapter):
        ids = batch["input_ids"]
        mask = batch.get("attention_mask")
        mask = torch.ones_like(ids) if mask is None else mask
        return {"input_ids": ids.long().numpy(), "attention_mask": mask.long().numpy()}
    return {"pixels": batch.float().contiguous().numpy()}


def _tracing_inputs(adapter: Adapter, feed: dict[str, np.ndarray]) -> tuple[torch.Tensor, ...]:
    """Inputs to trace with: the feed's first samples; for text two texts of different lengths, so that the
    traced graph holds the padding path of the attention mask (an unpadded batch may skip it)."""
    if _is_text(adapter):
        b = adapter.collate(["a", "a longer example sentence that needs more tokens"])
        return b["input_ids"].long(), b["attention_mask"].long()
    return (torch.from_numpy(feed["pixels"][:2]),)


def _rel_diff(got: np.ndarray, want: np.ndarray) -> float:
    scale = float(np.abs(want).max()) or 1.0
    return float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max() / scale)


def _ort_session(path: Path, threads: int | None = None):
    import onnxruntime as ort  # lazy: onnx, for --format onnx only

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads or torch.get_num_threads())
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def _write_onnx(module: _Deployed, adapter: Adapter, feed: dict[str, np.ndarray], reference: list[np.ndarray],
                path: Path, what: str) -> float:
    """Trace ``module`` to ``path`` (atomically), run it in ONNX Runtime on ``feed`` and compare with
    ``reference`` (the PyTorch outputs); returns the largest relative difference."""
    names = _input_names(adapter)
    outputs = ["pooled", "logits"][: len(reference)]
    axes = {n: ({0: "batch", 1: "tokens"} if _is_text(adapter) else {0: "batch"}) for n in names}
    axes |= {n: {0: "batch"} for n in outputs}
    with atomic_path(path) as tmp:
        try:
            with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
                warnings.simplefilter("ignore")
                torch.onnx.export(module.eval(), _tracing_inputs(adapter, feed), str(tmp), input_names=names,
                                  output_names=outputs, dynamic_axes=axes, opset_version=OPSET, dynamo=False)
        except Exception as exc:  # a tracer failure is the model's, not the user's input: name it in one line
            if disk_full(exc):  # not the model's: atomic_path names the file and the space left
                raise
            reason = " ".join(str(exc).split())[:300] or type(exc).__name__
            raise RBAError(f"cannot export {what} to ONNX ({type(exc).__name__}: {reason}): this model or fit kind "
                           "is not supported by the ONNX export") from None
        got = _ort_session(tmp).run(outputs, feed)
        diffs = [_rel_diff(g, w) for g, w in zip(got, reference)]
        worst = max(diffs)
        if not worst <= MAX_REL_DIFF:
            raise RBAError(f"{what} in ONNX Runtime differs from PyTorch by {worst:.3g} (max relative difference, "
                           f"outputs {', '.join(outputs)}; at most {MAX_REL_DIFF:g} is accepted): not written")
    return worst


@torch.inference_mode()
def _reference(adapter: Adapter, feed: dict[str, np.ndarray], head_fn) -> list[np.ndarray]:
    """The PyTorch outputs on ``feed``: the adapter's own forward, then ``head_fn(pooled)`` (None: no head)."""
    x = ({"input_ids": torch.from_numpy(feed["input_ids"]), "attention_mask": torch.from_numpy(feed["attention_mask"])}
         if _is_text(adapter) else torch.from_numpy(feed["pixels"]))
    pooled = adapter.forward(x)
    out = [pooled.float().numpy()]
    if head_fn is not None:
        out.append(head_fn(pooled).double().numpy())
    return out


def _unmodified_key(session: SessionParts, head_record: dict | None) -> str:
    cfg = session.cfg
    probe = session.splits.probe.fingerprint() if head_record and head_record["kind"] != "native" else None
    return config_hash({"identity": session.adapter.identity, "max_length": cfg.data.max_length,
                        "image_size": cfg.data.image_size, "head": head_record, "probe": probe,
                        "probe_c": cfg.evaluate.probe_c, "feed": cfg.evaluate.batch_size})


def export_onnx(session: SessionParts, folder: str | Path) -> dict[str, Any]:
    """Write ``folder/model.onnx`` for the rba export in ``folder`` (made by :func:`rba.export.export_model` from
    ``session``) and, once per model, ``folder/unmodified.onnx``; both checked in ONNX Runtime. Returns what
    ``onnx.json`` records."""

    check_onnx_exportable(session.cfg)
    folder = Path(folder)
    recipe = read_recipe(folder)
    model = session.cfg.model
    trusted = model.kind == "module" and model.trust_code
    exported = load_export(folder, trust_code=trusted, factory=model.name if trusted else None)
    samples = session.splits.eval.samples[: session.cfg.evaluate.batch_size]
    feed = _feed(exported, samples)
    head = recipe["head"]
    native = head is not None and head["kind"] == "native"
    linear = getattr(exported.model, HEAD_ATTR, None)
    module = _Deployed(exported, linear, native)
    head_fn = (exported.logits if native else
               (lambda p: linear(p.to(linear.weight.dtype))) if linear is not None else None)
    diffs = {"model": _write_onnx(module, exported, feed, _reference(exported, feed, head_fn),
                                  folder / ONNX_MODEL, f"the export {folder}")}

    meta_path = folder / ONNX_META
    old = _read_meta(meta_path)
    base_head, base_record = session.evaluator.export_head([], [], maps_tag(session.cfg.fit.kind, session.cfg.fit.mode),
                                                           class_names=session.dataset.classes)
    key = _unmodified_key(session, base_record)
    if old.get("unmodified_key") == key and _intact(folder, old, ONNX_UNMODIFIED):
        diffs["unmodified"] = old["max_rel_diff"]["unmodified"]  # the same model's: written once, kept
    else:
        base = session.adapter
        if base.device.type != "cpu":
            base = copy.deepcopy(base).to("cpu")
        base_native = base_record is not None and base_record["kind"] == "native"
        base_module = _Deployed(base, base_head, base_native)
        base_fn = (base.logits if base_native else
                   (lambda p: base_head(p.to(base_head.weight.dtype))) if base_head is not None else None)
        diffs["unmodified"] = _write_onnx(base_module, base, feed, _reference(base, feed, base_fn),
                                          folder / ONNX_UNMODIFIED, "the unmodified model")
    with atomic_path(folder / ONNX_FEED) as tmp:
        with open(tmp, "wb") as fh:
            # numpy's stub types savez's keywords as its allow_pickle flag too; feed's keys are input names
            np.savez(fh, **feed)  # type: ignore[arg-type]
    import onnx  # lazy: onnx, for --format onnx only
    import onnxruntime  # lazy: onnx, for --format onnx only

    meta = {"format": ONNX_FORMAT, "sha256": {name: file_sha256(folder / name) for name in _CHECKED}, "inputs": list(feed), "outputs": ["pooled", "logits"][: 1 + (head is not None)],
            "batch_size": len(samples), "max_rel_diff": diffs, "tolerance": MAX_REL_DIFF, "opset": OPSET,
            "recipe_sha256": recipe["recipe_sha256"], "spans": recipe["spans"], "unmodified_key": key,
            "versions": package_versions() | {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}}
    atomic_write_json(meta_path, checked(meta, OnnxRecord, str(meta_path)))
    return meta


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _intact(folder: Path, meta: dict[str, Any], name: str) -> bool:
    """``folder/name`` exists and matches the checksum ``meta`` (an onnx.json) records for it."""
    sums = meta.get("sha256")
    path = folder / name
    return isinstance(sums, dict) and path.is_file() and sums.get(name) == file_sha256(path)


def _fix(folder: Path) -> str:
    return f"rerun `rba export CONFIG --spans … --out {folder} --format onnx`"


def read_onnx_meta(folder: str | Path) -> dict[str, Any]:
    """``folder``'s onnx.json, checked against :class:`OnnxRecord`: one line naming it and the fix when it is
    missing, damaged, or written by an earlier rba (format 1 recorded no checksums)."""
    folder = Path(folder)
    path = folder / ONNX_META
    if not path.is_file():
        raise RBAError(f"{folder} holds {ONNX_MODEL} but no {ONNX_META} (an interrupted export?): {_fix(folder)}")
    fmt = _read_meta(path).get("format", ONNX_FORMAT)
    if fmt != ONNX_FORMAT:
        raise RBAError(f"{path} has format {fmt!r} and records no checksums of the ONNX files (written by an earlier "
                       f"rba), so they cannot be verified: {_fix(folder)}")
    return read_record(path, OnnxRecord, fix=_fix(folder))


def verify_onnx(folder: str | Path) -> None:
    """Refuse, naming the file, an ONNX export whose files do not match the checksums in its ``onnx.json`` (one
    swapped for another, edited or truncated), or whose ``onnx.json`` is damaged or records none (an earlier
    rba's)."""
    folder = Path(folder)
    meta = read_onnx_meta(folder)
    for name in _CHECKED:
        if not _intact(folder, meta, name):
            raise RBAError(f"{folder / name} does not match the checksum in {folder / ONNX_META} (replaced, edited or "
                           f"corrupted since it was written): {_fix(folder)}")


def _read_feed(folder: Path, inputs: list[str]) -> dict[str, np.ndarray]:
    """onnx_feed.npz's arrays, one per graph input, of one batch size (checked: its checksum can be recomputed)."""
    path = folder / ONNX_FEED
    try:
        with np.load(path, allow_pickle=False) as data:
            feed = {k: data[k] for k in data.files}
    except Exception as exc:  # numpy raises many kinds on a damaged archive
        raise RBAError(f"{path} cannot be read ({type(exc).__name__}): {_fix(folder)}") from None
    sizes = {len(v) if v.ndim else -1 for v in feed.values()}
    if sorted(feed) != sorted(inputs) or len(sizes) != 1 or -1 in sizes:
        raise RBAError(f"{path} holds {', '.join(sorted(feed)) or 'nothing'}, not one batch of the inputs "
                       f"{', '.join(inputs)}: {_fix(folder)}")
    return feed


def onnx_state(folder: str | Path) -> str | None:
    """None: ``folder`` holds no ONNX export; ``"current"``: it holds one of its rba export; ``"stale"``: one
    written for an earlier export into the same folder (re-exported since without --format onnx)."""
    folder = Path(folder)
    if not (folder / ONNX_MODEL).exists():
        return None
    meta = read_onnx_meta(folder)  # a damaged onnx.json is named, not taken for an earlier export's
    recipe = _read_meta(folder / "recipe.json")
    return "current" if recipe.get("recipe_sha256") == meta["recipe_sha256"] else "stale"


def onnx_speedup(export_dir: str | Path, *, repeats: int = 20, threads: int | None = None,
                 warmup: int = 2) -> dict[str, Any]:
    """ONNX Runtime latency of the unmodified model and the export in ``export_dir`` (written by
    ``rba export --format onnx``), on the batch in ``onnx_feed.npz``, measured by :func:`rba.timing.compare`
    (warm-up of both, unmodified-export-export-unmodified within each repeat, at least ``repeats``).

    Returns per-sample medians (``onnx_unmodified_ms``, ``onnx_export_ms``), the headline ``onnx_speedup``: the
    median of the paired per-repeat ratios unmodified/export, with its bootstrap interval (``onnx_speedup_low``,
    ``onnx_speedup_high`` at ``confidence``) and the share of repeats in which the export was faster
    (``onnx_export_faster``), every repeat's times (``unmodified_times_ms``, ``export_times_ms``), ``repeats`` (as
    run), ``order``, ``threads`` and ``batch_size``."""
    folder = Path(export_dir)
    files = [folder / ONNX_MODEL, folder / ONNX_UNMODIFIED, folder / ONNX_FEED, folder / ONNX_META]
    if not all(f.exists() for f in files):
        raise RBAError(f"{folder} holds no complete ONNX export (model.onnx, unmodified.onnx, onnx_feed.npz, "
                       "onnx.json): write one with `rba export CONFIG --spans … --out DIR --format onnx`")
    if onnx_state(folder) != "current":
        raise RBAError(f"{folder / ONNX_MODEL} was written for another export than {folder / 'recipe.json'} (the "
                       "folder was exported again without --format onnx): rerun `rba export … --format onnx`")
    verify_onnx(folder)
    threads = int(threads or torch.get_num_threads())
    feed = _read_feed(folder, read_onnx_meta(folder)["inputs"])
    n = len(next(iter(feed.values())))
    sessions = {"unmodified": _ort_session(folder / ONNX_UNMODIFIED, threads),
                "export": _ort_session(folder / ONNX_MODEL, threads)}
    c = compare(lambda: sessions["unmodified"].run(None, feed), lambda: sessions["export"].run(None, feed),
                samples=n, repeats=repeats, warmup=warmup)
    return {"onnx_unmodified_ms": c.a_ms, "onnx_export_ms": c.b_ms, "onnx_speedup": c.speedup,
            "onnx_speedup_low": c.speedup_low, "onnx_speedup_high": c.speedup_high, "onnx_export_faster": c.b_faster,
            "confidence": c.confidence, "order": c.order, "unmodified_times_ms": c.a_times_ms,
            "export_times_ms": c.b_times_ms, "repeats": c.repeats, "threads": threads, "batch_size": n}