"""``report.md`` and the plots of a finished ``rba run`` folder, rendered from its files (:func:`render_report`,
also ``rba report DIR``): no model is loaded and nothing is evaluated."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd

from rba.files import atomic_path, atomic_write_text
from rba.methods import get_method
from rba.metrics import plot_scores
from rba.names import LM_COLUMNS, maximised, objective_of
from rba.timing import Comparison, comparison_text
from search._results import (
    COST_COLUMNS,
    PER_SAMPLE,
    PerSample,
    budget_picks,
    choose_export,
    fixed_reference,
    hypervolumes,
    method_rows,
    paired_tests,
    read_report_inputs,
    reference_change,
    split_pareto,
    within_length_correlations,
)
from search.analysis import (
    compare_methods,
    feasible_rows,
    hypervolume,
    multi_span,
    prior_correlations,
    redundant_spans,
    search_cost,
    span_count,
)
from search.objective import QUALITY, RESULT_COLUMNS
from search.pareto import plot_front

__all__ = ["render_report", "PLOTS"]

#: the plots ``rba report`` (and ``rba run`` through it) draws
PLOTS = ("scores.png", "pareto.png", "priors.png", "cost.png")
#: the report's computed tables, written beside it for scripts (the README's findings read them): the methods'
#: hypervolumes and picks at each budget, and the paired tests on the test split
TABLES = ("methods.csv", "paired_tests.csv")


def render_report(out: Path) -> Path:
    """Write ``report.md`` and every plot of a finished ``rba run`` folder from its files alone (report.json and
    the CSV tables): no model is loaded, nothing is evaluated, and no other file is written than the plots and
    the report's computed tables (:data:`TABLES`, where the study has them; the inputs are read only). ``rba run``
    ends with it; ``rba report DIR`` runs it alone. Returns the report's path."""
    out = Path(out)
    inputs = _read(out)
    text = _report_text(out, inputs)
    _draw_plots(out, inputs)
    for name in TABLES:
        table = inputs["tables"].get(name)
        if table is not None:
            atomic_write_text(out / name, table.to_csv(index=False))
        elif (out / name).exists():  # an older rendering's table this study no longer has
            (out / name).unlink()
    report = out / "report.md"
    atomic_write_text(report, text)  # after the plots it shows
    return report


def _read(out: Path) -> dict:
    """The folder's files (:func:`read_report_inputs`) with what the report and the plots share: the reference
    row, the front members, the tables of the optional sections (None when the study left them out)."""
    data = read_report_inputs(out)
    info = data["info"]
    info["metrics"] = dict(info["metrics"])  # metric → higher is more redundant, in the registry's order
    pareto = data["pareto"]
    _, reference, front = split_pareto(pareto, info["objective_columns"])
    return {"info": info, "trials": data["trials"], "scores": data["scores"], "pareto": pareto, "front": front,
            "reference": reference, "baselines": data.get("baselines"), "singles": data.get("singles"),
            "per_sample": data.get("per_sample"), "tables": {}}


def _draw_plots(out: Path, inputs: dict) -> None:
    """scores.png, pareto.png, cost.png, and priors.png when every single span was evaluated."""

    info, baselines, singles = inputs["info"], inputs["baselines"], inputs["singles"]
    plot_scores(inputs["scores"], out / "scores.png", title=info["titles"]["scores"])
    curves = {} if baselines is None else {m: rows for m, rows in baselines.groupby("method", sort=False)}
    plot_front(out / "pareto.png", inputs["trials"], inputs["front"], objective_columns=info["objective_columns"],
               budgets=info["budgets"], reference=inputs["reference"], baselines=curves, title=info["titles"]["pareto"])
    if singles is not None:
        _plot_priors(out / "priors.png", singles, inputs["scores"], info["metrics"])
    _plot_cost(out / "cost.png", _search_cost(info, inputs["trials"]))


