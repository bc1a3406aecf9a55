"""Configurations proposed without a sampler: the priors that seed a search, and the baselines that
``--method`` runs on the same objective (planned in :mod:`search.methods`, listed in :mod:`rba.methods`).

* **proxy fronts** (the first priors, and ``proxy-front``): the statistics-only Pareto layers of (Σ ls_residual,
  cost) over *every* configuration — layer 1 exact by a DP over boundaries (costs and the proxy add over spans,
  so each suffix's non-dominated set suffices), layers 1 and 2 by enumeration when the space is small enough —
  each layer coarse to fine over its cost range (the front a search is after, guessed from statistics; Spearman
  ≈ 0.9 against fidelity on MiniLM, see benchmarks/RESULTS.md).
* **best single spans**: the span with the highest br (the paper's metric) and the one with the lowest
  ls_residual.
* **BR-greedy** (the paper's heuristic): repeatedly take the highest-br span that does not overlap the spans
  already chosen; every prefix of that sequence is one configuration (1 span, 2 spans, ...).
* **ShortGPT** (Men et al. 2024; ``shortgpt``, alias ``block-drop``): single blocks ranked once by their Block
  Influence BI = 1 − mean cos(x_k, x_{k+1}) over every vector, lowest first, dropped cumulatively (identity);
  ``shortgpt-affine`` replaces each run of dropped blocks by one fitted span instead (:func:`merge_runs`).
* **SLEB** (Song et al. 2024): blocks removed one at a time, each time the one whose removal (with those already
  removed) leaves the end metric highest, re-measured on a subset of the eval split; the first and the last
  remaining block are never candidates (the reference code's default barriers).
* **Gromov et al.** (2024, "The Unreasonable Ineffectiveness of the Deeper Layers"): for each length n, the
  span (ℓ, ℓ + n) of least angular distance arccos(cos(x_ℓ, x_{ℓ+n}))/π, averaged over the calibration split's
  vectors (the paper reads the last token of a decoder; these encoders pool every token, or a CLS token that
  attends to all, so every vector counts, as in the statistics).
* **ReplaceMe** (Shopkhoev et al. 2025; ``replaceme``): one span (ℓ, ℓ + n) of n = 25% of the blocks (rounded),
  the one of least angular distance arccos(cos(x_ℓ, x_{ℓ+n}))/π between the **last real token** of each calibration
  sample entering and leaving it (as its ``distance.py`` reads ``get_last_non_padded_tokens``), ℓ ≥ 1 (it reads the
  hidden states after the embeddings, and its map folds into block ℓ − 1), fitted with ``fold``. Its code compares
  the final boundary after the model's final norm (transformers' last hidden state); rba's boundary L is the
  residual stream before it.
* **random lesions**: random sets of dropped blocks, a size drawn uniformly, then the blocks (seeded).
"""

from __future__ import annotations

import math
import random
from collections import deque
from typing import Sequence

import pandas as pd
import torch
import torch.nn.functional as F

from rba.apply import walk_spans
from rba.capture import iter_batches
from rba.errors import ConfigError, RBAError
from rba.metrics import score_table
from rba.names import maximised
from rba.spans import Span
from rba.statistics import Statistics
from search.space import SpanSpace

__all__ = ["span_scores", "best_single_spans", "br_greedy", "shortgpt_order", "merge_runs", "replaceme_distances",
           "replaceme_length",
           "sleb_order", "angular_distances", "gromov_spans", "random_lesions", "proxy_front", "proxy_layers",
           "bisection_order", "front_priors", "prior_configurations", "EXHAUSTIVE_LIMIT", "SLEB_BARRIERS"]

#: Pareto layers of (Σ ls_residual, cost) enqueued as priors (:func:`front_priors`)
PROXY_FRONT_LAYERS = 2

#: the most configurations a space may hold for :func:`front_priors` to enumerate it (its later layers);
#: above it, the first layer only, from the DP
LAYER_LIMIT = 100_000

#: the most configurations ``--method exhaustive`` evaluates
EXHAUSTIVE_LIMIT = 5000

#: SLEB never removes the first or the last of the remaining blocks (early_barrier = latter_barrier = 1 in the
#: reference code, jiwonsong-dev/SLEB sleb.py)
SLEB_BARRIERS = (1, 1)


