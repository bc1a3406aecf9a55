"""Tables and plots of a study: ``trials.csv`` / ``trials.parquet``, ``pareto.csv``, ``pareto.png``.

The front is Optuna's own Pareto sort (``study.best_trials``: complete, feasible under every constraint,
non-dominated in the study's objectives), reduced to one row per distinct configuration.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from optuna.trial import TrialState

from rba.files import atomic_path
from rba.names import COST_COLUMNS, OBJECTIVES, QUALITY, RESULT_COLUMNS
from search.recording import DUPLICATE_ATTR, STOPPED_ATTR

__all__ = ["TRIAL_COLUMNS", "trials_frame", "front_frame", "write_tables", "plot_front", "AXIS_LABELS"]

TRIAL_COLUMNS = ["number", *RESULT_COLUMNS, "feasible", "state", "duration_s", "stopped_early"]
_FLOAT_COLUMNS = RESULT_COLUMNS[1:]

AXIS_LABELS = {
    "accuracy": "accuracy (eval top-1, fraction correct)",
    "fidelity": "fidelity (mean cosine to the unmodified model)",
    "perplexity": "perplexity (eval texts, next token; lower is better)",
    "kl": "KL(unmodified ‖ configuration), nats per token (lower is better)",
    "top1": "top-1 next-token agreement with the unmodified model",
    "flops_frac": "FLOPs per sample (fraction of the unmodified model)",
    "params_frac": "parameters (fraction of the unmodified model)",
    "latency_ms": "latency (ms per sample, per-block table)",
}


def trials_frame(study) -> pd.DataFrame:
    """Every trial that ran (waiting ones and repeats of an earlier configuration left out), in trial order,
    with :data:`TRIAL_COLUMNS`."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.WAITING or DUPLICATE_ATTR in t.user_attrs:
            continue
        ua = t.user_attrs
        res = ua.get("result") or {}
        row: dict[str, Any] = {"number": t.number, "spans": ua.get("spans")}
        for c in _FLOAT_COLUMNS:
            v = res.get(c)
            row[c] = float(v) if v is not None else math.nan
        row["feasible"] = res.get("feasible")
        row["state"] = t.state.name
        row["duration_s"] = t.duration.total_seconds() if t.duration is not None else math.nan
        row["stopped_early"] = STOPPED_ATTR in ua
        rows.append(row)
    df = pd.DataFrame(rows, columns=TRIAL_COLUMNS)
    df["number"] = df["number"].astype("int64")
    df["spans"] = df["spans"].astype("string")
    for c in _FLOAT_COLUMNS + ["duration_s"]:
        df[c] = df[c].astype("float64")
    df["feasible"] = df["feasible"].astype("boolean")
    df["state"] = df["state"].astype("string")
    df["stopped_early"] = df["stopped_early"].astype("bool")
    return df


def front_frame(study, trials: pd.DataFrame) -> pd.DataFrame:
    """The front: Optuna's ``best_trials`` (feasible, non-dominated), one row per distinct configuration; a trial
    stopped early (its values are estimates on part of the eval split) never enters it."""
    if not len(trials) or not (trials["state"] == "COMPLETE").any():
        return trials.iloc[0:0].copy()
    numbers = {t.number for t in study.best_trials}
    front = trials[trials["number"].isin(numbers) & ~trials["stopped_early"]]
    front = front.sort_values("number").drop_duplicates(subset="spans", keep="first")
    return front.reset_index(drop=True)


def write_tables(out: Path, trials: pd.DataFrame, front: pd.DataFrame) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "trials.csv") as tmp:
        trials.to_csv(tmp, index=False)
    with atomic_path(out / "trials.parquet") as tmp:
        trials.to_parquet(tmp, index=False)
    with atomic_path(out / "pareto.csv") as tmp:
        front.to_csv(tmp, index=False)


def _axes(objective_columns: Sequence[str]) -> tuple[str, str]:
    costs = [c for c in objective_columns if c in COST_COLUMNS.values()]
    quality = [c for c in objective_columns if c in (OBJECTIVES[o].column for o in QUALITY)]
    return (costs[0] if costs else "flops_frac"), (quality[0] if quality else "fidelity")


def plot_front(path: Path, trials: pd.DataFrame, front: pd.DataFrame, *, objective_columns: Sequence[str],
               budgets: dict[str, float] | None = None, reference: dict[str, Any] | None = None,
               baselines: dict[str, pd.DataFrame] | None = None, title: str = "") -> None:
    """Quality against cost: every trial, infeasible ones crossed, the front highlighted, the unmodified
    model (``reference``) and baseline curves (label → rows with the same columns) drawn when given."""
    from matplotlib.figure import Figure  # lazy: matplotlib loads with the first plot

    x, y = _axes(objective_columns)
    fig = Figure(figsize=(7.2, 5.0), layout="constrained")
    ax = fig.subplots()
    done = trials[trials["state"] == "COMPLETE"]
    feas = done[done["feasible"].fillna(True).astype(bool)]
    infeas = done[~done["feasible"].fillna(True).astype(bool)]
    ax.scatter(feas[x], feas[y], s=14, c="0.65", label=f"trials ({len(done)})", zorder=2)
    if len(infeas):
        ax.scatter(infeas[x], infeas[y], s=18, marker="x", c="tab:red", alpha=0.6,
                   label=f"over budget ({len(infeas)})", zorder=2)
    for k, (label, rows) in enumerate((baselines or {}).items()):
        if len(rows):
            r = rows.sort_values(x)
            ax.plot(r[x], r[y], marker="s", ms=4, lw=1, ls="--", color=f"C{k + 2}", label=label, zorder=3)
    if len(front):
        f = front.sort_values(x)
        ax.step(f[x], f[y], where="post", color="tab:blue", lw=1.2, zorder=3)
        ax.scatter(f[x], f[y], s=40, c="tab:blue", edgecolors="k", label=f"front ({len(front)})", zorder=4)
        if len(f) <= 14:
            for _, r in f.iterrows():
                ax.annotate(str(r["spans"]), (r[x], r[y]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if reference is not None and np.isfinite(reference.get(x, np.nan)) and np.isfinite(reference.get(y, np.nan)):
        ax.scatter([reference[x]], [reference[y]], marker="*", s=160, c="gold", edgecolors="k",
                   label="unmodified model", zorder=5)
    budget_name = {"flops_frac": "flops", "params_frac": "params"}.get(x)
    if budgets and budget_name in budgets:
        ax.axvline(budgets[budget_name], color="tab:red", ls=":", lw=1, label=f"budget {budgets[budget_name]:g}")
    ax.set_xlabel(AXIS_LABELS[x])
    ax.set_ylabel(AXIS_LABELS[y])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    if title:
        ax.set_title(title, fontsize=9)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
