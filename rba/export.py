"""Export a configuration as a model that reloads: ``model.safetensors`` (the approximated model's weights, with
each span's replacement module in place of its blocks, and the fitted classifier head when there is one) and
``recipe.json`` (how to rebuild it).

``load_export(dir)`` rebuilds the base architecture (no pretrained weights needed), puts in the module each span's
fit kind declares (:meth:`rba.fit.Fit.module`) and the head, and loads the saved weights strictly.
:func:`head_logits` classifies with the reloaded model.

Recipe format 2 (strict: unknown keys and missing fields are refused, and so is any other format):

``format`` (2), ``model`` (the config's [model] less trust_code), ``identity`` (the adapter's model identity),
``preprocess``, ``spans``, ``span_modules`` (per span: ``span``, ``kind`` from the fit registry, ``trained``,
``dim_in``, ``dim_out``; the weights are the module's in model.safetensors), ``head`` (null, or ``kind``
probe | fixed-probe | native with ``features`` and ``classes``; a probe is the float64 ``nn.Linear``
``rba_head`` of the saved model), ``layout``, ``dims``, ``fit`` (kind, ridge, mode), ``statistics_hash``,
``model_sha256``, ``versions`` and ``recipe_sha256``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol, Sequence, cast

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from safetensors.torch import load_model, save_model
from torch import nn

from rba._io import atomic_path, atomic_write_json, file_sha256, package_versions
from rba._records import checked, schema_problems
from rba.adapters import Adapter, create_adapter
from rba.apply import replace_, walk_spans
from rba.config import Config, DataConfig, ModelConfig
from rba.errors import RBAError
from rba.fit import get_fit
from rba.names import HEAD_ATTR, maps_tag
from rba.spans import Span, format_spans, parse_spans

if TYPE_CHECKING:
    from rba.data import Dataset, Splits
    from rba.evaluate import Evaluator
    from rba.statistics import Statistics

__all__ = ["export_model", "load_export", "read_recipe", "head_logits", "RECIPE_FORMAT", "FOLD_RECORD"]

RECIPE_FORMAT = 2


# ---------------------------------------------------------------------- the recipe's schema
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # read as JSON: no "3" for 3, no 1 for true


#: the largest size a recipe may record: a width, a token count, an image side or a class count beyond it is
#: damage (or an edit), not a model; refused before anything of that size is allocated
_MAX_SIZE = 1 << 20
_Size = Annotated[int, Field(ge=1, le=_MAX_SIZE)]


class _SpanModule(_Strict):
    span: tuple[Annotated[int, Field(ge=0)], Annotated[int, Field(ge=1)]]
    kind: str
    trained: bool
    dim_in: _Size
    dim_out: _Size


class _Head(_Strict):
    kind: Literal["probe", "fixed-probe", "native"]
    features: _Size
    classes: _Size
    #: what each logit means, in order (the data's class names; absent for a model's own head)
    class_names: list[str] | None = None

    @model_validator(mode="after")
    def _a_name_per_class(self):
        if self.class_names is not None and len(self.class_names) != self.classes:
            raise ValueError(f"{len(self.class_names)} class_names for {self.classes} classes")
        return self


class _Preprocess(_Strict):
    max_length: _Size
    image_size: Annotated[int, Field(ge=1, le=1 << 14)] | None


class _FitRecord(_Strict):
    kind: str
    ridge: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    mode: Literal["independent", "sequential"]


class Recipe(_Strict):
    format: Literal[2]
    model: dict[str, Any]
    identity: dict[str, Any]
    preprocess: _Preprocess
    spans: str
    span_modules: list[_SpanModule]
    head: _Head | None
    layout: Literal["tokens", "pixels"]
    dims: Annotated[list[_Size], Field(min_length=2)]
    fit: _FitRecord
    statistics_hash: str
    model_sha256: str
    versions: dict[str, Any]
    recipe_sha256: str

    @model_validator(mode="after")
    def _spans_within_the_boundaries(self):
        """Each span runs forward between two of the model's boundaries, with their widths."""
        for n, entry in enumerate(self.span_modules):
            i, j = entry.span
            if not i < j < len(self.dims):
                raise ValueError(f"span_modules.{n}.span {[i, j]} is not a span of {len(self.dims) - 1} blocks")
            if (entry.dim_in, entry.dim_out) != (self.dims[i], self.dims[j]):
                raise ValueError(f"span_modules.{n} maps {entry.dim_in} → {entry.dim_out} features, but dims says "
                                 f"{self.dims[i]} → {self.dims[j]}")
        return self


