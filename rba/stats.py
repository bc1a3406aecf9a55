"""Standard errors and paired tests for what reports quote (not the capture statistics of :mod:`rba.statistics`).

Two configurations scored on the same samples are compared sample by sample, which removes the variance the
samples share:

* accuracy: :func:`mcnemar` (exact binomial test on the discordant pairs, and its mid-p version);
* a mean of per-sample values (fidelity cosines), or any statistic of per-sample tables (a hypervolume over
  per-sample qualities, the median of per-repeat time ratios): :func:`paired_bootstrap`, which resamples the
  samples, keeping each sample's values together;
* several comparisons in one report: :func:`holm` adjusts their p-values (family-wise error rate).

Pure functions of arrays (numpy and scipy only): no torch, no models.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from scipy import stats

__all__ = ["binomial_se", "mean_se", "McNemar", "mcnemar", "Interval", "paired_bootstrap", "mean_difference",
           "holm"]


def binomial_se(correct) -> float:
    """Standard error of an accuracy: √(p(1 − p)/n) for the share p of true values among n per-sample outcomes."""
    x = _vector(correct, "correct")
    p = float(np.mean(x))
    return math.sqrt(p * (1.0 - p) / len(x))


def mean_se(values) -> float:
    """Standard error of a mean of per-sample values (e.g. fidelity cosines): s / √n, s with ddof 1 (NaN for
    fewer than two values)."""
    x = _vector(values, "values")
    return float(stats.sem(x, ddof=1)) if len(x) > 1 else math.nan


@dataclass(frozen=True)
class McNemar:
    """A paired comparison of two classifiers' per-sample correctness on the same n samples."""

    n: int
    a_only: int
    """samples A classifies correctly and B does not"""
    b_only: int
    """samples B classifies correctly and A does not"""
    difference: float
    """accuracy of B − accuracy of A = (b_only − a_only) / n"""
    p_exact: float
    """two-sided exact p-value: binomial test of b_only among the a_only + b_only discordant pairs, p = ½"""
    p_mid: float
    """two-sided mid-p: the exact p less the probability of the observed count (less conservative; Fagerland,
    Lydersen and Laake 2013 recommend it)"""


def mcnemar(correct_a, correct_b) -> McNemar:
    """McNemar's test of "A and B are equally accurate" from their per-sample correctness (booleans, same
    samples in the same order)."""
    a = _vector(correct_a, "correct_a").astype(bool)
    b = _vector(correct_b, "correct_b").astype(bool)
    if a.shape != b.shape:
        raise ValueError(f"paired outcomes need one value per sample on both sides, got {len(a)} and {len(b)}")
    a_only, b_only = int(np.sum(a & ~b)), int(np.sum(b & ~a))
    discordant = a_only + b_only
    if discordant == 0:
        p_exact = p_mid = 1.0
    else:
        k = min(a_only, b_only)
        p_exact = float(stats.binomtest(k, discordant, 0.5).pvalue)
        p_mid = min(1.0, 2.0 * (float(stats.binom.cdf(k, discordant, 0.5)) - 0.5 * float(stats.binom.pmf(k, discordant, 0.5))))
    return McNemar(n=len(a), a_only=a_only, b_only=b_only, difference=(b_only - a_only) / len(a),
                   p_exact=p_exact, p_mid=p_mid)


@dataclass(frozen=True)
class Interval:
    """A statistic with its bootstrap interval."""

    estimate: float
    """the statistic on the data as observed"""
    low: float
    high: float
    confidence: float
    p: float
    """two-sided bootstrap p-value of "the statistic is 0": twice the smaller share of resamples on either side of
    0, (1 + count) / (1 + resamples) so never 0 (Efron and Tibshirani's achieved significance level); meaningful
    for differences, not for ratios (whose null is 1)"""
    resamples: int


#: scipy 1.15 renamed bootstrap's random_state to rng
_SEED_ARG = "rng" if "rng" in inspect.signature(stats.bootstrap).parameters else "random_state"


def paired_bootstrap(statistic: Callable[..., float], *samples, confidence: float = 0.95, resamples: int = 9999,
                     seed: int = 0, vectorized: bool = False) -> Interval:
    """Percentile bootstrap interval of ``statistic(*samples)``, resampling the rows (axis 0) of all ``samples``
    together: row r of every array belongs to sample r, and a resample keeps them paired. ``samples`` may be
    tables (n × configurations, e.g. per-sample qualities behind a hypervolume). ``vectorized``: ``statistic``
    takes an ``axis`` argument and reduces over it (much faster, e.g. ``np.mean``). The same ``seed`` draws the
    same resamples."""
    arrays = [np.asarray(s, dtype=float) for s in samples]
    if not arrays:
        raise ValueError("paired_bootstrap needs at least one array of per-sample values")
    n = len(arrays[0])
    if any(a.ndim == 0 or len(a) != n for a in arrays):
        raise ValueError(f"paired samples need the same number of rows, got {[a.shape for a in arrays]}")
    if n < 2:
        raise ValueError(f"a bootstrap needs at least two samples, got {n}")
    if vectorized and any(a.ndim != 1 for a in arrays):
        raise ValueError("a vectorized statistic takes 1-D per-sample arrays")
    estimate = float(statistic(*arrays, axis=0) if vectorized else statistic(*arrays))

    # resample row indices, so that tables keep their rows together and reach ``statistic`` rows first
    on_rows: Callable[..., Any]
    if vectorized:
        def on_rows(i, axis=-1):
            return statistic(*(a[i] for a in arrays), axis=axis)
    else:
        def on_rows(i):
            return statistic(*(a[i] for a in arrays))

    result = stats.bootstrap((np.arange(n),), on_rows, n_resamples=resamples, vectorized=vectorized, axis=0,
                             confidence_level=confidence, method="percentile",
                             **{_SEED_ARG: np.random.default_rng(seed)})
    dist = np.asarray(result.bootstrap_distribution, dtype=float)
    below, above = int(np.sum(dist <= 0)), int(np.sum(dist >= 0))
    p = min(1.0, 2.0 * (1 + min(below, above)) / (1 + len(dist)))
    low, high = result.confidence_interval
    return Interval(estimate=estimate, low=float(low), high=float(high), confidence=confidence, p=p,
                    resamples=resamples)


def mean_difference(a, b, **kwargs) -> Interval:
    """mean(b) − mean(a) of paired per-sample values (e.g. fidelity cosines of two configurations on the same
    samples), with its paired bootstrap interval (keywords as :func:`paired_bootstrap`)."""
    a, b = _vector(a, "a"), _vector(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"paired values need one value per sample on both sides, got {len(a)} and {len(b)}")
    return paired_bootstrap(np.mean, b - a, vectorized=True, **kwargs)


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjustment of the p-values of a family of comparisons (controls the family-wise error
    rate): the k-th smallest of m is multiplied by m − k + 1, then made non-decreasing in that order, capped at 1.
    NaN entries (comparisons not made) stay NaN and do not count in m."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    if len(valid) == 0:
        return out
    order = valid[np.argsort(p[valid], kind="stable")]
    m = len(order)
    scaled = p[order] * (m - np.arange(m))
    out[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return out


def _vector(values, name: str) -> np.ndarray:
    x = np.asarray(values)
    if x.ndim != 1 or len(x) == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array of per-sample values, got shape {x.shape}")
    return x
