"""A named registry with lazy ``"module:attr"`` targets: the one list of the names a config may use.

Configs are validated against these registries (``model.kind``, ``fit.kind``, ``search.sampler``,
``search.method``), ``rba ls`` prints them, help texts and "did you mean" hints read them, so a name registered by a
plug-in is accepted everywhere at once. A lazy target is imported on first :meth:`Registry.get`, so listing names
never loads torch models, transformers or optuna.

Plug-ins: every module an installed package declares under the entry-point group :data:`PLUGIN_GROUP` is imported
on the first lookup in any registry (importing it registers its names), from the CLI and the Python API alike.

The registries of model kinds (:data:`ADAPTERS`) and fit kinds (:data:`FITS`) live here, not with the adapters and
fits, because the config, which validates those names, sits below both in the import layers (``tests/test_layering.py``);
their public faces are :mod:`rba.adapters` and :mod:`rba.fit`.
"""

from __future__ import annotations

import fnmatch
import importlib
import logging
import re
from importlib.metadata import entry_points
from typing import Any, Callable, Generic, TypeVar

from rba.errors import ConfigError, UnknownNameError, did_you_mean

__all__ = ["Registry", "RegistrationError", "check_name", "load_plugins", "PLUGIN_GROUP", "ADAPTERS", "FITS"]

T = TypeVar("T")
log = logging.getLogger(__name__)

#: a registered name: written in configs, in comma-separated flags (--kinds, --objectives) and in file names
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

#: installed packages name their plug-in modules under this entry-point group; importing a module registers
#: its adapters, fits, metrics, samplers or methods (``register_adapter``, ``register_fit``, ``register_metric``, …)
PLUGIN_GROUP = "rba.plugins"

_plugins_loaded = False


class RegistrationError(ConfigError, ValueError):
    """A plug-in registered under a name no config could use, or under a name already taken."""


def check_name(what: str, name: object) -> str:
    """``name`` if it can name a ``what`` (letters, digits, ``.``, ``_``, ``-``), else a RegistrationError."""
    if not (isinstance(name, str) and _NAME.fullmatch(name)):
        raise RegistrationError(f"a {what} name is a word of letters, digits, '.', '_' and '-' (configs and "
                                f"comma-separated flags name it), got {name!r}")
    return name


def load_plugins() -> None:
    """Import every module declared under :data:`PLUGIN_GROUP`, once per process (the first lookup does). One
    that fails, or exits, at import is skipped with one warning naming it (a broken package is the user's
    environment: the command goes on, and a config that needs the plug-in then names its kind as unknown)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True  # before importing: a plug-in that looks a name up while it loads must not recurse
    for ep in entry_points(group=PLUGIN_GROUP):
        try:
            ep.load()
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # SystemExit too: a plug-in that exits would end every command, exit 0
            what = (f"it called sys.exit({exc.code!r})" if isinstance(exc, SystemExit)
                    else f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}")
            log.warning("rba: warning: the plug-in %r (%s, entry point group %s) failed to load (%s): skipped; fix or "
                        "uninstall the package that provides it", ep.name, ep.value, PLUGIN_GROUP, what)


class Registry(Generic[T]):
    """Names in registration order (built-ins first), each bound to an object or a lazy ``"module:attr"``.

    ``what`` names the kind of name in messages (``"fit kind"``); ``hint`` ends the message for an unknown name
    (where to set it)."""

    def __init__(self, what: str, *, check: Callable[[Any], None] | None = None, hint: str = ""):
        self.what = what
        self.hint = hint
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
        """The registered object, importing a lazy target on first use; :class:`UnknownNameError` otherwise."""
        if name not in self:
            raise UnknownNameError(self.unknown(name))
        target = self._targets[name]
        if isinstance(target, str):
            module, attr = target.split(":")
            target = getattr(importlib.import_module(module), attr)
            if self._check is not None:
                self._check(target)
            self._targets[name] = target
        return target

    def names(self, pattern: str = "*") -> list[str]:
        load_plugins()
        return [n for n in self._targets if fnmatch.fnmatch(n, pattern)]

    def __contains__(self, name: object) -> bool:
        load_plugins()
        return name in self._targets

    def unknown(self, name: object) -> str:
        """``unknown <what> 'x'. Did you mean 'y'? Known: a, b`` and the hint."""
        known = self.names()
        hint = f" {self.hint}" if self.hint else ""
        return f"unknown {self.what} {name!r}.{did_you_mean(name, known)} Known: {', '.join(known)}.{hint}"


#: ``[model] kind`` → builder ``fn(cfg) -> Adapter`` (:func:`rba.adapters.register_adapter`)
ADAPTERS: Registry[Callable[[Any], Any]] = Registry("model kind", hint="Set [model] kind to one of them")
ADAPTERS.register("timm", "rba.adapters._timm:build_timm")
ADAPTERS.register("sentence-transformers", "rba.adapters._hf_bert:build_sentence_transformer")
ADAPTERS.register("huggingface", "rba.adapters._hf_bert:build_huggingface")
ADAPTERS.register("causal-lm", "rba.adapters._causal_lm:build_causal_lm")
ADAPTERS.register("efficientnet-lite", "rba.adapters._cnn:build_efficientnet_lite")
ADAPTERS.register("torchvision", "rba.adapters._cnn:build_torchvision")
ADAPTERS.register("module", "rba.adapters._module:build_module")

#: ``[fit] kind`` → :class:`rba.fit.Fit` subclass (:func:`rba.fit.register_fit`)
FITS: Registry[type] = Registry("fit kind", hint="Set [fit] kind to one of them")
FITS.register("affine", "rba.fit:AffineFit")
FITS.register("linear", "rba.fit:LinearFit")
FITS.register("identity", "rba.fit:IdentityFit")
FITS.register("fold", "rba.fit:FoldFit")
FITS.register("mlp", "rba._translators:MLPFit")
FITS.register("res-mlp", "rba._translators:ResMLPFit")
FITS.register("mlp-wide", "rba._translators:WideMLPFit")
FITS.register("identity-mlp", "rba._translators:IdentityMLPFit")
FITS.register("affine-mlp", "rba._translators:AffineMLPFit")
