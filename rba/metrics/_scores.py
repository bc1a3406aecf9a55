"""Block Redundancy (the paper's metric), cosine, linear CKA and the least-squares residual."""

from __future__ import annotations

import math

import torch

from rba.fit import fit_span
from rba.metrics._base import Metric
from rba.spans import Span
from rba.statistics import Statistics

__all__ = ["BlockRedundancy", "Cosine", "LinearCKA", "LSResidual", "RandomMetric"]


class BlockRedundancy(Metric):
    """br = −Σ‖x_i − x_j‖² / (n·D): per-vector, per-dimension mean (never per sample)."""

    name = "br"
    label = "BR = −MSE (higher: more redundant)"

    def __call__(self, stats: Statistics, span: Span) -> float:
        i, _ = span
        return -stats.squared_distance(span) / (stats.count(i) * stats.dims[i])


class Cosine(Metric):
    """Mean over vectors of cos(x_i, x_j)."""

    name = "cosine"

    def __call__(self, stats: Statistics, span: Span) -> float:
        return stats.cos_sum[span] / stats.count(span[0])


class LinearCKA(Metric):
    """Linear CKA over vectors: ‖C_ij‖²_F / (‖C_ii‖_F ‖C_jj‖_F) with centred (cross-)covariances."""

    name = "cka"
    label = "linear CKA"

    def __call__(self, stats: Statistics, span: Span) -> float:
        i, j = span
        c_ij = stats.cross_covariance(span)
        c_ii, c_jj = self._centered_cov(stats, i), self._centered_cov(stats, j)
        denom = float(torch.linalg.matrix_norm(c_ii) * torch.linalg.matrix_norm(c_jj))
        return float((c_ij**2).sum()) / denom if denom > 0 else math.nan


class LSResidual(Metric):
    """SSE of the affine least-squares fit / Σ‖x_j − x̄_j‖²: scale-free, so a block that only rescales
    scores ≈ 0 (redundant) where MSE-based br does not. Lower is more redundant."""

    name = "ls_residual"
    higher_is_redundant = False
    label = "LS residual (lower: more redundant)"

    def __init__(self, ridge: float = 1e-6):
        self.ridge = ridge

    @classmethod
    def build(cls, *, ridge: float) -> "LSResidual":
        return cls(ridge)

    def __call__(self, stats: Statistics, span: Span) -> float:
        fit = fit_span(stats, span, "affine", self.ridge)
        total = self._total_variation(stats, span[1])
        return fit.sse / total if total > 0 else math.nan


class RandomMetric(Metric):
    """A baseline that ranks spans at random (seeded by the span, so it is reproducible)."""

    name = "random"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def __call__(self, stats: Statistics, span: Span) -> float:
        g = torch.Generator().manual_seed(hash((self.seed, span)) & 0xFFFFFFFF)
        return float(torch.rand((), generator=g))
