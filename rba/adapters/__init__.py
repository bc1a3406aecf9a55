"""Model adapters: one abstract class, one registry, one private module per family."""

from rba.adapters._base import Adapter, Context
from rba.spans import Span
from rba.adapters._registry import create_adapter, is_adapter, list_adapters, register_adapter

__all__ = ["Adapter", "Context", "Span", "create_adapter", "is_adapter", "list_adapters", "register_adapter"]
