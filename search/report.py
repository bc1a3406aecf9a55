"""The files a finished study leaves: the tables, the front plot and ``run.json`` (:func:`finish`), and for
``rba run`` the front member to export (:func:`choose_export`) and ``report.md`` (:func:`write_report`)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from rba.config import config_hash
from rba.files import atomic_path, atomic_write_json, atomic_write_text
from rba.fit import fit_label
from rba.spans import format_spans, parse_spans
from search.baselines import br_greedy
from search.objective import OBJECTIVES, RESULT_COLUMNS
from search.recording import SearchResult, StudyContext, log

__all__ = ["finish", "choose_export", "rule_columns", "measure_speedup", "write_report", "Choice"]


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


#: quality objectives (maximised) and cost columns (minimised), in the order the export rule looks for them
QUALITY = ("accuracy", "fidelity")
COST_COLUMNS = {"flops": "flops_frac", "params": "params_frac", "latency": "latency_ms"}


def rule_columns(objectives: list[str]) -> tuple[str, str]:
    """The export rule's quality column (the first quality objective, else fidelity) and cost column (the first
    cost objective, else flops_frac)."""
    quality = next((o for o in objectives if o in QUALITY), "fidelity")
    cost = next((COST_COLUMNS[o] for o in objectives if o in COST_COLUMNS), "flops_frac")
    return quality, cost


@dataclass
class Choice:
    """The configuration :func:`choose_export` picked (None: nothing feasible) and why, in one sentence."""

    row: pd.Series | None
    reason: str
    within: bool


def choose_export(front: pd.DataFrame, reference: dict, objectives: list[str], max_drop: float) -> Choice:
    """The cheapest feasible front member (by the first cost objective) whose first quality objective is at
    most ``max_drop`` below the unmodified model's (``reference``); if none is, the best-quality feasible member.
    The unmodified configuration ("none") is picked only when it is the front's only member."""
    quality, cost = rule_columns(objectives)
    feasible = front[front["feasible"].fillna(True).astype(bool)] if len(front) else front
    cand = feasible[feasible["spans"] != "none"]
    cand = cand if len(cand) else feasible
    if not len(cand):
        return Choice(None, "no feasible configuration on the front: nothing exported", False)
    ref = float(reference[quality])
    within = cand[ref - cand[quality] <= max_drop + 1e-12]
    if len(within):
        row = within.sort_values([cost, quality], ascending=[True, False]).iloc[0]
        return Choice(row, f"{len(within)} of {len(cand)} feasible front members are within {max_drop:g} of the "
                           f"unmodified model's {quality} ({ref:.4g}); `{row['spans']}` is the cheapest of them by "
                           f"{cost} ({row[cost]:.4g}, {quality} {row[quality]:.4g})", True)
    row = cand.sort_values([quality, cost], ascending=[False, True]).iloc[0]
    return Choice(row, f"no feasible front member is within {max_drop:g} of the unmodified model's {quality} "
                       f"({ref:.4g}); exported the best {quality} instead: `{row['spans']}` ({row[quality]:.4g}, "
                       f"a drop of {ref - row[quality]:.4g}; raise --max-drop or loosen the budgets to allow more)",
                  False)


def _labelled_session(ctx: StudyContext):
    """The search's session, or one sharing its model, statistics and costs that also reads the labels (a
    fidelity-only search skips them per trial; the report and the export still get accuracy when labels exist)."""
    from rba.session import Session

    session = ctx.session
    if session.need_labels:
        return session
    lab = Session(ctx.cfg, need_labels=None, progress=False, adapter=session.adapter, stats=session.stats,
                  cost_model=session.cost_model)
    if not lab.need_labels:
        return session
    ours, theirs = lab.splits.indices, session.splits.indices
    if ours.keys() != theirs.keys() or any(not np.array_equal(ours[k], theirs[k]) for k in ours):
        raise RuntimeError("the labelled splits differ from the search's splits")  # checked, not assumed
    return lab


def _evaluate_rows(session, configurations: list[str], *, kind: str, mode: str, objective) -> pd.DataFrame:
    rows = []
    for spans in configurations:
        r = session.evaluate(spans, kind=kind, mode=mode)
        rows.append({c: r[c] for c in RESULT_COLUMNS} | {"feasible": objective.feasible(parse_spans(r["spans"]))})
    return pd.DataFrame(rows)


