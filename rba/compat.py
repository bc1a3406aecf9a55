"""The one way rba reaches a dependency's private name (one with no public equivalent).

Each dependency whose private names rba uses has one small module that takes them through
:func:`private_name`, with the version range the project's test suite passed with (``constraints.txt``):

* outside that range it warns once per package, naming the package, the installed version and the range;
* a name that is missing fails with one line (:class:`~rba.errors.RBAError`), naming the package and version.

Today: Optuna's hypervolume and heartbeat thread (:mod:`search._optuna_private`).
"""

from __future__ import annotations

import importlib
import warnings
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from packaging.specifiers import SpecifierSet
from packaging.version import Version

from rba.errors import RBAError

__all__ = ["private_name", "UntestedVersionWarning"]


class UntestedVersionWarning(UserWarning):
    """A dependency whose private names rba uses is installed at a version outside the tested range."""


def installed_version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


@cache
def _check_version(package: str, tested: str) -> None:
    """Warn once per (package, range) when the installed version is outside ``tested``."""
    installed = installed_version(package)
    if installed is not None and Version(installed) not in SpecifierSet(tested):
        warnings.warn(f"rba uses private parts of {package}, tested with {package}{tested}, and {package} "
                      f"{installed} is installed: if something fails, install the tested versions "
                      "(pip install -c constraints.txt ...)", UntestedVersionWarning, stacklevel=3)


def private_name(package: str, dotted: str, *, tested: str) -> Any:
    """``module.name`` from ``dotted`` (e.g. ``optuna._hypervolume.compute_hypervolume``), after the version
    check for ``package`` against the :class:`~packaging.specifiers.SpecifierSet` ``tested``."""
    _check_version(package, tested)
    module_name, _, attr = dotted.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError):
        raise RBAError(f"{package} {installed_version(package) or '(not installed)'} has no {dotted}, which rba "
                       f"needs (tested with {package}{tested}): install a tested version "
                       "(pip install -c constraints.txt ...)") from None
