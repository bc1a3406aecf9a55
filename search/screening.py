"""Multi-fidelity screening (``[search] screening = true``): score each proposal from statistics alone and
evaluate it fully only if it looks promising.

Proxy: Σ ls_residual of the configuration's spans (statistics only, lower is better), paired with the cost
objectives (exact, from the cost model). A proposal is screened out when a configuration already evaluated
dominates it in (proxy, costs): at most as costly everywhere and no worse a residual, strictly better
somewhere. Screened-out proposals are recorded as PRUNED trials (costs filled in, accuracy and fidelity
empty) and do not count towards ``trials``; after ``patience`` screen-outs in a row the next proposal is
evaluated anyway, so the search cannot stall. Enqueued trials (priors, baselines) are always evaluated.
"""

from __future__ import annotations

import threading
from typing import Sequence

from rba.spans import Span

__all__ = ["Screen"]


class Screen:
    def __init__(self, objective, *, patience: int = 10):
        self.objective = objective
        self.patience = patience
        self.points: list[tuple[float, tuple[float, ...]]] = []
        self.skipped_in_row = 0
        self.screened_out = 0
        self._lock = threading.Lock()

    def _point(self, spans: Sequence[Span]) -> tuple[float, tuple[float, ...]]:
        cost = self.objective.cost(spans)
        cols = [c for c in self.objective.columns if c in ("flops_frac", "params_frac", "latency_ms")]
        return self.objective.proxy(spans), tuple(float(cost[c]) for c in cols)

    def seed(self, configurations: Sequence[Sequence[Span]]) -> None:
        """Configurations already evaluated (a resumed study)."""
        for spans in configurations:
            self.points.append(self._point(spans))

    def admit(self, spans: Sequence[Span], *, force: bool = False) -> tuple[bool, float]:
        """(evaluate fully?, proxy value)."""
        p, c = self._point(spans)
        with self._lock:
            dominated = any(
                q <= p and all(a <= b for a, b in zip(d, c)) and (q < p or any(a < b for a, b in zip(d, c)))
                for q, d in self.points
            )
            if dominated and not force and self.skipped_in_row < self.patience:
                self.skipped_in_row += 1
                self.screened_out += 1
                return False, p
            self.skipped_in_row = 0
            self.points.append((p, c))
            return True, p
