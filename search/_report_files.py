"""The files a finished ``rba run`` folder is read from: ``report.json`` (:class:`ReportRecord`, its format
:data:`REPORT_FORMAT`) and ``summary.json`` (:class:`SummaryRecord`) as checked records, and the reader of the
folder's files (:func:`read_report_inputs`, :func:`read_summary`), which names a damaged file in one line
(:class:`ReportError`)."""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from pydantic import model_validator

from rba.errors import RBAError
from rba.files import Record, read_record, read_table
from rba.names import COST_COLUMNS, LM_COLUMNS
from search._comparisons import PER_SAMPLE, PerSample
from search.objective import QUALITY, RESULT_COLUMNS

__all__ = ["REPORT_FORMAT", "ReportRecord", "SummaryRecord", "ReportError", "read_report_inputs", "read_summary"]


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
