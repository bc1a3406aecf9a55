"""Interleaved latency: the one way rba compares the speed of two models (PyTorch or ONNX Runtime)."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import numpy as np

__all__ = ["interleaved_speedup"]


def interleaved_speedup(first: Callable[[], object], second: Callable[[], object], *, samples: int, repeats: int,
                        warmup: int = 2, alternate: bool = False) -> dict[str, float]:
    """Per-sample milliseconds of ``first`` (the unmodified model) and ``second`` (the export), measured back to
    back after ``warmup`` runs of each, so that load changes hit both alike; ``alternate`` swaps their order on
    every other repeat. Returns both medians (``first_ms``, ``second_ms``) and the speed-up, the median of the
    per-repeat ratios first/second, with its quartiles (``speedup``, ``speedup_q1``, ``speedup_q3``)."""
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
    return {"first_ms": statistics.median(times["first"]), "second_ms": statistics.median(times["second"]),
            "speedup": float(np.median(ratios)), "speedup_q1": float(q1), "speedup_q3": float(q3)}