def _report_text(out: Path, inputs: dict) -> str:
    """report.md's text; ``out`` is read for the study's resolved config only (:func:`_data_sources`)."""
    info, trials, scores, pareto = inputs["info"], inputs["trials"], inputs["scores"], inputs["pareto"]
    front, reference, baselines, singles = inputs["front"], inputs["reference"], inputs["baselines"], inputs["singles"]
    per = inputs["per_sample"]
    quality, cost = info["quality"], info["cost"]
    choice = info["choice"]
    plots = ["scores.png", "pareto.png"]
    files = ["scores.csv", "scores.png", "trials.csv", "trials.parquet", "pareto.csv", "pareto.png"]
    files += (["baselines.csv"] if baselines is not None else []) + (["singles.csv"] if singles is not None else [])
    files += ["config.resolved.toml", "run.json", "summary.json", "report.json"] + ([PER_SAMPLE] if per else [])
    # the trials line is counted from the tables (an older rba stored it, counting the "none" trial in the front)
    header = [h for h in info["header"] if not h.startswith("trials: ")]
    header.insert(len(header) - 1, f"trials: {int((trials['state'] == 'COMPLETE').sum())} complete of {len(trials)}; "
                                   f"front: {len(front)} configurations besides the unmodified model")
    lines = [f"# rba study: {info['name']}", "", *[f"- {h}" for h in header + _data_sources(out)],
             f"- {_test_line(per)}", ""]
    lines_files = len(lines)
    lines += ["## Front", "",
              f"Sorted by {cost}; the first row is the unmodified model (a reference, not a trial). Accuracy is "
              "evaluated here for front members whose trials did not compute it (when the data has labels). "
              + ("The search selected the front on the eval split (its columns); the test columns score the same "
                 "configurations on the held-out test split, ± one standard error." if per else ""), "",
              _markdown(_with_test(pareto, info["kind"], per)), "", "![front](pareto.png)", "",
              "## Export rule", "",
              f"The export is the cheapest feasible front member by {cost} ({_why_column(cost, info, COST_COLUMNS)}) "
              f"whose {quality} ({_why_column(quality, info, QUALITY)}) is {_rule_words(info)}; if none is, the "
              f"best-{quality} feasible member, with a warning.", "",
              f"Picked: {choice['reason']}.{_picked_accuracy(info, reference, front, choice)}"
              + _picked_test(info, per, choice), ""]
    lines += _redundancy_section(scores, info)
    if baselines is not None:
        lines += _baselines_section(info, front, reference, baselines, choice, per)
        lines += _methods_section(info, trials, reference, baselines, per, inputs["tables"])
    if per is not None:
        lines += _paired_section(info, trials, baselines, per, inputs["tables"])
    lines += _multi_span_section(info, front, trials, singles, reference)
    if singles is not None:
        lines += _priors_section(info, singles, scores)
        plots.append("priors.png")
    else:
        lines += ["## Metrics as priors (every single span)", "",
                  "Not computed: set `[report] single_spans = true` to evaluate every single span and correlate each "
                  "metric with the post-replacement fidelity and accuracy.", ""]
    lines += _cost_section(info, trials)
    plots.append("cost.png")
    lines += _export_section(info, reference, front, choice, per)
    timing = info["timing"]
    lines += ["## Wall time", "",
              f"Wall time: {timing['total_s']:.1f} s (report rendering aside), by phase:", "",
              _markdown(pd.DataFrame([{"phase": k, "seconds": v} for k, v in timing["phases"]])), ""]
    files += [p for p in plots if p not in files] + (["export/"] if info["export"] is not None else [])
    lines[lines_files:lines_files] = [f"Files: {', '.join(files)}", ""]
    return "\n".join(lines)


def _test_line(per: PerSample | None) -> str:
    if per is None:
        return ("test split: none (`[data] test = 0`): every quality here is on the eval split that selected it, so "
                "the best values are biased upwards (a winner's curse); set `[data] test` to hold samples out")
    lm = ("; perplexity, kl and top1 over every scored token, their errors over texts (a ratio estimator; the "
          "delta method for perplexity)" if per.tokens is not None else "")
    return (f"test split: {per.samples} samples held out, which neither the search nor the export rule saw; every "
            "test number is re-evaluated on it with ± one standard error (binomial for accuracy, of the mean for "
            f"fidelity{lm}), per-sample results in {PER_SAMPLE}")


def _pm(value: float, se: float) -> str:
    """value ± SE as the report prints it ("" for a missing value)."""
    if value != value:
        return ""
    return f"{value:.4g} ± {se:.2g}" if se == se else f"{value:.4g}"


