"""The search methods ``search.method`` may name (``rba search --method NAME``, ``rba ls methods``): the sampler
search and every baseline, one registry entry each.

A method is a :class:`MethodSpec`: a one-line summary, the fit kind its spans are replaced with (``"identity"``
for the block-removal baselines, else the config's ``[fit] kind``) and a planner ``fn(ctx, fresh) -> [(label,
spans), ...]`` (a lazy ``"module:function"`` in :mod:`search.methods`) that lists the configurations its trials
evaluate, in order. The sampler search (``optuna``) plans only its priors and lets the sampler propose the rest.

It lives in rba, not in the search package, so that validating a config and ``rba ls methods`` read the one list
of names without importing the search package or optuna.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from rba._registry import Registry

__all__ = ["MethodSpec", "register_method", "list_methods", "get_method", "method_label"]


@dataclass(frozen=True)
class MethodSpec:
    name: str
    summary: str
    planner: str | Callable[..., list]
    """``fn(ctx, fresh) -> [(label, spans), ...]``: the configurations to enqueue (ctx: the study's
    :class:`search.recording.StudyContext`; fresh: the study was just created)"""
    kind: str | None = None
    """the fit kind the method replaces its spans with; None: the config's ``[fit] kind``"""
    sampled: bool = False
    """the sampler proposes the trials after the planned ones (``search.trials`` is the total)"""
    uses_trials: bool = False
    """a baseline that plans ``search.trials`` configurations (the others plan a fixed list)"""
    check: str | Callable[[Any], None] | None = None
    """``fn(ctx)``, called before the study opens: refuses a study the method cannot run"""

    def plan(self, ctx: Any, fresh: bool) -> list:
        return _load(self.planner)(ctx, fresh)

    def check_study(self, ctx: Any) -> None:
        if self.check is not None:
            _load(self.check)(ctx)

    def fit_kind(self, configured: str) -> str:
        return self.kind or configured


def _load(target: str | Callable) -> Callable:
    if isinstance(target, str):
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)
    return target


_METHODS: Registry[MethodSpec] = Registry("search method", hint="Set [search] method to one of them")


def register_method(name: str, planner: str | Callable[..., list], *, summary: str, kind: str | None = None,
                    sampled: bool = False, uses_trials: bool = False, check: str | Callable | None = None,
                    aliases: tuple[str, ...] = ()) -> MethodSpec:
    """Make ``search.method = NAME`` (and each alias) plan its trials with ``planner``."""
    for target in (planner, check):
        if isinstance(target, str) and target.count(":") != 1:
            raise ValueError(f"a lazy planner or check is written 'module:function', got {target!r}")
    spec = MethodSpec(name, summary, planner, kind=kind, sampled=sampled, uses_trials=uses_trials, check=check)
    for key in (name, *aliases):
        _METHODS.register(key, spec)
    return spec


def list_methods() -> list[str]:
    return _METHODS.names()


def get_method(name: str) -> MethodSpec:
    return _METHODS.get(name)


def method_label(name: str) -> str:
    """``rba ls methods``'s line: the name, then what it does (an alias names its method)."""
    spec = get_method(name)
    what = f"alias of {spec.name}" if spec.name != name else spec.summary
    return f"{name:16s} {what}"


_PLANS = "search.methods"
register_method("optuna", f"{_PLANS}:plan_priors", sampled=True,
                summary="the configured sampler (search.sampler) after the priors (search.priors)")
register_method("exhaustive", f"{_PLANS}:plan_exhaustive", check=f"{_PLANS}:check_exhaustive",
                summary="every configuration of the space")
register_method("random", f"{_PLANS}:plan_random", uses_trials=True,
                summary="search.trials configurations drawn uniformly (search.seed), spans fitted")
register_method("br-greedy", f"{_PLANS}:plan_br_greedy",
                summary="the paper's heuristic: highest-br spans without overlap, 1, 2, ... of them, fitted")
register_method("proxy-front", f"{_PLANS}:plan_proxy_front", uses_trials=True,
                summary="the statistics-only Pareto layers of (sum of ls_residual, cost), coarse to fine, fitted")
register_method("shortgpt", f"{_PLANS}:plan_shortgpt", kind="identity", aliases=("block-drop",),
                summary="ShortGPT: blocks ranked once by Block Influence 1 - cos(in, out), lowest dropped first")
register_method("shortgpt-affine", f"{_PLANS}:plan_shortgpt_affine",
                summary="ShortGPT's ranking, each run of dropped blocks replaced by one fitted span")
register_method("sleb", f"{_PLANS}:plan_sleb", kind="identity",
                summary="SLEB: removes, one at a time, the block whose removal hurts the end metric least")
register_method("gromov", f"{_PLANS}:plan_gromov", kind="identity",
                summary="Gromov et al.: per length n, the n contiguous blocks of least angular distance, dropped")
register_method("gromov-affine", f"{_PLANS}:plan_gromov",
                summary="Gromov et al.'s span per length n, replaced by its fitted map")
register_method("random-lesions", f"{_PLANS}:plan_random_lesions", kind="identity", uses_trials=True,
                summary="search.trials random sets of blocks (a size, then the blocks; search.seed), dropped")
register_method("replaceme", f"{_PLANS}:plan_replaceme", kind="fold", check=f"{_PLANS}:check_replaceme",
                summary="ReplaceMe: the 25%-of-blocks span of least angular distance on the last tokens, folded (fold)")
