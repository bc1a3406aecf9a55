"""The search space: one categorical per block (``keep`` / ``start`` / ``continue``) and its repair.

A span runs from a ``start`` through the ``continue``\\ s that follow it. A vector that does not spell a valid
configuration (a ``continue`` after ``keep`` or at block 0, a span whose boundaries differ in layout, a span
longer than ``max_span``) is **repaired** to the nearest valid configuration: the one whose encoding differs
from the vector in the fewest blocks (Hamming distance); ties go to the configuration replacing fewer blocks,
then to the earliest-keep, shortest-span choice. A valid configuration's own encoding is at distance 0, so it
maps to itself and every configuration is reachable. The repair is an exact dynamic programme over boundaries.

Blocks only offer the choices some valid configuration uses (a block no span can start at offers no
``start``), which keeps samplers out of dead corners of the space without changing the set of configurations.

``gap`` blocks are kept after each span before the next may start: 0 for most fit kinds, 1 for a fit that folds
(``[fit] kind = "fold"``: its map is multiplied into block i − 1, which must be kept and run). :func:`fit_space`
builds the space a fit kind can replace, spans and gap, from the session's valid spans.
"""

from __future__ import annotations

import math
import random
from functools import cached_property
from typing import Any, Iterator, Mapping, Sequence

from optuna.distributions import CategoricalDistribution

from rba.fit import get_fit
from rba.spans import Span, format_spans

__all__ = ["SpanSpace", "fit_space", "KEEP", "START", "CONTINUE", "CHOICES"]

KEEP, START, CONTINUE = "keep", "start", "continue"
CHOICES = (KEEP, START, CONTINUE)


