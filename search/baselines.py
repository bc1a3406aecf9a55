"""Configurations proposed from statistics alone: the priors that seed a search, and the baselines run
through ``--method`` (exhaustive, random, br-greedy, block-drop) on the same objective.

* **best single spans**: the span with the highest br (the paper's metric) and the one with the lowest
  ls_residual.
* **BR-greedy** (the paper's heuristic): repeatedly take the highest-br span that does not overlap the spans
  already chosen; every prefix of that sequence is one configuration (1 span, 2 spans, ...).
* **block-drop** (ShortGPT / SLEB-style removal): single blocks ranked by their Block Influence
  1 − mean cos(x_k, x_{k+1}) (lowest first, i.e. the blocks that change their input least), dropped
  cumulatively; evaluated with ``[fit] kind = "identity"`` (each dropped block becomes a skip).
"""

from __future__ import annotations

from typing import Sequence

import pandas as pd

from rba.adapters._base import Span
from rba.capture import Statistics

__all__ = ["span_scores", "best_single_spans", "br_greedy", "block_drop_order", "prior_configurations",
           "EXHAUSTIVE_LIMIT"]

#: the most configurations ``--method exhaustive`` evaluates
EXHAUSTIVE_LIMIT = 5000


def span_scores(stats: Statistics, pairs: Sequence[Span], ridge: float) -> pd.DataFrame:
    """scores.csv's table restricted to ``pairs`` (the spans of the search space)."""
    from rba.metrics._table import score_table

    table = score_table(stats, ridge)
    keep = {tuple(p) for p in pairs}
    mask = [(int(s), int(e)) in keep for s, e in zip(table["start"], table["end"])]
    return table[mask].reset_index(drop=True)


def _span(row) -> Span:
    return (int(row["start"]), int(row["end"]))


def best_single_spans(table: pd.DataFrame) -> list[tuple[str, list[Span]]]:
    """[("best br", [span]), ("best ls_residual", [span])] (NaN scores ignored)."""
    out = []
    br = table.dropna(subset=["br"])
    if len(br):
        out.append(("best br", [_span(br.loc[br["br"].idxmax()])]))
    ls = table.dropna(subset=["ls_residual"])
    if len(ls):
        out.append(("best ls_residual", [_span(ls.loc[ls["ls_residual"].idxmin()])]))
    return out


def br_greedy(table: pd.DataFrame) -> list[list[Span]]:
    """The BR-greedy sequence: configuration k holds the k highest-br spans picked without overlap."""
    order = table.dropna(subset=["br"]).sort_values(["br", "start", "end"], ascending=[False, True, True])
    chosen: list[Span] = []
    out = []
    for _, row in order.iterrows():
        i, j = _span(row)
        if any(i < b and a < j for a, b in chosen):
            continue
        chosen.append((i, j))
        out.append(sorted(chosen))
    return out


def block_drop_order(stats: Statistics, pairs: Sequence[Span]) -> list[list[Span]]:
    """Cumulative single-block drops, least influential block first (ShortGPT's Block Influence)."""
    singles = [(i, j) for i, j in pairs if j == i + 1 and stats.dims[i] == stats.dims[j]]
    ranked = sorted(singles, key=lambda s: (-(stats.cos_sum[s] / stats.count(s[0])), s))
    out, chosen = [], []
    for s in ranked:
        chosen.append(s)
        out.append(sorted(chosen))
    return out


def prior_configurations(table: pd.DataFrame) -> list[tuple[str, list[Span]]]:
    """Priors enqueued first: best single spans by br and by ls_residual, then BR-greedy combinations
    (two spans or more); duplicates removed, order kept."""
    seen: set[tuple[Span, ...]] = set()
    out = []
    candidates = best_single_spans(table) + [(f"br-greedy {len(c)}", c) for c in br_greedy(table) if len(c) >= 2]
    for label, spans in candidates:
        key = tuple(spans)
        if key not in seen:
            seen.add(key)
            out.append((label, spans))
    return out