def _with_test(rows: pd.DataFrame, kind: str | pd.Series, per: PerSample | None) -> pd.DataFrame:
    """``rows`` (configurations with ``spans``; ``kind``: their fit kind, one for all or a column) with the test
    split's fidelity and accuracy, each ± its standard error (accuracy only when the data has labels)."""
    if per is None:
        return rows
    kinds = [kind] * len(rows) if isinstance(kind, str) else list(kind)
    scores = [per.scores(k, str(s)) for k, s in zip(kinds, rows["spans"], strict=True)]
    out = rows.copy()
    out["test fidelity"] = [_pm(x["fidelity"], x["fidelity_se"]) for x in scores]
    if per.prediction is not None:
        out["test accuracy"] = [_pm(x["accuracy"], x["accuracy_se"]) for x in scores]
    for column in _test_lm_columns(per):
        out[f"test {column}"] = [_pm(x[column], x[f"{column}_se"]) for x in scores]
    return out


def _test_lm_columns(per: PerSample) -> tuple[str, ...]:
    """The next-token qualities the test split holds (decoder LMs), else none."""
    return LM_COLUMNS if per.tokens is not None else ()


def _test_text(per: PerSample | None, kind: str, spans: str | None) -> str:
    """A configuration's test-split numbers in a sentence ("" without a test split)."""
    if per is None or spans is None:
        return ""
    x = per.scores(kind, spans)
    parts = ([f"accuracy {_pm(x['accuracy'], x['accuracy_se'])}"] if per.prediction is not None else []) + \
        [f"fidelity {_pm(x['fidelity'], x['fidelity_se'])}"] + \
        [f"{c} {_pm(x[c], x[f'{c}_se'])}" for c in _test_lm_columns(per)]
    return f"test split: {', '.join(parts)}"


def _picked_test(info: dict, per: PerSample | None, choice: dict) -> str:
    if per is None or choice["spans"] is None:
        return ""
    return (f" On the {_test_text(per, info['kind'], choice['spans'])} (unmodified model: "
            f"{_test_text(per, info['kind'], 'none').removeprefix('test split: ')}).")


def _load_text(record: dict) -> str:
    return f", load {record['load_start']:.1f} → {record['load_end']:.1f}" if "load_start" in record else ""


def _speedup_text(record: dict, keys: dict[str, str], ceiling: dict) -> str:
    """A speed-up record (PyTorch's, or ONNX Runtime's: ``keys`` maps the :class:`rba.timing.Comparison` fields to
    its keys) as the report states it: the median paired ratio with its interval and how often the export was
    faster (:func:`rba.timing.comparison_text`), or, above the ceiling that the same run's latency table (or the
    FLOPs) allows, flagged as noise instead of quoted."""

    c = Comparison(**{field: record[key] for field, key in keys.items()}, order=record["order"],
                   confidence=record["confidence"], repeats=record["repeats"])
    text = comparison_text(c, batch_size=record["batch_size"], threads=record["threads"])
    bound = ceiling["speedup"]
    what = ("the latency table of the same run" if ceiling["source"] == "latency table"
            else "the FLOPs (no latency table was measured)")
    if c.speedup > bound:
        return (f"**implausible, not a result**: the measured {text} is above the ceiling of {bound:.3g}× that "
                f"{what} allows with the replacing maps free; the difference is timing noise (load), so no speed-up "
                "is claimed")
    return f"{text}; ceiling {bound:.3g}× ({what}, the replacing maps free)"


#: the PyTorch and ONNX Runtime records' keys for the fields of a Comparison
_TORCH_KEYS = {"a_ms": "original_ms", "b_ms": "export_ms", "speedup": "speedup", "speedup_low": "speedup_low",
               "speedup_high": "speedup_high", "b_faster": "export_faster", "a_times_ms": "original_times_ms",
               "b_times_ms": "export_times_ms"}
_ONNX_KEYS = {"a_ms": "onnx_unmodified_ms", "b_ms": "onnx_export_ms", "speedup": "onnx_speedup",
              "speedup_low": "onnx_speedup_low", "speedup_high": "onnx_speedup_high",
              "b_faster": "onnx_export_faster", "a_times_ms": "unmodified_times_ms", "b_times_ms": "export_times_ms"}


