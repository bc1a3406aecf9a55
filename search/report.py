"""The files a finished study leaves, in one module per job: :mod:`search._results` (what the results are:
the tables, the front plot and ``run.json`` (:func:`finish`), the front member to export (:func:`choose_export`), the
baselines' rows), :mod:`search._comparisons` (the test split's per-sample results and the comparisons on them),
:mod:`search._report_files` (the ``report.json`` format and the reader of a finished folder), :mod:`search._measure`
(the export's speed-up; :func:`remeasure_report`, ``rba report DIR --measure``, times the export on disk again) and
:mod:`search._render` (``report.md`` from those files alone: :func:`render_report`, also ``rba report DIR``; its
plots in :mod:`search._plots`, the pieces its sections share in :mod:`search._markdown`). This one runs ``rba run``'s report step through them
(:func:`write_report`: ``pareto.csv``, ``baselines.csv``, ``singles.csv``, ``report.json``, the export, then the
rendering) and re-exports their public names."""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from rba.files import atomic_path, atomic_write_json, checked, package_versions
from rba.fit import fit_label
from rba.metrics import get_metric, list_metrics
from search._comparisons import PER_SAMPLE, PerSample, evaluate_test_split, test_configurations
from search._measure import _export, measure_export, measure_speedup, remeasure_report, speed_summary
from search._render import render_report
from search._report_files import REPORT_FORMAT, ReportError, ReportRecord, SummaryRecord, read_report_inputs
from search._results import (
    Choice,
    _baseline_rows,
    _known_results,
    _labelled_session,
    _single_rows,
    _write_pareto,
    choose_export,
    complete_front,
    finish,
    reference_row,
    rule_columns,
)
from search.analysis import front_members
from search.recording import SearchResult, log

__all__ = ["finish", "choose_export", "rule_columns", "measure_speedup", "measure_export", "write_report",
           "render_report", "remeasure_report",
           "read_report_inputs", "Choice", "ReportError", "REPORT_FORMAT"]


def _machine_line(load_start: float | None) -> str:
    """Where the report's times were measured: a reader compares them only at equal load."""

    load = f"{load_start:.1f} → {os.getloadavg()[0]:.1f}" if load_start is not None else f"{os.getloadavg()[0]:.1f}"
    command = " ".join(["rba", *sys.argv[1:]]) if Path(sys.argv[0]).name in ("rba", "cli.py") else None
    return (f"machine: {os.cpu_count()} CPUs ({platform.machine()}, {platform.system()}), torch threads "
            f"{torch.get_num_threads()}, load average {load} (start → end of the run)"
            + (f"; command: `{command}`" if command else ""))


def _software_line() -> str:
    """What produced the report: the git commit of rba and the versions of the libraries its numbers depend on."""

    v = package_versions()
    commit = v.get("rba-commit")
    libs = ", ".join(f"{name} {v[name]}" for name in ("torch", "transformers", "timm", "optuna", "ray", "numpy")
                     if name in v)
    return (f"software: rba {v.get('rba', '?')}" + (f" (commit {commit[:12]}{'-dirty' if commit.endswith('-dirty') else ''})"
            if commit else "") + f", {libs}, python {v.get('python', '?')}")


def _relative(cfg, path: str | None, out: Path) -> str:
    """A config path as the report names it: relative to the output folder (no path of this machine)."""
    if not path:
        return ""
    return os.path.relpath(cfg.resolve_path(path).absolute(), out.absolute())


def _write_test_split(ctx, session, members, baselines: bool, choice: dict, exported: bool) -> dict:
    """Score every configuration the report quotes on the held-out test split, sample by sample, and write
    ``per_sample.npz``; the selections (front, picks, export) were all made on eval before. Returns report.json's
    ``test`` record."""
    out = ctx.out
    trials = pd.read_csv(out / "trials.csv", dtype={"spans": "string"})  # as the renderer will read them
    table = pd.read_csv(out / "baselines.csv", dtype={"spans": "string"}) if baselines else None
    quality, cost = rule_columns(ctx.objective.objectives)
    info = {"quality": quality, "cost": cost, "kind": ctx.objective.kind, "choice": choice,
            "flops_points": list(ctx.cfg.report.flops_points), "export": exported}
    configurations = test_configurations(info, trials, members, table)
    per = evaluate_test_split(session, configurations, ctx.objective.mode)
    per.save(out / PER_SAMPLE)
    return {"file": PER_SAMPLE, "split": per.split, "samples": per.samples, "configurations": len(configurations)}


