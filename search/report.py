"""The files a finished study leaves: the tables, the front plot and ``run.json`` (:func:`finish`), and for
``rba run`` the front member to export (:func:`choose_export`), what the report needs (:func:`write_report`:
``pareto.csv``, ``baselines.csv``, ``singles.csv``, ``report.json``, the export) and ``report.md`` with its plots,
rendered from those files alone (:func:`render_report`, also ``rba report DIR``; :func:`remeasure_report`,
``rba report DIR --measure``, first times the export on disk again)."""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from rba.config import config_hash
from rba.errors import RBAError
from rba.files import atomic_path, atomic_write_json, atomic_write_text
from rba.fit import fit_label
from rba.spans import format_spans, parse_spans
from search.analysis import front_members
from search.baselines import br_greedy
from search.objective import QUALITY, RESULT_COLUMNS
from search.recording import SearchResult, StudyContext, log

__all__ = ["finish", "choose_export", "rule_columns", "measure_speedup", "measure_export", "write_report",
           "render_report", "remeasure_report",
           "read_report_inputs", "Choice", "ReportError", "REPORT_FORMAT"]


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


#: cost columns (minimised), in the order the export rule looks for them (quality: search.objective.QUALITY)
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


def _write_pareto(out: Path, reference: pd.DataFrame, front: pd.DataFrame) -> None:
    """``pareto.csv`` of ``rba run``: the reference row, then the front members (:func:`front_members`)."""
    table = pd.concat([reference, front], ignore_index=True)
    table["number"] = table["number"].astype("Int64")  # the reference row has none: no float trial numbers
    with atomic_path(out / "pareto.csv") as tmp:
        table.to_csv(tmp, index=False)


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
    Returns the medians, the speed-up (the ratio of the medians) with the quartiles of the per-repeat ratios,
    every repeat's times, threads and batch (:func:`rba.timing.interleaved_speedup`)."""
    import torch

    from rba.timing import interleaved_speedup

    batch = original.collate(samples[:batch_size])
    n = len(samples[:batch_size])
    with torch.inference_mode():
        s = interleaved_speedup(lambda: original.forward(batch), lambda: exported.forward(batch), samples=n,
                                repeats=repeats)
    return {"original_ms": s["first_ms"], "export_ms": s["second_ms"], "speedup": s["speedup"],
            "speedup_q1": s["speedup_q1"], "speedup_q3": s["speedup_q3"],
            "original_times_ms": s["first_times_ms"], "export_times_ms": s["second_times_ms"],
            "repeats": repeats, "threads": torch.get_num_threads(), "batch_size": n}


# ---------------------------------------------------------------------- rba run: compute, then render from files
#: report.json's format; ``rba report`` reads this format only
REPORT_FORMAT = 1

#: the plots ``rba report`` (and ``rba run`` through it) draws
PLOTS = ("scores.png", "pareto.png", "priors.png", "cost.png")


#: what report.json holds (format 1)
_REPORT_KEYS = {"format", "name", "header", "method", "objectives", "objective_columns", "budgets", "quality", "cost",
                "max_drop", "choice", "export", "configurations", "metrics", "flops_points", "baselines",
                "single_spans", "titles", "timing"}


class ReportError(RBAError):
    """A folder ``rba report`` cannot render: not a finished ``rba run`` folder, or a file of it is missing."""


def _known_results(trials: pd.DataFrame, front: pd.DataFrame) -> dict[str, dict]:
    """Configuration string → its row (result columns and ``feasible``) from the completed trials, with the
    completed front's rows (accuracy filled in) taking precedence."""
    known: dict[str, dict] = {}
    done = trials[trials["state"] == "COMPLETE"]
    for frame in (done, front):
        for row in frame.to_dict("records"):
            known[str(row["spans"])] = {c: row[c] for c in RESULT_COLUMNS} | {"feasible": bool(row["feasible"])}
    return known


def _result_row(result: dict) -> dict:
    return {c: result[c] for c in RESULT_COLUMNS} | {"feasible": bool(result["feasible"])}


def _baseline_rows(ctx: StudyContext, known: dict[str, dict]) -> pd.DataFrame:
    """BR-greedy (the search's fit kind) and block-drop (identity) configurations, each with its results: the
    trials' where the search evaluated the configuration (same fit kind), else evaluated through the search's
    objective (its session and budgets; accuracy only where the trials compute it)."""
    from search.baselines import block_drop_order
    from search.objective import Objective

    session = ctx.session
    plans = {"BR-greedy": (ctx.objective.kind, br_greedy(ctx.table) if ctx.table is not None else []),
             "block-drop": ("identity", block_drop_order(session.stats, session.pairs))}
    rows = []
    for method, (kind, configurations) in plans.items():
        objective = ctx.objective if kind == ctx.objective.kind else Objective(session, kind=kind, mode=ctx.objective.mode)
        for spans in configurations:
            key = format_spans(spans)
            if kind == ctx.objective.kind and key in known:
                row, source = known[key], "trial"
            else:
                row, source = _result_row(objective(spans)), "evaluated"
            rows.append({"method": method} | row | {"source": source})
    return pd.DataFrame(rows, columns=["method", *RESULT_COLUMNS, "feasible", "source"])


