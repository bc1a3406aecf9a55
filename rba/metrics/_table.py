"""All scores for every captured span as one table (scores.csv), and its heatmap (scores.png)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from rba._io import atomic_path
from rba.metrics._registry import get_metric, list_metrics
from rba.statistics import Statistics

__all__ = ["score_table", "plot_scores", "score_columns"]


def score_columns() -> list[str]:
    """``start, end`` and one column per registered metric (br, cosine, cka, ls_residual, then plug-ins)."""
    return ["start", "end", *list_metrics()]


def score_table(stats: Statistics, ridge: float = 1e-6) -> pd.DataFrame:
    metrics = {name: get_metric(name).build(ridge=ridge) for name in list_metrics()}
    rows = []
    with warnings.catch_warnings():
        # rank-deficient boundaries are expected here (post-LN models); the ridge handles them and
        # fits used for replacement warn where it matters
        warnings.simplefilter("ignore")
        for span in stats.pairs:
            rows.append({"start": span[0], "end": span[1]} | {name: m(stats, span) for name, m in metrics.items()})
    return pd.DataFrame(rows, columns=score_columns())


def plot_scores(table: pd.DataFrame, path: str | Path, title: str = "") -> None:
    """Heatmaps of every score over (start, end): one panel per metric, spans outside the set left blank."""
    from matplotlib.figure import Figure  # lazy: matplotlib loads with the first plot

    L = int(table["end"].max()) if len(table) else 1
    columns = [c for c in table.columns if c not in ("start", "end")]
    fig = Figure(figsize=(4.2 * len(columns), 4.2), layout="constrained")
    axes = fig.subplots(1, len(columns), squeeze=False)
    for ax, col in zip(axes[0], columns):
        metric = get_metric(col) if col in list_metrics() else None
        label = (metric.label if metric else "") or col
        cmap = "viridis" if metric is None or metric.higher_is_redundant else "viridis_r"
        grid = np.full((L + 1, L + 1), np.nan)
        for start, end, value in zip(table["start"], table["end"], table[col]):
            grid[start, end] = value
        im = ax.imshow(grid[: L, 1:], origin="upper", cmap=cmap, aspect="auto")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("end boundary j")
        ax.set_ylabel("start boundary i")
        ax.set_xticks(range(L), [str(k) for k in range(1, L + 1)], fontsize=7)
        ax.set_yticks(range(L), [str(k) for k in range(L)], fontsize=7)
        fig.colorbar(im, ax=ax, shrink=0.8)
    if title:
        fig.suptitle(title, fontsize=10)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
