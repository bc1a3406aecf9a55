"""The files a finished study leaves: the tables, the front plot and ``run.json`` (:func:`finish`), and for
``rba run`` the front member to export (:func:`choose_export`) and ``report.md`` (:func:`write_report`)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pandas as pd

from rba.config import config_hash
from rba.files import atomic_write_text
from rba.spans import format_spans, parse_spans
from search.baselines import br_greedy
from search.objective import OBJECTIVES, RESULT_COLUMNS
from search.recording import SearchResult, StudyContext, log

__all__ = ["finish", "choose_export", "write_report"]


def finish(ctx: StudyContext, study) -> SearchResult:
    """Write the tables, the plot and the run records."""
    from search.pareto import front_frame, plot_front, trials_frame, write_tables

    trials = trials_frame(study)
    front = front_frame(study, trials)
    write_tables(ctx.out, trials, front)
    reference = None
    try:
        reference = ctx.objective([])
    except Exception as exc:  # the plot goes on without the reference point
        log(f"warning: could not evaluate the unmodified model for the plot: {exc}")
    baselines = {}
    if ctx.table is not None:
        greedy = [format_spans(s) for s in br_greedy(ctx.table)]
        rows = trials[trials["spans"].isin(greedy) & (trials["state"] == "COMPLETE")].drop_duplicates("spans")
        if len(rows) >= 2:
            baselines["BR-greedy"] = rows
    title = (f"{ctx.session.adapter.describe()}: {ctx.method}"
             + (f" ({ctx.cfg.search.sampler})" if ctx.method == "optuna" else "")
             + f", {int((trials['state'] == 'COMPLETE').sum())} trials")
    plot_front(ctx.out / "pareto.png", trials, front, objective_columns=ctx.objective.columns,
               budgets=ctx.objective.budgets, reference=reference, baselines=baselines, title=title)
    ctx.session.write_run_info(ctx.out, command="search", study={
        "name": ctx.study_name, "storage": ctx.storage_url, "method": ctx.method,
        "backend": ctx.cfg.search.backend, "sampler": ctx.cfg.search.sampler,
        "identity_hash": config_hash(ctx.identity), "trials_complete": int((trials["state"] == "COMPLETE").sum()),
        "front_size": len(front), "space": ctx.space.describe(),
        "screened_out": getattr(ctx.screen, "screened_out", 0),
    })
    if ctx.progress:
        cols = ["spans"] + [c for c in ctx.objective.columns if c != "spans"]
        if len(front):
            log(front[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        log(f"search: {len(trials)} trials, front of {len(front)}; wrote {ctx.out}/trials.csv, trials.parquet, "
            "pareto.csv, pareto.png")
    return SearchResult(out=ctx.out, trials=trials, front=front, study_name=ctx.study_name,
                        storage=ctx.storage_url, identity=ctx.identity, context=ctx)


def choose_export(front: pd.DataFrame, objectives: list[str]) -> pd.Series | None:
    """The front member with the best accuracy (else the best first objective), "none" only if alone."""
    if not len(front):
        return None
    cand = front[front["spans"] != "none"]
    cand = cand if len(cand) else front
    name = "accuracy" if "accuracy" in objectives else objectives[0]
    col, direction = OBJECTIVES[name]
    ranked = cand.sort_values([col, "flops_frac"], ascending=[direction == "minimize", True])
    return ranked.iloc[0]


def write_report(result: SearchResult, *, started: float) -> Path:
    """``rba run``'s last step: export :func:`choose_export`'s configuration (reloaded and evaluated end to
    end) and write ``report.md`` beside the study's files. Returns the report's path."""
    from rba.export import export_model

    ctx = result.context
    cfg, session = ctx.cfg, ctx.session
    chosen = choose_export(result.front, ctx.objective.objectives)
    lines = [f"# rba study: {cfg.name}", "",
             f"- model: {session.adapter.describe()}",
             f"- data: {cfg.data.kind} {cfg.data.path or ''} (calibration {len(session.splits.calibration)}, "
             f"probe {len(session.splits.probe)}, eval {len(session.splits.eval)})",
             f"- fit: {ctx.objective.kind}, mode {cfg.fit.mode}, ridge {cfg.fit.ridge:g}",
             f"- search: {ctx.method} ({cfg.search.backend}, sampler {cfg.search.sampler}), objectives "
             f"{', '.join(ctx.objective.objectives)}, budgets {ctx.objective.budgets or 'none'}; {ctx.space.describe()}",
             f"- trials: {int((result.trials['state'] == 'COMPLETE').sum())} complete of {len(result.trials)}; "
             f"front: {len(result.front)} configurations", "",
             "Files: scores.csv, scores.png, trials.csv, trials.parquet, pareto.csv, pareto.png, "
             "config.resolved.toml, run.json" + (", export/" if chosen is not None else ""), "",
             "## Front", "", _markdown(result.front), ""]
    if chosen is not None:
        spans = parse_spans(chosen["spans"])
        folder = export_model(session, spans, result.out / "export", kind=ctx.objective.kind, mode=ctx.objective.mode)
        measured = session.evaluate_export(folder)
        lines += ["## Exported configuration", "",
                  f"`{chosen['spans']}` (best {'accuracy' if 'accuracy' in ctx.objective.objectives else ctx.objective.objectives[0]} "
                  f"on the front), written to `export/` (model.safetensors + recipe.json). Reloaded and evaluated "
                  "end to end (latency measured, not modelled):", "",
                  _markdown(pd.DataFrame([{"source": "search (modelled latency)"} | {c: chosen[c] for c in RESULT_COLUMNS}]
                                         + [{"source": "export (measured)"} | {c: measured.get(c) for c in RESULT_COLUMNS}])), ""]
    else:
        lines += ["No feasible configuration: nothing exported.", ""]
    lines += [f"Wall time: {time.time() - started:.1f} s.", ""]
    report = result.out / "report.md"
    atomic_write_text(report, "\n".join(lines))
    if ctx.progress:
        log(f"run: wrote {report}")
    return report


def _markdown(df: pd.DataFrame) -> str:
    if not len(df):
        return "(empty)"
    cols = list(df.columns)

    def fmt(v):
        if isinstance(v, float):
            return "" if math.isnan(v) else (f"{v:.4g}" if abs(v) < 1e5 else f"{v:.3e}")
        return str(v)

    rows = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    rows += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in df.itertuples(index=False)]
    return "\n".join(rows)