def _single_rows(ctx: StudyContext, session, known: dict[str, dict]) -> pd.DataFrame:
    """Every single valid span with its results (the search's fit kind): reused from the trials or the completed
    front where they hold every quality this session computes, else evaluated (with accuracy when labels exist)."""
    rows = []
    for span in ctx.session.pairs:
        key = format_spans([span])
        row = known.get(key)
        if row is not None and not (session.need_labels and math.isnan(float(row["accuracy"]))):
            source = "trial"
        else:
            result = session.evaluate([span], kind=ctx.objective.kind, mode=ctx.objective.mode)
            row, source = {c: result[c] for c in RESULT_COLUMNS} | {"feasible": ctx.objective.feasible([span])}, \
                "evaluated"
        rows.append({"start": span[0], "end": span[1]} | row | {"source": source})
    return pd.DataFrame(rows, columns=["start", "end", *RESULT_COLUMNS, "feasible", "source"])


def _export(ctx: StudyContext, session, choice: Choice, out: Path) -> dict:
    """Export the chosen configuration, reload it, evaluate it end to end and measure its speed-up."""
    from rba.export import export_model

    spans = parse_spans(choice.row["spans"])
    folder = export_model(session, spans, out / "export", kind=ctx.objective.kind, mode=ctx.objective.mode)
    measured = session.evaluate_export(folder)
    if ctx.cfg.run.onnx:
        from rba.onnx import export_onnx

        export_onnx(session, folder)
    return {"measured": {c: measured.get(c) for c in RESULT_COLUMNS}} | measure_export(ctx.cfg, session, folder)


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def measure_export(cfg, session, folder: Path) -> dict:
    """The speed-up records of an export folder against the session's unmodified model: ``speed`` (PyTorch,
    also written to ``export/latency.json``) and, with ``[run] onnx`` and a current ONNX export in the folder,
    ``onnx`` (ONNX Runtime, with the export check's largest relative difference); each with the load average
    at its start and end."""
    from rba.export import load_export
    from rba.onnx import onnx_state

    model = cfg.model
    trusted = model.kind == "module" and model.trust_code
    exported = load_export(folder, device=str(session.adapter.device), trust_code=trusted,
                           factory=model.name if trusted else None)
    load = _load()
    speed = measure_speedup(session.adapter, exported, session.splits.eval.samples,
                            batch_size=cfg.evaluate.batch_size, repeats=cfg.report.speedup_repeats)
    speed |= {"load_start": load, "load_end": _load()}
    atomic_write_json(folder / "latency.json", speed)
    onnx = _onnx_record(cfg, folder) if cfg.run.onnx and onnx_state(folder) == "current" else {}
    return {"speed": speed, "onnx": onnx}


def _onnx_record(cfg, folder: Path) -> dict:
    """ONNX Runtime speed-up of the current ONNX export in ``folder``, with the export check's largest relative
    difference and the load average at the start and end."""
    from rba.onnx import ONNX_META, onnx_speedup

    meta = json.loads((folder / ONNX_META).read_text())
    load = _load()
    onnx = onnx_speedup(folder, repeats=max(7, cfg.evaluate.latency_repeats))
    return onnx | {"max_rel_diff": max(meta["max_rel_diff"].values()), "load_start": load, "load_end": _load()}


def _load_text(record: dict) -> str:
    return f", load {record['load_start']:.1f} → {record['load_end']:.1f}" if "load_start" in record else ""


def _onnx_lines(s: dict, flops_frac: float) -> list[str]:
    """The report's ONNX Runtime line from an ``onnx`` record of :func:`measure_export`."""
    from rba.timing import speedup_text

    return [f"ONNX Runtime (export/model.onnx against export/unmodified.onnx, both checked against PyTorch: max "
            f"relative difference {s['max_rel_diff']:.2g}{_load_text(s)}): unmodified {s['onnx_unmodified_ms']:.4g} "
            f"ms/sample, export {s['onnx_export_ms']:.4g} ms/sample (medians); "
            + speedup_text(s["onnx_speedup"], s["onnx_speedup_q1"], s["onnx_speedup_q3"], repeats=s["repeats"],
                           batch_size=s["batch_size"], threads=s["threads"])
            + f", at flops_frac {flops_frac:.3g}.", ""]


def _onnx_speedup(cfg, session, folder: Path, flops_frac: float) -> tuple[list[str], dict]:
    """With ``[run] onnx``: the export and the unmodified model as ONNX, and their ONNX Runtime speed-up
    (report lines, summary keys); nothing otherwise."""
    if not cfg.run.onnx:
        return [], {}
    from rba.onnx import export_onnx

    export_onnx(session, folder)
    s = _onnx_record(cfg, folder)
    return _onnx_lines(s, flops_frac), {k: v for k, v in s.items() if k.startswith("onnx_")}