def span_scores(stats: Statistics, pairs: Sequence[Span], ridge: float) -> pd.DataFrame:
    """scores.csv's table restricted to ``pairs`` (the spans of the search space)."""

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


def br_greedy(table: pd.DataFrame, gap: int = 0) -> list[list[Span]]:
    """The BR-greedy sequence: configuration k holds the k highest-br spans picked without overlap (and ``gap``
    kept blocks between spans: :attr:`search.space.SpanSpace.gap`)."""
    order = table.dropna(subset=["br"]).sort_values(["br", "start", "end"], ascending=[False, True, True])
    chosen: list[Span] = []
    out = []
    for _, row in order.iterrows():
        i, j = _span(row)
        if any(i < b + gap and a < j + gap for a, b in chosen):
            continue
        chosen.append((i, j))
        out.append(sorted(chosen))
    return out


def shortgpt_order(stats: Statistics, pairs: Sequence[Span]) -> list[list[Span]]:
    """Cumulative single-block drops, least influential block first (ShortGPT's Block Influence, ties by
    position): configuration k holds the k blocks of lowest BI = 1 − mean cos(x_k, x_{k+1})."""
    singles = [(i, j) for i, j in pairs if j == i + 1 and stats.dims[i] == stats.dims[j]]
    # highest mean cosine = lowest BI first (sorted on −cos, as the studies already run were planned)
    ranked = sorted(singles, key=lambda s: (-(stats.cos_sum[s] / stats.count(s[0])), s))
    out, chosen = [], []
    for s in ranked:
        chosen.append(s)
        out.append(sorted(chosen))
    return out


def merge_runs(spans: Sequence[Span], pairs: Sequence[Span]) -> list[Span]:
    """Single-block spans with adjacent blocks merged into runs, each run covered from its start by the longest
    valid spans (one span when the run is itself valid, within ``max_span`` and of one layout)."""
    valid = set(pairs)
    blocks = sorted(i for i, _ in spans)
    runs: list[list[int]] = []
    for k in blocks:
        if runs and runs[-1][1] == k:
            runs[-1][1] = k + 1
        else:
            runs.append([k, k + 1])
    out = []
    for a, b in runs:
        while a < b:
            j = max(j for j in range(a + 1, b + 1) if (a, j) in valid)  # (a, a + 1) is valid: it was dropped
            out.append((a, j))
            a = j
    return out


def _subset_quality(objective, spans: list[Span], batches: list[int]) -> float:
    """The objective's first quality (fidelity without one) of ``spans`` on the eval
    split's ``batches``, the probe (if any) fitted on the whole probe split, as an early-stopped trial scores."""
    ev = objective.session.evaluator
    column = (objective.quality_columns or ["fidelity"])[0]
    maps = objective.maps(spans)
    run = ev.forward(walk_spans(spans, maps), maps, tag=objective.tag)  # not finished: nothing enters the memo
    pooled_probe = run.pooled("probe", range(len(ev.parts["probe"].contexts))) if "probe" in ev.parts else None
    probe = ev.probe_for({"probe": pooled_probe}) if ev.need_labels and pooled_probe is not None else None
    rows = ev.parts["eval"].rows(batches)
    return float(ev.subset_scores(run.pooled("eval", batches), rows, probe)[column])