class SpanSpace:
    """Encoding of configurations (sets of non-overlapping valid spans, ``gap`` kept blocks after each) over
    ``num_blocks`` blocks."""

    def __init__(self, num_blocks: int, pairs: Sequence[Span], gap: int = 0):
        self.num_blocks = int(num_blocks)
        self.pairs = sorted({(int(i), int(j)) for i, j in pairs})
        self.gap = int(gap)
        if self.gap < 0:
            raise ValueError(f"gap must be ≥ 0, got {gap}")
        for i, j in self.pairs:
            if not 0 <= i < j <= self.num_blocks:
                raise ValueError(f"span {i}-{j} is outside 0..{self.num_blocks}")
        self._from: dict[int, list[int]] = {}
        for i, j in self.pairs:
            self._from.setdefault(i, []).append(j)
        can_start = {i for i, _ in self.pairs}
        can_continue = {k for i, j in self.pairs for k in range(i + 1, j)}
        self.choices: list[tuple[str, ...]] = [
            tuple(c for c, ok in ((KEEP, True), (START, k in can_start), (CONTINUE, k in can_continue)) if ok)
            for k in range(self.num_blocks)
        ]

    def _next(self, j: int) -> int:
        """Where the configurations after a span ending at boundary j start: ``gap`` kept blocks later."""
        return min(j + self.gap, self.num_blocks)

    def allows(self, spans: Sequence[Span]) -> bool:
        """Whether ``spans`` is a configuration of this space (its spans, sorted apart by at least ``gap`` blocks)."""
        spans = sorted(spans)
        valid = set(self.pairs)
        return (all(tuple(s) in valid for s in spans)
                and all(c >= b + self.gap for (_, b), (c, _) in zip(spans, spans[1:])))

    # ------------------------------------------------------------------ names and distributions
    def name(self, k: int) -> str:
        return f"block_{k:02d}"

    @property
    def names(self) -> list[str]:
        return [self.name(k) for k in range(self.num_blocks)]

    def distributions(self) -> dict[str, Any]:
        """Optuna distributions, one categorical per block (shared by the Optuna and Ray backends)."""
        return {self.name(k): CategoricalDistribution(self.choices[k]) for k in range(self.num_blocks)}

    def suggest(self, trial) -> list[Span]:
        """Ask ``trial`` for one choice per block; return the repaired configuration."""
        params = {self.name(k): trial.suggest_categorical(self.name(k), self.choices[k]) for k in range(self.num_blocks)}
        return self.repair(params)

    # ------------------------------------------------------------------ encode / repair
    def encode(self, spans: Sequence[Span]) -> dict[str, str]:
        """The parameter dict of a valid configuration."""
        vec = [KEEP] * self.num_blocks
        if not self.allows(spans):
            raise ValueError(f"configuration {format_spans(spans)} is not in the search space ({self.describe()})")
        for i, j in sorted(spans):
            vec[i] = START
            for k in range(i + 1, j):
                vec[k] = CONTINUE
        return {self.name(k): v for k, v in enumerate(vec)}

    def _vector(self, params: Mapping[str, str] | Sequence[str]) -> list[str]:
        if isinstance(params, Mapping):
            vec = [params.get(self.name(k), KEEP) for k in range(self.num_blocks)]
        else:
            vec = list(params)
        if len(vec) != self.num_blocks:
            raise ValueError(f"expected {self.num_blocks} choices, got {len(vec)}")
        bad = [v for v in vec if v not in CHOICES]
        if bad:
            raise ValueError(f"unknown block choice {bad[0]!r}; choices are {', '.join(CHOICES)}")
        return vec

    def repair(self, params: Mapping[str, str] | Sequence[str]) -> list[Span]:
        """The nearest valid configuration to a vector (a parameter dict or a list of choices)."""
        vec = self._vector(params)
        L = self.num_blocks
        # best[k] = (hamming, replaced blocks) from boundary k to L; how[k] = the chosen step
        best: list[tuple[int, int]] = [(0, 0)] * (L + 1)
        how: list[int] = [0] * (L + 1)
        for k in range(L - 1, -1, -1):
            cand = (best[k + 1][0] + (vec[k] != KEEP), best[k + 1][1])  # keep block k
            choice = -1
            for j in self._from.get(k, []):
                after = self._next(j)  # blocks j..after-1 kept
                miss = ((vec[k] != START) + sum(vec[t] != CONTINUE for t in range(k + 1, j))
                        + sum(vec[t] != KEEP for t in range(j, after)))
                c = (best[after][0] + miss, best[after][1] + (j - k))
                if c < cand:
                    cand, choice = c, j
            best[k] = cand
            how[k] = choice
        spans, k = [], 0
        while k < L:
            if how[k] == -1:
                k += 1
            else:
                spans.append((k, how[k]))
                k = self._next(how[k])
        return spans

    def distance(self, params: Mapping[str, str] | Sequence[str], spans: Sequence[Span]) -> int:
        """Hamming distance between a vector and a configuration's encoding."""
        vec = self._vector(params)
        enc = list(self.encode(spans).values())
        return sum(a != b for a, b in zip(vec, enc))

    # ------------------------------------------------------------------ counting and enumeration
    @cached_property
    def _counts(self) -> list[int]:
        """counts[k] = number of configurations of boundaries k..L (Python ints: exact for any L)."""
        L = self.num_blocks
        c = [0] * (L + 1)
        c[L] = 1
        for k in range(L - 1, -1, -1):
            c[k] = c[k + 1] + sum(c[self._next(j)] for j in self._from.get(k, []))
        return c

    def count(self) -> int:
        """Number of valid configurations, the unmodified model ("none") included."""
        return self._counts[0]

    def unrank(self, index: int) -> list[Span]:
        """The ``index``-th configuration (0 ≤ index < count()) in a fixed order (index 0 is "none")."""
        if not 0 <= index < self.count():
            raise IndexError(f"configuration index {index} outside 0..{self.count() - 1}")
        spans, k = [], 0
        while k < self.num_blocks:
            if index < self._counts[k + 1]:
                k += 1
                continue
            index -= self._counts[k + 1]
            for j in self._from[k]:
                if index < self._counts[self._next(j)]:
                    spans.append((k, j))
                    k = self._next(j)
                    break
                index -= self._counts[self._next(j)]
        return spans

    def configurations(self) -> Iterator[list[Span]]:
        for idx in range(self.count()):
            yield self.unrank(idx)

    def sample(self, n: int, seed: int = 0) -> list[list[Span]]:
        """``n`` distinct configurations drawn uniformly (all of them, shuffled, if n ≥ count())."""
        rng = random.Random(seed)
        total = self.count()
        idx = rng.sample(range(total), min(n, total)) if total <= 10**7 else _distinct(rng, total, n)
        return [self.unrank(i) for i in idx]

    def describe(self) -> str:
        gap = f", {self.gap} kept block(s) between spans" if self.gap else ""
        return (f"{self.num_blocks} blocks, {len(self.pairs)} valid spans{gap}, {self.count():,} configurations "
                f"(log10 {math.log10(max(self.count(), 1)):.1f})")


def fit_space(num_blocks: int, pairs: Sequence[Span], kind: str) -> SpanSpace:
    """The configurations fit kind ``kind`` can replace, among the valid spans ``pairs``: all of them, or for a fit
    that folds (its map multiplied into block i − 1 of each span (i, j), which must be kept) the spans from
    boundary 1 on, with a kept block between consecutive spans (what :meth:`rba.session.Session.maps` accepts)."""
    if get_fit(kind).folds:
        return SpanSpace(num_blocks, [(i, j) for i, j in pairs if i >= 1], gap=1)
    return SpanSpace(num_blocks, pairs)


def _distinct(rng: random.Random, total: int, n: int) -> list[int]:
    seen: set[int] = set()
    out: list[int] = []
    while len(out) < min(n, total):
        v = rng.randrange(total)
        if v not in seen:
            seen.add(v)
            out.append(v)
    return out