def _model_section_problems(model: dict[str, Any]) -> str:
    """The recipe's ``model`` section against the config's ``[model]`` schema, which rebuilding the model reads:
    unknown keys and invalid values, as :func:`schema_problems` words them ("" when it follows the schema)."""
    unknown = sorted(set(model) - {f.name for f in dataclasses.fields(ModelConfig)})
    if unknown:
        return "unknown keys: " + ", ".join(f"model.{k}" for k in unknown)
    try:
        ModelConfig(**model)
    except ValidationError as exc:
        return schema_problems(exc, prefix="model.")
    return ""


# ---------------------------------------------------------------------- writing
class SessionParts(Protocol):
    """What exporting reads from a :class:`rba.session.Session` (which is built on this module, so it is described
    here rather than imported)."""

    @property
    def cfg(self) -> Config: ...

    @property
    def adapter(self) -> Adapter: ...

    @property
    def dataset(self) -> Dataset: ...

    @property
    def splits(self) -> Splits: ...

    @property
    def stats(self) -> Statistics: ...

    @property
    def evaluator(self) -> Evaluator: ...

    def maps(self, spans: Sequence[Span], kind: str | None = None, mode: str | None = None) -> list[nn.Module]: ...

    def write_run_info(self, out: Path, **extra: Any) -> None: ...


def export_model(session: SessionParts, spans: Sequence[Span], out: str | Path, *, kind: str | None = None,
                 mode: str | None = None) -> Path:
    """Write the approximated model for ``spans`` to ``out``; returns the folder.

    The maps are the session's for fit ``kind`` and ``mode`` (default: the config's ``[fit]``), exactly what
    ``rba evaluate`` and the search score. With labels and a probe head, the probe fitted for this configuration
    (or the fixed probe) is saved as the head; with the native head, the model's own head is already saved."""
    out = Path(out)
    cfg = session.cfg
    kind = kind or cfg.fit.kind
    mode = mode or cfg.fit.mode
    spans = sorted(spans)
    if get_fit(kind).folds:
        return _export_folded(session, spans, out, kind, mode)
    adapter = session.adapter
    maps = session.maps(spans, kind, mode)
    head, head_record = session.evaluator.export_head(walk_spans(spans, maps), maps, maps_tag(kind, mode),
                                                      class_names=session.dataset.classes)
    handle = replace_(adapter, spans, maps)
    try:
        if head is not None:
            setattr(adapter.model, HEAD_ATTR, head.to(adapter.device))
        with atomic_path(out / "model.safetensors") as tmp:
            save_model(adapter.model, str(tmp), force_contiguous=True)
    finally:
        if head is not None:
            delattr(adapter.model, HEAD_ATTR)
        handle.restore()
    model_cfg = dataclasses.asdict(cfg.model)
    # trust is the loading caller's decision, never the file's: the recipe does not carry it
    model_cfg.pop("trust_code", None)
    if model_cfg.get("weights"):
        model_cfg["weights"] = str(cfg.resolve_path(model_cfg["weights"]))
    dims = adapter.dims()
    plugin = get_fit(kind)
    recipe = {
        "format": RECIPE_FORMAT,
        "model": model_cfg,
        "identity": adapter.identity,
        "preprocess": {"max_length": cfg.data.max_length, "image_size": cfg.data.image_size},
        "spans": format_spans(spans),
        "span_modules": [{"span": [i, j], "kind": kind, "trained": plugin.trained, "dim_in": dims[i],
                          "dim_out": dims[j]} for i, j in spans],
        "head": head_record,
        "layout": adapter.layout,
        "dims": dims,
        "fit": {"kind": kind, "ridge": cfg.fit.ridge, "mode": mode},
        "statistics_hash": session.stats.key,
        # model.safetensors and recipe.json are written one after the other: the checksum ties them together, so
        # a kill between the two (new model, old recipe) is detected by load_export instead of trusted
        "model_sha256": file_sha256(out / "model.safetensors"),
        "versions": package_versions(),
    }
    recipe = json.loads(json.dumps(recipe))  # what reading it back gives (tuples become lists)
    recipe["recipe_sha256"] = _recipe_checksum(recipe)
    checked(recipe, Recipe, "recipe.json")  # what is written must read back
    atomic_write_json(out / "recipe.json", recipe)
    session.write_run_info(out, command="export", spans=recipe["spans"], fit=recipe["fit"])
    return out


#: the record a folded export writes beside the model's own files (last: its presence marks a finished export)
FOLD_RECORD = "rba-fold.json"


