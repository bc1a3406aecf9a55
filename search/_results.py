"""What a finished study's results are, as data: the tables, the front plot and ``run.json`` of a search
(:func:`finish`); for ``rba run`` the completed front with its reference row, the export rule (:func:`choose_export`),
and the baselines' and single spans' rows. ``report.json``'s format and the folder's reader are in
:mod:`search._report_files`; the test split's results and the comparisons in :mod:`search._comparisons`."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd

from rba.config import config_hash
from rba.errors import RBAError
from rba.files import atomic_path
from rba.methods import get_method
from rba.names import COST_COLUMNS, maximised
from rba.session import Session
from rba.spans import format_spans
from search._storage import recorded_storage
from search.analysis import front_members, quality_limit
from search.baselines import br_greedy
from search.methods import within_space
from search.objective import QUALITY, RESULT_COLUMNS, Objective
from search.pareto import front_frame, plot_front, trials_frame, write_tables
from search.recording import SearchResult, StudyContext, log

__all__ = ["finish", "rule_columns", "Choice", "choose_export", "complete_front", "reference_row",
           "split_pareto", "REPORT_BASELINES"]


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
    """The configurations each baseline method (``[report] baselines``: :data:`REPORT_BASELINES`, or those listed)
    plans within ``[report] baseline_min_flops`` … ``baseline_max_flops`` (its registry planner, on the study's
    session, budgets and objectives; the study's own method left out), with the fit kind the registry gives it
    (``get_method(name).fit_kind``) and its results: the trials' where the search evaluated the configuration
    with that fit kind, else evaluated through an objective of that kind (one per kind, so a configuration two
    methods share is evaluated once; accuracy only where the trials compute it). Returns the rows and one note
    per method skipped because its check refuses this study ("replaceme: why")."""
    session = ctx.session
    objectives = {ctx.objective.kind: ctx.objective}
    own = get_method(ctx.method).name
    chosen = ctx.cfg.report.baselines
    window = (ctx.cfg.report.baseline_min_flops, ctx.cfg.report.baseline_max_flops)
    rows, skipped = [], []
    # (called only when the report has baselines: ``chosen`` is True or a list)
    for name in REPORT_BASELINES if chosen is True else cast(list[str], chosen):
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
            if window != (0.0, 1.0) and not window[0] <= objective.cost(spans)["flops_frac"] <= window[1]:
                continue  # (the default window keeps every configuration, even one that costs more than none)
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
