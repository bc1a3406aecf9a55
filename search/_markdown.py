"""The pieces ``report.md``'s sections are written from (:mod:`search._render`): Markdown tables, a value ± its
standard error, a configuration's test-split numbers, the speed-up sentences (PyTorch, ONNX Runtime), and the export
rule and the fixed reference point in words."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from rba.names import LM_COLUMNS, maximised, objective_of
from rba.timing import Comparison, comparison_text
from search._comparisons import PER_SAMPLE, PerSample, reference_change

__all__: list[str] = []


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


def _semicolon(text: str) -> str:
    return f"; {text}" if text else ""


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
