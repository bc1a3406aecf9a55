"""Building adapters by model kind: the registry (:data:`rba._registry.ADAPTERS`, built-ins imported lazily) maps a
kind to its builder ``fn(cfg) -> Adapter``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from rba._registry import ADAPTERS
from rba.adapters._device import resolve_device, set_forward_dtype
from rba.errors import ModelError

if TYPE_CHECKING:
    from rba.adapters._base import Adapter
    from rba.config import Config

__all__ = ["register_adapter", "create_adapter", "list_adapters", "is_adapter"]


def register_adapter(kind: str, target: str | Callable[["Config"], "Adapter"]) -> None:
    """Make ``[model] kind = KIND`` build its adapter with ``target(cfg)`` (a callable or ``"module:function"``)."""
    ADAPTERS.register(kind, target)


def is_adapter(kind: str) -> bool:
    return kind in ADAPTERS


def list_adapters(pattern: str = "*") -> list[str]:
    return sorted(ADAPTERS.names(pattern))


def create_adapter(cfg: "Config") -> "Adapter":
    """Build the adapter (model + blocks + preprocessing) that ``cfg.model`` describes."""
    kind = cfg.model.kind
    adapter = ADAPTERS.get(kind)(cfg)
    if cfg.data.image_size is not None:
        _check_image_size(adapter, cfg)
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