def _export_folded(session: SessionParts, spans: Sequence[Span], out: Path, kind: str, mode: str) -> Path:
    """A fold's configuration as the model's own format with fewer blocks (:meth:`Adapter.without_blocks`; for a
    causal LM a transformers folder ``AutoModelForCausalLM.from_pretrained`` loads, no rba needed), plus
    :data:`FOLD_RECORD` (spans, fit, model identity, statistics hash). Written into a temporary folder beside
    ``out``, then moved in file by file, the record last; a recipe export's files left in ``out`` are removed."""
    adapter = session.adapter
    maps = session.maps(spans, kind, mode)
    handle = replace_(adapter, spans, maps)
    try:
        model = adapter.without_blocks([k for i, j in spans for k in range(i, j)])
    finally:
        handle.restore()
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        adapter.save_native(model, tmp)
        for stale in ("recipe.json", "model.onnx", "model.onnx.json", FOLD_RECORD):
            (out / stale).unlink(missing_ok=True)
        for path in sorted(tmp.iterdir()):
            os.replace(path, out / path.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    cfg = session.cfg
    record = {"format": 1, "spans": format_spans(spans), "fit": {"kind": kind, "ridge": cfg.fit.ridge, "mode": mode},
              "identity": adapter.identity, "preprocess": {"max_length": cfg.data.max_length,
                                                          "image_size": cfg.data.image_size},
              "blocks": adapter.num_blocks, "statistics_hash": session.stats.key, "versions": package_versions()}
    atomic_write_json(out / FOLD_RECORD, json.loads(json.dumps(record, default=str)))
    session.write_run_info(out, command="export", spans=record["spans"], fit=record["fit"])
    return out


def _recipe_checksum(recipe: dict[str, Any]) -> str:
    """sha256 of the recipe's canonical JSON (which holds the weights' checksum), less this field itself.

    It detects corruption and mixed exports, never tampering: whoever edits a recipe can recompute it. What a
    recipe may make the loader do is therefore limited by the caller (see ``load_export``), not by this."""
    body = {k: v for k, v in recipe.items() if k != "recipe_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------------- reading
def read_recipe(folder: str | Path) -> dict[str, Any]:
    """The verified recipe of an export: format 2, strict keys, checksums of recipe and weights."""
    folder = Path(folder)
    path = folder / "recipe.json"
    if not path.exists() or not (folder / "model.safetensors").exists():
        raise RBAError(f"{folder} is not an rba export (needs recipe.json and model.safetensors): create one with `rba export`")
    try:
        recipe = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RBAError(f"{path} is not valid JSON ({exc}): rerun `rba export`") from None
    if not isinstance(recipe, dict) or recipe.get("format") != RECIPE_FORMAT:
        fmt = recipe.get("format") if isinstance(recipe, dict) else None
        raise RBAError(f"{path} has recipe format {fmt}, and this rba reads format {RECIPE_FORMAT} only: export the "
                       "configuration again with `rba export` (same config and --spans)")
    if not recipe.get("recipe_sha256") or not recipe.get("model_sha256"):
        raise RBAError(f"{path} has no checksum (recipe_sha256 and model_sha256), so its weights cannot be verified: "
                       "rerun `rba export` into this folder")
    try:
        Recipe.model_validate_json(json.dumps(recipe))
    except ValidationError as exc:
        raise RBAError(f"{path} does not follow recipe format {RECIPE_FORMAT} ({schema_problems(exc)}): rerun "
                       "`rba export` into this folder") from None
    problems = _model_section_problems(recipe["model"])
    if problems:
        raise RBAError(f"{path} does not follow recipe format {RECIPE_FORMAT} ({problems}): rerun `rba export` into "
                       "this folder")
    if _recipe_checksum(recipe) != recipe["recipe_sha256"]:
        raise RBAError(f"{path} does not match its own checksum (edited or corrupted): rerun `rba export` into this "
                       "folder")
    if file_sha256(folder / "model.safetensors") != recipe["model_sha256"]:
        raise RBAError(f"{folder / 'model.safetensors'} does not match the checksum in {path} (an interrupted or "
                       "mixed export): rerun `rba export` into this folder")
    spans = parse_spans(recipe["spans"])
    if [tuple(e["span"]) for e in recipe["span_modules"]] != list(spans):
        raise RBAError(f"{path}: span_modules do not list the spans {recipe['spans']!r}: rerun `rba export`")
    return recipe


def load_export(folder: str | Path, device: str = "cpu", *, trust_code: bool = False,
                factory: str | None = None) -> Adapter:
    """Rebuild the approximated model saved in ``folder``; returns its adapter (``.model`` is the nn.Module,
    ``.export_recipe`` the recipe; :func:`head_logits` classifies with it).

    An export of a ``kind = "module"`` model names a factory that rebuilding it would import and call, i.e.
    run code. The export never decides that: the caller does, with ``trust_code=True``, and ``factory`` (the
    ``model.name`` the caller's own config trusts) limits that trust to one factory."""
    folder = Path(folder)
    if (folder / FOLD_RECORD).is_file() and not (folder / "recipe.json").exists():
        return _load_folded(folder, device)
    recipe = read_recipe(folder)
    model_cfg = dict(recipe["model"])
    model_cfg.pop("trust_code", None)
    if model_cfg.get("kind") == "module":
        named = model_cfg.get("name")
        if not trust_code:
            raise RBAError(
                f"{folder / 'recipe.json'} names the model factory {named!r} (kind = \"module\"), which loading it "
                "would import and call; an export never decides to run code: load it with a config whose [model] "
                f"has kind = \"module\", name = {named!r} and trust_code = true (or load_export(..., trust_code=True))"
            )
        if factory is not None and factory != named:
            raise RBAError(f"{folder / 'recipe.json'} names the model factory {named!r}, but your config trusts only "
                           f"{factory!r}: load it with the config it was exported from")
        model_cfg["trust_code"] = True
    # every fit kind must be known before anything is built
    plugins = [get_fit(entry["kind"]) for entry in recipe["span_modules"]]
    model_cfg["pretrained"] = False if model_cfg["kind"] in ("timm", "torchvision", "module") else model_cfg["pretrained"]
    model_cfg["device"] = "cpu"
    cfg = Config(model=ModelConfig(**model_cfg), data=DataConfig(**recipe["preprocess"]))
    adapter = create_adapter(cfg)
    if adapter.layout != recipe["layout"] or adapter.num_blocks != len(recipe["dims"]) - 1:
        raise RBAError(f"{folder / 'recipe.json'} records a model of {len(recipe['dims']) - 1} blocks with "
                       f"{recipe['layout']} boundaries, but the model it names has {adapter.num_blocks} blocks with "
                       f"{adapter.layout} boundaries (an edited recipe): rerun `rba export` into this folder")
    spans = parse_spans(recipe["spans"])
    # in the model's forward dtype (a bfloat16 export holds bfloat16 maps)
    modules = [plugin.module(e["dim_in"], e["dim_out"], layout=recipe["layout"], span=tuple(e["span"])).to(adapter.dtype)
               for plugin, e in zip(plugins, recipe["span_modules"])]
    replace_(adapter, spans, modules)  # permanent: this adapter is the approximated model
    head = recipe["head"]
    if head is not None and head["kind"] != "native":
        setattr(adapter.model, HEAD_ATTR, nn.Linear(head["features"], head["classes"], dtype=torch.float64))
    try:
        load_model(adapter.model, str(folder / "model.safetensors"), strict=True)
    except Exception as exc:
        raise RBAError(f"{folder}/model.safetensors does not match its recipe: {exc}") from None
    adapter.identity = dict(adapter.identity) | {"export": str(folder), "spans": recipe["spans"]}
    adapter.export_recipe = recipe
    if device != "cpu":
        adapter.to(device)
    return adapter


def _load_folded(folder: Path, device: str) -> Adapter:
    """A folded export through its own family's loader (the folder as ``model.name``); ``export_recipe`` holds what
    :meth:`rba.session.Session.evaluate_export` reads (spans, fit, the base model's identity, no head)."""
    try:
        record = json.loads((folder / FOLD_RECORD).read_text())
        identity, preprocess = dict(record["identity"]), dict(record["preprocess"])
        parse_spans(record["spans"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as exc:
        raise RBAError(f"{folder / FOLD_RECORD} is unreadable ({type(exc).__name__}: {exc}): rerun `rba export` into "
                       "this folder") from None
    cfg = Config(model=ModelConfig(kind=identity["kind"], name=str(folder.resolve()), pretrained=True, device="cpu"),
                 data=DataConfig(**preprocess))
    adapter = create_adapter(cfg)
    adapter.export_recipe = {"spans": record["spans"], "fit": record["fit"], "identity": identity,
                             "preprocess": preprocess, "head": None}
    adapter.identity = dict(adapter.identity) | {"export": str(folder), "spans": record["spans"]}
    if device != "cpu":
        adapter.to(device)
    return adapter


@torch.inference_mode()
def head_logits(exported: Adapter, inputs: Any) -> torch.Tensor:
    """Class logits of a reloaded export on collated ``inputs`` (``exported.collate(samples)``): the exported
    head (the probe fitted for this configuration, the fixed probe, or the model's own) on its pooled output."""
    head = exported.export_recipe["head"]
    if head is None:
        raise RBAError(f"the export {exported.identity.get('export')} has no classifier head (it was exported without "
                       "labels): export it again from a config whose data has labels")
    pooled = exported.forward(inputs)
    if head["kind"] == "native":
        return cast(torch.Tensor, exported.logits(pooled))  # (a native head: the model has one)
    linear = getattr(exported.model, HEAD_ATTR)
    return linear(pooled.to(linear.weight.dtype))
