"""Export a configuration as a model that reloads: ``model.safetensors`` (the approximated model's weights,
with an ``nn.Linear`` in place of each span) and ``recipe.json`` (how to rebuild it).

``load_export(dir)`` rebuilds the base architecture (no pretrained weights needed), swaps in the span modules
the recipe names and loads the saved weights strictly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from rba._io import atomic_path, atomic_write_json, file_sha256, package_versions
from rba.adapters import Adapter, create_adapter
from rba.apply import Skip, SpanMap, replace_
from rba.config import Config, DataConfig, ModelConfig
from rba.errors import RBAError
from rba.spans import format_spans, parse_spans

__all__ = ["export_model", "load_export", "RECIPE_FORMAT"]

RECIPE_FORMAT = 1


def export_model(session, spans, out: str | Path, *, maps=None, kind: str | None = None) -> Path:
    """Write the approximated model for ``spans`` to ``out``; returns the folder.

    ``maps`` (with the fit ``kind`` they were made with) overrides the session's own fits, e.g. sequential
    fits or the identity maps of block-drop."""
    from safetensors.torch import save_model

    out = Path(out)
    adapter = session.adapter
    kind = kind or session.cfg.fit.kind
    if maps is None:
        maps = session.maps(spans, kind)
    handle = replace_(adapter, spans, maps)
    try:
        with atomic_path(out / "model.safetensors") as tmp:
            save_model(adapter.model, str(tmp), force_contiguous=True)
    finally:
        handle.restore()
    cfg = session.cfg
    model_cfg = dataclasses.asdict(cfg.model)
    # trust is the loading caller's decision, never the file's: the recipe does not carry it
    model_cfg.pop("trust_code", None)
    if model_cfg.get("weights"):
        model_cfg["weights"] = str(cfg.resolve_path(model_cfg["weights"]))
    recipe = {
        "format": RECIPE_FORMAT,
        "model": model_cfg,
        "identity": adapter.identity,
        "preprocess": {"max_length": cfg.data.max_length, "image_size": cfg.data.image_size},
        "spans": format_spans(spans),
        "span_modules": [{"span": [i, j], "module": "skip" if isinstance(m, Skip) else "linear",
                          "bias": bool(getattr(getattr(m, "linear", None), "bias", None) is not None)}
                         for (i, j), m in zip(spans, maps)],
        "layout": adapter.layout,
        "dims": adapter.dims(),
        "fit": dataclasses.asdict(cfg.fit) | {"kind": kind},
        "statistics_hash": session.stats.key,
        # model.safetensors and recipe.json are written one after the other: the checksum ties them together, so
        # a kill between the two (new model, old recipe) is detected by load_export instead of trusted
        "model_sha256": file_sha256(out / "model.safetensors"),
        "versions": package_versions(),
    }
    recipe["recipe_sha256"] = _recipe_checksum(recipe)
    atomic_write_json(out / "recipe.json", recipe)
    return out


def _recipe_checksum(recipe: dict[str, Any]) -> str:
    """sha256 of the recipe's canonical JSON (which holds the weights' checksum), less this field itself.

    It detects corruption and mixed exports, never tampering: whoever edits a recipe can recompute it. What a
    recipe may make the loader do is therefore limited by the caller (see ``load_export``), not by this."""
    body = {k: v for k, v in recipe.items() if k != "recipe_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def read_recipe(folder: str | Path) -> dict[str, Any]:
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
        raise RBAError(f"{path} has recipe format {fmt}, this rba reads {RECIPE_FORMAT}")
    if not recipe.get("recipe_sha256") or not recipe.get("model_sha256"):
        raise RBAError(f"{path} has no checksum (recipe_sha256 and model_sha256), so its weights cannot be verified: "
                       "rerun `rba export` into this folder")
    if _recipe_checksum(recipe) != recipe["recipe_sha256"]:
        raise RBAError(f"{path} does not match its own checksum (edited or corrupted): rerun `rba export` into this "
                       "folder")
    if file_sha256(folder / "model.safetensors") != recipe["model_sha256"]:
        raise RBAError(f"{folder / 'model.safetensors'} does not match the checksum in {path} (an interrupted or "
                       "mixed export): rerun `rba export` into this folder")
    return recipe


def load_export(folder: str | Path, device: str = "cpu", *, trust_code: bool = False,
                factory: str | None = None) -> Adapter:
    """Rebuild the approximated model saved in ``folder``; returns its adapter (``.model`` is the nn.Module).

    An export of a ``kind = "module"`` model names a factory that rebuilding it would import and call, i.e.
    run code. The export never decides that: the caller does, with ``trust_code=True``, and ``factory`` (the
    ``model.name`` the caller's own config trusts) limits that trust to one factory."""
    from safetensors.torch import load_model

    folder = Path(folder)
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
    model_cfg["pretrained"] = False if model_cfg["kind"] in ("timm", "torchvision", "module") else model_cfg["pretrained"]
    model_cfg["device"] = "cpu"
    cfg = Config(model=ModelConfig(**model_cfg), data=DataConfig(**recipe["preprocess"]))
    adapter = create_adapter(cfg)
    spans = parse_spans(recipe["spans"])
    dims = recipe["dims"]
    modules = []
    for entry in recipe["span_modules"]:
        i, j = entry["span"]
        if entry["module"] == "skip":
            modules.append(Skip())
        else:
            modules.append(SpanMap(dims[i], dims[j], bias=entry["bias"], layout=recipe["layout"], span=(i, j)))
    replace_(adapter, spans, modules)  # permanent: this adapter is the approximated model
    try:
        load_model(adapter.model, str(folder / "model.safetensors"), strict=True)
    except Exception as exc:
        raise RBAError(f"{folder}/model.safetensors does not match its recipe: {exc}") from None
    adapter.identity = dict(adapter.identity) | {"export": str(folder), "spans": recipe["spans"]}
    adapter.export_recipe = recipe
    if device != "cpu":
        adapter.to(device)
    return adapter
