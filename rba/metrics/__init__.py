"""Redundancy scores of spans, from streamed statistics alone; ``register_metric`` adds a scores.csv column."""

from rba.metrics._base import Metric
from rba.metrics._registry import get_metric, list_metrics, register_metric
from rba.metrics._scores import BlockRedundancy, Cosine, LinearCKA, LSResidual, RandomMetric
from rba.metrics._svcca import SVCCA
from rba.metrics._table import plot_scores, score_columns, score_table

__all__ = ["Metric", "BlockRedundancy", "Cosine", "LinearCKA", "LSResidual", "SVCCA", "RandomMetric", "register_metric",
           "list_metrics", "get_metric", "score_columns", "score_table", "plot_scores"]
