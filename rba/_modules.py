"""The replacement modules of the built-in fits, kept free of imports from the rest of rba so that both the fit
plug-ins (which declare them) and :mod:`rba.apply` (which swaps them into models) can use them."""

from __future__ import annotations

import torch
from torch import nn

from rba.spans import Span

__all__ = ["SpanMap", "Skip"]


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
        if self.layout == "pixels":  # N×C×H×W; explicit permutes (the ONNX exporter mistranslates movedim's -1)
            return self.linear(h.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.linear(h)

    def extra_repr(self) -> str:
        return f"span={self.span[0]}-{self.span[1]}, layout={self.layout}"


class Skip(nn.Module):
    """Stands in for a block inside a replaced span (and for an identity fit): passes its input through."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h