def complete_front(ctx: StudyContext, front: pd.DataFrame, session) -> tuple[pd.DataFrame, dict]:
    """The front sorted by cost with accuracy filled in where the trials left it empty (labels permitting), and
    the unmodified model's results (the reference)."""
    _, cost = rule_columns(ctx.objective.objectives)
    reference = session.evaluate([], kind=ctx.objective.kind, mode=ctx.objective.mode)
    front = front.copy()
    if session.need_labels and front["accuracy"].isna().any():
        for k, spans in front["spans"].items():
            if math.isnan(front.at[k, "accuracy"]):
                front.at[k, "accuracy"] = session.evaluate(spans, kind=ctx.objective.kind,
                                                           mode=ctx.objective.mode)["accuracy"]
    front = front.sort_values([cost, "number"]).reset_index(drop=True)
    return front, reference


def reference_row(reference: dict, columns: list[str]) -> pd.DataFrame:
    """The unmodified model as a ``pareto.csv`` row: no trial number, state ``REFERENCE``."""
    row = {c: reference.get(c) for c in RESULT_COLUMNS} | {"number": pd.NA, "feasible": True, "state": "REFERENCE",
                                                           "duration_s": math.nan}
    df = pd.DataFrame([row], columns=columns)
    df["number"] = df["number"].astype("Int64")
    return df


def measure_speedup(original, exported, samples, *, batch_size: int, repeats: int) -> dict:
    """Per-sample latency of the unmodified model and the export on one batch, measured back to back
    (original, export, original, export, …) after a warm-up of each, so that load changes hit both alike.
    Returns the medians, the speed-up (median of the per-pair ratios) with its quartiles, threads and batch."""
    import statistics as st

    import torch

    batch = original.collate(samples[:batch_size])
    n = len(samples[:batch_size])
    times: dict[str, list[float]] = {"original": [], "export": []}
    with torch.inference_mode():
        for _ in range(2):  # warm-up: allocations, lazy initialisation, caches
            original.forward(batch)
            exported.forward(batch)
        for _ in range(repeats):
            for name, model in (("original", original), ("export", exported)):
                t0 = time.perf_counter()
                model.forward(batch)
                times[name].append((time.perf_counter() - t0) * 1000 / n)
    ratios = np.array(times["original"]) / np.array(times["export"])
    q1, q3 = np.percentile(ratios, [25, 75])
    return {"original_ms": st.median(times["original"]), "export_ms": st.median(times["export"]),
            "speedup": float(np.median(ratios)), "speedup_q1": float(q1), "speedup_q3": float(q3),
            "repeats": repeats, "threads": torch.get_num_threads(), "batch_size": n}


def _baselines(ctx: StudyContext, session, reference: dict, max_drop: float) -> tuple[pd.DataFrame, list[str]]:
    """BR-greedy (the search's fit kind) and block-drop (identity) configurations, evaluated like the front,
    and the configuration the export rule picks from each at the same budgets."""
    from search.baselines import block_drop_order
    from search.objective import Objective

    objectives = ctx.objective.objectives
    quality, cost = rule_columns(objectives)
    frames, lines = [], []
    plans = {"BR-greedy": (ctx.objective.kind, [format_spans(s) for s in br_greedy(ctx.table)] if ctx.table is not None
                           else []),
             "block-drop": ("identity", [format_spans(s) for s in block_drop_order(session.stats, session.pairs)])}
    for method, (kind, configurations) in plans.items():
        if not configurations:
            continue
        objective = ctx.objective if kind == ctx.objective.kind else Objective(session, kind=kind)
        rows = _evaluate_rows(session, configurations, kind=kind, mode=ctx.objective.mode, objective=objective)
        rows.insert(0, "method", method)
        frames.append(rows)
        pick = choose_export(rows.assign(spans=rows["spans"].astype(str)), reference, objectives, max_drop)
        if pick.row is None:
            lines.append(f"- {method}: no configuration within the budgets")
        else:
            lines.append(f"- {method}: `{pick.row['spans']}`, {quality} {pick.row[quality]:.4g}, {cost} "
                         f"{pick.row[cost]:.4g}" + ("" if pick.within else f" (none within {max_drop:g})"))
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return table, lines


