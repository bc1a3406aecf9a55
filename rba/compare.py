"""Fit kinds compared span by span (``rba compare-fits``): the closed-form maps against the trained translators.

For every single span asked for and every fit kind: the fit time (trained fits: their training; fits from
statistics: a cold solve, factorisation included), the mean squared error per vector and dimension on the vectors
it was fitted on (``train_mse``) and on held-out eval-split vectors (``heldout_mse``, and ``heldout_rel``: the
held-out SSE over Σ‖x_j − x̄_j‖², scale-free like ls_residual), then the configuration's fidelity, accuracy (with
labels), parameter and FLOP fractions, as ``rba evaluate`` scores them, and for trained fits the steps they ran and
why they stopped (``steps``, ``stopped``: their budget, ``patience`` or ``max_seconds``). Trained kinds are marked so in every
table and plot. Files: ``fits.csv`` (rewritten after each span, so a stopped run keeps its finished spans, and a
rerun into the same folder with the same config and kinds goes on from them, keeping the finished spans it does
not ask for), ``compare.json`` (what the rows depend on, and a checksum of each span's rows: an edited row is
computed again, not reused), ``fits.md`` and ``fits.png``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Sequence, cast

import pandas as pd
import torch

from rba._folders import FolderError, refusal, refuse_other_work
from rba._io import atomic_path, atomic_write_json, atomic_write_text
from rba._records import Record, checked, read_record, read_table
from rba.config import LATER_TRAINING_KEYS
from rba.data import data_identity
from rba.errors import ConfigError
from rba.fit import fit_label, get_fit
from rba.names import config_hash
from rba.spans import Span, format_spans
from rba.vectors import collect_vectors

log = logging.getLogger(__name__)

__all__ = ["compare_fits", "plot_comparison", "COMPARE_COLUMNS", "DEFAULT_KINDS"]

DEFAULT_KINDS = ("identity", "affine", "mlp", "res-mlp")
COMPARE_COLUMNS = ["span", "start", "end", "kind", "trained", "fit_s", "fit_vectors", "train_mse", "heldout_mse", "heldout_rel",
                   "fidelity", "accuracy", "params_frac", "flops_frac", "steps", "stopped"]


def compare_fits(session, spans: Sequence[Span], kinds: Sequence[str] = DEFAULT_KINDS, *, out: str | Path | None = None,
                 progress: bool = True) -> pd.DataFrame:
    """The comparison table (``COMPARE_COLUMNS``, one row per span and kind); with ``out``, also its files.

    ``session`` is a :class:`rba.session.Session`; ``spans`` are single spans, each evaluated alone."""
    cfg = session.cfg
    kinds = list(dict.fromkeys(kinds))  # a kind named twice is compared once
    if not kinds:
        raise ConfigError("compare-fits got no fit kinds: give --kinds, e.g. \"affine,mlp\" (rba ls fits), or leave "
                          "it out for identity,affine,mlp,res-mlp")
    plugins = {kind: get_fit(kind) for kind in kinds}  # unknown kinds are refused before any work
    if cfg.fit.mode != "independent":
        raise ConfigError(f"compare-fits compares independent fits: fit.mode = {cfg.fit.mode!r}; set it to "
                          "\"independent\"")
    spans = [cast(Span, tuple(s)) for s in spans]
    for s in spans:
        session.parse(format_spans([s]))  # validated against the model (and max_span) before any long work
    if not spans:
        raise ConfigError("compare-fits got no spans: give --spans, or a model with valid spans")
    spans = list(dict.fromkeys(spans))  # a span asked twice is compared once
    out = None if out is None else Path(out)
    done, record = _finished_rows(session, out, kinds) if out is not None else ({}, {})
    asked = {format_spans([s]) for s in spans}
    # the finished spans of earlier runs into the folder that this run does not ask for stay in its files
    kept = [row for span, rows in done.items() if span not in asked for row in rows]
    stats = session.stats
    todo = [s for s in spans if format_spans([s]) not in done]
    boundaries = sorted({k for s in todo for k in s})
    t0 = time.perf_counter()
    if any(p.needs == "vectors" for p in plugins.values()):
        session.keep_vectors(todo)
    sample_s = time.perf_counter() - t0
    held = collect_vectors(session.adapter, session.splits.eval.samples, boundaries, limit=cfg.fit.max_vectors,
                           batch_size=cfg.capture.batch_size, max_memory_gb=cfg.capture.max_memory_gb,
                           progress=progress, what="held-out (eval)", skip_first_token=cfg.capture.skip_first_token)
    rows: list[dict] = []
    for n, span in enumerate(spans):
        i, j = span
        if format_spans([span]) in done:
            rows += done[format_spans([span])]
            continue
        y = held[j].double()
        total = float(((y - y.mean(0)) ** 2).sum())
        for kind, plugin in plugins.items():
            t = time.perf_counter()
            fit = session.fit(span, kind, refit=True)  # a cold fit: its time is what one span costs
            fit_s = time.perf_counter() - t
            n_fit = float(fit.info.get("vectors", stats.count(i)))
            with torch.no_grad():
                sse = float(((fit.predict(held[i]) - y) ** 2).sum())
            result = session.evaluate([span], kind=kind)
            rows.append({
                "span": format_spans([span]), "start": i, "end": j, "kind": kind, "trained": plugin.trained,
                "fit_s": fit_s, "fit_vectors": int(n_fit), "train_mse": fit.sse / (n_fit * fit.dim_out),
                "heldout_mse": sse / (y.shape[0] * y.shape[1]), "heldout_rel": sse / total if total > 0 else math.nan,
                "fidelity": result["fidelity"], "accuracy": result.get("accuracy", math.nan),
                "params_frac": result["params_frac"], "flops_frac": result["flops_frac"],
                "steps": fit.info.get("steps", math.nan), "stopped": fit.info.get("stopped", ""),
            })
        if out is not None:
            _write_rows(out, kept + rows, record)
        if progress:
            log.info(f"compare-fits: span {format_spans([span])} done ({n + 1}/{len(spans)})")
    table = pd.DataFrame(rows, columns=COMPARE_COLUMNS)
    if out is not None:
        folder = pd.DataFrame(kept + rows, columns=COMPARE_COLUMNS)
        _write_rows(out, kept + rows, record)
        n_held = min((v.shape[0] for v in held.values()), default=cfg.fit.max_vectors)
        atomic_write_text(out / "fits.md", _report(session, folder, sample_s, n_held=n_held))
        plot_comparison(folder, out / "fits.png", title=session.adapter.describe())
        session.write_run_info(out, command="compare-fits", kinds=list(kinds))
    return table


#: the columns of fits.csv that hold numbers
_NUMBER_COLUMNS = [c for c in COMPARE_COLUMNS if c not in ("span", "kind", "trained", "stopped")]


class CompareRecord(Record):
    """compare.json: the comparison's identity (a hash, and what it hashes) and the checksum of each span's rows."""

    identity: str
    detail: dict[str, Any]
    rows: dict[str, str] = {}


def _write_rows(out: Path, rows: list[dict], record: dict) -> None:
    """``fits.csv``, then ``compare.json`` with the checksum of each span's rows. A kill between the two leaves the
    newest span without a checksum: computed again by the next run, never reused unchecked."""
    text = pd.DataFrame(rows, columns=COMPARE_COLUMNS).to_csv(index=False, float_format="%.6g", lineterminator="\n")
    atomic_write_text(out / "fits.csv", text)
    atomic_write_json(out / "compare.json", checked(record | {"rows": _row_sums(text)}, CompareRecord, "compare.json"))


def _row_sums(text: str) -> dict[str, str]:
    """The sha256 of each span's lines of ``fits.csv`` text (with the header line), by span."""
    lines = text.splitlines()
    by_span: dict[str, list[str]] = {}
    for line in lines[1:]:
        by_span.setdefault(line.split(",", 1)[0], []).append(line)  # spans and kind names hold no comma
    return {span: hashlib.sha256("\n".join([lines[0], *rows]).encode()).hexdigest() for span, rows in by_span.items()}