def _machine_line(load_start: float | None) -> str:
    """Where the report's times were measured: a reader compares them only at equal load."""
    import platform
    import sys

    import torch

    load = f"{load_start:.1f} → {os.getloadavg()[0]:.1f}" if load_start is not None else f"{os.getloadavg()[0]:.1f}"
    command = " ".join(["rba", *sys.argv[1:]]) if Path(sys.argv[0]).name in ("rba", "cli.py") else None
    return (f"machine: {os.cpu_count()} CPUs ({platform.machine()}, {platform.system()}), torch threads "
            f"{torch.get_num_threads()}, load average {load} (start → end of the run)"
            + (f"; command: `{command}`" if command else ""))


def write_report(result: SearchResult, *, started: float, setup_s: float | None = None,
                 completed_before: int = 0, load_start: float | None = None) -> Path:
    """``rba run``'s last step: complete the front (accuracy, reference row, sorted by cost), evaluate what the
    report's sections need (baselines, optionally every single span; configurations the trials evaluated are
    reused), export :func:`choose_export`'s configuration (reloaded, evaluated end to end, its speed-up measured
    against the unmodified model) and record it all: ``pareto.csv``, ``baselines.csv``, ``singles.csv``,
    ``summary.json`` and ``report.json``. Then :func:`render_report` writes ``report.md`` and the plots from
    those files alone. Returns the report's path."""
    from rba.metrics import get_metric, list_metrics

    ctx = result.context
    cfg = ctx.cfg
    out = result.out
    phases: dict[str, float] = {}
    if setup_s is not None:
        phases["setup (model, data, statistics, scores)"] = setup_s
    phases["search"] = result.wall_s
    t = time.time()
    session = _labelled_session(ctx)
    max_drop = cfg.run.max_drop
    quality, cost = rule_columns(ctx.objective.objectives)
    front, reference = complete_front(ctx, result.front, session)
    members = front_members(front, reference, ctx.objective.columns)
    _write_pareto(out, reference_row(reference, list(front.columns)), members)
    choice = choose_export(front, reference, ctx.objective.objectives, max_drop)
    if not choice.within:
        log(f"warning: {choice.reason}")
    phases["front accuracy"] = time.time() - t
    known = _known_results(result.trials, front)
    baselines = cfg.report.baselines and ctx.table is not None
    if baselines:
        t = time.time()
        with atomic_path(out / "baselines.csv") as tmp:
            _baseline_rows(ctx, known).to_csv(tmp, index=False)
        phases["baselines"] = time.time() - t
    if cfg.report.single_spans:
        t = time.time()
        with atomic_path(out / "singles.csv") as tmp:
            _single_rows(ctx, session, known).to_csv(tmp, index=False)
        phases["single spans"] = time.time() - t
    export = None
    if choice.row is not None:
        t = time.time()
        export = _export(ctx, session, choice, out)
        phases["export, its evaluation and speed-up"] = time.time() - t
    header = [
        f"model: {session.adapter.describe()}",
        f"data: {cfg.data.kind} {cfg.data.path or ''} (calibration {len(session.splits.calibration)}, "
        f"probe {len(session.splits.probe)}, eval {len(session.splits.eval)})",
        f"fit: {fit_label(ctx.objective.kind)}, mode {cfg.fit.mode}, ridge {cfg.fit.ridge:g}",
        f"search: {ctx.method} ({cfg.search.backend}, sampler {cfg.search.sampler}), objectives "
        f"{', '.join(ctx.objective.objectives)}, budgets {ctx.objective.budgets or 'none'}; {ctx.space.describe()}",
        _machine_line(load_start),
    ]
    trials_complete = int((result.trials["state"] == "COMPLETE").sum())
    info = {
        "format": REPORT_FORMAT, "name": cfg.name, "header": header, "method": ctx.method,
        "objectives": ctx.objective.objectives, "objective_columns": ctx.objective.columns,
        "budgets": ctx.objective.budgets, "quality": quality, "cost": cost, "max_drop": max_drop,
        "choice": {"spans": None if choice.row is None else str(choice.row["spans"]), "reason": choice.reason,
                   "within": choice.within},
        "export": export, "configurations": int(ctx.space.count()),
        "metrics": [[m, bool(get_metric(m).higher_is_redundant)] for m in list_metrics()],
        "flops_points": list(cfg.report.flops_points), "baselines": baselines, "single_spans": cfg.report.single_spans,
        "titles": {"scores": f"{session.adapter.describe()}, n = {session.stats.n} vectors",
                   "pareto": f"{session.adapter.describe()}: {ctx.method}"
                             + (f" ({cfg.search.sampler})" if ctx.method == "optuna" else "")
                             + f", {trials_complete} trials"},
        "timing": {"phases": list(phases.items()), "total_s": time.time() - started,  # a list keeps the order
                   "completed_before": completed_before},
    }
    summary = {"trials_complete": trials_complete, "front_size": len(members),
               "quality": quality, "cost": cost, "reference_quality": float(reference[quality]),
               "max_drop": max_drop, "within_drop": choice.within, "rule": choice.reason}
    if export is not None:
        summary |= {"export_spans": str(choice.row["spans"]), "export_quality": float(choice.row[quality]),
                    "export_cost": float(choice.row[cost])}
        summary |= {c: float(export["measured"][c]) for c in ("accuracy", "fidelity", "flops_frac", "params_frac")}
        summary |= {k: export["speed"][k] for k in ("speedup", "speedup_q1", "speedup_q3")}
        summary |= {k: v for k, v in export["onnx"].items() if k.startswith("onnx_")}
    atomic_write_json(out / "summary.json", summary)
    # what an earlier run of this folder wrote for a section this run leaves out would read as this run's
    stale = ([] if baselines else ["baselines.csv"]) + ([] if cfg.report.single_spans else ["singles.csv", "priors.png"])
    for name in stale:
        (out / name).unlink(missing_ok=True)
    atomic_write_json(out / "report.json", info)
    report = render_report(out)
    if ctx.progress:
        log(f"run: wrote {report}")
    return report


