"""What a finished study's results are, as data: the tables, the front plot and ``run.json`` of a search
(:func:`finish`); for ``rba run`` the completed front with its reference row, the export rule (:func:`choose_export`),
the baselines' and single spans' rows, and the format of ``report.json`` with the reader of a finished folder's
files (:func:`read_report_inputs`)."""

from __future__ import annotations

import dataclasses
import json
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, cast

import numpy as np
import pandas as pd
from pydantic import model_validator

from rba.config import config_hash
from rba.errors import RBAError
from rba.evaluate import token_weighted
from rba.files import Record, atomic_path, read_record, read_table
from rba.methods import get_method
from rba.names import COST_COLUMNS, LM_COLUMNS, maximised
from rba.session import Session
from rba.spans import format_spans
from search._storage import recorded_storage
from search.analysis import best_quality_at, feasible_rows, front_members, hypervolume, quality_limit
from search.baselines import br_greedy
from search.methods import within_space
from search.objective import QUALITY, RESULT_COLUMNS, Objective
from search.pareto import front_frame, plot_front, trials_frame, write_tables
from search.recording import SearchResult, StudyContext, log

__all__ = ["finish", "rule_columns", "Choice", "choose_export", "complete_front", "reference_row",
           "split_pareto", "read_report_inputs", "read_summary", "ReportError", "ReportRecord", "SummaryRecord",
           "REPORT_FORMAT", "REPORT_BASELINES", "COST_COLUMNS"]


def finish(ctx: StudyContext, study) -> SearchResult:
    """Write the tables, the plot and the run records."""

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
        greedy = [format_spans(s) for s in br_greedy(ctx.table, ctx.space.gap)]
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


def choose_export(front: pd.DataFrame, reference: dict, objectives: list[str], max_drop: float,
                  max_rise: float = 0.05) -> Choice:
    """The cheapest feasible front member (by the first cost objective) whose first quality objective is within
    the rule's allowance of the unmodified model's (``reference``): when it is maximised, at most ``max_drop``
    below it (absolute); when it is minimised, at most ``max_rise`` above it, relative (:func:`rule_allowance`).
    If none is, the best-quality feasible member. The unmodified configuration ("none") is picked only when it is
    the front's only member."""
    quality, cost = rule_columns(objectives)
    feasible = front[front["feasible"].fillna(True).astype(bool)] if len(front) else front
    cand = feasible[feasible["spans"] != "none"]
    cand = cand if len(cand) else feasible
    if not len(cand):
        return Choice(None, "no feasible configuration on the front: nothing exported", False)
    ref = float(reference[quality])
    higher = maximised(quality)
    limit, allowance, flag = rule_allowance(quality, ref, max_drop, max_rise)
    within = cand[cand[quality] >= limit - 1e-12] if higher else cand[cand[quality] <= limit + 1e-12]
    if len(within):
        row = within.sort_values([cost, quality], ascending=[True, not higher]).iloc[0]
        return Choice(row, f"{len(within)} of {len(cand)} feasible front members are within {allowance} of the "
                           f"unmodified model's {quality} ({ref:.4g}); `{row['spans']}` is the cheapest of them by "
                           f"{cost} ({row[cost]:.4g}, {quality} {row[quality]:.4g})", True)
    row = cand.sort_values([quality, cost], ascending=[not higher, True]).iloc[0]
    change = f"a drop of {ref - row[quality]:.4g}" if higher else f"a rise of {row[quality] - ref:.4g}"
    return Choice(row, f"no feasible front member is within {allowance} of the unmodified model's {quality} "
                       f"({ref:.4g}); exported the best {quality} instead: `{row['spans']}` ({row[quality]:.4g}, "
                       f"{change}; raise {flag} or loosen the budgets to allow more)", False)


def rule_allowance(quality: str, reference: float, max_drop: float, max_rise: float) -> tuple[float, str, str]:
    """The export rule's worst acceptable value of ``quality`` for an unmodified model at ``reference``, the
    allowance in words and the flag that sets it: ``reference − max_drop`` for a maximised quality; for a
    minimised one ``(1 + max_rise) × reference`` (perplexity), or ``reference + log(1 + max_rise)`` for kl, in nats
    (:func:`search.analysis.quality_limit`)."""
    if maximised(quality):
        return reference - max_drop, f"{max_drop:g}", "--max-drop"
    return quality_limit(quality, reference, max_rise), f"a relative rise of {max_rise:g}", "--max-rise"