def sleb_order(objective, barriers: tuple[int, int] = SLEB_BARRIERS, *, stride: int = 4,
               min_flops: float = 0.0) -> tuple[list[list[Span]], int]:
    """SLEB's removal order: configuration k holds the first k removed blocks (identity spans). Each step tries
    every remaining candidate block with the blocks already removed, on every ``stride``-th batch of the eval split,
    and removes the one that leaves the quality best (highest; lowest for perplexity or kl; ties: the earliest
    block). A candidate whose removal would take the FLOPs fraction below ``min_flops`` is not tried; the order
    ends when none is left.
    Returns the configurations and the number of subset evaluations they took."""
    session = objective.session
    stats = session.stats
    alive = [i for i, j in session.pairs if j == i + 1 and stats.dims[i] == stats.dims[j]]
    batches = session.evaluator.eval_stages((stride,))[0]
    early, late = barriers
    removed: list[Span] = []
    out, evaluations = [], 0
    column = (objective.quality_columns or ["fidelity"])[0]
    sign = 1.0 if maximised(column) else -1.0
    while len(alive) > early + late:
        best_score, best = -math.inf, None
        for k in alive[early : len(alive) - late]:
            spans = sorted(removed + [(k, k + 1)])
            if min_flops and objective.cost(spans)["flops_frac"] < min_flops:
                continue
            score = sign * _subset_quality(objective, spans, batches)
            evaluations += 1
            if score > best_score:
                best_score, best = score, k
        if best is None and min_flops and all(objective.cost(sorted(removed + [(k, k + 1)]))["flops_frac"] < min_flops
                                              for k in alive[early : len(alive) - late]):
            break  # every candidate would go below min_flops
        if best is None:  # every score beats -inf but NaN, which compares false
            raise RBAError(f"SLEB: every candidate block scored NaN {column} on the eval split's first subset "
                           f"({len(batches)} batches) with blocks {sorted(i for i, _ in removed)} removed, so none can "
                           f"be chosen to remove next; give the eval split data on which {column} is finite (for the "
                           "next-token objectives, texts of two tokens or more), or search with another --method")
        removed.append((best, best + 1))
        alive.remove(best)
        out.append(sorted(removed))
    return out, evaluations


def angular_distances(session, pairs: Sequence[Span]) -> dict[Span, float]:
    """Span (i, j) → mean over the calibration split's vectors of arccos(cos(x_i, x_j))/π (Gromov et al.'s angular
    distance), from one forward pass."""
    adapter = session.adapter
    sums, counts = dict.fromkeys(pairs, 0.0), dict.fromkeys(pairs, 0)
    with torch.inference_mode():
        for _, chunk in iter_batches(session.splits.calibration.samples, session.cfg.capture.batch_size):
            h, ctx = adapter.embed(adapter.collate(chunk))
            vectors = {k: adapter.vectors(h, ctx).double() for k, h in adapter.boundaries(h, ctx)}
            for i, j in pairs:
                cos = F.cosine_similarity(vectors[i], vectors[j], dim=1, eps=1e-12).clamp(-1.0, 1.0)
                sums[(i, j)] += float(torch.arccos(cos).sum()) / math.pi
                counts[(i, j)] += len(cos)
    return {p: sums[p] / counts[p] for p in pairs}


def replaceme_distances(session, lengths: Sequence[int]) -> dict[Span, float]:
    """Valid span (ℓ, ℓ + n), ℓ ≥ 1, n in ``lengths`` → mean over the calibration samples of arccos(cos(x_ℓ,
    x_{ℓ+n}))/π on each sample's last real token (the last position of its attention mask), from one forward pass."""
    adapter = session.adapter
    if adapter.layout != "tokens":
        raise ConfigError(f"--method replaceme reads the last token of each sample; {adapter.describe()} has no tokens")
    valid = set(session.pairs)
    spans = [(i, i + n) for n in lengths for i in range(1, adapter.num_blocks - n + 1) if (i, i + n) in valid]
    sums, count = dict.fromkeys(spans, 0.0), 0
    with torch.inference_mode():
        for _, chunk in iter_batches(session.splits.calibration.samples, session.cfg.capture.batch_size):
            h, ctx = adapter.embed(adapter.collate(chunk))
            rows = torch.arange(h.shape[0], device=h.device)
            last = (torch.full((h.shape[0],), h.shape[1] - 1, device=h.device) if ctx.mask is None else
                    h.shape[1] - 1 - ctx.mask.flip(1).int().argmax(1))  # the last True of each row
            states = {k: s[rows, last].double() for k, s in adapter.boundaries(h, ctx)}
            for i, j in spans:
                cos = F.cosine_similarity(states[i], states[j], dim=1, eps=1e-12).clamp(-1.0, 1.0)
                sums[(i, j)] += float(torch.arccos(cos).sum()) / math.pi
            count += h.shape[0]
    return {p: sums[p] / count for p in spans}


def replaceme_length(num_blocks: int) -> int:
    """ReplaceMe's usual setting: 25% of the blocks, rounded (at least 1)."""
    return max(1, round(0.25 * num_blocks))


