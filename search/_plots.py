"""The plots of a finished ``rba run`` folder, drawn from its files (:func:`_draw_plots`, for
:func:`search._render.render_report`): the metrics' scores, the front with the baselines, the metrics as priors over
every single span, and the search's cost against an exhaustive sweep."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from rba.files import atomic_path
from rba.metrics import plot_scores
from rba.names import LM_COLUMNS
from search.analysis import search_cost
from search.pareto import plot_front

__all__ = ["PLOTS"]


#: the plots ``rba report`` (and ``rba run`` through it) draws
PLOTS = ("scores.png", "pareto.png", "priors.png", "cost.png")


def _draw_plots(out: Path, inputs: dict) -> None:
    """scores.png, pareto.png, cost.png, and priors.png when every single span was evaluated."""

    info, baselines, singles = inputs["info"], inputs["baselines"], inputs["singles"]
    plot_scores(inputs["scores"], out / "scores.png", title=info["titles"]["scores"])
    curves = {} if baselines is None else {m: rows for m, rows in baselines.groupby("method", sort=False)}
    plot_front(out / "pareto.png", inputs["trials"], inputs["front"], objective_columns=info["objective_columns"],
               budgets=info["budgets"], reference=inputs["reference"], baselines=curves, title=info["titles"]["pareto"])
    if singles is not None:
        _plot_priors(out / "priors.png", singles, inputs["scores"], info["metrics"])
    _plot_cost(out / "cost.png", _search_cost(info, inputs["trials"]))


def _prior_qualities(singles: pd.DataFrame) -> tuple[str, ...]:
    """The qualities the priors section correlates with: fidelity and accuracy, and the next-token ones where the
    single spans have them (decoder LMs)."""
    return ("fidelity", "accuracy") + tuple(c for c in LM_COLUMNS if c in singles and singles[c].notna().any())


def _plot_priors(path: Path, singles: pd.DataFrame, scores: pd.DataFrame, metrics: dict[str, bool]) -> None:
    from matplotlib.figure import Figure  # lazy: matplotlib loads with the first plot

    merged = singles.merge(scores, on=["start", "end"], how="inner", suffixes=("", "_score"))
    names = [m for m in metrics if m in scores.columns]
    qualities = [q for q in _prior_qualities(singles) if merged[q].notna().any()]
    fig = Figure(figsize=(3.2 * len(names), 3.0 * len(qualities)), layout="constrained")
    axes = fig.subplots(len(qualities), len(names), squeeze=False)
    for r, q in enumerate(qualities):
        for c, m in enumerate(names):
            ax = axes[r][c]
            ax.scatter(merged[m], merged[q], s=14)
            ax.set_xlabel(m + ("" if metrics[m] else " (lower: more redundant)"), fontsize=8)
            ax.set_ylabel(q, fontsize=8)
            ax.grid(alpha=0.3)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")


def _search_cost(info: dict, trials: pd.DataFrame) -> dict:
    """The search's cost (:func:`search.analysis.search_cost`). Its time is this run's search wall time, or, when
    the study resumed (trials completed in an earlier run), the summed durations of all its completed trials: this
    run's wall time covers only the trials it ran (none, when the study was already complete)."""

    wall = dict(info["timing"]["phases"]).get("search", math.nan)
    if info["timing"].get("completed_before", 0):
        wall = float(trials.loc[trials["state"] == "COMPLETE", "duration_s"].sum())
    return search_cost(trials, search_wall_s=wall, configurations=info["configurations"],
                       exhaustive_run=info["method"] == "exhaustive")


def _plot_cost(path: Path, c: dict) -> None:
    from matplotlib.figure import Figure  # lazy: matplotlib loads with the first plot

    fig = Figure(figsize=(6.0, 2.6), layout="constrained")
    ax = fig.subplots()
    bars = {"one evaluation": c["one_evaluation_s"], "search": c["search_wall_s"],
            "exhaustive" + (" (estimate)" if c["exhaustive_estimated"] else ""): c["exhaustive_s"]}
    ax.barh(list(bars), list(bars.values()), color=["0.6", "tab:blue", "tab:red"])
    ax.set_xscale("log")
    ax.set_xlabel("seconds (log scale)")
    ax.grid(alpha=0.3, axis="x")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
