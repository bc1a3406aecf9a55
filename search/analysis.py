"""The study report's analysis sections, computed from the tables a finished ``rba run`` leaves in its folder
(``scores.csv``, ``trials.csv``, ``pareto.csv``, ``baselines.csv``, ``singles.csv``): no model is loaded and
nothing is evaluated here, so ``rba report DIR`` recomputes them from the files alone.

* :func:`redundant_spans`: which spans each registered metric calls most redundant (the heatmaps' reading);
* :func:`compare_methods`: the search against BR-greedy and block-drop at the same budgets: hypervolume of each
  method's feasible configurations and the best quality at given FLOPs fractions;
* :func:`prior_correlations`: Spearman correlation of each metric (oriented so that higher means more
  redundant) with the post-replacement fidelity and accuracy of every single span;
* :func:`multi_span`: whether configurations of two spans or more reach the front, and what they add;
* :func:`search_cost`: search wall time against one evaluation and an exhaustive sweep of the space;
* :func:`front_members`: the front as the report lists it, next to the unmodified model's reference row.

Each quality column has the direction of its objective (:data:`rba.names.OBJECTIVES`: accuracy, fidelity and top1
maximised, perplexity and kl minimised); cost columns (flops_frac, params_frac, latency_ms) are minimised.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

from rba.names import maximised, objective_of
from search._optuna_private import compute_hypervolume

__all__ = ["hypervolume", "quality_limit", "span_count", "redundant_spans", "compare_methods", "best_quality_at",
           "prior_correlations", "multi_span", "search_cost", "feasible_rows", "front_members"]


def span_count(spans: str) -> int:
    """Number of spans in a configuration string ("none": 0)."""
    spans = str(spans)
    return 0 if spans in ("none", "") else spans.count(",") + 1


def feasible_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows within every budget (a missing ``feasible`` counts as feasible), COMPLETE when a state is given."""
    if not len(rows):
        return rows
    keep = rows["feasible"].astype("boolean").fillna(True).astype(bool) if "feasible" in rows else True
    if "state" in rows:
        keep = keep & (rows["state"] == "COMPLETE")
    return rows[keep]


def hypervolume(quality: Sequence[float], cost: Sequence[float], ref_quality: float, ref_cost: float, *,
                higher: bool = True) -> float:
    """Area that the points (quality ↑, or ↓ when not ``higher``; cost ↓) dominate up to the reference point
    ``(ref_quality, ref_cost)``, by Optuna's hypervolume computation; points not better than the reference in both
    count nothing, nor do NaNs."""
    sign = -1.0 if higher else 1.0  # as a loss: minimised
    loss = np.array([[sign * q, c] for q, c in zip(quality, cost)
                     if math.isfinite(q) and math.isfinite(c) and sign * q < sign * ref_quality and c < ref_cost],
                    dtype=float)
    if not len(loss):
        return 0.0
    return float(compute_hypervolume(loss, np.array([sign * ref_quality, ref_cost], dtype=float)))


def quality_limit(column: str, value: float, change: float) -> float:
    """The worst value of quality ``column`` within a relative ``change`` of ``value``: (1 − change) × value for a
    maximised quality, (1 + change) × value for a minimised one, and value + log(1 + change) for one measured in
    nats (kl: the rise of cross-entropy that a relative rise ``change`` of perplexity is)."""
    if maximised(column):
        return (1.0 - change) * float(value)
    spec = objective_of(column)
    if spec is not None and spec.log_scale:
        return float(value) + math.log1p(change)
    return (1.0 + change) * float(value)


def _worst(values: pd.Series, column: str) -> float:
    """The worst of ``values`` of quality ``column`` (the lowest, or the highest when it is minimised)."""
    return float(values.min() if maximised(column) else values.max())