def gromov_spans(distances: dict[Span, float]) -> list[Span]:
    """For each span length n, the span (ℓ, ℓ + n) of least angular distance (ties: the earliest); shortest first."""
    best: dict[int, Span] = {}
    for (i, j), d in sorted(distances.items()):
        n = j - i
        if n not in best or d < distances[best[n]]:
            best[n] = (i, j)
    return [best[n] for n in sorted(best)]


def random_lesions(blocks: Sequence[int], count: int, seed: int) -> list[list[Span]]:
    """``count`` distinct non-empty sets of ``blocks`` (all of them when fewer exist), each drawn as a size
    uniform in 1..len(blocks), then that many blocks uniformly; as single-block spans."""
    blocks = sorted(blocks)
    rng = random.Random(seed)
    count = min(count, 2 ** len(blocks) - 1)
    seen: set[tuple[int, ...]] = set()
    out: list[list[Span]] = []
    while len(out) < count:
        chosen = tuple(sorted(rng.sample(blocks, rng.randint(1, len(blocks)))))
        if chosen not in seen:
            seen.add(chosen)
            out.append([(k, k + 1) for k in chosen])
    return out


def _configurations(num_blocks: int, pairs: Sequence[Span], proxy: dict[Span, float], cost: dict[Span, float],
                    reduce=list, gap: int = 0) -> list[tuple[float, float, tuple[Span, ...]]]:
    """(Σ proxy, Σ cost, spans) of the configurations from boundary 0 on, by dynamic programming over the
    boundaries: from boundary k either block k is kept (the configurations from k + 1) or a span (k, j) starts
    there (its values + the configurations from j + ``gap``, the blocks between kept); ``reduce`` prunes each
    boundary's list (default: keeps all)."""
    by_start: dict[int, list[int]] = {}
    for i, j in pairs:
        by_start.setdefault(i, []).append(j)
    table: list[list[tuple[float, float, tuple[Span, ...]]]] = [[] for _ in range(num_blocks + 1)]
    table[num_blocks] = [(0.0, 0.0, ())]
    for k in range(num_blocks - 1, -1, -1):
        candidates = list(table[k + 1])
        for j in by_start.get(k, []):
            p, c = proxy[(k, j)], cost[(k, j)]
            candidates += [(p + q, c + d, ((k, j),) + rest) for q, d, rest in table[min(j + gap, num_blocks)]]
        table[k] = reduce(candidates)
    return table[0]


def _nondominated(candidates: list[tuple[float, float, tuple[Span, ...]]]) -> list[tuple[float, float, tuple[Span, ...]]]:
    """The (proxy, cost) non-dominated members (both minimised), sorted by cost; equal costs keep the lowest proxy."""
    kept, best = [], float("inf")
    for q, d, spans in sorted(candidates, key=lambda t: (t[1], t[0])):
        if q < best:
            kept.append((q, d, spans))
            best = q
    return kept


def proxy_front(num_blocks: int, pairs: Sequence[Span], proxy: dict[Span, float],
                cost: dict[Span, float], gap: int = 0) -> list[tuple[float, float, list[Span]]]:
    """Every configuration's (Σ proxy, Σ cost) over its spans, reduced to the non-dominated ones (both
    minimised), exactly: the front of the configurations from boundary k on is the front of "block k kept"
    (the front from k + 1) and "span (k, j)" (its values + the front from j). Returns (proxy, cost, spans)
    sorted by cost; ``cost`` is each span's change of the cost (negative: it saves). ``gap``: kept blocks
    between spans (:attr:`search.space.SpanSpace.gap`)."""
    front = _configurations(num_blocks, pairs, proxy, cost, reduce=_nondominated, gap=gap)
    return [(q, d, list(spans)) for q, d, spans in front]


def bisection_order(n: int) -> list[int]:
    """0..n−1 coarse to fine: the middle, then the middles of both halves, and so on (breadth first), so that
    every prefix of the order is spread over the whole range."""
    out, queue = [], deque([(0, n - 1)])
    while queue:
        lo, hi = queue.popleft()
        if lo <= hi:
            mid = (lo + hi) // 2
            out.append(mid)
            queue += [(lo, mid - 1), (mid + 1, hi)]
    return out


