"""The one timer: every latency rba measures (the cost model's per-block table, an export's latency, the
speed-up of an export over the unmodified model, in PyTorch or ONNX Runtime) goes through this module.

The protocol (:func:`compare`, two callables A and B, e.g. the unmodified model and the export):

* **warm-up of both sides** before anything is timed (allocations, lazy initialisation, caches);
* **ABBA within each repeat**: A, B, B, A, each side's repeat time the mean of its two runs, so that a load or
  clock drift that changes linearly over the repeat hits both alike (an A-then-B order charges it to B);
* **CUDA synchronised** before a run starts and before its clock stops, when torch has initialised CUDA in this
  process (else the clock would time kernel launches);
* **enough repeats**: at least :data:`FAST_REPEATS` where a repeat takes under :data:`FAST_S` seconds;
* **the paired result**: the median of the per-repeat ratios A/B (> 1: B is faster) with a bootstrap interval,
  the share of repeats in which B was faster, and each side's median time.

:func:`time_ms` times one callable the same way (warm-up, synchronised, the repeat rule) for the per-block
latency table. ``clock`` and ``sync`` arguments replace ``time.perf_counter`` and the CUDA synchronisation, so
tests run the protocol on a fake clock.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Literal

import numpy as np

__all__ = ["FAST_REPEATS", "FAST_S", "Timing", "Comparison", "time_ms", "compare", "comparison_text"]

#: the fewest repeats of a measurement whose repeat takes under FAST_S seconds: a median of fewer moves with load
FAST_REPEATS = 20
FAST_S = 1.0

#: the order of the runs within a repeat (the protocol's only one)
_ABBA = ("a", "b", "b", "a")


@dataclass
class Timing:
    """One callable's time per sample, in milliseconds."""

    median_ms: float
    times_ms: list[float]
    repeats: int


@dataclass
class Comparison:
    """A against B, measured by :func:`compare` (times per sample, milliseconds)."""

    a_ms: float
    """median of A's per-repeat times"""
    b_ms: float
    speedup: float
    """median of the paired per-repeat ratios A/B: > 1 when B is the faster"""
    speedup_low: float
    speedup_high: float
    """bootstrap interval of ``speedup`` (NaN for a single repeat)"""
    confidence: float
    b_faster: float
    """share of repeats in which B took less time than A"""
    repeats: int
    order: str
    a_times_ms: list[float] = field(repr=False)
    b_times_ms: list[float] = field(repr=False)

    @property
    def ratios(self) -> np.ndarray:
        return np.asarray(self.a_times_ms) / np.asarray(self.b_times_ms)

    @property
    def ratio_of_medians(self) -> float:
        """A's median over B's: what reports quoted before the paired ratio (not the headline any more)."""
        return self.a_ms / self.b_ms

    def to_dict(self) -> dict:
        return asdict(self)


def _default_sync() -> Callable[[], None] | None:
    """``torch.cuda.synchronize`` once torch has initialised CUDA in this process (checked without importing
    torch: ONNX Runtime and numpy callers never load it)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.synchronize
    return None


class _Runner:
    """Runs a callable between two clock reads, synchronising before each read when ``sync`` is set."""

    def __init__(self, clock: Callable[[], float] | None, sync: Callable[[], None] | Literal[False] | None):
        # looked up now, not at import: a test may replace time.perf_counter
        self.clock = clock or time.perf_counter
        self.sync = _default_sync() if sync is None else (sync or None)

    def seconds(self, fn: Callable[[], object]) -> float:
        if self.sync:
            self.sync()  # work queued before this run is not its time
        t0 = self.clock()
        fn()
        if self.sync:
            self.sync()
        return self.clock() - t0


def _repeats(requested: int, repeat_s: float, fast_repeats: int) -> int:
    return max(1, requested, fast_repeats if repeat_s < FAST_S else 0)


def time_ms(fn: Callable[[], object], *, repeats: int = FAST_REPEATS, samples: int = 1, warmup: int = 1,
            fast_repeats: int = FAST_REPEATS, clock: Callable[[], float] | None = None,
            sync: Callable[[], None] | Literal[False] | None = None) -> Timing:
    """Milliseconds per sample of ``fn`` (which processes ``samples`` samples): its median over ``repeats`` runs
    (raised to ``fast_repeats`` when the last warm-up run took under :data:`FAST_S`), after ``warmup`` runs.
    ``sync``: None synchronises CUDA when torch uses it, False never, a callable is called instead."""
    run = _Runner(clock, sync)
    last = math.inf
    for _ in range(warmup):
        last = run.seconds(fn)
    n = _repeats(repeats, last, fast_repeats)
    times = [run.seconds(fn) * 1000 / samples for _ in range(n)]
    return Timing(median_ms=statistics.median(times), times_ms=times, repeats=n)


def compare(a: Callable[[], object], b: Callable[[], object], *, repeats: int = FAST_REPEATS, samples: int = 1,
            warmup: int = 2, fast_repeats: int = FAST_REPEATS, confidence: float = 0.95,
            resamples: int = 9999, seed: int = 0, clock: Callable[[], float] | None = None,
            sync: Callable[[], None] | Literal[False] | None = None) -> Comparison:
    """A and B (each processing ``samples`` samples) timed under the protocol in the module docstring:
    ``warmup`` rounds of A, B, B, A, then ``repeats`` repeats (raised to ``fast_repeats`` when a warm-up
    round took under :data:`FAST_S`). ``sync`` as for :func:`time_ms`; ``seed`` draws the bootstrap resamples."""
    run = _Runner(clock, sync)
    sides = {"a": a, "b": b}
    round_s = math.inf
    for _ in range(warmup):
        round_s = sum(run.seconds(sides[name]) for name in _ABBA)
    n = _repeats(repeats, round_s, fast_repeats)
    times: dict[str, list[float]] = {"a": [], "b": []}
    for _ in range(n):
        taken: dict[str, list[float]] = {"a": [], "b": []}
        for name in _ABBA:
            taken[name].append(run.seconds(sides[name]))
        for name in times:
            times[name].append(statistics.fmean(taken[name]) * 1000 / samples)
    ratios = np.asarray(times["a"]) / np.asarray(times["b"])
    low = high = math.nan
    if n > 1:
        from rba.stats import paired_bootstrap  # scipy loads with the first comparison, not with the cost model

        interval = paired_bootstrap(np.median, ratios, vectorized=True, confidence=confidence, resamples=resamples,
                                    seed=seed)
        low, high = interval.low, interval.high
    return Comparison(a_ms=statistics.median(times["a"]), b_ms=statistics.median(times["b"]),
                      speedup=float(np.median(ratios)), speedup_low=low, speedup_high=high, confidence=confidence,
                      b_faster=float(np.mean(np.asarray(times["b"]) < np.asarray(times["a"]))), repeats=n,
                      order="ABBA", a_times_ms=times["a"], b_times_ms=times["b"])


def comparison_text(c: Comparison, *, what: str = "export", batch_size: int, threads: int) -> str:
    """A speed-up as reports will state it: the median paired ratio, its interval, how often B was faster."""
    interval = ("" if math.isnan(c.speedup_low) else
                f", {c.confidence:.0%} interval {c.speedup_low:.3g}–{c.speedup_high:.3g}")
    return (f"speed-up {c.speedup:.3g}× (median of {c.repeats} paired per-repeat ratios, {c.order} order{interval}; "
            f"the {what} faster in {c.b_faster:.0%} of repeats; batch {batch_size}, "
            f"{threads} thread{'s' if threads != 1 else ''})")
