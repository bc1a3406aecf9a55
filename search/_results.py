"""What a finished study's results are, as data: the tables, the front plot and ``run.json`` of a search
(:func:`finish`); for ``rba run`` the completed front with its reference row, the export rule (:func:`choose_export`),
the baselines' and single spans' rows, and the format of ``report.json`` with the reader of a finished folder's
files (:func:`read_report_inputs`)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from rba._names import COST_COLUMNS
from rba.config import config_hash
from rba.errors import RBAError
from rba.files import atomic_path
from rba.spans import format_spans
from search.analysis import front_members
from search.baselines import br_greedy
from search.objective import QUALITY, RESULT_COLUMNS
from search.recording import SearchResult, StudyContext, log

__all__ = ["finish", "rule_columns", "Choice", "choose_export", "complete_front", "reference_row",
           "split_pareto", "read_report_inputs", "ReportError", "REPORT_FORMAT", "COST_COLUMNS"]


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


def split_pareto(pareto: pd.DataFrame, objective_columns: list[str]) -> tuple[pd.DataFrame, dict, pd.DataFrame]:
    """``pareto.csv``'s reference row (as read, and as a dict: NaN results when there is none) and its front
    members (:func:`front_members`: an older rba listed the "none" trial next to the reference row)."""
    ref_row = pareto[pareto["state"] == "REFERENCE"]
    reference = ref_row.iloc[0].to_dict() if len(ref_row) else {c: math.nan for c in RESULT_COLUMNS}
    listed = pareto[pareto["state"] != "REFERENCE"].reset_index(drop=True)
    front = front_members(listed, reference, objective_columns) if len(ref_row) else listed
    return ref_row, reference, front


#: report.json's format; ``rba report`` reads this format only
REPORT_FORMAT = 1

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
        objective = (ctx.objective if kind == ctx.objective.kind
                     else Objective(session, kind=kind, mode=ctx.objective.mode))
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