def proxy_layers(num_blocks: int, pairs: Sequence[Span], proxy: dict[Span, float], cost: dict[Span, float],
                 layers: int, keep=None, gap: int = 0) -> list[list[list[Span]]]:
    """The first ``layers`` Pareto layers of (Σ proxy, Σ cost) (both minimised) over every configuration for which
    ``keep(spans)`` holds (default: all): layer 1 is the front, layer 2 the front of the rest, and so on; each
    layer sorted by cost, the unmodified configuration left out of the result (it takes part in the sorting, so
    a configuration it dominates is in no early layer). Equal costs keep the lowest proxy in the layer (as
    :func:`proxy_front`). Enumerates the configurations: meant for spaces up to :data:`LAYER_LIMIT`."""
    every = _configurations(num_blocks, pairs, proxy, cost, gap=gap)
    # the unmodified configuration takes part (what it dominates is never proposed) but is not returned
    points = sorted((t for t in every if not t[2] or keep is None or keep(list(t[2]))), key=lambda t: (t[1], t[0]))
    out = []
    for _ in range(layers):
        layer: list[tuple[float, float, tuple[Span, ...]]] = []
        rest: list[tuple[float, float, tuple[Span, ...]]] = []
        best = float("inf")
        for t in points:
            (layer if t[0] < best else rest).append(t)
            best = min(best, t[0])
        members = [list(spans) for _, _, spans in layer if spans]
        if not members:
            break
        out.append(members)
        points = rest
    return out


def front_priors(table: pd.DataFrame, objective, count: int | None = None,
                 layers: int = PROXY_FRONT_LAYERS) -> list[tuple[int, list[Span]]]:
    """The configurations a search evaluates first: the first ``layers`` Pareto layers of (Σ ls_residual of
    ``table``, the objective's exact cost) among the configurations that meet the budgets (the unmodified one
    excluded), layer by layer, each coarse to fine over its cost range (:func:`bisection_order`); at most
    ``count`` (None: all). Returns (layer, spans) pairs. A space of more than :data:`LAYER_LIMIT`
    configurations gets the first layer only (the exact DP front, :func:`proxy_front`)."""
    space = objective.space
    ls = {(int(a), int(b)): float(v) for a, b, v in zip(table["start"], table["end"], table["ls_residual"])}
    deltas = objective.span_cost_deltas(objective.cost_name)
    pairs = [p for p in space.pairs if p in ls and ls[p] == ls[p] and p in deltas]  # NaN scores: not proposed
    proxy, cost = {p: ls[p] for p in pairs}, {p: deltas[p] for p in pairs}

    L, gap = space.num_blocks, space.gap
    if layers > 1 and SpanSpace(L, pairs, gap=gap).count() <= LAYER_LIMIT:
        keep = objective.feasible if objective.budgets else None
        fronts = proxy_layers(L, pairs, proxy, cost, layers, keep=keep, gap=gap)
    else:
        front = proxy_front(L, pairs, proxy, cost, gap=gap)
        fronts = [[spans for _, _, spans in front if spans and objective.feasible(spans)]]
    out = [(k + 1, front[i]) for k, front in enumerate(fronts) for i in bisection_order(len(front))]
    return out if count is None else out[:count]


def prior_configurations(table: pd.DataFrame, front: Sequence[tuple[int, list[Span]]] = (), *,
                         br: bool = True, gap: int = 0) -> list[tuple[str, list[Span]]]:
    """Priors enqueued first, in this order: the proxy fronts' members (``front``, from :func:`front_priors`:
    (layer, spans) pairs), the best single spans by br and by ls_residual, then BR-greedy combinations (two spans
    or more); duplicates removed, order kept. ``br=False`` leaves out what br proposes (the best br span is
    BR-greedy's first configuration), for a search compared with BR-greedy; ``gap``: as :func:`br_greedy`."""
    seen: set[tuple[Span, ...]] = set()
    out = []
    singles = [(label, spans) for label, spans in best_single_spans(table) if br or label != "best br"]
    candidates = ([("proxy front" if layer == 1 else f"proxy front, layer {layer}", list(c)) for layer, c in front if c]
                  + singles + ([(f"br-greedy {len(c)}", c) for c in br_greedy(table, gap) if len(c) >= 2] if br else []))
    for label, spans in candidates:
        key = tuple(spans)
        if key not in seen:
            seen.add(key)
            out.append((label, spans))
    return out
