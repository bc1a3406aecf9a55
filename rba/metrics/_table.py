"""All scores for every captured span as one table (scores.csv), and its heatmap (scores.png)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd

from rba.capture import Statistics
from rba.metrics._scores import BlockRedundancy, Cosine, LinearCKA, LSResidual

__all__ = ["score_table", "plot_scores", "SCORE_COLUMNS"]

SCORE_COLUMNS = ["start", "end", "br", "cosine", "cka", "ls_residual"]


def score_table(stats: Statistics, ridge: float = 1e-6) -> pd.DataFrame:
    metrics = [BlockRedundancy(), Cosine(), LinearCKA(), LSResidual(ridge)]
    rows = []
    with warnings.catch_warnings():
        # rank-deficient boundaries are expected here (post-LN models); the ridge handles them and
        # fits used for replacement warn where it matters
        warnings.simplefilter("ignore")
        for span in stats.pairs:
            rows.append({"start": span[0], "end": span[1]} | {m.name: m(stats, span) for m in metrics})
    return pd.DataFrame(rows, columns=SCORE_COLUMNS)


def plot_scores(table: pd.DataFrame, path: str | Path, title: str = "") -> None:
    """Heatmaps of every score over (start, end): one panel per metric, spans outside the set left blank."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from rba._io import atomic_path

    L = int(table["end"].max()) if len(table) else 1
    metrics = [("br", "BR = −MSE (higher: more redundant)"), ("cosine", "cosine"), ("cka", "linear CKA"),
               ("ls_residual", "LS residual (lower: more redundant)")]
    fig, axes = plt.subplots(1, 4, figsize=(4.2 * 4, 4.2), constrained_layout=True)
    for ax, (col, label) in zip(axes, metrics):
        grid = np.full((L + 1, L + 1), np.nan)
        for r in table.itertuples():
            grid[r.start, r.end] = getattr(r, col)
        im = ax.imshow(grid[: L, 1:], origin="upper", cmap="viridis" if col != "ls_residual" else "viridis_r",
                       aspect="auto")
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
    plt.close(fig)
