"""The metric plug-in point: a :class:`Metric` scores a span from streamed statistics alone."""

from __future__ import annotations

import abc

import torch

from rba.spans import Span
from rba.statistics import Statistics

__all__ = ["Metric"]


class Metric(abc.ABC):
    """Scores one span (i, j) from :class:`~rba.statistics.Statistics`; never reads the model or data."""

    #: column name in scores.csv
    name: str = ""
    #: True when larger means "more redundant" (safer to replace)
    higher_is_redundant: bool = True
    #: panel title in scores.png (default: the column name)
    label: str = ""

    @classmethod
    def build(cls, *, ridge: float) -> "Metric":
        """The instance the score table uses; metrics that fit spans take the config's ``fit.ridge``."""
        return cls()

    @abc.abstractmethod
    @torch.no_grad()
    def __call__(self, stats: Statistics, span: Span) -> float:
        ...

    @staticmethod
    def _centered_cov(stats: Statistics, k: int) -> torch.Tensor:
        """Σ (x − x̄)(x − x̄)ᵀ at boundary k."""
        return stats.covariance(k)

    @staticmethod
    def _total_variation(stats: Statistics, k: int) -> float:
        """Σ ‖x − x̄‖² at boundary k."""
        return stats.total_variation(k)