def write_report(result: SearchResult, *, started: float) -> Path:
    """``rba run``'s last step: complete the front (accuracy, reference row, sorted by cost), export
    :func:`choose_export`'s configuration (reloaded, evaluated end to end, its speed-up measured against the
    unmodified model), compare with the baselines and write ``report.md``. Returns the report's path."""
    from rba.export import export_model, load_export

    ctx = result.context
    cfg = ctx.cfg
    session = _labelled_session(ctx)
    max_drop = cfg.run.max_drop
    quality, cost = rule_columns(ctx.objective.objectives)
    front, reference = complete_front(ctx, result.front, session)
    with atomic_path(result.out / "pareto.csv") as tmp:
        pd.concat([reference_row(reference, list(front.columns)), front], ignore_index=True).to_csv(tmp, index=False)
    choice = choose_export(front, reference, ctx.objective.objectives, max_drop)
    if not choice.within:
        log(f"warning: {choice.reason}")
    lines = [f"# rba study: {cfg.name}", "",
             f"- model: {session.adapter.describe()}",
             f"- data: {cfg.data.kind} {cfg.data.path or ''} (calibration {len(session.splits.calibration)}, "
             f"probe {len(session.splits.probe)}, eval {len(session.splits.eval)})",
             f"- fit: {fit_label(ctx.objective.kind)}, mode {cfg.fit.mode}, ridge {cfg.fit.ridge:g}",
             f"- search: {ctx.method} ({cfg.search.backend}, sampler {cfg.search.sampler}), objectives "
             f"{', '.join(ctx.objective.objectives)}, budgets {ctx.objective.budgets or 'none'}; {ctx.space.describe()}",
             f"- trials: {int((result.trials['state'] == 'COMPLETE').sum())} complete of {len(result.trials)}; "
             f"front: {len(front)} configurations", "",
             "Files: scores.csv, scores.png, trials.csv, trials.parquet, pareto.csv, pareto.png, "
             "config.resolved.toml, run.json, summary.json" + (", export/" if choice.row is not None else ""), "",
             "## Front", "",
             f"Sorted by {cost}; the first row is the unmodified model (a reference, not a trial). Accuracy is "
             "evaluated here for front members whose trials did not compute it (when the data has labels).", "",
             _markdown(pd.concat([reference_row(reference, list(front.columns)), front], ignore_index=True)), "",
             "## Export rule", "",
             f"The export is the cheapest feasible front member by {cost} whose {quality} is at most "
             f"max_drop = {max_drop:g} (absolute, `--max-drop`, `[run] max_drop`) below the unmodified model's; if "
             f"none is, the best-{quality} feasible member, with a warning.", "",
             f"Picked: {choice.reason}.", ""]
    if ctx.table is not None:
        table, picks = _baselines(ctx, session, reference, max_drop)
        if len(table):
            lines += ["## Baselines at the same budgets", "",
                      "The same rule applied to each baseline's configurations (BR-greedy: the paper's heuristic, "
                      "fitted spans; block-drop: spans replaced by the identity):", "",
                      f"- search: `{choice.row['spans']}`, {quality} {choice.row[quality]:.4g}, {cost} "
                      f"{choice.row[cost]:.4g}" if choice.row is not None else "- search: nothing feasible",
                      *picks, "", _markdown(table), ""]
    if choice.row is not None:
        spans = parse_spans(choice.row["spans"])
        folder = export_model(session, spans, result.out / "export", kind=ctx.objective.kind, mode=ctx.objective.mode)
        measured = session.evaluate_export(folder)
        model = cfg.model
        trusted = model.kind == "module" and model.trust_code
        exported = load_export(folder, device=str(session.adapter.device), trust_code=trusted,
                               factory=model.name if trusted else None)
        speed = measure_speedup(session.adapter, exported, session.splits.eval.samples,
                                batch_size=cfg.evaluate.batch_size, repeats=max(7, cfg.evaluate.latency_repeats))
        atomic_write_json(result.out / "export" / "latency.json", speed)
        onnx_lines, onnx_speed = _onnx_speedup(cfg, session, folder, measured["flops_frac"])
        lines += ["## Exported configuration", "",
                  f"`{choice.row['spans']}`, written to `export/` (model.safetensors + recipe.json, with its "
                  "classifier head when the data has labels: `rba.head_logits`). Reloaded and evaluated end to end:", "",
                  _markdown(pd.DataFrame([{"source": "unmodified model"} | {c: reference.get(c) for c in RESULT_COLUMNS},
                                          {"source": "search (modelled latency)"} | {c: choice.row[c] for c in RESULT_COLUMNS},
                                          {"source": "export (measured)"} | {c: measured.get(c) for c in RESULT_COLUMNS}])),
                  "",
                  f"Latency, measured back to back ({speed['repeats']} interleaved repeats of unmodified model and "
                  f"export, batch {speed['batch_size']}, {speed['threads']} threads): unmodified "
                  f"{speed['original_ms']:.4g} ms/sample, export {speed['export_ms']:.4g} ms/sample (medians); "
                  f"speed-up {speed['speedup']:.3g}× (quartiles {speed['speedup_q1']:.3g}–{speed['speedup_q3']:.3g}). "
                  "Written to export/latency.json.", "", *onnx_lines]
    else:
        lines += ["No feasible configuration: nothing exported.", ""]
    lines += [f"Wall time: {time.time() - started:.1f} s.", ""]
    summary = {"trials_complete": int((result.trials["state"] == "COMPLETE").sum()), "front_size": len(front),
               "quality": quality, "cost": cost, "reference_quality": float(reference[quality]),
               "max_drop": max_drop, "within_drop": choice.within, "rule": choice.reason}
    if choice.row is not None:
        summary |= {"export_spans": str(choice.row["spans"]), "export_quality": float(choice.row[quality]),
                    "export_cost": float(choice.row[cost])}
        summary |= {c: float(measured[c]) for c in ("accuracy", "fidelity", "flops_frac", "params_frac")}
        summary |= {k: speed[k] for k in ("speedup", "speedup_q1", "speedup_q3")}
        summary |= onnx_speed
    atomic_write_json(result.out / "summary.json", summary)
    report = result.out / "report.md"
    atomic_write_text(report, "\n".join(lines))
    if ctx.progress:
        log(f"run: wrote {report}")
    return report


