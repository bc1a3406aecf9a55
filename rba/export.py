"""Export a configuration as a model that reloads: ``model.safetensors`` (the approximated model's weights,
with an ``nn.Linear`` in place of each span) and ``recipe.json`` (how to rebuild it).

``load_export(dir)`` rebuilds the base architecture (no pretrained weights needed), swaps in the span modules
the recipe names and loads the saved weights strictly.
"""

from __future__ import annotations

import dataclasses
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
    atomic_write_json(out / "recipe.json", recipe)
    return out


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
    expected = recipe.get("model_sha256")
    if expected and file_sha256(folder / "model.safetensors") != expected:
        raise RBAError(f"{folder / 'model.safetensors'} does not match the checksum in {path} (an interrupted or "
                       "mixed export): rerun `rba export` into this folder")
    return recipe


def load_export(folder: str | Path, device: str = "cpu") -> Adapter:
    """Rebuild the approximated model saved in ``folder``; returns its adapter (``.model`` is the nn.Module)."""
    from safetensors.torch import load_model

    folder = Path(folder)
    recipe = read_recipe(folder)
    model_cfg = dict(recipe["model"])
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