# ---------------------------------------------------------------------- rendering (rba report DIR)
def read_report_inputs(out: Path) -> dict:
    """report.json and the tables of a finished ``rba run`` folder, checked before anything is written."""
    out = Path(out)
    if not out.is_dir():
        raise ReportError(f"{out} is not a folder: give the output folder of a finished `rba run`")
    path = out / "report.json"
    if not path.exists():
        raise ReportError(f"{out} holds no report.json: it is not the folder of a finished `rba run` (`rba search` "
                          "writes no report); run `rba run CONFIG --out {out}` to finish the study and write one"
                          .replace("{out}", str(out)))
    try:
        info = json.loads(path.read_text())
        if not isinstance(info, dict):
            raise ValueError("not a JSON object")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ReportError(f"{path} cannot be read ({str(exc).splitlines()[0]}): rerun `rba run` on this study to "
                          "write it again (the study resumes, no trial is repeated)") from None
    if info.get("format") != REPORT_FORMAT:
        raise ReportError(f"{path} has report format {info.get('format')!r}, and this rba reads format "
                          f"{REPORT_FORMAT}: rerun `rba run` on this study to write it again")
    missing = sorted(_REPORT_KEYS - info.keys())
    if missing:
        raise ReportError(f"{path} does not follow report format {REPORT_FORMAT} (missing: {', '.join(missing)}): "
                          "rerun `rba run` on this study to write it again")
    tables = {"scores": "scores.csv", "trials": "trials.csv", "pareto": "pareto.csv"}
    if info.get("baselines"):
        tables["baselines"] = "baselines.csv"
    if info.get("single_spans"):
        tables["singles"] = "singles.csv"
    missing = [name for name in tables.values() if not (out / name).exists()]
    if missing:
        raise ReportError(f"{out} lacks {', '.join(missing)}, which its report.json needs: rerun `rba run` on this "
                          "study to write them again")
    data = {"info": info}
    for key, name in tables.items():
        try:
            data[key] = pd.read_csv(out / name, dtype={"spans": "string"} if key != "scores" else None)
        except (OSError, ValueError, pd.errors.ParserError) as exc:
            raise ReportError(f"{out / name} cannot be read ({str(exc).splitlines()[0]}): rerun `rba run` on this "
                              "study to write it again") from None
    return data