def _labelled_session(ctx: StudyContext):
    """The search's session, or one sharing its model, statistics and costs that also reads the labels (a
    fidelity-only search skips them per trial; the report and the export still get accuracy when labels exist)."""

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


#: report.json's format; ``rba report`` reads this format only. 2: the speed-up as the median of paired
#: per-repeat ratios with its interval and ceiling; the search's fit kind (``kind``) and the held-out test split
#: (``test``: None, or the per-sample file with its size)
REPORT_FORMAT = 2

#: the numbers of a result row (every result column but the configuration's text)
_NUMBERS = [c for c in RESULT_COLUMNS if c != "spans"]

# report.json's column names: Literals built from the registries, which pydantic checks; a type checker, which
# reads no runtime values, sees strings
if TYPE_CHECKING:
    _Number: TypeAlias = str
    _Quality: TypeAlias = str
    _Cost: TypeAlias = str
else:
    _Number = Literal[tuple(_NUMBERS)]
    _Quality = Literal[QUALITY]
    _Cost = Literal[tuple(COST_COLUMNS.values())]


class _Choice(Record):
    spans: str | None
    reason: str
    within: bool


class _Timed(Record):
    """How a latency measurement ran: its repeats, batch, threads and the load average around it."""

    repeats: int | None = None
    batch_size: int | None = None
    threads: int | None = None
    load_start: float | None = None
    load_end: float | None = None


class _Speed(_Timed):
    """``measure_export``'s ``speed`` record."""

    speedup: float
    speedup_low: float
    speedup_high: float
    export_faster: float
    original_ms: float
    export_ms: float
    original_times_ms: list[float] | None = None

    @model_validator(mode="after")
    def _times_with_their_setting(self):
        if self.original_times_ms is not None and None in (self.repeats, self.batch_size, self.threads):
            raise ValueError("a speed record with times needs repeats, batch_size and threads")
        return self


class _Onnx(_Timed):
    """``measure_export``'s ``onnx`` record: empty, or a measurement with what the report's ONNX line quotes."""

    unmodified_times_ms: list[float] | None = None
    onnx_unmodified_ms: float | None = None
    onnx_export_ms: float | None = None
    onnx_speedup: float | None = None
    onnx_speedup_low: float | None = None
    onnx_speedup_high: float | None = None
    onnx_export_faster: float | None = None
    max_rel_diff: float | None = None

    @model_validator(mode="after")
    def _measured_whole(self):
        if self.unmodified_times_ms is not None:
            lacking = [k for k, v in self if v is None and k not in ("load_start", "load_end")]
            if lacking:
                raise ValueError(f"an ONNX measurement without {', '.join(lacking)}")
        return self


class _Ceiling(Record):
    """The largest speed-up the exported configuration can plausibly have, and what it was computed from."""

    speedup: float
    source: str


class _Export(Record):
    measured: dict[str, float | str | None]
    speed: _Speed
    ceiling: _Ceiling
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


class _Test(Record):
    """Where the held-out test split's per-sample results are."""

    file: str
    split: str
    samples: int
    configurations: int


class _Titles(Record):
    scores: str
    pareto: str


class ReportRecord(Record):
    """report.json (format 2): what ``rba run``'s report step found, read by ``rba report`` and ``--measure``."""

    format: Literal[2]
    name: str
    header: list[str]
    method: str
    kind: str
    objectives: list[str]
    objective_columns: list[_Number]
    budgets: dict[str, float]
    quality: _Quality
    cost: _Cost
    max_drop: float
    max_rise: float | None = None
    """the rule's allowance for a minimised quality (None in a report of an older rba, which had none)"""
    choice: _Choice
    export: _Export | None
    configurations: int
    metrics: list[tuple[str, bool]]
    flops_points: list[float]
    baselines: bool
    single_spans: bool
    baselines_skipped: list[str] = []
    """one line per report baseline that could not run on this study (``"replaceme: why"``)"""
    test: _Test | None
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
    max_rise: float | None = None
    within_drop: bool
    rule: str
    export_spans: str | None = None
    export_quality: float | None = None
    export_cost: float | None = None
    speedup: float | None = None
    speedup_low: float | None = None
    speedup_high: float | None = None
    export_faster: float | None = None
    speedup_ceiling: float | None = None


