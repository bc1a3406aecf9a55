"""A named registry with lazy ``"module:attr"`` targets: the one list of the names a config may use.

Configs are validated against these registries (``model.kind``, ``fit.kind``, ``search.sampler``), ``rba ls``
prints them, and "did you mean" hints read them, so a name registered by a plug-in is accepted everywhere at
once. A lazy target is imported on first :meth:`Registry.get`, so listing names never loads torch models,
transformers or optuna.
"""

from __future__ import annotations

import fnmatch
import importlib
import re
from typing import Any, Callable, Generic, TypeVar

from rba.errors import ConfigError, did_you_mean

__all__ = ["Registry", "RegistrationError", "check_name"]

T = TypeVar("T")

#: a registered name: written in configs, in comma-separated flags (--kinds, --objectives) and in file names
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class RegistrationError(ConfigError, ValueError):
    """A plug-in registered under a name no config could use, or under a name already taken."""


def check_name(what: str, name: object) -> str:
    """``name`` if it can name a ``what`` (letters, digits, ``.``, ``_``, ``-``), else a RegistrationError."""
    if not (isinstance(name, str) and _NAME.fullmatch(name)):
        raise RegistrationError(f"a {what} name is a word of letters, digits, '.', '_' and '-' (configs and "
                                f"comma-separated flags name it), got {name!r}")
    return name


class Registry(Generic[T]):
    """Names in registration order (built-ins first), each bound to an object or a lazy ``"module:attr"``."""

    def __init__(self, what: str, *, check: Callable[[Any], None] | None = None):
        self.what = what
        self._check = check
        self._targets: dict[str, T | str] = {}

    def register(self, name: str, target: T | str) -> None:
        check_name(self.what, name)
        if name in self._targets:
            raise RegistrationError(f"{self.what} {name!r} is already registered")
        if isinstance(target, str):
            if target.count(":") != 1:
                raise ValueError(f"a lazy {self.what} target is written 'module:attr', got {target!r}")
        elif self._check is not None:
            self._check(target)
        self._targets[name] = target

    def get(self, name: str) -> T:
        """The registered object, importing a lazy target on first use."""
        target = self._targets[name]
        if isinstance(target, str):
            module, attr = target.split(":")
            target = getattr(importlib.import_module(module), attr)
            if self._check is not None:
                self._check(target)
            self._targets[name] = target
        return target

    def names(self, pattern: str = "*") -> list[str]:
        return [n for n in self._targets if fnmatch.fnmatch(n, pattern)]

    def __contains__(self, name: object) -> bool:
        return name in self._targets

    def unknown(self, name: object) -> str:
        """``unknown <what> 'x'. Did you mean 'y'? Known: a, b`` (for errors outside config validation)."""
        return f"unknown {self.what} {name!r}.{did_you_mean(name, self._targets)} Known: {', '.join(self._targets)}"