def _onnx_lines(s: dict, flops_frac: float, ceiling: dict) -> list[str]:
    """The report's ONNX Runtime line from an ``onnx`` record of :func:`search._measure.measure_export`."""
    return [f"ONNX Runtime (export/model.onnx against export/unmodified.onnx, both checked against PyTorch: max "
            f"relative difference {s['max_rel_diff']:.2g}{_load_text(s)}): unmodified {s['onnx_unmodified_ms']:.4g} "
            f"ms/sample, export {s['onnx_export_ms']:.4g} ms/sample (medians of the same repeats); "
            + _speedup_text(s, _ONNX_KEYS, ceiling) + f"; at flops_frac {flops_frac:.3g}.", ""]


def _why_column(column: str, info: dict, kinds) -> str:
    """Why the export rule reads ``column``: the first objective of its kind, or the default when none is."""
    first = next((o for o in info["objectives"] if o in kinds), None)
    kind = "quality" if kinds is QUALITY else "cost"
    return f"the first {kind} objective" if first is not None else f"no {kind} objective: the default"


def _data_sources(out: Path) -> list[str]:
    """Where the statistics and fits came from, and where the probe and eval splits came from, as the study's
    resolved config says (a transfer study draws its calibration split from ``[data] calibration_path``)."""
    try:
        data = tomllib.loads((out / "config.resolved.toml").read_text())["data"]
    except (OSError, ValueError, KeyError):
        return []
    main = f"{data.get('kind')} {data.get('path') or ''}".strip()
    if data.get("test"):
        evaluation, others = "eval (the search's and the rule's selection; every score not marked test) and test", \
            "probe, eval and test"
    else:
        evaluation, others = "eval (every score here)", "probe and eval"
    if data.get("calibration_path"):
        cal = f"{data.get('calibration_kind') or data.get('kind')} {data['calibration_path']}"
        return [f"calibration source (statistics and span fits): {cal}, another data set than the {others} "
                f"splits (a transfer)", f"probe (classifier) and {evaluation} source: {main}"]
    return [f"calibration (statistics and span fits), probe (classifier) and {evaluation}: disjoint "
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
    table = redundant_spans(scores, info["metrics"])
    return ["## Which spans are redundant", "",
            "Every registered metric over every valid span (scores.csv); a blank cell is a span that changes the "
            "representation's shape. The table names each metric's most redundant spans and how its ranking of all "
            "spans agrees with the first metric's (Spearman).", "",
            "![scores](scores.png)", "", _markdown(table), ""]


def _max_rise(info: dict) -> float:
    """The rule's relative allowance for a minimised quality (its default in a report of an older rba)."""
    return 0.05 if info.get("max_rise") is None else float(info["max_rise"])


def _allowance(info: dict) -> str:
    return f"{info['max_drop']:g}" if maximised(info["quality"]) else f"a relative rise of {_max_rise(info):g}"


def _rule_words(info: dict) -> str:
    """How far the export rule lets the rule's quality move from the unmodified model's, in words."""
    if maximised(info["quality"]):
        return (f"at most max_drop = {info['max_drop']:g} (absolute, `--max-drop`, `[run] max_drop`) below the "
                "unmodified model's")
    rise, spec = _max_rise(info), objective_of(info["quality"])
    limit = (f"the unmodified model's + log(1 + {rise:g}) nats, the rise of cross-entropy a relative rise of "
             f"{rise:g} in perplexity is" if spec is not None and spec.log_scale else
             f"(1 + {rise:g}) × the unmodified model's")
    return f"at most {limit} (max_rise = {rise:g}, relative, `--max-rise`, `[run] max_rise`)"


def _reference_words(quality: str, split: str = "") -> str:
    """How the fixed reference point's quality derives from the unmodified model's (:func:`fixed_reference`)."""
    change = reference_change(quality)
    if maximised(quality):
        return f"{1 - change:g} × the unmodified model's {split}{quality}"
    spec = objective_of(quality)
    if spec is not None and spec.log_scale:  # as search.analysis.quality_limit reads it
        return f"the unmodified model's {split}{quality} + log {1 + change:g}"
    return f"{1 + change:g} × the unmodified model's {split}{quality}"


def _baselines_section(info: dict, front: pd.DataFrame, reference: dict, baselines: pd.DataFrame,
                       choice: dict, per: PerSample | None) -> list[str]:

    quality, cost = info["quality"], info["cost"]
    lines = ["## Baselines at the same budgets", "",
             "The same rule applied to the configurations each baseline method plans (`rba ls methods`; each "
             "replaces its spans with its own fit kind: identity = the blocks dropped). Configurations the trials "
             "evaluated with the same fit kind carry the trials' results (`source` = trial; accuracy only where the "
             "search computed it):", ""]
    r = _chosen(front, reference, choice["spans"])
    if r is not None:
        lines.append(f"- search ({info['method']}): `{choice['spans']}`, {quality} {r[quality]:.4g}, {cost} "
                     f"{r[cost]:.4g}" + _semicolon(_test_text(per, info["kind"], choice["spans"])))
    else:
        lines.append(f"- search ({info['method']}): nothing feasible")
    for method, rows in baselines.groupby("method", sort=False):
        what = f"{method} ({rows['kind'].iloc[0]}; {get_method(method).summary})"
        pick = choose_export(rows.assign(spans=rows["spans"].astype(str)), reference, info["objectives"],
                             info["max_drop"], _max_rise(info))
        if pick.row is None:
            lines.append(f"- {what}: no configuration within the budgets")
        else:
            lines.append(f"- {what}: `{pick.row['spans']}`, {quality} {pick.row[quality]:.4g}, {cost} "
                         f"{pick.row[cost]:.4g}" + ("" if pick.within else f" (none within {_allowance(info)})")
                         + _semicolon(_test_text(per, pick.row["kind"], str(pick.row["spans"]))))
    lines += [f"- {note.split(': ', 1)[0]}: skipped ({note.split(': ', 1)[-1]})" for note in info.get("baselines_skipped", [])]
    return lines + ["", _markdown(_with_test(baselines, baselines["kind"], per)), ""]


def _semicolon(text: str) -> str:
    return f"; {text}" if text else ""


def _methods_section(info: dict, trials: pd.DataFrame, reference: dict, baselines: pd.DataFrame,
                     per: PerSample | None, tables: dict[str, pd.DataFrame]) -> list[str]:

    quality, cost = info["quality"], info["cost"]
    methods = method_rows(info, trials, baselines)
    worst, worst_ref = compare_methods(methods, quality=quality, cost=cost, reference=reference,
                                       flops_points=info["flops_points"])
    fixed, refs = hypervolumes(info, methods, reference, per)
    table = fixed.merge(worst.rename(columns={"hypervolume": "hypervolume (worst point)",
                                              "share of best": "share (worst point)"}), on="method")
    table.insert(1, "configurations", table.pop("configurations"))
    if per is not None:  # each pick, selected on eval, scored on the test split
        picks = budget_picks(info, methods)
        for p in info["flops_points"]:
            at = list(table.columns).index(f"spans at {p:g}")
            values = []
            for label in table["method"]:
                pick = picks[label][p]
                x = per.scores(*pick) if pick is not None else {quality: math.nan}
                values.append(_pm(x[quality], x.get(f"{quality}_se", math.nan)))
            table.insert(at + 1, f"test {quality} at {p:g}", values)
    tables["methods.csv"] = table
    ref = refs["eval"]
    test_ref = (f" The test hypervolume scores each method's eval front (its feasible configurations no other of "
                f"its own beats on eval) on the test split, at {quality} = {refs['test'][0]:.4g} "
                f"({_reference_words(quality, 'test ')})." if per is not None else "")
    arrow, worst = ("↑", "lowest") if maximised(quality) else ("↓", "highest")
    return ["## Search against the baselines", "",
            f"Each method's feasible configurations (the search: every completed trial). Hypervolume of ({quality} "
            f"{arrow}, {cost} ↓) at a reference point fixed before the runs: {quality} = {ref[0]:.4g} "
            f"({_reference_words(quality)}) and {cost} = {ref[1]:.4g} (the unmodified model), so configurations that "
            f"{'lose more than a tenth of the' if maximised(quality) else 'worsen by more than a tenth the'} {quality} "
            f"add no area; beside it, the hypervolume at the worst point of "
            f"all methods ({quality} = {worst_ref[0]:.4g}, the {worst} of any method). Best {quality} within each FLOPs "
            "fraction, selected on eval"
            + (f", and that configuration's {quality} on the test split ± one standard error" if per else "")
            + f".{test_ref} The front plot above draws the baselines as dashed lines.", "", _markdown(table), ""]


def _paired_section(info: dict, trials: pd.DataFrame, baselines: pd.DataFrame | None, per: PerSample,
                    tables: dict[str, pd.DataFrame]) -> list[str]:
    table = tables["paired_tests.csv"] = paired_tests(info, trials, baselines, per)
    lines = ["## Paired tests on the test split", "",
             f"Two configurations scored on the same {per.samples} test samples, compared sample by sample: the export "
             "against the unmodified model, and at each budget of `[report] flops_points` the configuration the "
             "search selects on eval (its best feasible "
             f"{info['quality']} within that FLOPs fraction) against each baseline's. B − A is the difference of the "
             "means (B: the export, the search) with its 95% paired bootstrap interval (low, high); p tests \"no "
             "difference\": McNemar's exact test for accuracy (mid-p beside it), the paired bootstrap for fidelity"
             + (" and for perplexity, kl and top1 (over every scored token; each resample draws texts with their "
                "tokens)" if per.tokens is not None else "") + "; "
             f"p (Holm) adjusts all {len(table)} p-values of this table as one family (Holm's step-down).", ""]
    if not len(table):
        return lines + ["No comparison: nothing was exported and no method has a configuration within a budget.", ""]
    shown = table.assign(budget=[("" if b != b else f"≤ {b:g}") for b in table["budget"]])
    return lines + [_markdown(shown), ""]


def _multi_span_section(info: dict, front: pd.DataFrame, trials: pd.DataFrame, singles: pd.DataFrame | None,
                        reference: dict) -> list[str]:

    quality, cost = info["quality"], info["cost"]
    evaluated = trials[trials["state"] == "COMPLETE"]
    if singles is not None:  # every single span evaluated: the single-span front is complete
        extra = singles[~singles["spans"].isin(evaluated["spans"])].assign(state="COMPLETE")
        evaluated = pd.concat([evaluated, extra[[c for c in extra.columns if c in evaluated.columns]]],
                              ignore_index=True)
    m = multi_span(front, evaluated, quality=quality, cost=cost, reference=reference)
    ok = feasible_rows(evaluated)
    ok = ok[ok[quality].notna()]
    single = ok[ok["spans"].map(span_count) <= 1]
    ref = fixed_reference(reference[quality], reference[cost], quality)
    hv_all, hv_single = (hypervolume(rows[quality], rows[cost], *ref, higher=maximised(quality))
                         for rows in (ok, single))
    share = f"{hv_single / hv_all:.3f}" if hv_all > 0 else "none (no configuration within the reference point)"
    answer = "yes" if m["multi_span_members"] else "no"
    counts = ", ".join(f"{v} with {k} span{'s' if k != 1 else ''}" for k, v in m["by_count"].items()) or "none"
    which = ("every single span evaluated ([report] single_spans)" if singles is not None else
             f"the {m['single_evaluated']} single spans the search evaluated")
    return ["## Do multi-span sets beat single spans?", "",
            f"**{answer.capitalize()}**: {m['multi_span_members']} of the front's {m['front_members']} members hold "
            f"two spans or more ({counts})" + (f": {', '.join('`' + s + '`' for s in m['multi_span_spans'])}."
                                           if m["multi_span_spans"] else "."),
            f"The front of configurations with at most one span ({which}) covers {share} of the hypervolume of all "
            f"evaluated configurations on eval ({hv_single:.4g} of {hv_all:.4g}) at the fixed reference point "
            f"{quality} = {ref[0]:.4g}, {cost} = {ref[1]:.4g}; at the worst point ({quality} = "
            f"{m['reference_point'][0]:.4g}, the {'lowest' if maximised(quality) else 'highest'} evaluated), "
            f"{m['single_share']:.3f} "
            f"({m['hypervolume_single']:.4g} of {m['hypervolume_all']:.4g}).", ""]


def _priors_section(info: dict, singles: pd.DataFrame, scores: pd.DataFrame) -> list[str]:
    qualities = _prior_qualities(singles)
    table = prior_correlations(singles, scores, info["metrics"], qualities)
    within = within_length_correlations(singles, scores, info["metrics"], qualities)
    pooled = table.set_index(["metric", "quality"])["spearman"]
    within.insert(2, "pooled", [pooled.get((m, q), math.nan) for m, q in zip(within["metric"], within["quality"],
                                                                              strict=True)])
    evaluated = int((singles["source"] == "evaluated").sum())
    return ["## Metrics as priors (every single span)", "",
            f"Spearman correlation over all {len(singles)} single spans between each metric, oriented so that higher "
            "means more redundant (ls_residual negated), and the span's post-replacement fidelity and accuracy"
            + (" (and perplexity, kl and top1, the minimised perplexity and kl negated so that higher is better)"
               if len(qualities) > 2 else "") + f": a good prior has ρ near 1. {len(singles) - evaluated} spans reuse trial results, {evaluated} were evaluated "
            "for the report (singles.csv).", "", _markdown(table), "",
            "Pooled over span lengths, ρ mostly measures that longer spans hurt more. The decision a prior must "
            "make is among spans of equal cost, once a budget fixes how much to replace: below, ρ among the spans of "
            "each length (end − start blocks; equal cost where the blocks are alike) with at least 3 spans, and "
            "their mean weighted by the number of spans (`within lengths`), next to the pooled ρ.", "",
            _markdown(within), "", "![priors](priors.png)", ""]


def _prior_qualities(singles: pd.DataFrame) -> tuple[str, ...]:
    """The qualities the priors section correlates with: fidelity and accuracy, and the next-token ones where the
    single spans have them (decoder LMs)."""
    return ("fidelity", "accuracy") + tuple(c for c in LM_COLUMNS if c in singles and singles[c].notna().any())


def _plot_priors(path: Path, singles: pd.DataFrame, scores: pd.DataFrame, metrics: dict[str, bool]) -> None:
    from matplotlib.figure import Figure  # lazy: matplotlib loads with the first plot

    merged = singles.merge(scores, on=["start", "end"], how="inner", suffixes=("", "_score"))
    names = [m for m in metrics if m in scores.columns]
    qualities = [q for q in _prior_qualities(singles) if merged[q].notna().any()]
    fig = Figure(figsize=(3.2 * len(names), 3.0 * len(qualities)), layout="constrained")
    axes = fig.subplots(len(qualities), len(names), squeeze=False)
    for r, q in enumerate(qualities):
        for c, m in enumerate(names):
            ax = axes[r][c]
            ax.scatter(merged[m], merged[q], s=14)
            ax.set_xlabel(m + ("" if metrics[m] else " (lower: more redundant)"), fontsize=8)
            ax.set_ylabel(q, fontsize=8)
            ax.grid(alpha=0.3)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")


def _search_cost(info: dict, trials: pd.DataFrame) -> dict:
    """The search's cost (:func:`search.analysis.search_cost`). Its time is this run's search wall time, or, when
    the study resumed (trials completed in an earlier run), the summed durations of all its completed trials: this
    run's wall time covers only the trials it ran (none, when the study was already complete)."""

    wall = dict(info["timing"]["phases"]).get("search", math.nan)
    if info["timing"].get("completed_before", 0):
        wall = float(trials.loc[trials["state"] == "COMPLETE", "duration_s"].sum())
    return search_cost(trials, search_wall_s=wall, configurations=info["configurations"],
                       exhaustive_run=info["method"] == "exhaustive")


def _plot_cost(path: Path, c: dict) -> None:
    from matplotlib.figure import Figure  # lazy: matplotlib loads with the first plot

    fig = Figure(figsize=(6.0, 2.6), layout="constrained")
    ax = fig.subplots()
    bars = {"one evaluation": c["one_evaluation_s"], "search": c["search_wall_s"],
            "exhaustive" + (" (estimate)" if c["exhaustive_estimated"] else ""): c["exhaustive_s"]}
    ax.barh(list(bars), list(bars.values()), color=["0.6", "tab:blue", "tab:red"])
    ax.set_xscale("log")
    ax.set_xlabel("seconds (log scale)")
    ax.grid(alpha=0.3, axis="x")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")


def _cost_section(info: dict, trials: pd.DataFrame) -> list[str]:
    c = _search_cost(info, trials)
    how = ("an estimate: the number of configurations × one evaluation" if c["exhaustive_estimated"]
           else "measured: this study was the exhaustive sweep")
    before = info["timing"].get("completed_before", 0)
    if before:
        took = (f"The study resumed ({before} of its {c['trials']} completed trials ran before this run, whose search "
                f"phase took {dict(info['timing']['phases']).get('search', math.nan):.1f} s), so the search's time "
                f"here is the summed duration of all its completed trials, {c['search_wall_s']:.1f} s (the eval "
                "split's cache and the latency table not included)")
    else:
        took = (f"The search took {c['search_wall_s']:.1f} s wall time ({c['trials']} trials; the eval split's cache "
                "and the latency table included, the statistics not)")
    return ["## Cost of the search", "",
            f"{took}: {c['search_in_evaluations']:.1f}× one evaluation ({c['one_evaluation_s']:.3g} s, the median "
            f"completed trial). An exhaustive sweep of all {c['configurations']:,} configurations takes "
            f"{c['exhaustive_s']:.4g} s ({how}): {c['exhaustive_over_search']:.3g}× the search.", "",
            "![cost](cost.png)", ""]


def _export_section(info: dict, reference: dict, front: pd.DataFrame, choice: dict,
                    per: PerSample | None) -> list[str]:
    export = info["export"]
    if export is None:
        return ["## Exported configuration", "", "No feasible configuration: nothing exported.", ""]
    row = cast(dict, _chosen(front, reference, choice["spans"]))  # (an export's row is on the front it came from)
    speed, ceiling = export["speed"], export["ceiling"]
    onnx = export.get("onnx") or {}
    onnx_lines = _onnx_lines(onnx, export["measured"]["flops_frac"], ceiling) if onnx else []
    # latency: the search row's is the cost model's; the unmodified model's and the export's are the medians of
    # the interleaved run quoted under the table, so that the table and the speed-up line agree
    table = pd.DataFrame([
        {"source": "unmodified model"} | {c: reference.get(c) for c in RESULT_COLUMNS}
        | {"latency_ms": speed["original_ms"]},
        {"source": "search (modelled latency)"} | {c: row[c] for c in RESULT_COLUMNS},
        {"source": "export (measured)"} | {c: export["measured"].get(c) for c in RESULT_COLUMNS}
        | {"latency_ms": speed["export_ms"]}])
    return ["## Exported configuration", "",
            f"`{choice['spans']}`, written to `export/` (model.safetensors + recipe.json, with its classifier head "
            "when the data has labels: `rba.head_logits`). Reloaded and evaluated end to end; the latency of the "
            "unmodified model and of the export is the median per sample of the interleaved run below, the search "
            "row's the cost model's:", "",
            _markdown(table), "",
            *([f"The export's configuration on the {_test_text(per, info['kind'], choice['spans'])}; the unmodified "
               f"model's: {_test_text(per, info['kind'], 'none').removeprefix('test split: ')} (paired tests above).",
               ""] if per is not None else []),
            f"Latency, measured back to back (unmodified model and export interleaved, unmodified-export-export-"
            f"unmodified in each repeat{_load_text(speed)}): unmodified {speed['original_ms']:.4g} ms/sample, export "
            f"{speed['export_ms']:.4g} ms/sample (medians of the same repeats); "
            f"{_speedup_text(speed, _TORCH_KEYS, ceiling)}. Written to export/latency.json.", "",
            *onnx_lines]


def _markdown(df: pd.DataFrame) -> str:
    if not len(df):
        return "(empty)"
    # the decoder LMs' result columns are empty for every other model: left out where no row has them
    cols = [c for c in df.columns if not (c in LM_COLUMNS and df[c].isna().all())]

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
    rows += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in df[cols].itertuples(index=False)]
    return "\n".join(rows)