#: the result columns every file has (an older rba wrote no next-token columns: they read as empty)
_REQUIRED = [c for c in RESULT_COLUMNS if c not in LM_COLUMNS]
#: the tables of a finished ``rba run`` folder: file, the columns its readers use, which of them hold numbers
_TABLES = {
    "scores": ("scores.csv", ["start", "end"], None),  # start, end, then one column per metric: all numbers
    "trials": ("trials.csv", ["number", *_REQUIRED, "feasible", "state"], ["number", *_NUMBERS]),
    "pareto": ("pareto.csv", ["number", *_REQUIRED, "feasible", "state"], ["number", *_NUMBERS]),
    "baselines": ("baselines.csv", ["method", *_REQUIRED, "feasible", "source"], _NUMBERS),
    "singles": ("singles.csv", ["start", "end", *_REQUIRED, "feasible", "source"], ["start", "end", *_NUMBERS]),
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


#: the methods (registry names, ``rba ls methods``) that ``rba run``'s report compares the search with, when
#: ``[report] baselines``: those that plan a fixed list of configurations. The methods that plan
#: ``search.trials`` of them (random, random-lesions, proxy-front) would double the report's evaluations; run
#: them with ``rba run --method``. A method whose check refuses the study (replaceme on a model that cannot fold:
#: Gemma 3, CNNs) is skipped with a one-line note in the report.
REPORT_BASELINES = ("br-greedy", "shortgpt", "shortgpt-affine", "sleb", "gromov", "gromov-affine", "replaceme")


def _baseline_rows(ctx: StudyContext, known: dict[str, dict]) -> tuple[pd.DataFrame, list[str]]:
    """The configurations each method of :data:`REPORT_BASELINES` plans (its registry planner, on the study's
    session, budgets and objectives; the study's own method left out), with the fit kind the registry gives it
    (``get_method(name).fit_kind``) and its results: the trials' where the search evaluated the configuration
    with that fit kind, else evaluated through an objective of that kind (one per kind, so a configuration two
    methods share is evaluated once; accuracy only where the trials compute it). Returns the rows and one note
    per method skipped because its check refuses this study ("replaceme: why")."""
    session = ctx.session
    objectives = {ctx.objective.kind: ctx.objective}
    own = get_method(ctx.method).name
    rows, skipped = [], []
    for name in REPORT_BASELINES:
        spec = get_method(name)
        if spec.name == own:
            continue
        kind = spec.fit_kind(ctx.cfg.fit.kind)
        objective = objectives.get(kind) or Objective(session, kind=kind, mode=ctx.objective.mode)
        own_ctx = dataclasses.replace(ctx, method=name, objective=objective, space=objective.space)
        try:
            spec.check_study(own_ctx)
        except RBAError as exc:
            skipped.append(f"{name}: {str(exc).splitlines()[0]}")
            continue
        objectives[kind] = objective
        planned, _ = within_space(own_ctx, spec.plan(own_ctx, True))
        for _, spans in planned:
            key = format_spans(spans)
            if kind == ctx.objective.kind and key in known:
                row, source = known[key], "trial"
            else:
                row, source = _result_row(objective(spans)), "evaluated"
            rows.append({"method": name, "kind": kind} | row | {"source": source})
    return pd.DataFrame(rows, columns=["method", "kind", *RESULT_COLUMNS, "feasible", "source"]), skipped


def _single_rows(ctx: StudyContext, session, known: dict[str, dict]) -> pd.DataFrame:
    """Every single valid span with its results (the search's fit kind): reused from the trials or the completed
    front where they hold every quality this session computes, else evaluated (with accuracy when labels exist)."""
    rows = []
    for span in ctx.space.pairs:
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
    needed = list(tables.values()) + ([PER_SAMPLE] if info.get("test") else [])
    missing = [name for name in needed if not (out / name).exists()]
    if missing:
        raise ReportError(f"{out} lacks {', '.join(missing)}, which its report.json needs: rerun `rba run` on this "
                          "study to write them again")
    data: dict[str, Any] = {"info": info}
    for key in tables:
        name, columns, numeric = _TABLES[key]
        data[key] = read_table(out / name, columns=columns, numeric=numeric, fix=_REWRITE, error=ReportError,
                               dtype={"spans": "string"} if key != "scores" else None)
        if key != "scores":
            for column in LM_COLUMNS:
                if column not in data[key]:
                    data[key][column] = math.nan
    if info.get("test"):
        try:
            data["per_sample"] = PerSample.load(out / PER_SAMPLE)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            raise ReportError(f"{out / PER_SAMPLE} cannot be read ({str(exc).splitlines()[0]}): rerun `rba run` on "
                              "this study to write it again") from None
    return data


def read_summary(out: Path) -> dict:
    """summary.json of a finished ``rba run`` folder (:class:`SummaryRecord`; ``{}`` when there is none)."""
    path = Path(out) / "summary.json"
    return read_record(path, SummaryRecord, fix=_REWRITE, error=ReportError) if path.exists() else {}



# ---------------------------------------------------------------------- the held-out test split
#: the file of per-sample results on the test split (``report.json``'s ``test`` names it)
PER_SAMPLE = "per_sample.npz"


@dataclass
class PerSample:
    """Per-sample results of several configurations on one split (``per_sample.npz``): configuration r is
    (``kind[r]``, ``spans[r]``), its cosines to the unmodified model ``cosine[r]`` and, when the data has labels,
    its predicted classes ``prediction[r]``; column s of each is data set sample ``index[s]``. Decoder LMs also
    have each sample's scored tokens ``tokens[s]`` and per configuration and sample the mean next-token NLL, KL and
    top-1 agreement (``nll``, ``kl``, ``top1``; :class:`rba.evaluate.SplitScores`)."""

    split: str
    index: np.ndarray
    label: np.ndarray | None
    kind: np.ndarray
    spans: np.ndarray
    cosine: np.ndarray
    prediction: np.ndarray | None
    tokens: np.ndarray | None = None
    nll: np.ndarray | None = None
    kl: np.ndarray | None = None
    top1: np.ndarray | None = None

    @property
    def samples(self) -> int:
        return len(self.index)

    def row(self, kind: str, spans: str) -> int | None:
        """The row of a configuration ("none", the unmodified model, under any fit kind); None if absent."""
        for r, (k, s) in enumerate(zip(self.kind, self.spans, strict=True)):
            if s == spans and (k == kind or spans == "none"):
                return r
        return None

    def correct(self, r: int) -> np.ndarray:
        """Per sample, whether configuration row ``r`` predicted its label (a labelled study only)."""
        if self.prediction is None:
            raise ValueError("these per-sample results hold no predictions: the study's data has no labels")
        return self.prediction[r] == self.label

    def scores(self, kind: str, spans: str) -> dict[str, float]:
        """fidelity and accuracy with their standard errors (of the mean; binomial), and for decoder LMs perplexity,
        kl and top1 over the scored tokens with theirs (over samples, :func:`rba.evaluate.token_weighted`; the delta
        method for perplexity); NaN where absent."""
        from rba.stats import binomial_se, mean_se  # lazy: scipy loads with the first standard error

        out = dict.fromkeys(("fidelity", "fidelity_se", "accuracy", "accuracy_se"), math.nan)
        out |= {k: math.nan for c in LM_COLUMNS for k in (c, f"{c}_se")}
        r = self.row(kind, spans)
        if r is None:
            return out
        out |= {"fidelity": float(self.cosine[r].mean()), "fidelity_se": mean_se(self.cosine[r])}
        if self.prediction is not None:
            correct = self.correct(r)
            out |= {"accuracy": float(correct.mean()), "accuracy_se": binomial_se(correct)}
        if self.tokens is not None:
            for column in LM_COLUMNS:
                mean, se = token_weighted(self.token_sums(column, r), self.tokens)
                out[column], out[f"{column}_se"] = mean, se
            nll = out["perplexity"]
            out["perplexity"], out["perplexity_se"] = float(np.exp(nll)), float(np.exp(nll) * out["perplexity_se"])
        return out

    def token_sums(self, column: str, r: int) -> np.ndarray:
        """Per sample, the sum over its scored tokens of what the next-token quality ``column`` averages (NLL for
        perplexity) for configuration row ``r``."""
        values = getattr(self, "nll" if column == "perplexity" else column)[r]
        return np.nan_to_num(values) * self.tokens

    def save(self, path: Path) -> None:
        arrays = {"split": np.array(self.split), "index": self.index, "kind": self.kind.astype(str),
                  "spans": self.spans.astype(str), "cosine": self.cosine}
        if self.prediction is not None:
            arrays |= {"label": cast(np.ndarray, self.label), "prediction": self.prediction}  # (set together)
        if self.tokens is not None:
            arrays |= {"tokens": self.tokens, "nll": cast(np.ndarray, self.nll), "kl": cast(np.ndarray, self.kl),
                       "top1": cast(np.ndarray, self.top1)}  # (set together)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: np.savez adds no suffix
            # numpy's stub types savez's keywords as its allow_pickle flag too; these keys are array names
            np.savez(f, **arrays)  # type: ignore[arg-type]

    @classmethod
    def load(cls, path: Path) -> "PerSample":
        with np.load(path, allow_pickle=False) as z:
            labelled, lm = "prediction" in z.files, "tokens" in z.files
            return cls(split=str(z["split"]), index=z["index"], label=z["label"] if labelled else None,
                       kind=z["kind"], spans=z["spans"], cosine=z["cosine"],
                       prediction=z["prediction"] if labelled else None,
                       **({k: z[k] for k in ("tokens", "nll", "kl", "top1")} if lm else {}))


def front_2d(rows: pd.DataFrame, quality: str, cost: str) -> pd.DataFrame:
    """The feasible rows no other feasible row beats in (``quality`` ↑, or ↓ when minimised; ``cost`` ↓), sorted by
    cost: what a method selects on eval as its front."""

    higher = maximised(quality)
    ok = feasible_rows(rows)
    ok = ok[ok[quality].notna() & ok[cost].notna()].sort_values([cost, quality], ascending=[True, not higher])
    keep, best = [], -math.inf
    for k, q in zip(ok.index, ok[quality] if higher else -ok[quality], strict=True):
        if q > best:
            keep.append(k)
            best = q
    return ok.loc[keep]


def method_rows(info: dict, trials: pd.DataFrame, baselines: pd.DataFrame | None) -> dict[str, pd.DataFrame]:
    """Label → the configurations a method evaluated on eval, each with its fit kind: the search (every completed
    trial, the study's fit kind) first, then each baseline method."""
    search = trials[trials["state"] == "COMPLETE"].assign(kind=info["kind"])
    methods = {"search": search}
    if baselines is not None:
        methods |= {m: rows for m, rows in baselines.groupby("method", sort=False)}
    return methods


def budget_picks(info: dict, methods: dict[str, pd.DataFrame]) -> dict[str, dict[float, tuple[str, str] | None]]:
    """Per method and ``flops_points`` budget, the configuration (fit kind, spans) it selects on eval: its best
    feasible rule quality within that FLOPs fraction (None when it has none)."""

    quality = info["quality"]
    picks: dict[str, dict[float, tuple[str, str] | None]] = {}
    for label, rows in methods.items():
        picks[label] = {}
        for p in info["flops_points"]:
            _, spans = best_quality_at(rows, quality, p)
            picks[label][p] = None if not spans else (str(rows.loc[rows["spans"] == spans, "kind"].iloc[0]), spans)
    return picks


def test_configurations(info: dict, trials: pd.DataFrame, front: pd.DataFrame,
                        baselines: pd.DataFrame | None) -> list[tuple[str, str]]:
    """Every (fit kind, spans) the report quotes a test-split number for: the unmodified model, the front members
    (and so the export), each method's eval front in (rule quality, rule cost) and its pick at each budget, every
    baseline configuration. In a fixed order, without repeats."""
    quality, cost, kind = info["quality"], info["cost"], info["kind"]
    found = [(kind, "none")] + [(kind, str(s)) for s in front["spans"]]
    if info["choice"]["spans"] is not None:
        found.append((kind, info["choice"]["spans"]))
    methods = method_rows(info, trials, baselines)
    for rows in methods.values():
        selected = front_2d(rows, quality, cost)
        found += [(str(k), str(s)) for k, s in zip(selected["kind"], selected["spans"], strict=True)]
    for by_budget in budget_picks(info, methods).values():
        found += [pick for pick in by_budget.values() if pick is not None]
    if baselines is not None:
        found += [(str(k), str(s)) for k, s in zip(baselines["kind"], baselines["spans"], strict=True)]
    return list(dict.fromkeys((k, s) for k, s in found))


def evaluate_test_split(session, configurations: list[tuple[str, str]], mode: str) -> PerSample:
    """Each configuration scored on the test split sample by sample (:meth:`rba.session.Session.evaluate_split`)."""
    scored = [session.evaluate_split(spans, "test", kind=kind, mode=mode) for kind, spans in configurations]
    first = scored[0]
    labelled = first.prediction is not None
    lm = {}
    if first.tokens is not None:
        lm = {"tokens": np.asarray(first.tokens, dtype=np.int64)}
        lm |= {k: np.stack([getattr(s, k) for s in scored]).astype(np.float64) for k in ("nll", "kl", "top1")}
    return PerSample(split="test", index=np.asarray(first.index), label=first.label if labelled else None,
                     kind=np.array([k for k, _ in configurations]), spans=np.array([s for _, s in configurations]),
                     cosine=np.stack([s.cosine for s in scored]).astype(np.float64),
                     prediction=np.stack([s.prediction for s in scored]).astype(np.int64) if labelled else None,
                     **lm)


def _configuration_label(kind: str, spans: str) -> str:
    return "unmodified" if spans == "none" else f"{spans} ({kind})"


def paired_tests(info: dict, trials: pd.DataFrame, baselines: pd.DataFrame | None, per: PerSample,
                 *, resamples: int = 9999, seed: int = 0) -> pd.DataFrame:
    """The report's paired comparisons on the test split: the export against the unmodified model, and at each
    ``flops_points`` budget the search's pick against each baseline's (:func:`budget_picks`, selected on eval).
    Per comparison and quality: accuracy by McNemar's exact test (with its mid-p), fidelity by a paired bootstrap
    of the mean difference; both with a paired bootstrap interval of the difference (B − A: the export, the
    search). ``p (Holm)`` adjusts every p-value of the table together (one family: the report's comparisons)."""
    from rba.stats import holm, mcnemar, mean_difference  # lazy: scipy loads with the first test

    pairs = []  # (comparison, budget, A, B)
    kind = info["kind"]
    if info["export"] is not None and info["choice"]["spans"] is not None:
        pairs.append(("export vs unmodified", math.nan, (kind, "none"), (kind, info["choice"]["spans"])))
    picks = budget_picks(info, method_rows(info, trials, baselines))
    for label in [m for m in picks if m != "search"]:
        for p in info["flops_points"]:
            a, b = picks[label][p], picks["search"][p]
            if a is not None and b is not None:
                pairs.append((f"search vs {label}", p, a, b))
    rows = []
    qualities = ((["accuracy"] if per.prediction is not None else []) + ["fidelity"]
                 + (list(LM_COLUMNS) if per.tokens is not None else []))
    for comparison, budget, a, b in pairs:
        ra, rb = per.row(*a), per.row(*b)
        if ra is None or rb is None:
            continue
        for quality in qualities:
            p_mid = math.nan
            if quality in LM_COLUMNS:  # over tokens: the difference of two ratio estimates, resampling samples
                diff, value_a, value_b = _token_difference(per, quality, ra, rb, resamples=resamples, seed=seed)
                rows.append({"comparison": comparison, "budget": budget, "quality": quality,
                             "A": _configuration_label(*a), "B": _configuration_label(*b), "A value": value_a,
                             "B value": value_b, "B − A": diff.estimate, "low": diff.low, "high": diff.high,
                             "test": "paired bootstrap", "p": diff.p, "mid-p": p_mid})
                continue
            if quality == "accuracy":
                xa, xb = per.correct(ra), per.correct(rb)
                m = mcnemar(xa, xb)
                test, p, p_mid = "McNemar (exact)", m.p_exact, m.p_mid
            else:
                xa, xb = per.cosine[ra], per.cosine[rb]
                test = "paired bootstrap"
            diff = mean_difference(xa.astype(float), xb.astype(float), resamples=resamples, seed=seed)
            if quality == "fidelity":
                p = diff.p
            rows.append({"comparison": comparison, "budget": budget, "quality": quality,
                         "A": _configuration_label(*a), "B": _configuration_label(*b), "A value": float(np.mean(xa)),
                         "B value": float(np.mean(xb)), "B − A": diff.estimate, "low": diff.low, "high": diff.high,
                         "test": test, "p": p, "mid-p": p_mid})
    table = pd.DataFrame(rows, columns=["comparison", "budget", "quality", "A", "B", "A value", "B value", "B − A",
                                        "low", "high", "test", "p", "mid-p"])
    table["p (Holm)"] = holm(table["p"].to_numpy(dtype=float)) if len(table) else []
    return table


def _token_difference(per: PerSample, quality: str, ra: int, rb: int, **kwargs):
    """B − A of a next-token quality over the scored tokens (perplexity: of the exponentiated mean NLL), with its
    paired bootstrap interval resampling samples (their tokens together); and the two values."""
    from rba.stats import paired_bootstrap  # lazy: scipy loads with the first test

    finish = np.exp if quality == "perplexity" else (lambda x: x)

    def difference(tokens, sum_a, sum_b, axis=-1):
        total = np.sum(tokens, axis=axis)
        return finish(np.sum(sum_b, axis=axis) / total) - finish(np.sum(sum_a, axis=axis) / total)

    assert per.tokens is not None  # next-token qualities are compared only on decoder LMs' results, which have them
    tokens = per.tokens.astype(float)
    sum_a, sum_b = per.token_sums(quality, ra), per.token_sums(quality, rb)
    diff = paired_bootstrap(difference, tokens, sum_a, sum_b, vectorized=True, **kwargs)
    total = tokens.sum()
    return diff, float(finish(sum_a.sum() / total)), float(finish(sum_b.sum() / total))


#: the hypervolume's reference point, fixed before any run: the unmodified model's quality (the export rule's
#: quality column) made worse by a relative change, at the unmodified model's cost. Maximised qualities (accuracy,
#: fidelity, top1): 0.9 ×; configurations that lose more than a tenth, which nobody would deploy, add no area.
REFERENCE_QUALITY_CHANGE = 0.1
#: minimised qualities (the decoder LMs' perplexity; kl by the same rise of cross-entropy): 2 × perplexity,
#: kl + log 2 nats. Wider than a tenth because layer removal moves perplexity far more than a tenth: replacing
#: 4 of SmolLM2-135M's 30 layers by one affine map doubles it (36 → 73 on 25,600 news tokens), so at 1.1 × no
#: configuration that removes a layer would add area. Set before the first LM study ran.
REFERENCE_QUALITY_RISE = 1.0
#: the maximised qualities' reference share (an older name, kept for readers of it)
REFERENCE_QUALITY_SHARE = 1.0 - REFERENCE_QUALITY_CHANGE


def reference_change(quality: str) -> float:
    """The relative change of ``quality`` at the fixed reference point (:data:`REFERENCE_QUALITY_CHANGE` or
    :data:`REFERENCE_QUALITY_RISE`, by the quality's direction)."""
    return REFERENCE_QUALITY_CHANGE if maximised(quality) else REFERENCE_QUALITY_RISE


def fixed_reference(quality_value: float, cost_value: float, quality: str = "fidelity") -> tuple[float, float]:
    """The fixed reference point for an unmodified model of quality ``quality_value`` (in column ``quality``) and
    cost ``cost_value`` (:func:`search.analysis.quality_limit` by :func:`reference_change`)."""
    return quality_limit(quality, quality_value, reference_change(quality)), float(cost_value)


def hypervolumes(info: dict, methods: dict[str, pd.DataFrame], reference: dict,
                 per: PerSample | None = None) -> tuple[pd.DataFrame, dict[str, tuple[float, float]]]:
    """Per method: the hypervolume of its feasible configurations in (rule quality, in its direction; rule cost ↓)
    on eval at the
    fixed reference point (:func:`fixed_reference` of the unmodified model's eval quality) with its share of the
    largest; with a test split, the hypervolume of the method's eval front (:func:`front_2d`, selected on eval)
    scored on the test split, at the fixed reference point of the unmodified model's test quality. Returns the
    table and the reference points by split."""

    quality, cost = info["quality"], info["cost"]
    refs = {"eval": fixed_reference(reference[quality], reference[cost], quality)}
    if per is not None:
        refs["test"] = fixed_reference(per.scores(info["kind"], "none")[quality], reference[cost], quality)
    higher = maximised(quality)
    rows = []
    for label, method in methods.items():
        ok = feasible_rows(method)
        row = {"method": label, "hypervolume": hypervolume(ok[quality], ok[cost], *refs["eval"], higher=higher)
               if len(ok) else 0.0}
        if per is not None:
            front = front_2d(method, quality, cost)
            test_q = [per.scores(str(k), str(s))[quality] for k, s in zip(front["kind"], front["spans"], strict=True)]
            row["test hypervolume"] = hypervolume(test_q, front[cost], *refs["test"], higher=higher)
        rows.append(row)
    table = pd.DataFrame(rows)
    top = table["hypervolume"].max()
    table.insert(2, "share of best", table["hypervolume"] / top if top > 0 else math.nan)
    if per is not None:
        top = table["test hypervolume"].max()
        table["test share of best"] = table["test hypervolume"] / top if top > 0 else math.nan
    return table, refs


def within_length_correlations(singles: pd.DataFrame, scores: pd.DataFrame, orientation: dict[str, bool],
                               qualities=("fidelity", "accuracy")) -> pd.DataFrame:
    """Metrics as priors among spans of one length (``end − start`` blocks: equal cost where the blocks are
    alike), the decision a prior must make once a budget fixes how much to replace: per metric (oriented so that
    higher is more redundant) and quality, the Spearman ρ within each length of at least 3 spans (NaN where the
    metric or the quality is constant there), and their mean weighted by the number of spans. Pooled over all
    lengths, ρ also measures "longer spans hurt more"."""
    from scipy.stats import spearmanr  # lazy: scipy loads with the first rank correlation

    merged = singles.merge(scores, on=["start", "end"], how="inner", suffixes=("", "_score"))
    merged["length"] = merged["end"] - merged["start"]
    lengths = sorted(int(k) for k, n in merged["length"].value_counts().items() if n >= 3)
    rows = []
    for m in orientation:
        if m not in scores.columns:
            continue
        for q in qualities:
            if q not in merged or not merged[q].notna().any():
                continue
            row, weighted, spans = {"metric": m, "quality": q}, 0.0, 0
            for length in lengths:
                group = merged[merged["length"] == length].dropna(subset=[m, q])
                x = group[m] if orientation[m] else -group[m]
                y = group[q] if maximised(q) else -group[q]  # perplexity and kl negated: higher is better
                rho = math.nan
                if len(group) >= 3 and x.nunique() > 1 and group[q].nunique() > 1:
                    rho = float(spearmanr(x, y).statistic)
                    weighted, spans = weighted + rho * len(group), spans + len(group)
                row[f"length {length}"] = rho
                row[f"spans {length}"] = len(group)
            row["within lengths"] = weighted / spans if spans else math.nan
            rows.append(row)
    columns = ["metric", "quality", "within lengths"] + [c for k in lengths for c in (f"length {k}", f"spans {k}")]
    return pd.DataFrame(rows, columns=columns)