def redundant_spans(scores: pd.DataFrame, orientation: dict[str, bool], top: int = 3) -> pd.DataFrame:
    """Per metric column of ``scores`` named in ``orientation`` (metric → higher is more redundant): the ``top``
    most redundant spans, and the Spearman correlation of its ranking with the first metric's over all spans."""
    from scipy.stats import spearmanr  # lazy: scipy loads with the first rank correlation

    names = [m for m in orientation if m in scores.columns]
    rows = []
    first = None
    for m in names:
        valid = scores.dropna(subset=[m])
        oriented = valid[m] if orientation[m] else -valid[m]
        best = valid.assign(_o=oriented).sort_values(["_o", "start", "end"], ascending=[False, True, True]).head(top)
        row: dict[str, str | float] = {"metric": m, "most redundant": ", ".join(f"{int(a)}-{int(b)}" for a, b in zip(best["start"], best["end"]))}
        if first is None:
            first = m
        else:
            both = scores.dropna(subset=[first, m])
            x = both[first] if orientation[first] else -both[first]
            y = both[m] if orientation[m] else -both[m]
            row[f"spearman vs {first}"] = float(spearmanr(x, y).statistic) if len(both) >= 3 else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def best_quality_at(rows: pd.DataFrame, quality: str, flops_frac: float) -> tuple[float, str]:
    """The best ``quality`` (highest; lowest for a minimised one) among the feasible rows with ``flops_frac`` at most ``flops_frac``, and its spans
    (NaN and "" when none)."""
    ok = feasible_rows(rows)
    ok = ok[(ok["flops_frac"] <= flops_frac + 1e-12) & ok[quality].notna()]
    if not len(ok):
        return math.nan, ""
    best = ok.sort_values([quality, "flops_frac"], ascending=[not maximised(quality), True]).iloc[0]
    return float(best[quality]), str(best["spans"])


def compare_methods(methods: dict[str, pd.DataFrame], *, quality: str, cost: str, reference: dict,
                    flops_points: Sequence[float]) -> tuple[pd.DataFrame, tuple[float, float]]:
    """One row per method (label → its evaluated configurations): the number of feasible configurations, the
    hypervolume of (``quality`` ↑, ``cost`` ↓) over them, its share of the largest, and the best quality at each
    FLOPs fraction of ``flops_points``. The hypervolume's reference point is the worst feasible quality of all
    methods and the unmodified model's cost (``reference[cost]``); it is returned with the table."""
    feasible = {label: feasible_rows(rows) for label, rows in methods.items()}
    qualities = pd.concat([r[quality] for r in feasible.values() if len(r)] or [pd.Series(dtype=float)]).dropna()
    ref = (_worst(qualities, quality) if len(qualities) else 0.0, float(reference[cost]))
    higher = maximised(quality)
    out = []
    for label, rows in feasible.items():
        row = {"method": label, "configurations": len(rows),
               "hypervolume": hypervolume(rows[quality], rows[cost], *ref, higher=higher) if len(rows) else 0.0}
        for p in flops_points:
            q, spans = best_quality_at(rows, quality, p)
            row[f"best {quality} at flops_frac ≤ {p:g}"] = q
            row[f"spans at {p:g}"] = spans
        out.append(row)
    table = pd.DataFrame(out)
    top = table["hypervolume"].max() if len(table) else 0.0
    table.insert(3, "share of best", table["hypervolume"] / top if top > 0 else math.nan)
    return table, ref


def prior_correlations(singles: pd.DataFrame, scores: pd.DataFrame, orientation: dict[str, bool],
                       qualities: Sequence[str] = ("fidelity", "accuracy")) -> pd.DataFrame:
    """Spearman ρ (scipy) over every single span in ``singles`` (columns start, end and the qualities) between
    each metric of ``orientation`` (oriented: higher is more redundant, so a good prior has ρ > 0) and each
    quality (oriented too: perplexity and kl negated); with its p-value and the number of spans. NaN where a
    quality is missing or constant."""
    from scipy.stats import spearmanr  # lazy: scipy loads with the first rank correlation

    merged = singles.merge(scores, on=["start", "end"], how="inner", suffixes=("", "_score"))
    rows = []
    for m in orientation:
        if m not in scores.columns:
            continue
        for q in qualities:
            if q not in merged:
                continue
            both = merged.dropna(subset=[m, q])
            x = both[m] if orientation[m] else -both[m]
            y = both[q] if maximised(q) else -both[q]  # a minimised quality negated: a good prior has ρ > 0
            rho, p = math.nan, math.nan
            if len(both) >= 3 and x.nunique() > 1 and both[q].nunique() > 1:
                res = spearmanr(x, y)
                rho, p = float(res.statistic), float(res.pvalue)
            rows.append({"metric": m, "quality": q, "spearman": rho, "p_value": p, "spans": len(both)})
    return pd.DataFrame(rows, columns=["metric", "quality", "spearman", "p_value", "spans"])


