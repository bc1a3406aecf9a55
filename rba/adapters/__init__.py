"""Model adapters: one abstract class, one registry, one private module per family."""

from rba.adapters._base import Adapter, Context
from rba.adapters._registry import create_adapter, is_adapter, list_adapters, register_adapter
from rba.adapters._weights import check_weights_file
from rba.spans import Span

__all__ = ["Adapter", "Context", "Span", "check_weights_file", "create_adapter", "is_adapter", "list_adapters", "register_adapter"]
