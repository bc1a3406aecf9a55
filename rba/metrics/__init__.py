"""Redundancy scores of spans, from streamed statistics alone."""

from rba.metrics._base import Metric
from rba.metrics._scores import BlockRedundancy, Cosine, LinearCKA, LSResidual, RandomMetric
from rba.metrics._table import score_table

__all__ = ["Metric", "BlockRedundancy", "Cosine", "LinearCKA", "LSResidual", "RandomMetric", "score_table"]
