"""The metric registry: each registered :class:`Metric` is one column of scores.csv, in registration order."""

from __future__ import annotations

from rba._registry import RegistrationError, Registry
from rba.metrics._base import Metric
from rba.metrics._scores import BlockRedundancy, Cosine, LinearCKA, LSResidual
from rba.metrics._svcca import SVCCA

__all__ = ["register_metric", "list_metrics", "get_metric"]


def _check_metric(cls) -> None:
    if not (isinstance(cls, type) and issubclass(cls, Metric)):
        raise TypeError(f"a metric is registered as a Metric subclass, got {cls!r}")


_METRICS: Registry[type[Metric]] = Registry("metric", check=_check_metric)


def register_metric(name: str, metric: type[Metric] | str) -> None:
    """Add the column ``name`` to scores.csv, scored by ``metric`` (a Metric subclass or ``"module:Class"``)."""
    if name in ("start", "end"):
        raise RegistrationError(f"{name!r} is a span column of scores.csv, not a metric name")
    _METRICS.register(name, metric)


def list_metrics() -> list[str]:
    """Metric names = score columns after start, end: built-ins first (br, cosine, cka, ls_residual, svcca)."""
    return _METRICS.names()


def get_metric(name: str) -> type[Metric]:
    return _METRICS.get(name)


for _cls in (BlockRedundancy, Cosine, LinearCKA, LSResidual, SVCCA):
    register_metric(_cls.name, _cls)
