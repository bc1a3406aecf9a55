"""The Optuna samplers ``search.sampler`` may name: a registry of factories ``fn(cfg) -> optuna sampler``.

It lives in rba, not in the search package, so that validating a config (any command, ``rba ls``) reads the one
list of names without importing the search package or optuna; the built-in factories are lazy targets in
:mod:`search.samplers` and load only when a study builds its sampler.
"""

from __future__ import annotations

from typing import Any, Callable

from rba._registry import Registry

__all__ = ["register_sampler", "list_samplers", "get_sampler_factory"]

_SAMPLERS: Registry[Callable[[Any], Any]] = Registry("sampler", hint="Set [search] sampler to one of them")


def register_sampler(name: str, factory: Callable[[Any], Any] | str) -> None:
    """Make ``[search] sampler = NAME`` build ``factory(cfg)`` (a callable or ``"module:function"``)."""
    _SAMPLERS.register(name, factory)


def list_samplers() -> list[str]:
    return _SAMPLERS.names()


def get_sampler_factory(name: str) -> Callable[[Any], Any]:
    return _SAMPLERS.get(name)


register_sampler("tpe", "search.samplers:tpe_sampler")
register_sampler("nsga2", "search.samplers:nsga2_sampler")
register_sampler("random", "search.samplers:random_sampler")
register_sampler("gp", "search.samplers:gp_sampler")
