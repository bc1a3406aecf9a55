"""``report.md`` and the plots of a finished ``rba run`` folder, rendered from its files (:func:`render_report`,
also ``rba report DIR``): no model is loaded and nothing is evaluated. The sections are here; the pieces they share
are in :mod:`search._markdown`, the plots in :mod:`search._plots`."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import cast

import pandas as pd

from rba.files import atomic_write_text
from rba.fit import get_fit
from rba.methods import get_method
from rba.names import COST_COLUMNS, maximised
from search._comparisons import (
    PER_SAMPLE,
    PerSample,
    budget_picks,
    fixed_reference,
    hypervolumes,
    method_rows,
    paired_tests,
    within_length_correlations,
)
from search._markdown import (
    _TORCH_KEYS,
    _allowance,
    _load_text,
    _markdown,
    _max_rise,
    _onnx_lines,
    _picked_test,
    _pm,
    _reference_words,
    _rule_words,
    _semicolon,
    _speedup_text,
    _test_line,
    _test_text,
    _with_test,
)
from search._plots import _draw_plots, _prior_qualities, _search_cost
from search._report_files import read_report_inputs
from search._results import choose_export, split_pareto
from search.analysis import (
    compare_methods,
    feasible_rows,
    hypervolume,
    multi_span,
    prior_correlations,
    redundant_spans,
    span_count,
)
from search.objective import QUALITY, RESULT_COLUMNS

__all__ = ["render_report"]

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
            f"({_reference_words(quality)}) and {cost} = {ref[1]:.4g} (the unmodified model), so configurations of a "
            f"{quality} worse than that add no area; beside it, the hypervolume at the worst point of "
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


def _export_files(kind: str) -> str:
    """What an export of fit ``kind`` writes, in words (:func:`rba.export.export_model`)."""
    if get_fit(kind).folds:
        return ("the model's own format with the replaced blocks removed, each span's map folded into the block "
                "before it: a transformers folder `AutoModelForCausalLM.from_pretrained` loads, or a timm folder "
                "`timm.create_model(\"local-dir:export\", pretrained=True)` loads; plus rba-fold.json")
    return "model.safetensors + recipe.json, with its classifier head when the data has labels: `rba.head_logits`"


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
            f"`{choice['spans']}`, written to `export/` ({_export_files(info['kind'])}). Reloaded and evaluated end "
            "to end; the latency of the unmodified model and of the export is the median per sample of the "
            "interleaved run below, the search row's the cost model's:", "",
            _markdown(table), "",
            *([f"The export's configuration on the {_test_text(per, info['kind'], choice['spans'])}; the unmodified "
               f"model's: {_test_text(per, info['kind'], 'none').removeprefix('test split: ')} (paired tests above).",
               ""] if per is not None else []),
            f"Latency, measured back to back (unmodified model and export interleaved, unmodified-export-export-"
            f"unmodified in each repeat{_load_text(speed)}): unmodified {speed['original_ms']:.4g} ms/sample, export "
            f"{speed['export_ms']:.4g} ms/sample (medians of the same repeats); "
            f"{_speedup_text(speed, _TORCH_KEYS, ceiling)}. Written to export/latency.json.", "",
            *onnx_lines]
