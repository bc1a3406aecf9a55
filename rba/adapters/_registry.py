"""A small registry of adapter builders keyed by model kind, with lazy imports and "did you mean"."""

from __future__ import annotations

import fnmatch
import importlib
from typing import TYPE_CHECKING, Callable

from rba.errors import ModelError, did_you_mean

if TYPE_CHECKING:
    from rba.adapters._base import Adapter
    from rba.config import Config

__all__ = ["register_adapter", "create_adapter", "list_adapters", "is_adapter"]

# kind -> "module:function" (imported on first use, so timm/transformers load only when needed)
_entrypoints: dict[str, str | Callable] = {}


def register_adapter(kind: str, target: str | Callable) -> None:
    if kind in _entrypoints:
        raise ValueError(f"adapter kind {kind!r} is already registered")
    _entrypoints[kind] = target


def is_adapter(kind: str) -> bool:
    return kind in _entrypoints


def list_adapters(pattern: str = "*") -> list[str]:
    return sorted(k for k in _entrypoints if fnmatch.fnmatch(k, pattern))


def create_adapter(cfg: "Config") -> "Adapter":
    """Build the adapter (model + blocks + preprocessing) that ``cfg.model`` describes."""
    kind = cfg.model.kind
    if kind not in _entrypoints:
        raise ModelError(f"unknown model kind {kind!r}.{did_you_mean(kind, _entrypoints)} "
                         f"Known kinds: {', '.join(list_adapters())}")
    target = _entrypoints[kind]
    if isinstance(target, str):
        module, fn = target.split(":")
        target = getattr(importlib.import_module(module), fn)
    adapter = target(cfg)
    device = cfg.model.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device != "cpu":
        adapter.to(device)
    return adapter


register_adapter("timm", "rba.adapters._timm:build_timm")
register_adapter("sentence-transformers", "rba.adapters._hf_bert:build_sentence_transformer")
register_adapter("huggingface", "rba.adapters._hf_bert:build_huggingface")
register_adapter("efficientnet-lite", "rba.adapters._cnn:build_efficientnet_lite")
register_adapter("torchvision", "rba.adapters._cnn:build_torchvision")
register_adapter("module", "rba.adapters._module:build_module")
