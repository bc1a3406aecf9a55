"""Exporting a study's chosen configuration and timing it against the unmodified model: the speed-up in PyTorch
(:func:`measure_speedup`, :func:`measure_export`) and ONNX Runtime, and ``rba report DIR --measure``
(:func:`remeasure_report`), which times the export on disk again before rendering."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from rba.config import load_config
from rba.export import export_model, load_export
from rba.files import atomic_write_json
from rba.methods import get_method
from rba.onnx import export_onnx, onnx_speedup, onnx_state, read_onnx_meta
from rba.progress import phase
from rba.session import Session
from rba.spans import parse_spans
from rba.timing import compare
from search._render import render_report
from search._report_files import ReportError, read_report_inputs, read_summary
from search.objective import RESULT_COLUMNS
from search.recording import StudyContext, log

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["measure_speedup", "speedup_ceiling", "measure_export", "remeasure_report"]


def measure_speedup(original, exported, samples, *, batch_size: int, repeats: int) -> dict:
    """Per-sample latency of the unmodified model and the export on one batch, timed by :func:`rba.timing.compare`
    (warm-up of both, unmodified-export-export-unmodified within each repeat, at least ``repeats`` repeats and at
    least 20 where a repeat is under a second). The headline ``speedup`` is the median of the paired per-repeat
    ratios unmodified/export, with its bootstrap interval (``speedup_low``, ``speedup_high`` at ``confidence``)
    and the share of repeats in which the export was faster (``export_faster``); ``original_ms`` and
    ``export_ms`` are each side's median of the same repeats, whose times are kept (``original_times_ms``,
    ``export_times_ms``), with ``repeats`` (as run), ``order``, ``threads`` and ``batch_size``."""
    batch = original.collate(samples[:batch_size])
    n = len(samples[:batch_size])
    with torch.inference_mode():
        c = compare(lambda: original.forward(batch), lambda: exported.forward(batch), samples=n, repeats=repeats)
    return {"original_ms": c.a_ms, "export_ms": c.b_ms, "speedup": c.speedup, "speedup_low": c.speedup_low,
            "speedup_high": c.speedup_high, "confidence": c.confidence, "export_faster": c.b_faster,
            "order": c.order, "original_times_ms": c.a_times_ms, "export_times_ms": c.b_times_ms,
            "repeats": c.repeats, "threads": torch.get_num_threads(), "batch_size": n}


def speedup_ceiling(cost_model, spans) -> dict:
    """The largest speed-up the configuration ``spans`` can plausibly have: the unmodified model's time over its
    time without the replaced blocks, the replacing maps counted as free. From the session's per-block latency
    table when it was measured (``source`` "latency table"), else from the blocks' FLOPs ("FLOPs"). A measured
    speed-up above it is timing noise, not a result."""
    blocks = sorted({k for i, j in spans for k in range(i, j)})
    if cost_model.block_latency_ms:
        total, parts, source = cost_model.total_latency_ms, cost_model.block_latency_ms, "latency table"
    else:
        total, parts, source = float(cost_model.total_flops), cost_model.block_flops, "FLOPs"
    kept = total - sum(parts[k] for k in blocks)
    return {"speedup": total / kept if kept > 0 else math.inf, "source": source, "blocks": blocks}


def _export(ctx: StudyContext, session, chosen: pd.Series, out: Path) -> dict:
    """Export the chosen configuration (its result row), reload it, evaluate it end to end and measure its
    speed-up."""

    spans = parse_spans(chosen["spans"])
    folder = export_model(session, spans, out / "export", kind=ctx.objective.kind, mode=ctx.objective.mode)
    measured = session.evaluate_export(folder)
    if ctx.cfg.run.onnx:

        export_onnx(session, folder)
    return {"measured": {c: measured.get(c) for c in RESULT_COLUMNS}} | measure_export(ctx.cfg, session, folder)


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def measure_export(cfg, session, folder: Path) -> dict:
    """The speed-up records of an export folder against the session's unmodified model: ``speed`` (PyTorch,
    also written to ``export/latency.json``), ``ceiling`` (:func:`speedup_ceiling` from the session's cost
    model: its latency table when measured) and, with ``[run] onnx`` and a current ONNX export in the folder,
    ``onnx`` (ONNX Runtime, with the export check's largest relative difference); each timing with the load
    average at its start and end."""

    model = cfg.model
    trusted = model.kind == "module" and model.trust_code
    exported = load_export(folder, device=str(session.adapter.device), trust_code=trusted,
                           factory=model.name if trusted else None)
    ceiling = speedup_ceiling(session.cost_model, parse_spans(exported.export_recipe["spans"]))
    load = _load()
    speed = measure_speedup(session.adapter, exported, session.splits.eval.samples,
                            batch_size=cfg.evaluate.batch_size, repeats=cfg.report.speedup_repeats)
    speed |= {"load_start": load, "load_end": _load()}
    atomic_write_json(folder / "latency.json", speed)
    onnx = _onnx_record(cfg, folder) if cfg.run.onnx and onnx_state(folder) == "current" else {}
    return {"speed": speed, "ceiling": ceiling, "onnx": onnx}


def _onnx_record(cfg, folder: Path) -> dict:
    """ONNX Runtime speed-up of the current ONNX export in ``folder``, with the export check's largest relative
    difference and the load average at the start and end."""

    meta = read_onnx_meta(folder)
    load = _load()
    onnx = onnx_speedup(folder, repeats=max(7, cfg.evaluate.latency_repeats))
    return onnx | {"max_rel_diff": max(meta["max_rel_diff"].values()), "load_start": load, "load_end": _load()}



def remeasure_report(out: Path, *, progress: bool = True) -> Path:
    """``rba report DIR --measure``: measure the export's speed-up lines again (PyTorch and, where the study
    wrote one, ONNX Runtime) with the model and data of the folder's ``config.resolved.toml`` and the export on
    disk, at the thread count the study used, with the per-block latency table measured again for the speed-up's
    ceiling; update ``export/latency.json``, ``report.json`` and ``summary.json``, then render the report
    (:func:`render_report`). A folder without ``export/`` (a committed report keeps no weights) gets the chosen
    configuration exported again from the statistics (the closed-form fits of the same calibration split, the fit
    kind of the study's method). No search, trial or front evaluation runs. Returns the report's path."""
    out = Path(out)
    data = read_report_inputs(out)  # everything checked before the model loads
    summary = read_summary(out)
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
    threads = torch.get_num_threads()
    torch.set_num_threads(int(export["speed"].get("threads", threads)))
    try:
        # labels where the data has them, as rba run's report step (its export carries the probe head then)
        session = Session(cfg, need_labels=None, progress=progress)
        if not exists:  # a committed report keeps no weights: export the choice again

            spans = info["choice"]["spans"]
            log(f"report: {folder} holds no export: exporting `{spans}` again from the statistics")
            export_model(session, parse_spans(spans), folder, mode=cfg.fit.mode,
                         kind=get_method(info["method"]).fit_kind(cfg.fit.kind))
            if cfg.run.onnx:

                export_onnx(session, folder)
        with phase(f"report: measuring the export `{info['choice']['spans']}` against the unmodified model",
                   enabled=progress):
            records = measure_export(cfg, session, folder)
    finally:
        torch.set_num_threads(threads)
    export |= records
    summary_path = out / "summary.json"
    summary = {k: v for k, v in summary.items() if not k.startswith("onnx_")} | speed_summary(records)
    atomic_write_json(summary_path, summary)
    atomic_write_json(out / "report.json", info)
    return render_report(out)


def speed_summary(records: dict) -> dict:
    """``summary.json``'s speed-up keys from :func:`measure_export`'s records."""
    speed, onnx = records["speed"], records["onnx"]
    return ({k: speed[k] for k in ("speedup", "speedup_low", "speedup_high", "export_faster")}
            | {"speedup_ceiling": records["ceiling"]["speedup"]}
            | {k: v for k, v in onnx.items() if k.startswith("onnx_")})