def remeasure_report(out: Path) -> Path:
    """``rba report DIR --measure``: measure the export's speed-up lines again (PyTorch and, where the study
    wrote one, ONNX Runtime) with the model and data of the folder's ``config.resolved.toml`` and the export on
    disk, at the thread count the study used; update ``export/latency.json``, ``report.json`` and
    ``summary.json``, then render the report (:func:`render_report`). A folder without ``export/`` (a committed
    report keeps no weights) gets the chosen configuration exported again from the statistics (the closed-form
    fits of the same calibration split). No search, trial or front evaluation runs. Returns the report's path."""
    import torch

    from rba.config import load_config
    from rba.session import Session

    out = Path(out)
    data = read_report_inputs(out)  # everything checked before the model loads
    info = data["info"]
    export = info["export"]
    folder = out / "export"
    if export is None:
        raise ReportError(f"{out}: the study exported nothing (no feasible configuration), so there is no speed-up "
                          "to measure: run `rba report DIR` without --measure")
    if not (out / "config.resolved.toml").exists():
        raise ReportError(f"{out} lacks config.resolved.toml, which --measure needs (the study's model and data): "
                          "rerun `rba run` on this study to write it again")
    exists = (folder / "recipe.json").exists()
    if exists:
        try:
            exported = json.loads((folder / "recipe.json").read_text()).get("spans")
        except (OSError, UnicodeDecodeError, ValueError, AttributeError):
            exported = "an unreadable recipe"
        if exported != info["choice"]["spans"]:
            raise ReportError(f"{folder} holds an export of `{exported}`, but the report chose "
                              f"`{info['choice']['spans']}`: rerun `rba run` on this study, or remove export/ to "
                              "export the report's choice again")
    cfg = load_config(out / "config.resolved.toml")
    # labels where the data has them, as rba run's report step (its export carries the probe head then)
    session = Session(cfg, need_labels=None, progress=False, measure_latency=False)
    if not exists:  # a committed report keeps no weights: export the choice again
        from rba.export import export_model

        spans = info["choice"]["spans"]
        log(f"report: {folder} holds no export: exporting `{spans}` again from the statistics")
        export_model(session, parse_spans(spans), folder, mode=cfg.fit.mode,
                     kind="identity" if info["method"] == "block-drop" else cfg.fit.kind)
        if cfg.run.onnx:
            from rba.onnx import export_onnx

            export_onnx(session, folder)
    threads = torch.get_num_threads()
    torch.set_num_threads(int(export["speed"].get("threads", threads)))
    try:
        records = measure_export(cfg, session, folder)
    finally:
        torch.set_num_threads(threads)
    export |= records
    export.pop("onnx_lines", None)  # the ONNX line is rendered from the record now
    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    summary = {k: v for k, v in summary.items() if not k.startswith("onnx_")}
    summary |= {k: records["speed"][k] for k in ("speedup", "speedup_q1", "speedup_q3")}
    summary |= {k: v for k, v in records["onnx"].items() if k.startswith("onnx_")}
    atomic_write_json(summary_path, summary)
    atomic_write_json(out / "report.json", info)
    return render_report(out)


def render_report(out: Path) -> Path:
    """Write ``report.md`` and every plot of a finished ``rba run`` folder from its files alone (report.json and
    the CSV tables): no model is loaded and nothing is evaluated. ``rba run`` ends with it; ``rba report DIR``
    runs it alone. Returns the report's path."""
    from rba.metrics import plot_scores
    from search.pareto import plot_front

    out = Path(out)
    data = read_report_inputs(out)
    info = data["info"]
    info["metrics"] = dict(info["metrics"])  # metric → higher is more redundant, in the registry's order
    quality, cost = info["quality"], info["cost"]
    max_drop = info["max_drop"]
    trials, pareto, scores = data["trials"], data["pareto"], data["scores"]
    ref_row = pareto[pareto["state"] == "REFERENCE"]
    reference = ref_row.iloc[0].to_dict() if len(ref_row) else {c: math.nan for c in RESULT_COLUMNS}
    listed = pareto[pareto["state"] != "REFERENCE"].reset_index(drop=True)
    front = front_members(listed, reference, info["objective_columns"]) if len(ref_row) else listed
    if len(front) < len(listed):  # written by an older rba: the "none" trial listed next to the reference row
        _write_pareto(out, ref_row, front)
        pareto = pd.concat([ref_row, front], ignore_index=True)
    baselines = data.get("baselines")
    singles = data.get("singles")
    choice = info["choice"]
    plots = []

    plot_scores(scores, out / "scores.png", title=info["titles"]["scores"])
    curves = {} if baselines is None else {m: rows for m, rows in baselines.groupby("method", sort=False)}
    plot_front(out / "pareto.png", trials, front, objective_columns=info["objective_columns"],
               budgets=info["budgets"], reference=reference, baselines=curves, title=info["titles"]["pareto"])
    plots += ["scores.png", "pareto.png"]
    files = ["scores.csv", "scores.png", "trials.csv", "trials.parquet", "pareto.csv", "pareto.png"]
    files += (["baselines.csv"] if baselines is not None else []) + (["singles.csv"] if singles is not None else [])
    files += ["config.resolved.toml", "run.json", "summary.json", "report.json"]
    # the trials line is counted from the tables (an older rba stored it, counting the "none" trial in the front)
    header = [h for h in info["header"] if not h.startswith("trials: ")]
    header.insert(len(header) - 1, f"trials: {int((trials['state'] == 'COMPLETE').sum())} complete of {len(trials)}; "
                                   f"front: {len(front)} configurations besides the unmodified model")
    lines = [f"# rba study: {info['name']}", "", *[f"- {h}" for h in header + _data_sources(out)], ""]
    lines_files = len(lines)
    lines += ["## Front", "",
              f"Sorted by {cost}; the first row is the unmodified model (a reference, not a trial). Accuracy is "
              "evaluated here for front members whose trials did not compute it (when the data has labels).", "",
              _markdown(pareto), "", "![front](pareto.png)", "",
              "## Export rule", "",
              f"The export is the cheapest feasible front member by {cost} ({_why_column(cost, info, COST_COLUMNS)}) "
              f"whose {quality} ({_why_column(quality, info, QUALITY)}) is at most max_drop = {max_drop:g} "
              f"(absolute, `--max-drop`, `[run] max_drop`) below the unmodified model's; if none is, the best-{quality} feasible member, with a "
              "warning.", "",
              f"Picked: {choice['reason']}.{_picked_accuracy(info, reference, front, choice)}", ""]
    lines += _redundancy_section(scores, info)
    if baselines is not None:
        lines += _baselines_section(info, front, reference, baselines, choice)
        lines += _methods_section(info, trials, reference, baselines)
    lines += _multi_span_section(info, front, trials, singles, reference)
    if singles is not None:
        lines += _priors_section(out, info, singles, scores)
        plots.append("priors.png")
    else:
        lines += ["## Metrics as priors (every single span)", "",
                  "Not computed: set `[report] single_spans = true` to evaluate every single span and correlate each "
                  "metric with the post-replacement fidelity and accuracy.", ""]
    lines += _cost_section(out, info, trials)
    plots.append("cost.png")
    lines += _export_section(info, reference, front, choice)
    timing = info["timing"]
    lines += ["## Wall time", "",
              f"Wall time: {timing['total_s']:.1f} s (report rendering aside), by phase:", "",
              _markdown(pd.DataFrame([{"phase": k, "seconds": v} for k, v in timing["phases"]])), ""]
    files += [p for p in plots if p not in files] + (["export/"] if info["export"] is not None else [])
    lines[lines_files:lines_files] = [f"Files: {', '.join(files)}", ""]
    report = out / "report.md"
    atomic_write_text(report, "\n".join(lines))
    return report


