"""What a finished study's results are, as data: the tables, the front plot and ``run.json`` of a search
(:func:`finish`); for ``rba run`` the completed front with its reference row, the export rule (:func:`choose_export`),
the baselines' and single spans' rows, and the format of ``report.json`` with the reader of a finished folder's
files (:func:`read_report_inputs`)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import model_validator

from rba.config import config_hash
from rba.errors import RBAError
from rba.files import Record, atomic_path, read_record, read_table
from rba.spans import format_spans
from search._storage import recorded_storage
from search.analysis import front_members
from search.baselines import br_greedy
from search.objective import QUALITY, RESULT_COLUMNS
from search.recording import SearchResult, StudyContext, log

__all__ = ["finish", "rule_columns", "Choice", "choose_export", "complete_front", "reference_row",
           "split_pareto", "read_report_inputs", "read_summary", "ReportError", "ReportRecord", "SummaryRecord",
           "REPORT_FORMAT", "COST_COLUMNS"]


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
        "name": ctx.study_name, "storage": recorded_storage(ctx.cfg.search.storage), "method": ctx.method,
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

#: the numbers of a result row (every result column but the configuration's text)
_NUMBERS = [c for c in RESULT_COLUMNS if c != "spans"]


class _Choice(Record):
    spans: str | None
    reason: str
    within: bool


class _Speed(Record):
    """``measure_export``'s ``speed`` record (an older rba's kept no times, repeats, batch or threads)."""

    speedup: float
    speedup_q1: float
    speedup_q3: float
    original_ms: float
    export_ms: float
    original_times_ms: list[float] | None = None
    repeats: int | None = None
    batch_size: int | None = None
    threads: int | None = None
    load_start: float | None = None
    load_end: float | None = None

    @model_validator(mode="after")
    def _times_with_their_setting(self):
        if self.original_times_ms is not None and None in (self.repeats, self.batch_size, self.threads):
            raise ValueError("a speed record with times needs repeats, batch_size and threads")
        return self


class _Onnx(Record):
    """``measure_export``'s ``onnx`` record: empty, or a measurement with what the report's ONNX line quotes."""

    unmodified_times_ms: list[float] | None = None
    onnx_unmodified_ms: float | None = None
    onnx_export_ms: float | None = None
    onnx_speedup: float | None = None
    onnx_speedup_q1: float | None = None
    onnx_speedup_q3: float | None = None
    max_rel_diff: float | None = None
    repeats: int | None = None
    batch_size: int | None = None
    threads: int | None = None
    load_start: float | None = None
    load_end: float | None = None

    @model_validator(mode="after")
    def _measured_whole(self):
        if self.unmodified_times_ms is not None:
            lacking = [k for k, v in self if v is None and k not in ("load_start", "load_end")]
            if lacking:
                raise ValueError(f"an ONNX measurement without {', '.join(lacking)}")
        return self


class _Export(Record):
    measured: dict[str, float | str | None]
    speed: _Speed
    onnx: _Onnx | None = None
    onnx_lines: list[str] | None = None  # an older rba's rendered ONNX line

    @model_validator(mode="after")
    def _measured_numbers(self):
        for key in _NUMBERS:
            if key in self.measured and isinstance(self.measured[key], str):
                raise ValueError(f"measured.{key} must be a number")
        if not isinstance(self.measured.get("flops_frac"), float):
            raise ValueError("measured.flops_frac must be a number")
        return self


class _Timing(Record):
    phases: list[tuple[str, float]]
    total_s: float
    completed_before: int = 0


class _Titles(Record):
    scores: str
    pareto: str


class ReportRecord(Record):
    """report.json (format 1): what ``rba run``'s report step found, read by ``rba report`` and ``--measure``."""

    format: Literal[1]
    name: str
    header: list[str]
    method: str
    objectives: list[str]
    objective_columns: list[Literal[tuple(_NUMBERS)]]
    budgets: dict[str, float]
    quality: Literal[QUALITY]
    cost: Literal[tuple(COST_COLUMNS.values())]
    max_drop: float
    choice: _Choice
    export: _Export | None
    configurations: int
    metrics: list[tuple[str, bool]]
    flops_points: list[float]
    baselines: bool
    single_spans: bool
    titles: _Titles
    timing: _Timing


