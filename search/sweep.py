"""Batch studies for ``rba run``: several configs, or a sweep file, run one after another.

A sweep file is a TOML file with ``base`` (a config file, relative to the sweep file's folder) and a ``[sweep]``
table of dotted config keys with value lists; every combination (the cartesian product) is one study, written
to ``<out>/<key=value,…>`` (``out``: ``--out``, else the sweep's ``out`` key relative to its folder, else
``runs/<sweep name>``). :func:`expand` turns the command line's paths into studies, checking every one before
any runs; :func:`write_summary` writes ``summary.csv`` and ``fronts.png`` over all of them.
"""

from __future__ import annotations

import itertools
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from rba.config import Config, check_dotted_key, list_studies, load_config, load_study
from rba.errors import ConfigError
from rba.files import atomic_path, long_name
from search._report_files import read_summary
from search.pareto import AXIS_LABELS

__all__ = ["Study", "expand", "is_sweep", "read_sweep", "write_summary", "SUMMARY_COLUMNS"]

_SWEEP_KEYS = {"base", "sweep", "out"}

SUMMARY_COLUMNS = ["study", "out", "trials_complete", "front_size", "quality", "cost", "reference_quality",
                   "export_spans", "export_quality", "export_cost", "within_drop", "accuracy", "fidelity",
                   "flops_frac", "params_frac", "test_accuracy", "test_fidelity", "speedup", "speedup_low",
                   "speedup_high", "export_faster", "speedup_ceiling", "error"]


@dataclass
class Study:
    """One study of a batch: its label (the sweep's ``key=value,…``, or the config's name) and its config."""

    label: str
    cfg: Config


def is_sweep(path: str | Path) -> bool:
    """A path ending in ``.toml`` whose file has a ``[sweep]`` table."""
    p = Path(path)
    if p.suffix != ".toml" or not p.is_file():
        return False
    try:
        return "sweep" in tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError):
        return False  # load_config reports it, with the file's name


def _value_text(value: Any) -> str:
    if isinstance(value, list):
        return "+".join(_value_text(v) for v in value)
    if isinstance(value, bool):
        return str(value).lower()
    return str(value).replace("/", "_").replace(",", "_")


def read_sweep(path: str | Path, out: Path | None, configure: Callable[[Config], Config]) -> list[Study]:
    """The studies of a sweep file, each configured (``configure``: the command line's flags) and checked."""
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p} is not valid TOML: {exc}") from None
    unknown = sorted(set(raw) - _SWEEP_KEYS)
    if unknown:
        raise ConfigError(f"sweep file {p}: unknown key(s) {', '.join(map(repr, unknown))}; a sweep file holds base = \"x.toml\", "
                          "[sweep] and optionally out")
    if not isinstance(raw.get("base"), str):
        raise ConfigError(f"sweep file {p}: base = \"config.toml\" (the config every study starts from) is missing")
    if "out" in raw and not (isinstance(raw["out"], str) and raw["out"].strip()):
        raise ConfigError(f"sweep file {p}: out = {raw['out']!r} is not a folder: write out = \"runs/name\" (relative "
                          "to the sweep file's folder), or leave it out for runs/<sweep name>")
    sweep = raw["sweep"]
    if not isinstance(sweep, dict) or not sweep:
        raise ConfigError(f"sweep file {p}: [sweep] must hold at least one dotted key with a list of values, e.g. "
                          "\"search.seed\" = [0, 1]")
    for key, values in sweep.items():
        if isinstance(values, dict):
            raise ConfigError(f"sweep file {p}: [sweep] key {key!r} is a table; write dotted keys in quotes, "
                              f"e.g. \"search.seed\" = [0, 1]")
        try:
            check_dotted_key(key)  # against the config's schema, before the base config is read
        except ConfigError as exc:
            raise ConfigError(f"sweep file {p}: [sweep] {exc}") from None
        if not isinstance(values, list) or not values:
            raise ConfigError(f"sweep file {p}: [sweep] {key} must be a non-empty list of values, got {values!r}")
    base_path = Path(raw["base"]).expanduser()
    base_path = base_path if base_path.is_absolute() else p.parent / base_path
    shipped = list_studies()
    if base_path.is_file():
        if is_sweep(base_path):
            raise ConfigError(f"sweep file {p}: base {base_path} is itself a sweep file; base names a study config "
                              "(sweeps do not nest: put every key in this sweep's [sweep] table)")

        def load_base():
            return load_config(base_path)
    elif raw["base"] in shipped:  # a shipped study by name: its paths resolve against the working directory
        def load_base():
            return load_study(raw["base"])
    else:
        raise ConfigError(f"sweep file {p}: base config {base_path} not found, and {raw['base']!r} is no shipped "
                          f"study ({', '.join(shipped)}): give a config file relative to the sweep file, or a study "
                          "name")
    if out is None:
        out = (p.parent / raw["out"]) if "out" in raw else Path.cwd() / "runs" / p.stem
    keys = list(sweep)
    studies = []
    for combo in itertools.product(*(sweep[k] for k in keys)):
        label = ",".join(f"{k}={_value_text(v)}" for k, v in zip(keys, combo))
        too_long = long_name(out / label)
        if too_long:
            _, size, limit = too_long
            raise ConfigError(f"sweep file {p}: the folder of study {label[:60]}… would be named by its {size} bytes "
                              f"of keys and values, and the file system allows {limit} for one name: sweep fewer keys "
                              "or shorter values (or split the sweep)")
        cfg = load_base()
        try:
            cfg.override(dict(zip(keys, combo)))
        except ConfigError as exc:
            raise ConfigError(f"sweep file {p}, study {label}: {exc}") from None
        cfg.output.dir = str((out / label).absolute())
        studies.append(Study(label, configure(cfg)))
    return studies


