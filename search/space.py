"""The search space: one categorical per block (``keep`` / ``start`` / ``continue``) and its repair.

A span runs from a ``start`` through the ``continue``\\ s that follow it. A vector that does not spell a valid
configuration (a ``continue`` after ``keep`` or at block 0, a span whose boundaries differ in layout, a span
longer than ``max_span``) is **repaired** to the nearest valid configuration: the one whose encoding differs
from the vector in the fewest blocks (Hamming distance); ties go to the configuration replacing fewer blocks,
then to the earliest-keep, shortest-span choice. A valid configuration's own encoding is at distance 0, so it
maps to itself and every configuration is reachable. The repair is an exact dynamic programme over boundaries.

Blocks only offer the choices some valid configuration uses (a block no span can start at offers no
``start``), which keeps samplers out of dead corners of the space without changing the set of configurations.
"""

from __future__ import annotations

import math
import random
from functools import cached_property
from typing import Any, Iterator, Mapping, Sequence

from optuna.distributions import CategoricalDistribution

from rba.spans import Span

__all__ = ["SpanSpace", "KEEP", "START", "CONTINUE", "CHOICES"]

KEEP, START, CONTINUE = "keep", "start", "continue"
CHOICES = (KEEP, START, CONTINUE)


class SpanSpace:
    """Encoding of configurations (sets of non-overlapping valid spans) over ``num_blocks`` blocks."""

    def __init__(self, num_blocks: int, pairs: Sequence[Span]):
        self.num_blocks = int(num_blocks)
        self.pairs = sorted({(int(i), int(j)) for i, j in pairs})
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
        for i, j in sorted(spans):
            if (i, j) not in set(self.pairs):
                raise ValueError(f"span {i}-{j} is not in the search space")
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
                miss = (vec[k] != START) + sum(vec[t] != CONTINUE for t in range(k + 1, j))
                c = (best[j][0] + miss, best[j][1] + (j - k))
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
                k = how[k]
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
            c[k] = c[k + 1] + sum(c[j] for j in self._from.get(k, []))
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
                if index < self._counts[j]:
                    spans.append((k, j))
                    k = j
                    break
                index -= self._counts[j]
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
        return (f"{self.num_blocks} blocks, {len(self.pairs)} valid spans, {self.count():,} configurations "
                f"(log10 {math.log10(max(self.count(), 1)):.1f})")


def _distinct(rng: random.Random, total: int, n: int) -> list[int]:
    seen: set[int] = set()
    out: list[int] = []
    while len(out) < min(n, total):
        v = rng.randrange(total)
        if v not in seen:
            seen.add(v)
            out.append(v)
    return out
