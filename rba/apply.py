"""Replacement modules and swapping them into a model.

:func:`span_module` builds a span's replacement module from its fit (the module its fit plug-in declares,
loaded with the solution). A span (i, j) puts that module at ``blocks[i]`` and a :class:`Skip` at
``blocks[i+1..j-1]``; the model's own forward then runs the approximation. :func:`replace_` does that in place
and returns a handle whose ``restore()`` (or ``with`` exit) puts the original blocks back.

A fit that folds (``[fit] kind = "fold"``) has no module of its own: :func:`fold_module` returns a
:class:`FoldedBlock`, a copy of block i − 1 whose down projection holds the map, which stands for blocks
i − 1..j − 1 (its :attr:`~FoldedBlock.jump`, the span the staged forward and the evaluator walk over:
:func:`walk_spans`); :func:`replace_` puts that copy at ``blocks[i-1]`` and skips blocks i..j − 1.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Iterator, Sequence, cast

import torch
from torch import nn

from rba._modules import Skip, SpanMap
from rba.adapters import Adapter
from rba.fit import SpanFit, get_fit
from rba.spans import Span

__all__ = ["SpanMap", "Skip", "FoldedBlock", "span_module", "fold_module", "fold_into", "walk_spans", "replace_",
           "replaced", "Replacement"]


def span_module(fit: SpanFit, layout: str, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The replacement module for a fitted span: its plug-in's module, holding the solution in ``dtype``."""
    plugin = get_fit(fit.kind)
    module = plugin.module(fit.dim_in, fit.dim_out, layout=layout, span=fit.span).to(dtype)
    state = {name: t.to(dtype) for name, t in plugin.state_dict(fit).items()}
    module.load_state_dict(state, strict=True)
    return module.eval()  # a replacement runs in inference mode (a trained fit's dropout off)


class FoldedBlock(nn.Module):
    """Block i − 1 with a fold's map multiplied into its down projection (``folded_block``), standing for blocks
    i − 1..j − 1 of the fold's span (i, j): :meth:`rba.adapters.Adapter.boundaries` runs it as block i − 1 and
    jumps to boundary j."""

    def __init__(self, block: nn.Module, span: Span):
        super().__init__()
        self.folded_block = block
        self.span = tuple(span)

    @property
    def jump(self) -> Span:
        """(i − 1, j): the blocks this module stands for, as a span of the staged forward."""
        return self.span[0] - 1, self.span[1]

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        raise TypeError("a FoldedBlock runs as a block of its model (Adapter.boundaries or the model's own forward), "
                        "not on a boundary tensor alone")

    def extra_repr(self) -> str:
        return f"span={self.span[0]}-{self.span[1]}"


@torch.no_grad()
def fold_into(module: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """Make ``module`` (an ``nn.Linear``, or transformers' ``Conv1D`` of GPT-2) compute y·W + b from its output y, in
    place: W (D × D, y's width) and b multiply into its weight and bias in float64, then round to its dtype."""
    # (nn.Module's attributes are typed Tensor | Module; a Linear's or Conv1D's weight and bias are tensors)
    w = cast(torch.Tensor, module.weight)
    old_b = cast(torch.Tensor | None, module.bias)
    if type(module).__name__ == "Conv1D":  # y = x·weight + bias, weight (in, out)
        new_w = w.double() @ weight.double()
    elif isinstance(module, nn.Linear):  # y = x·weightᵀ + bias, weight (out, in)
        new_w = weight.double().T @ w.double()
    else:
        raise TypeError(f"cannot fold a map into a {type(module).__name__} (an nn.Linear or a Conv1D folds)")
    w.copy_(new_w.to(w.dtype))
    if old_b is not None:
        new_b = old_b.double() @ weight.double() + (0 if bias is None else bias.double())
        old_b.copy_(new_b.to(old_b.dtype))
    elif bias is not None and bool(bias.any()):
        raise ValueError("the fold has a bias, but the down projection has none")


def fold_module(adapter: Adapter, fit: SpanFit, dtype: torch.dtype | None = None) -> FoldedBlock:
    """The :class:`FoldedBlock` of a fold's fit for span (i, j): a copy of ``adapter.blocks[i-1]`` (in ``dtype``,
    default the block's) with the map multiplied into its down projection (:meth:`Adapter.fold_target`)."""
    i, _ = fit.span
    block = copy.deepcopy(adapter.blocks[i - 1])
    if dtype is not None:
        block.to(dtype)
    fold_into(block.get_submodule(adapter.fold_target(i - 1)), fit.tensors["weight"], fit.bias)
    return FoldedBlock(block.eval(), fit.span)


def walk_spans(spans: Sequence[Span], maps: Sequence[nn.Module]) -> list[Span]:
    """The spans the staged forward jumps over for ``maps``: a fold's (i − 1, j) (:attr:`FoldedBlock.jump`), the span
    itself for every other module. What :class:`rba.evaluate.Evaluator` is handed with the maps."""
    return [getattr(m, "jump", s) for s, m in zip(spans, maps, strict=True)]


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
    """Swap ``maps[s]`` in for blocks ``spans[s][0]..spans[s][1]-1`` of ``adapter.blocks`` (in place); a
    :class:`FoldedBlock` puts its block at ``blocks[i-1]`` and skips blocks i..j − 1."""
    originals: dict[int, nn.Module] = {}
    for (i, j), module in zip(walk_spans(spans, maps), maps, strict=True):
        for k in range(i, j):
            originals[k] = adapter.blocks[k]
        folded = getattr(module, "folded_block", None)
        adapter.blocks[i] = adapter.wrap_replacement(module) if folded is None else folded
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
