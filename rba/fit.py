"""Closed-form span fits from streamed statistics (float64, ridge-stabilised normal equations, Cholesky).

Affine: ``W = (A_i + λI) \\ B_ij`` with A_i = Σ x̃_i x̃_iᵀ, B_ij = Σ x̃_i x_jᵀ, λ = ridge · mean diagonal of the
system (tr(A_i)/(D+1) for affine); the bias row is ridged like the rest. Linear drops the bias row/column.
Identity maps x to x (the skip baseline). ``SSE = s_j − 2·tr(Wᵀ B) + tr(Wᵀ A W)``, which for the ridge solution
is ``s_j − tr(WᵀB) − λ‖W‖²``. The factorisation of A_i + λI is computed once per start boundary.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from rba.spans import Span
from rba._threads import single_thread
from rba.capture import Statistics
from rba.errors import SpanError

__all__ = ["SpanFit", "fit_span", "register_fit", "RankDeficientWarning", "span_module", "ill_conditioning"]

#: smallest/largest eigenvalue of the unridged system below which the ridge is what makes it solvable
RANK_DEFICIENT_RATIO = 1e-10


class RankDeficientWarning(UserWarning):
    """The normal equations of a span are (numerically) singular; the ridge takes over."""


@dataclass
class SpanFit:
    span: Span
    kind: str
    weight: torch.Tensor
    """D_in × D_out float64"""
    bias: torch.Tensor | None
    """D_out float64, or None (linear, identity)"""
    sse: float
    """Σ‖x̂_j − x_j‖² over the calibration vectors"""
    ridge_lambda: float

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        y = x.to(self.weight.dtype) @ self.weight
        return y if self.bias is None else y + self.bias

    @property
    def num_params(self) -> int:
        if self.kind == "identity":
            return 0
        return self.weight.numel() + (0 if self.bias is None else self.bias.numel())


_FITS: dict[str, Callable[[Statistics, Span, float], SpanFit]] = {}


def register_fit(kind: str):
    """Register a closed-form fit ``fn(stats, span, ridge) -> SpanFit`` under ``[fit] kind``."""

    def deco(fn):
        _FITS[kind] = fn
        return fn

    return deco


def fit_span(stats: Statistics, span: Span, kind: str = "affine", ridge: float = 1e-6) -> SpanFit:
    if kind not in _FITS:
        raise SpanError(f"unknown fit kind {kind!r}; known: {', '.join(sorted(_FITS))}")
    i, j = span
    if stats.dims[i] != stats.dims[j] and kind == "identity":
        raise SpanError(f"span {i}-{j}: an identity map needs equal sizes, boundaries have D = {stats.dims[i]} and {stats.dims[j]}")
    stats.require(span)
    with single_thread():
        return _FITS[kind](stats, span, ridge)


def ill_conditioning(stats: Statistics, k: int, *, with_bias: bool = True) -> float:
    """Smallest / largest eigenvalue of the unridged Gram matrix at boundary k."""
    cache = stats.scratch.setdefault("conditioning", {})
    key = (k, with_bias)
    if key not in cache:
        a = stats.gram[k] if with_bias else stats.gram[k][:-1, :-1]
        ev = torch.linalg.eigvalsh(a)
        cache[key] = float(ev[0].clamp_min(0) / ev[-1]) if float(ev[-1]) > 0 else 0.0
    return cache[key]


def _inverse(stats: Statistics, k: int, ridge: float, span: Span, *, with_bias: bool) -> tuple[torch.Tensor, float]:
    """(A_k + λI)⁻¹ and λ for the Gram matrix at boundary k, computed once per boundary and reused by every
    span that starts there (a search fits many spans from the same start). Cholesky; if that fails (ridge 0 on
    a singular A), λ is raised tenfold until it works."""
    cache = stats.scratch.setdefault("inverse", {})
    key = (k, with_bias, ridge)
    if key in cache:
        return cache[key]
    a = stats.gram[k] if with_bias else stats.gram[k][:-1, :-1]
    scale = float(torch.diagonal(a).mean())
    if not scale > 0:
        raise SpanError(f"span {span[0]}-{span[1]}: the input boundary's vectors are all zero; nothing to fit")
    lam = ridge * scale
    eye = torch.eye(a.shape[0], dtype=a.dtype)
    for _ in range(20):
        chol, info = torch.linalg.cholesky_ex(a + lam * eye)
        if int(info) == 0:
            cache[key] = torch.cholesky_inverse(chol), lam
            return cache[key]
        lam = max(lam * 10, 1e-12 * scale)
        warnings.warn(
            f"span {span[0]}-{span[1]}: normal equations not positive definite; ridge raised to λ = {lam:.3g}",
            RankDeficientWarning,
            stacklevel=4,
        )
    raise SpanError(f"span {span[0]}-{span[1]}: normal equations could not be solved (statistics hold NaN/Inf?)")


def _solve(stats: Statistics, span: Span, ridge: float, *, with_bias: bool) -> tuple[torch.Tensor, float, float]:
    """W = (A_i + λI)⁻¹ B_ij and its SSE. Because (A + λI)W = B, tr(WᵀAW) = tr(WᵀB) − λ‖W‖², so
    SSE = s_j − tr(WᵀB) − λ‖W‖² needs no second D³ product."""
    i, j = span
    b = stats.cross[span] if with_bias else stats.cross[span][:-1]
    inv, lam = _inverse(stats, i, ridge, span, with_bias=with_bias)
    w = inv @ b
    sse = stats.sum_sq(j) - float((w * b).sum()) - lam * float((w * w).sum())
    return w, lam, max(sse, 0.0)


def _warn_if_singular(stats: Statistics, span: Span, with_bias: bool, lam: float) -> None:
    ratio = ill_conditioning(stats, span[0], with_bias=with_bias)
    if ratio < RANK_DEFICIENT_RATIO:
        seen = stats.scratch.setdefault("warned", set())
        if span not in seen:
            seen.add(span)
            warnings.warn(
                f"span {span[0]}-{span[1]}: statistics at boundary {span[0]} are rank-deficient "
                f"(eigenvalue ratio {ratio:.1e}); the ridge (λ = {lam:.3g}) takes over",
                RankDeficientWarning,
                stacklevel=3,
            )


@register_fit("affine")
def _fit_affine(stats: Statistics, span: Span, ridge: float) -> SpanFit:
    w, lam, sse = _solve(stats, span, ridge, with_bias=True)
    _warn_if_singular(stats, span, True, lam)
    return SpanFit(span, "affine", w[:-1], w[-1], sse, lam)


@register_fit("linear")
def _fit_linear(stats: Statistics, span: Span, ridge: float) -> SpanFit:
    w, lam, sse = _solve(stats, span, ridge, with_bias=False)
    _warn_if_singular(stats, span, False, lam)
    return SpanFit(span, "linear", w, None, sse, lam)


@register_fit("identity")
def _fit_identity(stats: Statistics, span: Span, ridge: float) -> SpanFit:
    i, j = span
    # ‖x_i − x_j‖² summed: s_i − 2·tr(B) + s_j
    cross = float(torch.diagonal(stats.cross[span][:-1]).sum())
    sse = max(stats.sum_sq(i) - 2 * cross + stats.sum_sq(j), 0.0)
    return SpanFit(span, "identity", torch.eye(stats.dims[i], dtype=torch.float64), None, sse, 0.0)


def span_module(fit: SpanFit, layout: str, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The replacement module for a fitted span (identity spans become a parameter-free skip)."""
    from rba.apply import Skip, SpanMap

    if fit.kind == "identity":
        return Skip()
    m = SpanMap.from_solution(fit.weight, fit.bias, layout=layout, span=fit.span)
    return m.to(dtype)