def multi_span(front: pd.DataFrame, evaluated: pd.DataFrame, *, quality: str, cost: str,
               reference: dict) -> dict:
    """Do configurations of two spans or more reach the front? The count of front members by their number of
    spans, and the hypervolume of the front of the evaluated configurations with at most one span against that
    of all of them (same reference point: the worst feasible quality evaluated, the unmodified model's cost)."""
    members = front[front["spans"] != "none"]
    counts = members["spans"].map(span_count)
    ok = feasible_rows(evaluated)
    ok = ok[ok[quality].notna()]
    ref = (_worst(ok[quality], quality) if len(ok) else 0.0, float(reference[cost]))
    single = ok[ok["spans"].map(span_count) <= 1]
    higher = maximised(quality)
    hv_all = hypervolume(ok[quality], ok[cost], *ref, higher=higher)
    hv_single = hypervolume(single[quality], single[cost], *ref, higher=higher)
    multi = members[counts >= 2]
    return {"front_members": int(len(members)), "multi_span_members": int(len(multi)),
            "by_count": {int(k): int(v) for k, v in counts.value_counts().sort_index().items()},
            "multi_span_spans": [str(s) for s in multi["spans"]],
            "hypervolume_all": hv_all, "hypervolume_single": hv_single,
            "single_share": hv_single / hv_all if hv_all > 0 else math.nan,
            "single_evaluated": int(len(single[single["spans"] != "none"])), "reference_point": list(ref)}


def search_cost(trials: pd.DataFrame, *, search_wall_s: float, configurations: int, exhaustive_run: bool) -> dict:
    """The reviewers' cost question: search wall time, one evaluation (the median duration of the completed
    trials), and an exhaustive sweep: ``configurations`` × one evaluation (an estimate unless the method was
    exhaustive, then the search itself)."""
    done = trials[trials["state"] == "COMPLETE"]
    one = float(done["duration_s"].median()) if len(done) else math.nan
    exhaustive = search_wall_s if exhaustive_run else configurations * one
    return {"search_wall_s": float(search_wall_s), "trials": int(len(done)), "one_evaluation_s": one,
            "search_in_evaluations": search_wall_s / one if one > 0 else math.nan,
            "configurations": int(configurations), "exhaustive_s": float(exhaustive),
            "exhaustive_estimated": not exhaustive_run,
            "exhaustive_over_search": exhaustive / search_wall_s if search_wall_s > 0 else math.nan}


def front_members(front: pd.DataFrame, reference: dict, columns: Sequence[str]) -> pd.DataFrame:
    """The front as the report lists it under the unmodified model's reference row: without the unmodified
    configuration (``"none"``, which the reference row already shows) and without any member the unmodified
    model dominates in the objective ``columns`` (at least as good in each, better in one; accuracy and fidelity
    top1 maximised, the rest minimised), since a search that never evaluated ``"none"`` could not see them lose."""
    if not len(front):
        return front

    def dominated(row) -> bool:
        better = False
        for c in columns:
            r, q = float(reference[c]), float(row[c])
            if math.isnan(r) or math.isnan(q):
                return False
            gain = (r - q) if maximised(c) else (q - r)  # > 0: the reference is better in c
            if gain < 0:
                return False
            better = better or gain > 0
        return better

    keep = [str(row["spans"]) != "none" and not dominated(row) for _, row in front.iterrows()]
    return front[keep].reset_index(drop=True)
