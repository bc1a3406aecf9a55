"""The build every adapter family shares: a seeded construction from ``model.options``, safe loading of a local
weights file, and the model's identity (part of every cache key). Families call :func:`build_model` with their
own constructor, as timm's entrypoints call one private builder."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from rba.adapters._weights import describe_mismatch, file_digest, load_into, load_weights
from rba.errors import ModelError

__all__ = ["build_model", "seeded", "split_seed", "load_pretrained"]

StateConverter = Callable[[dict[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]]


def split_seed(options: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """``model.options`` as constructor keyword arguments, and the ``seed`` of the random initialisation."""
    kwargs = dict(options)
    return kwargs, int(kwargs.pop("seed", 0))


def seeded(construct: Callable[..., nn.Module], kwargs: dict[str, Any], seed: int, *, what: str,
           errors: tuple[type[Exception], ...] = (TypeError,)) -> nn.Module:
    """``construct(**kwargs)`` with torch's generator seeded, so that the same config gives the same random
    model (and cache key) without disturbing the caller's random state; ``errors`` become one ModelError."""
    try:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return construct(**kwargs)
    except errors as exc:
        raise ModelError(f"{what} could not be called with options {kwargs}: {exc}") from None


def load_pretrained(model: nn.Module, weights: Path, *, convert: StateConverter | None = None) -> str:
    """Load ``weights`` strictly into ``model`` (``convert`` first maps a checkpoint to the model's own key
    names, e.g. timm's ``checkpoint_filter_fn``); returns the file's digest for the identity."""
    state = load_weights(weights)
    if convert is not None:
        try:
            state = convert(state, model)
        except (KeyError, IndexError, RuntimeError, TypeError, ValueError) as exc:
            # a converter fails on checkpoints of another architecture: name the mismatch, not its traceback
            mismatch = describe_mismatch(model, state, str(weights))
            raise ModelError((mismatch or f"weights file {weights} cannot be converted for this model")
                             + f" (the checkpoint conversion failed: {type(exc).__name__}: {exc})") from None
    load_into(model, state, str(weights))
    return file_digest(weights)


def build_model(cfg, construct: Callable[..., nn.Module], *, what: str, weights: Path | None,
                extra: dict[str, Any] | None = None, check: Callable[[nn.Module], None] | None = None,
                convert: StateConverter | None = None,
                errors: tuple[type[Exception], ...] = (TypeError,)) -> tuple[nn.Module, dict[str, Any]]:
    """Build ``construct(**model.options, **extra)`` seeded with ``options.seed``; ``check`` it (before any
    weights are read); load ``weights`` when ``model.pretrained``. Returns (model in eval mode, identity)."""
    m = cfg.model
    kwargs, seed = split_seed(dict(m.options) | (extra or {}))
    model = seeded(construct, kwargs, seed, what=what, errors=errors)
    if check is not None:
        check(model)
    identity: dict[str, Any] = {"kind": m.kind, "name": m.name, "options": kwargs, "seed": seed}
    if weights is not None and m.pretrained:
        identity["weights"] = load_pretrained(model, weights, convert=convert)
    else:
        identity["weights"] = "random"
    return model.eval(), identity
