"""Replacement modules and swapping them into a model.

A span (i, j) becomes one :class:`SpanMap` at ``blocks[i]`` and a :class:`Skip` at ``blocks[i+1..j-1]``; the
model's own forward then runs the approximation. :func:`replace_` does that in place and returns a handle whose
``restore()`` (or ``with`` exit) puts the original blocks back.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn

from rba.adapters._base import Adapter
from rba.spans import Span

__all__ = ["SpanMap", "Skip", "replace_", "replaced", "Replacement"]


class SpanMap(nn.Module):
    """One affine map y = x·W + b applied to every vector (token or pixel position) of a boundary tensor.

    Stored as an ``nn.Linear`` (weight = Wᵀ), so an export holds an ordinary linear layer.
    """

    def __init__(self, dim_in: int, dim_out: int, *, bias: bool = True, layout: str = "tokens", span: Span = (0, 1)):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out, bias=bias)
        self.layout = layout
        self.span = tuple(span)

    @classmethod
    def from_solution(cls, weight: torch.Tensor, bias: torch.Tensor | None, *, layout: str, span: Span) -> "SpanMap":
        """``weight`` is D_in × D_out (the solved W); ``bias`` is D_out or None."""
        m = cls(weight.shape[0], weight.shape[1], bias=bias is not None, layout=layout, span=span)
        with torch.no_grad():
            m.linear.weight.copy_(weight.T.to(m.linear.weight.dtype))
            if bias is not None:
                m.linear.bias.copy_(bias.to(m.linear.bias.dtype))
        return m

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.layout == "pixels":
            return self.linear(h.movedim(1, -1)).movedim(-1, 1)
        return self.linear(h)

    def extra_repr(self) -> str:
        return f"span={self.span[0]}-{self.span[1]}, layout={self.layout}"


class Skip(nn.Module):
    """Stands in for a block inside a replaced span: passes its input through."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h


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