def _why_column(column: str, info: dict, kinds) -> str:
    """Why the export rule reads ``column``: the first objective of its kind, or the default when none is."""
    first = next((o for o in info["objectives"] if o in kinds), None)
    kind = "quality" if kinds is QUALITY else "cost"
    return f"the first {kind} objective" if first is not None else f"no {kind} objective: the default"


def _data_sources(out: Path) -> list[str]:
    """Where the statistics and fits came from, and where the probe and eval splits came from, as the study's
    resolved config says (a transfer study draws its calibration split from ``[data] calibration_path``)."""
    import tomllib

    try:
        data = tomllib.loads((out / "config.resolved.toml").read_text())["data"]
    except (OSError, ValueError, KeyError):
        return []
    main = f"{data.get('kind')} {data.get('path') or ''}".strip()
    if data.get("calibration_path"):
        cal = f"{data.get('calibration_kind') or data.get('kind')} {data['calibration_path']}"
        return [f"calibration source (statistics and span fits): {cal}, another data set than the probe and eval "
                f"splits (a transfer)", f"probe (classifier) and eval (every score here) source: {main}"]
    return [f"calibration (statistics and span fits), probe (classifier) and eval (every score here): disjoint "
            f"splits of one source, {main}"]


def _chosen(front: pd.DataFrame, reference: dict, spans: str | None) -> dict | None:
    """The exported configuration's row: a front member's, or the reference row for the unmodified model."""
    if spans == "none":
        return reference
    row = front[front["spans"] == spans]
    return row.iloc[0].to_dict() if spans is not None and len(row) else None


def _picked_accuracy(info: dict, reference: dict, front: pd.DataFrame, choice: dict) -> str:
    """With a fidelity rule, what the pick costs in accuracy (when the data has labels)."""
    row = _chosen(front, reference, choice["spans"])
    if (info["quality"] == "accuracy" or row is None or pd.isna(row.get("accuracy"))
            or pd.isna(reference.get("accuracy"))):
        return ""
    return (f" The rule reads {info['quality']}; its accuracy is {row['accuracy']:.4g} against the unmodified "
            f"model's {reference['accuracy']:.4g}.")


def _redundancy_section(scores: pd.DataFrame, info: dict) -> list[str]:
    from search.analysis import redundant_spans

    table = redundant_spans(scores, info["metrics"])
    return ["## Which spans are redundant", "",
            "Every registered metric over every valid span (scores.csv); a blank cell is a span that changes the "
            "representation's shape. The table names each metric's most redundant spans and how its ranking of all "
            "spans agrees with the first metric's (Spearman).", "",
            "![scores](scores.png)", "", _markdown(table), ""]