def expand(paths: list[str], out: Path | None, configure: Callable[[Config], Config]) -> tuple[list[Study], Path]:
    """The studies the command line names, in order, and the folder for ``summary.csv``: a sweep file's studies
    go under its output folder; several configs (or study names) each go to their own output folder (under
    ``out`` when given). Every study is built and configured before any of them runs."""
    studies: list[Study] = []
    summary_dir = None
    for path in paths:
        if is_sweep(path):
            batch = read_sweep(path, out, configure)
            summary_dir = summary_dir or batch[0].cfg.output_dir().parent  # (absolute: set by read_sweep)
            studies += batch
        else:
            cfg = load_study(path)
            if out is not None and len(paths) > 1:
                cfg.output.dir = str((out / cfg.name).absolute())
            elif out is not None:
                cfg.output.dir = str(out.absolute())
            studies.append(Study(cfg.name, configure(cfg)))
    outs = [s.cfg.output_dir().resolve() for s in studies]
    dup = next((s.label for s, o in zip(studies, outs) if outs.count(o) > 1), None)
    if dup is not None:
        raise ConfigError(f"two studies would write to the same folder ({dup}): give each config its own output.dir, "
                          "or --out to put each under <out>/<config name>")
    if summary_dir is None:
        summary_dir = out if out is not None else Path.cwd() / "runs"
    return studies, summary_dir


def _summary_row(study: Study, error: str | None) -> dict[str, Any]:
    out = study.cfg.output_dir()
    if error is not None:
        return {"study": study.label, "out": str(out), "error": error}
    info = read_summary(out)  # the schema rba run writes it by
    return {"study": study.label, "out": str(out)} | {k: info.get(k) for k in SUMMARY_COLUMNS[2:-1]}


def write_summary(studies: list[Study], folder: Path, failed: dict[str, str] | None = None) -> Path:
    """``summary.csv`` (one row per study: its export and the rule's numbers; a study that failed, by label in
    ``failed``, has its error instead) and ``fronts.png`` (every finished study's front, quality against cost)
    in ``folder``. Returns the CSV's path."""
    from matplotlib.figure import Figure  # lazy: matplotlib loads with the first plot

    folder.mkdir(parents=True, exist_ok=True)
    failed = failed or {}
    table = pd.DataFrame([_summary_row(s, failed.get(s.label)) for s in studies], columns=SUMMARY_COLUMNS)
    with atomic_path(folder / "summary.csv") as tmp:
        table.to_csv(tmp, index=False)
    done = [(k, study, row) for k, (study, row) in enumerate(zip(studies, table.itertuples()))
            if study.label not in failed]
    if not done:
        return folder / "summary.csv"
    fig = Figure(figsize=(7.5, 5.0), layout="constrained")
    ax = fig.subplots()
    quality, cost = done[0][2].quality, done[0][2].cost
    for k, study, row in done:
        front = pd.read_csv(study.cfg.output_dir() / "pareto.csv")
        ref = front[front["state"] == "REFERENCE"]
        front = front[front["state"] != "REFERENCE"].sort_values(cost)
        if quality not in front or cost not in front:
            continue
        ax.step(front[cost], front[quality], where="post", color=f"C{k % 10}", lw=1, zorder=2)
        ax.scatter(front[cost], front[quality], s=16, color=f"C{k % 10}", label=study.label, zorder=3)
        if isinstance(row.export_spans, str) and not (isinstance(row.export_cost, float) and math.isnan(row.export_cost)):
            ax.scatter([row.export_cost], [row.export_quality], s=90, facecolors="none", edgecolors=f"C{k % 10}",
                       lw=1.5, zorder=4)
        if len(ref):
            ax.scatter(ref[cost], ref[quality], marker="*", s=120, color="gold", edgecolors="k", zorder=5,
                       label="unmodified model" if k == 0 else None)
    ax.set_xlabel(AXIS_LABELS.get(cost, cost))
    ax.set_ylabel(AXIS_LABELS.get(quality, quality))
    ax.set_title(f"{len(done)} studies: fronts (circled: each study's export)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    with atomic_path(folder / "fronts.png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    return folder / "summary.csv"