def _identity(session, kinds: Sequence[str]) -> dict:
    """What the comparison's rows depend on: model, data (by content), capture, fit and evaluation settings, the kinds."""
    d = session.cfg.to_dict()
    fit = {k: v for k, v in d["fit"].items() if k not in LATER_TRAINING_KEYS} | session.cfg.fit.changed_training()
    return {"model": session.adapter.identity, "data": data_identity(session.cfg, session.splits),
            "capture_dtype": d["capture"]["dtype"], "fit": fit, "evaluate": {k: d["evaluate"][k] for k in ("head", "probe_c")}, "kinds": list(kinds)}


def _finished_rows(session, out: Path, kinds: Sequence[str]) -> tuple[dict[str, list[dict]], dict]:
    """Rows of the spans a previous run into ``out`` finished (every kind), by span, in the file's order, and the
    comparison's record (``compare.json``) without its row checksums. Refuses a folder holding another comparison
    or other work rather than overwrite it; rows that do not match their checksums (edited, or written by an
    earlier rba) are not reused, with a warning. Records this comparison's identity there."""
    refuse_other_work(out, "comparison", "`rba compare-fits`")
    record = out / "compare.json"
    detail = json.loads(json.dumps(_identity(session, kinds), default=str))  # as the record holds it
    key = config_hash(detail)
    found: dict = {}
    if record.exists():
        found = read_record(record, CompareRecord, error=FolderError,
                            fix=f"it records which comparison {out} holds; choose another --out, or remove that folder")
        if found["identity"] != key:
            raise refusal(str(out), found["detail"], detail, what="a comparison",
                          fix="Choose another --out, or remove that folder")
    sums = found.get("rows", {})
    try:
        text = (out / "fits.csv").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):  # none yet, or damaged: nothing in it can match a checksum
        text = ""
    found_sums = _row_sums(text)
    trusted = {span for span, digest in found_sums.items() if sums.get(span) == digest}
    if set(found_sums) - trusted:
        log.warning("rba: warning: %s: the rows of span(s) %s do not match their checksums in compare.json (edited, or written by "
                    "an earlier rba): not reused; they are computed again when asked for", out / "fits.csv",
                    ", ".join(sorted(set(found_sums) - trusted)))
    done = {}
    if trusted:  # (the checksums can be recomputed by hand: the rows are checked as any table read back is)
        old = read_table(out / "fits.csv", columns=COMPARE_COLUMNS, numeric=_NUMBER_COLUMNS, dtype={"span": str},
                         error=FolderError, fix=f"remove {out / 'fits.csv'} to compute its rows again")
        for span, rows in old.groupby("span", sort=False):
            if span in trusted and list(rows["kind"]) == list(kinds):
                done[span] = rows.to_dict("records")
    entry = {"identity": key, "detail": detail}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(record, checked(entry | {"rows": {span: found_sums[span] for span in done}}, CompareRecord,
                                      str(record)))
    return done, entry