def write_report(result: SearchResult, *, started: float, setup_s: float | None = None,
                 completed_before: int = 0, load_start: float | None = None) -> Path:
    """``rba run``'s last step: complete the front (accuracy, reference row, sorted by cost), evaluate what the
    report's sections need (baselines, optionally every single span; configurations the trials evaluated are
    reused), export :func:`choose_export`'s configuration (reloaded, evaluated end to end, its speed-up measured
    against the unmodified model) and record it all: ``pareto.csv``, ``baselines.csv``, ``singles.csv``,
    ``summary.json`` and ``report.json``. Then :func:`render_report` writes ``report.md`` and the plots from
    those files alone. Returns the report's path."""

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
    choice = choose_export(front, reference, ctx.objective.objectives, max_drop, cfg.run.max_rise)
    if not choice.within:
        log(f"warning: {choice.reason}")
    phases["front accuracy"] = time.time() - t
    known = _known_results(result.trials, front)
    baselines = bool(cfg.report.baselines) and ctx.table is not None
    skipped: list[str] = []
    if baselines:
        t = time.time()
        rows, skipped = _baseline_rows(ctx, known)
        for note in skipped:
            log(f"note: report baseline {note}; skipped")
        with atomic_path(out / "baselines.csv") as tmp:
            rows.to_csv(tmp, index=False)
        phases["baselines"] = time.time() - t
    if cfg.report.single_spans:
        t = time.time()
        with atomic_path(out / "singles.csv") as tmp:
            _single_rows(ctx, session, known).to_csv(tmp, index=False)
        phases["single spans"] = time.time() - t
    export = None
    if choice.row is not None:
        t = time.time()
        export = _export(ctx, session, choice.row, out)
        phases["export, its evaluation and speed-up"] = time.time() - t
    choice_record = {"spans": None if choice.row is None else str(choice.row["spans"]), "reason": choice.reason,
                     "within": choice.within}
    test = None
    if cfg.data.test:
        t = time.time()
        test = _write_test_split(ctx, session, members, baselines, choice_record, export is not None)
        phases["test split (front, baselines, export)"] = time.time() - t
    else:
        (out / PER_SAMPLE).unlink(missing_ok=True)  # an earlier run's would read as this run's
    header = [
        f"model: {session.adapter.describe()}",
        f"data: {cfg.data.kind} {_relative(cfg, cfg.data.path, out)} (calibration {len(session.splits.calibration)}, "
        f"probe {len(session.splits.probe)}, eval {len(session.splits.eval)}"
        + (f", test {len(session.splits.test)}" if session.splits.test is not None else "")
        + f"; data seed {cfg.data.seed})",
        f"fit: {fit_label(ctx.objective.kind)}, mode {cfg.fit.mode}, ridge {cfg.fit.ridge:g}",
        f"search: {ctx.method} ({cfg.search.backend}, sampler {cfg.search.sampler}, sampler seed {cfg.search.seed}), "
        f"objectives {', '.join(ctx.objective.objectives)}, budgets {ctx.objective.budgets or 'none'}; "
        f"{ctx.space.describe()}",
        _machine_line(load_start),
        _software_line(),
    ]
    trials_complete = int((result.trials["state"] == "COMPLETE").sum())
    info = {
        "format": REPORT_FORMAT, "name": cfg.name, "header": header, "method": ctx.method,
        "kind": ctx.objective.kind, "objectives": ctx.objective.objectives, "objective_columns": ctx.objective.columns,
        "budgets": ctx.objective.budgets, "quality": quality, "cost": cost, "max_drop": max_drop,
        "max_rise": cfg.run.max_rise,
        "choice": choice_record, "export": export, "test": test, "configurations": int(ctx.space.count()),
        "metrics": [[m, bool(get_metric(m).higher_is_redundant)] for m in list_metrics()],
        "flops_points": list(cfg.report.flops_points), "baselines": baselines, "baselines_skipped": skipped,
        "single_spans": cfg.report.single_spans,
        "titles": {"scores": f"{session.adapter.describe()}, n = {session.stats.n} vectors",
                   "pareto": f"{session.adapter.describe()}: {ctx.method}"
                             + (f" ({cfg.search.sampler})" if ctx.method == "optuna" else "")
                             + f", {trials_complete} trials"},
        "timing": {"phases": list(phases.items()), "total_s": time.time() - started,  # a list keeps the order
                   "completed_before": completed_before},
    }
    summary = {"trials_complete": trials_complete, "front_size": len(members),
               "quality": quality, "cost": cost, "reference_quality": float(reference[quality]),
               "max_drop": max_drop, "max_rise": cfg.run.max_rise, "within_drop": choice.within,
               "rule": choice.reason}
    if export is not None and choice.row is not None:  # (an export is made of the chosen row)
        summary |= {"export_spans": str(choice.row["spans"]), "export_quality": float(choice.row[quality]),
                    "export_cost": float(choice.row[cost])}
        summary |= {c: float(export["measured"][c]) for c in ("accuracy", "fidelity", "flops_frac", "params_frac")}
        summary |= speed_summary(export)
        if test is not None:
            scores = PerSample.load(out / PER_SAMPLE).scores(ctx.objective.kind, str(choice.row["spans"]))
            summary |= {f"test_{k}": v for k, v in scores.items()}
    atomic_write_json(out / "summary.json", checked(summary, SummaryRecord, "summary.json"))
    # what an earlier run of this folder wrote for a section this run leaves out would read as this run's
    stale = (([] if baselines else ["baselines.csv"])
             + ([] if cfg.report.single_spans else ["singles.csv", "priors.png"]))
    for name in stale:
        (out / name).unlink(missing_ok=True)
    atomic_write_json(out / "report.json", checked(info, ReportRecord, "report.json"))  # the schema rba report reads
    return render_report(out)  # the CLI prints the path as its last line


