"""Interleaved latency: the one way rba compares the speed of two models (PyTorch or ONNX Runtime)."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import numpy as np

__all__ = ["interleaved_speedup", "speedup_text"]


def interleaved_speedup(first: Callable[[], object], second: Callable[[], object], *, samples: int, repeats: int,
                        warmup: int = 2, alternate: bool = False) -> dict:
    """Per-sample milliseconds of ``first`` (the unmodified model) and ``second`` (the export), measured back to
    back after ``warmup`` runs of each, so that load changes hit both alike; ``alternate`` swaps their order on
    every other repeat. Returns both medians (``first_ms``, ``second_ms``), the speed-up as the ratio of those
    medians (``speedup`` = ``first_ms`` / ``second_ms``: it reads > 1 exactly when the export's median is the
    faster), the spread of the per-repeat ratios first/second (their quartiles ``speedup_q1``, ``speedup_q3``) and
    every repeat's times (``first_times_ms``, ``second_times_ms``)."""
    for _ in range(warmup):  # allocations, lazy initialisation, caches
        first()
        second()
    times: dict[str, list[float]] = {"first": [], "second": []}
    runs = {"first": first, "second": second}
    for r in range(repeats):
        for name in (("second", "first") if alternate and r % 2 else ("first", "second")):
            t0 = time.perf_counter()
            runs[name]()
            times[name].append((time.perf_counter() - t0) * 1000 / samples)
    ratios = np.array(times["first"]) / np.array(times["second"])
    q1, q3 = np.percentile(ratios, [25, 75])
    first_ms, second_ms = statistics.median(times["first"]), statistics.median(times["second"])
    return {"first_ms": first_ms, "second_ms": second_ms, "speedup": first_ms / second_ms,
            "speedup_q1": float(q1), "speedup_q3": float(q3),
            "first_times_ms": times["first"], "second_times_ms": times["second"]}


def speedup_text(speedup: float, q1: float, q3: float, *, repeats: int, batch_size: int, threads: int) -> str:
    """The speed-up as every report states it: the ratio of the medians, then its spread and conditions."""
    return (f"speed-up {speedup:.3g}× (ratio of the medians; per-repeat ratios: interquartile range "
            f"{q1:.3g}–{q3:.3g} over {repeats} interleaved repeats, batch {batch_size}, {threads} thread{'s' if threads != 1 else ''})")
