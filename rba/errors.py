"""Errors a user can fix. The CLI prints their message (no traceback) and exits non-zero."""

from __future__ import annotations

__all__ = ["RBAError", "ConfigError", "DataError", "ModelError", "SpanError", "BudgetError", "CacheError"]


class RBAError(Exception):
    """Base class: a problem with the user's input, described with its fix."""


class ConfigError(RBAError):
    pass


class DataError(RBAError):
    pass


class ModelError(RBAError):
    pass


class SpanError(RBAError):
    pass


class BudgetError(RBAError):
    pass


class CacheError(RBAError):
    pass