def _baselines_section(info: dict, front: pd.DataFrame, reference: dict, baselines: pd.DataFrame,
                       choice: dict) -> list[str]:
    quality, cost = info["quality"], info["cost"]
    lines = ["## Baselines at the same budgets", "",
             "The same rule applied to each baseline's configurations (BR-greedy: the paper's heuristic, "
             "fitted spans; block-drop: spans replaced by the identity). Configurations the trials evaluated carry "
             "the trials' results (`source` = trial; accuracy only where the search computed it):", ""]
    r = _chosen(front, reference, choice["spans"])
    if r is not None:
        lines.append(f"- search: `{choice['spans']}`, {quality} {r[quality]:.4g}, {cost} {r[cost]:.4g}")
    else:
        lines.append("- search: nothing feasible")
    for method, rows in baselines.groupby("method", sort=False):
        pick = choose_export(rows.assign(spans=rows["spans"].astype(str)), reference, info["objectives"],
                             info["max_drop"])
        if pick.row is None:
            lines.append(f"- {method}: no configuration within the budgets")
        else:
            lines.append(f"- {method}: `{pick.row['spans']}`, {quality} {pick.row[quality]:.4g}, {cost} "
                         f"{pick.row[cost]:.4g}" + ("" if pick.within else f" (none within {info['max_drop']:g})"))
    return lines + ["", _markdown(baselines), ""]


def _methods_section(info: dict, trials: pd.DataFrame, reference: dict, baselines: pd.DataFrame) -> list[str]:
    from search.analysis import compare_methods

    quality, cost = info["quality"], info["cost"]
    methods = {"search": trials} | {m: rows for m, rows in baselines.groupby("method", sort=False)}
    table, ref = compare_methods(methods, quality=quality, cost=cost, reference=reference,
                                 flops_points=info["flops_points"])
    return ["## Search against BR-greedy and block-drop", "",
            f"Each method's feasible configurations (the search: every completed trial). Hypervolume of ({quality} ↑, "
            f"{cost} ↓) with the reference point {quality} = {ref[0]:.4g} (the lowest of all methods) and {cost} = "
            f"{ref[1]:.4g} (the unmodified model); best {quality} within each FLOPs fraction. The front plot above "
            "draws the baselines as dashed lines.", "", _markdown(table), ""]


def _multi_span_section(info: dict, front: pd.DataFrame, trials: pd.DataFrame, singles: pd.DataFrame | None,
                        reference: dict) -> list[str]:
    from search.analysis import multi_span

    quality, cost = info["quality"], info["cost"]
    evaluated = trials[trials["state"] == "COMPLETE"]
    if singles is not None:  # every single span evaluated: the single-span front is complete
        extra = singles[~singles["spans"].isin(evaluated["spans"])].assign(state="COMPLETE")
        evaluated = pd.concat([evaluated, extra[[c for c in extra.columns if c in evaluated.columns]]],
                              ignore_index=True)
    m = multi_span(front, evaluated, quality=quality, cost=cost, reference=reference)
    answer = "yes" if m["multi_span_members"] else "no"
    counts = ", ".join(f"{v} with {k} span{'s' if k != 1 else ''}" for k, v in m["by_count"].items()) or "none"
    which = ("every single span evaluated ([report] single_spans)" if singles is not None else
             f"the {m['single_evaluated']} single spans the search evaluated")
    return ["## Do multi-span sets beat single spans?", "",
            f"**{answer.capitalize()}**: {m['multi_span_members']} of the front's {m['front_members']} members hold two "
            f"spans or more ({counts})" + (f": {', '.join('`' + s + '`' for s in m['multi_span_spans'])}."
                                           if m["multi_span_spans"] else "."),
            f"The front of configurations with at most one span ({which}) covers {m['single_share']:.3f} of the "
            f"hypervolume of all evaluated configurations ({m['hypervolume_single']:.4g} of {m['hypervolume_all']:.4g}; "
            f"reference point {quality} = {m['reference_point'][0]:.4g}, {cost} = {m['reference_point'][1]:.4g}).", ""]


def _priors_section(out: Path, info: dict, singles: pd.DataFrame, scores: pd.DataFrame) -> list[str]:
    from search.analysis import prior_correlations

    metrics = info["metrics"]
    table = prior_correlations(singles, scores, metrics)
    _plot_priors(out / "priors.png", singles, scores, metrics)
    evaluated = int((singles["source"] == "evaluated").sum())
    return ["## Metrics as priors (every single span)", "",
            f"Spearman correlation over all {len(singles)} single spans between each metric, oriented so that higher "
            "means more redundant (ls_residual negated), and the span's post-replacement fidelity and accuracy: a good "
            f"prior has ρ near 1. {len(singles) - evaluated} spans reuse trial results, {evaluated} were evaluated "
            "for the report (singles.csv).", "", _markdown(table), "", "![priors](priors.png)", ""]


