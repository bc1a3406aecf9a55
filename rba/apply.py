"""Replacement modules and swapping them into a model.

:func:`span_module` builds a span's replacement module from its fit (the module its fit plug-in declares,
loaded with the solution). A span (i, j) puts that module at ``blocks[i]`` and a :class:`Skip` at
``blocks[i+1..j-1]``; the model's own forward then runs the approximation. :func:`replace_` does that in place
and returns a handle whose ``restore()`` (or ``with`` exit) puts the original blocks back.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn

from rba._modules import Skip, SpanMap
from rba.adapters import Adapter
from rba.fit import SpanFit, get_fit
from rba.spans import Span

__all__ = ["SpanMap", "Skip", "span_module", "replace_", "replaced", "Replacement"]


def span_module(fit: SpanFit, layout: str, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The replacement module for a fitted span: its plug-in's module, holding the solution in ``dtype``."""
    plugin = get_fit(fit.kind)
    module = plugin.module(fit.dim_in, fit.dim_out, layout=layout, span=fit.span).to(dtype)
    state = {name: t.to(dtype) for name, t in plugin.state_dict(fit).items()}
    module.load_state_dict(state, strict=True)
    return module.eval()  # a replacement runs in inference mode (a trained fit's dropout off)


class Replacement:
    """Handle returned by :func:`replace_`: ``restore()`` puts the original blocks back."""

    def __init__(self, adapter: Adapter, originals: dict[int, nn.Module]):
        self.adapter = adapter
        self.originals = originals

    def restore(self) -> None:
        for k, block in self.originals.items():
            self.adapter.blocks[k] = block
        self.originals = {}

    def __enter__(self) -> "Replacement":
        return self

    def __exit__(self, *exc) -> None:
        self.restore()


def replace_(adapter: Adapter, spans: Sequence[Span], maps: Sequence[nn.Module]) -> Replacement:
    """Swap ``maps[s]`` in for blocks ``spans[s][0]..spans[s][1]-1`` of ``adapter.blocks`` (in place)."""
    originals: dict[int, nn.Module] = {}
    for (i, j), module in zip(spans, maps, strict=True):
        for k in range(i, j):
            originals[k] = adapter.blocks[k]
        adapter.blocks[i] = adapter.wrap_replacement(module)
        for k in range(i + 1, j):
            adapter.blocks[k] = adapter.wrap_replacement(Skip())
    return Replacement(adapter, originals)


@contextmanager
def replaced(adapter: Adapter, spans: Sequence[Span], maps: Sequence[nn.Module]) -> Iterator[Adapter]:
    """``with replaced(adapter, spans, maps): ...`` runs with the spans swapped in, then restores them."""
    handle = replace_(adapter, spans, maps)
    try:
        yield adapter
    finally:
        handle.restore()