def _summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per fit kind: the mean of every measure over the spans, trained kinds labelled."""
    cols = ["fit_s", "fit_vectors", "train_mse", "heldout_mse", "heldout_rel", "fidelity", "accuracy"]
    summary = table.groupby("kind", sort=False)[cols].mean()
    summary.index = [fit_label(k) for k in summary.index]
    return summary


def _training(cfg) -> str:
    """How the trained fits trained, in words: the paper's budget, or to convergence."""
    f = cfg.fit
    lr = f"lr {f.lr:g}" + (", cosine decay" if f.schedule == "cosine" else "") + (
        f" after {f.warmup_steps} warm-up steps" if f.warmup_steps else "")
    if not f.holdout:
        return f"{f.steps} Adam steps, {lr}"
    return (f"Adam to convergence ({lr}): {f.holdout:g} of their vectors held out, evaluated every {f.eval_every} "
            f"steps, the best weights kept, stopped after {f.patience} evaluations without improvement, at "
            f"{f.steps} steps" + (f" or after {f.max_seconds:g} s" if f.max_seconds else "") + " (`steps` ran, why it `stopped`)")


def _report(session, table: pd.DataFrame, sample_s: float, n_held: int) -> str:
    cfg = session.cfg
    f = cfg.fit
    wide = table.assign(kind=[fit_label(k) for k in table["kind"]]).drop(columns=["start", "end", "trained"])
    fmt = {"float_format": lambda v: f"{v:.4g}"}
    lines = [
        f"# Fit kinds compared per span: {session.adapter.describe()}",
        "",
        f"- calibration: {session.stats.n} vectors in the statistics (fits from statistics see them all); trained "
        f"fits: the first ≤ {f.max_vectors} calibration vectors per boundary (`fit_vectors`; kept in {sample_s:.2f} s), "
        f"{_training(cfg)}, minibatch {f.batch_size}, seed {cfg.data.seed if f.seed is None else f.seed}",
        f"- held-out: the first {n_held} eval-split vectors; accuracy/fidelity: the eval split, as `rba evaluate`",
        "- fit_s: a cold fit of one span (trained fits: their training time; closed forms: the solve from statistics)",
        "- *(trained)* kinds are fitted by an optimiser, not in closed form",
        "",
        "## Mean over spans",
        "",
        "```",
        _summary(table).to_string(**fmt),
        "```",
        "",
        "## Per span",
        "",
        "```",
        wide.to_string(index=False, **fmt),
        "```",
        "",
        "![fit kinds per span](fits.png)",
        "",
    ]
    return "\n".join(lines)


def plot_comparison(table: pd.DataFrame, path: str | Path, title: str = "") -> None:
    """Grouped bars per span: held-out relative error, fidelity and fit time of each kind; trained kinds
    hatched and labelled ``(trained)``."""
    from matplotlib.figure import Figure  # lazy: matplotlib loads with the first plot

    panels = [("heldout_rel", "held-out SSE / total variation (lower: better)", True),
              ("fidelity", "fidelity (pooled cosine)", False), ("fit_s", "fit time, s", True)]
    wide = {col: table.pivot(index="span", columns="kind", values=col) for col, _, _ in panels}
    spans = list(dict.fromkeys(table["span"]))
    kinds = list(dict.fromkeys(table["kind"]))
    fig = Figure(figsize=(max(9.0, 1.1 * len(spans) * len(panels)), 4.2), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)
    width = 0.8 / max(1, len(kinds))
    for ax, (col, label, log) in zip(axes[0], panels):
        w = wide[col].reindex(index=spans, columns=kinds)
        for n, kind in enumerate(kinds):
            trained = get_fit(kind).trained
            ax.bar([s + (n - (len(kinds) - 1) / 2) * width for s in range(len(spans))], w[kind].to_numpy(),
                   width, label=fit_label(kind), hatch="//" if trained else None, edgecolor="black", linewidth=0.4)
        ax.set_xticks(range(len(spans)), spans, rotation=45 if len(spans) > 8 else 0, fontsize=7)
        ax.set_xlabel("span")
        ax.set_title(label, fontsize=9)
        if log and (w.to_numpy() > 0).any():
            ax.set_yscale("log")
    axes[0][0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