def _plot_priors(path: Path, singles: pd.DataFrame, scores: pd.DataFrame, metrics: dict[str, bool]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    merged = singles.merge(scores, on=["start", "end"], how="inner", suffixes=("", "_score"))
    names = [m for m in metrics if m in scores.columns]
    qualities = [q for q in ("fidelity", "accuracy") if merged[q].notna().any()]
    fig, axes = plt.subplots(len(qualities), len(names), figsize=(3.2 * len(names), 3.0 * len(qualities)),
                             squeeze=False, constrained_layout=True)
    for r, q in enumerate(qualities):
        for c, m in enumerate(names):
            ax = axes[r][c]
            ax.scatter(merged[m], merged[q], s=14)
            ax.set_xlabel(m + ("" if metrics[m] else " (lower: more redundant)"), fontsize=8)
            ax.set_ylabel(q, fontsize=8)
            ax.grid(alpha=0.3)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def _cost_section(out: Path, info: dict, trials: pd.DataFrame) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from search.analysis import search_cost

    c = search_cost(trials, search_wall_s=dict(info["timing"]["phases"]).get("search", math.nan),
                    configurations=info["configurations"], exhaustive_run=info["method"] == "exhaustive")
    fig, ax = plt.subplots(figsize=(6.0, 2.6), constrained_layout=True)
    bars = {"one evaluation": c["one_evaluation_s"], "search": c["search_wall_s"],
            "exhaustive" + (" (estimate)" if c["exhaustive_estimated"] else ""): c["exhaustive_s"]}
    ax.barh(list(bars), list(bars.values()), color=["0.6", "tab:blue", "tab:red"])
    ax.set_xscale("log")
    ax.set_xlabel("seconds (log scale)")
    ax.grid(alpha=0.3, axis="x")
    with atomic_path(out / "cost.png") as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    how = ("an estimate: the number of configurations × one evaluation" if c["exhaustive_estimated"]
           else "measured: this study was the exhaustive sweep")
    before = info["timing"].get("completed_before", 0)
    resumed = ([f"The study resumed: {before} of its {c['trials']} completed trials ran before this run, so the "
                "search time above covers only the rest; the summed trial durations over all runs are "
                f"{float(trials.loc[trials['state'] == 'COMPLETE', 'duration_s'].sum()):.4g} s.", ""]
               if before else [])
    return ["## Cost of the search", "",
            f"The search took {c['search_wall_s']:.1f} s wall time ({c['trials']} trials; the eval split's cache and "
            f"the latency table included, the statistics not), {c['search_in_evaluations']:.1f}× one evaluation ({c['one_evaluation_s']:.3g} s, "
            f"the median completed trial). An exhaustive sweep of all {c['configurations']:,} configurations takes "
            f"{c['exhaustive_s']:.4g} s ({how}): {c['exhaustive_over_search']:.3g}× the search.", "",
            *resumed, "![cost](cost.png)", ""]


def _export_section(info: dict, reference: dict, front: pd.DataFrame, choice: dict) -> list[str]:
    export = info["export"]
    if export is None:
        return ["## Exported configuration", "", "No feasible configuration: nothing exported.", ""]
    row = _chosen(front, reference, choice["spans"])
    speed = export["speed"]
    if "original_times_ms" in speed:
        from rba.timing import speedup_text

        headline = speedup_text(speed["speedup"], speed["speedup_q1"], speed["speedup_q3"], repeats=speed["repeats"],
                                batch_size=speed["batch_size"], threads=speed["threads"])
    else:  # a record of an older rba, which did not keep the times
        headline = (f"speed-up {speed['speedup']:.3g}× (an older rba's median of per-repeat ratios, quartiles "
                    f"{speed['speedup_q1']:.3g}–{speed['speedup_q3']:.3g}; `rba report DIR --measure` measures it "
                    "again as the ratio of the medians)")
    onnx = export.get("onnx") or {}
    onnx_lines = (_onnx_lines(onnx, export["measured"]["flops_frac"]) if "unmodified_times_ms" in onnx
                  else export.get("onnx_lines", []))
    return ["## Exported configuration", "",
            f"`{choice['spans']}`, written to `export/` (model.safetensors + recipe.json, with its classifier head "
            "when the data has labels: `rba.head_logits`). Reloaded and evaluated end to end:", "",
            _markdown(pd.DataFrame([{"source": "unmodified model"} | {c: reference.get(c) for c in RESULT_COLUMNS},
                                    {"source": "search (modelled latency)"} | {c: row[c] for c in RESULT_COLUMNS},
                                    {"source": "export (measured)"} | {c: export["measured"].get(c)
                                                                       for c in RESULT_COLUMNS}])),
            "",
            f"Latency, measured back to back (unmodified model and export interleaved{_load_text(speed)}): unmodified "
            f"{speed['original_ms']:.4g} ms/sample, export {speed['export_ms']:.4g} ms/sample (medians); {headline}. "
            "Written to export/latency.json.", "",
            *onnx_lines]


def _markdown(df: pd.DataFrame) -> str:
    if not len(df):
        return "(empty)"
    cols = list(df.columns)

    def fmt(v):
        if v is pd.NA or v is None:
            return ""
        if isinstance(v, (bool, np.bool_)):
            return str(bool(v))
        if isinstance(v, (float, np.floating)):
            v = float(v)
            if math.isnan(v):
                return ""
            return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.3e}"
        return str(v)

    rows = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    rows += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in df.itertuples(index=False)]
    return "\n".join(rows)