def _onnx_speedup(cfg, session, folder: Path, flops_frac: float) -> tuple[list[str], dict]:
    """With ``[run] onnx``: the export and the unmodified model as ONNX, and their ONNX Runtime speed-up
    (report lines, summary keys); nothing otherwise."""
    if not cfg.run.onnx:
        return [], {}
    from rba.onnx import export_onnx, onnx_speedup

    meta = export_onnx(session, folder)
    s = onnx_speedup(folder, repeats=max(7, cfg.evaluate.latency_repeats))
    return [f"ONNX Runtime (export/model.onnx against export/unmodified.onnx, both checked against PyTorch: max "
            f"relative difference {max(meta['max_rel_diff'].values()):.2g}; {s['repeats']} interleaved repeats, batch "
            f"{s['batch_size']}, {s['threads']} threads): unmodified {s['onnx_unmodified_ms']:.4g} ms/sample, export "
            f"{s['onnx_export_ms']:.4g} ms/sample (medians); speed-up {s['onnx_speedup']:.3g}× (quartiles "
            f"{s['onnx_speedup_q1']:.3g}–{s['onnx_speedup_q3']:.3g}) at flops_frac {flops_frac:.3g}.", ""], \
        {k: v for k, v in s.items() if k.startswith("onnx_")}


def _markdown(df: pd.DataFrame) -> str:
    if not len(df):
        return "(empty)"
    cols = list(df.columns)

    def fmt(v):
        if v is pd.NA:
            return ""
        if isinstance(v, float):
            return "" if math.isnan(v) else (f"{v:.4g}" if abs(v) < 1e5 else f"{v:.3e}")
        return str(v)

    rows = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    rows += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in df.itertuples(index=False)]
    return "\n".join(rows)