class SummaryRecord(Record):
    """summary.json: the study's headline numbers, for scripts (``rba run`` writes it, ``--measure`` updates it)."""

    trials_complete: int
    front_size: int
    quality: str
    cost: str
    reference_quality: float
    max_drop: float
    within_drop: bool
    rule: str
    export_spans: str | None = None
    export_quality: float | None = None
    export_cost: float | None = None
    speedup: float | None = None
    speedup_q1: float | None = None
    speedup_q3: float | None = None


#: the tables of a finished ``rba run`` folder: file, the columns its readers use, which of them hold numbers
_TABLES = {
    "scores": ("scores.csv", ["start", "end"], None),  # start, end, then one column per metric: all numbers
    "trials": ("trials.csv", ["number", *RESULT_COLUMNS, "feasible", "state"], ["number", *_NUMBERS]),
    "pareto": ("pareto.csv", ["number", *RESULT_COLUMNS, "feasible", "state"], ["number", *_NUMBERS]),
    "baselines": ("baselines.csv", ["method", *RESULT_COLUMNS, "feasible", "source"], _NUMBERS),
    "singles": ("singles.csv", ["start", "end", *RESULT_COLUMNS, "feasible", "source"], ["start", "end", *_NUMBERS]),
}
#: how a damaged file of a finished study is written again
_REWRITE = "rerun `rba run` on this study to write it again (the study resumes, no trial is repeated)"


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
    """report.json (:class:`ReportRecord`) and the tables of a finished ``rba run`` folder (their columns, numbers
    where numbers belong), checked before anything is written: a damaged file is one line naming it."""
    out = Path(out)
    if not out.is_dir():
        raise ReportError(f"{out} is not a folder: give the output folder of a finished `rba run`")
    path = out / "report.json"
    if not path.exists():
        raise ReportError(f"{out} holds no report.json: it is not the folder of a finished `rba run` (`rba search` "
                          "writes no report); run `rba run CONFIG --out {out}` to finish the study and write one"
                          .replace("{out}", str(out)))
    try:
        fmt = json.loads(path.read_text()).get("format")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        fmt = REPORT_FORMAT  # unreadable: the schema's reading below names what is wrong
    if fmt != REPORT_FORMAT:
        raise ReportError(f"{path} has report format {fmt!r}, and this rba reads format {REPORT_FORMAT}: rerun "
                          "`rba run` on this study to write it again")
    info = read_record(path, ReportRecord, fix=_REWRITE, error=ReportError)
    tables = {"scores": "scores.csv", "trials": "trials.csv", "pareto": "pareto.csv"}
    if info["baselines"]:
        tables["baselines"] = "baselines.csv"
    if info["single_spans"]:
        tables["singles"] = "singles.csv"
    missing = [name for name in tables.values() if not (out / name).exists()]
    if missing:
        raise ReportError(f"{out} lacks {', '.join(missing)}, which its report.json needs: rerun `rba run` on this "
                          "study to write them again")
    data = {"info": info}
    for key in tables:
        name, columns, numeric = _TABLES[key]
        data[key] = read_table(out / name, columns=columns, numeric=numeric, fix=_REWRITE, error=ReportError,
                               dtype={"spans": "string"} if key != "scores" else None)
    return data


def read_summary(out: Path) -> dict:
    """summary.json of a finished ``rba run`` folder (:class:`SummaryRecord`; ``{}`` when there is none)."""
    path = Path(out) / "summary.json"
    return read_record(path, SummaryRecord, fix=_REWRITE, error=ReportError) if path.exists() else {}
