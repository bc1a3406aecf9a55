"""The adapter registry: model kind -> builder ``fn(cfg) -> Adapter``, built-ins imported lazily."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from rba._registry import Registry
from rba.errors import ModelError

if TYPE_CHECKING:
    from rba.adapters._base import Adapter
    from rba.config import Config

__all__ = ["register_adapter", "create_adapter", "list_adapters", "is_adapter"]

# built-ins are "module:function" strings, so timm/transformers load only when their kind is used
_ADAPTERS: Registry[Callable[["Config"], "Adapter"]] = Registry("model kind")


def register_adapter(kind: str, target: str | Callable[["Config"], "Adapter"]) -> None:
    """Make ``[model] kind = KIND`` build its adapter with ``target(cfg)`` (a callable or ``"module:function"``)."""
    _ADAPTERS.register(kind, target)


def is_adapter(kind: str) -> bool:
    return kind in _ADAPTERS


def list_adapters(pattern: str = "*") -> list[str]:
    return sorted(_ADAPTERS.names(pattern))


def create_adapter(cfg: "Config") -> "Adapter":
    """Build the adapter (model + blocks + preprocessing) that ``cfg.model`` describes."""
    kind = cfg.model.kind
    if kind not in _ADAPTERS:
        raise ModelError(_ADAPTERS.unknown(kind))
    adapter = _ADAPTERS.get(kind)(cfg)
    if cfg.data.image_size is not None:
        _check_image_size(adapter, cfg)
    from rba._device import resolve_device, set_forward_dtype

    device = resolve_device(cfg.model.device)
    if device.type != "cpu":
        adapter.to(device)
    return set_forward_dtype(adapter, cfg.model.forward_dtype, what=f"{kind} model {cfg.model.name!r}")


def _check_image_size(adapter: "Adapter", cfg: "Config") -> None:
    """One forward pass at ``data.image_size`` (the shapes are needed anyway), so a size the model cannot take
    is reported now, naming the key, and not as a library assertion in the middle of the capture."""
    try:
        adapter.boundary_shapes()
    except (AssertionError, RuntimeError, ValueError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ModelError(f"data.image_size = {cfg.data.image_size} does not fit {cfg.model.kind} model "
                         f"{cfg.model.name!r} ({reason}): set data.image_size to a size the model takes, e.g. "
                         "its training size") from None


register_adapter("timm", "rba.adapters._timm:build_timm")
register_adapter("sentence-transformers", "rba.adapters._hf_bert:build_sentence_transformer")
register_adapter("huggingface", "rba.adapters._hf_bert:build_huggingface")
register_adapter("causal-lm", "rba.adapters._causal_lm:build_causal_lm")
register_adapter("efficientnet-lite", "rba.adapters._cnn:build_efficientnet_lite")
register_adapter("torchvision", "rba.adapters._cnn:build_torchvision")
register_adapter("module", "rba.adapters._module:build_module")
