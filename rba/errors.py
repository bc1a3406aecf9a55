"""Errors a user can fix. The CLI prints their message (no traceback) and exits non-zero."""

from __future__ import annotations

import difflib

__all__ = ["did_you_mean", "RBAError", "ConfigError", "UnknownNameError", "DataError", "ModelError", "SpanError",
           "BudgetError", "CacheError", "DiskFullError"]


class RBAError(Exception):
    """Base class: a problem with the user's input, described with its fix."""


class ConfigError(RBAError):
    pass


class UnknownNameError(ConfigError, KeyError):
    """A name no registry holds (model kind, fit kind, metric, sampler, search method), with the closest known one.

    Also a KeyError, as a failed lookup in a mapping is, but printed as its message (KeyError quotes it)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


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


class DiskFullError(RBAError):
    """A file could not be written for want of space (:func:`rba._io.atomic_path`); nothing replaced it."""


def did_you_mean(name: object, options, n: int = 1) -> str:
    """``" Did you mean 'x'?"`` for the closest of ``options`` to ``name``, or ``""`` when none is close."""
    close = difflib.get_close_matches(str(name), [str(o) for o in options], n=n)
    return f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
