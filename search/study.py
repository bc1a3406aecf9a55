"""A search study from start to files: session → objective → study (identity, resume) → proposals → backend
→ trials.csv / trials.parquet / pareto.csv / pareto.png / config.resolved.toml / run.json / study.json.

Every method runs inside one Optuna study in the output folder (sqlite unless ``search.storage`` says
otherwise), so resuming, the tables and the front work the same for the samplers and the baselines:

* ``optuna``: the configured sampler proposes; priors (if on) are enqueued first.
* ``exhaustive`` / ``random`` / ``br-greedy`` / ``block-drop``: the configurations are planned up front and
  enqueued; the trials run them in order.

**Study identity**: a hash of model, data, fit, evaluation head, objectives, budgets and search space (method,
max_span, valid spans, screening). The same identity resumes; ``trials`` is the total number of completed
trials; trials a kill left RUNNING are marked FAIL and their configuration is enqueued again. A different
identity in the same folder (or under the same study name in the storage) is refused, naming the keys that
differ.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from rba._io import atomic_path, atomic_write_json, atomic_write_text
from rba.config import Config, config_hash
from rba.errors import ConfigError, RBAError
from rba.spans import format_spans, parse_spans
from search.baselines import (EXHAUSTIVE_LIMIT, block_drop_order, br_greedy, front_priors, prior_configurations,
                              span_scores)
from search.objective import OBJECTIVES, RESULT_COLUMNS, Objective
from search.samplers import make_sampler
from search.space import SpanSpace

__all__ = ["StudyContext", "SearchResult", "run_search", "run_study", "prepare", "study_identity", "open_study",
           "IdentityError"]

IDENTITY_ATTR = "rba_identity"


class IdentityError(RBAError):
    """The output folder or the storage holds a study with a different identity."""


class TrialFailure(Exception):
    """A trial raised something other than a user error: recorded as FAIL, the study goes on."""


@dataclass
class StudyContext:
    cfg: Config
    session: Any
    objective: Objective
    space: SpanSpace
    out: Path
    storage_url: str
    study_name: str
    identity: dict[str, Any]
    method: str
    progress: bool = True
    table: pd.DataFrame | None = None
    screen: Any = None
    started: float = field(default_factory=time.time)

    @property
    def total(self) -> int:
        return int(self.cfg.search.trials)


@dataclass
class SearchResult:
    out: Path
    trials: pd.DataFrame
    front: pd.DataFrame
    study_name: str
    storage: str
    identity: dict[str, Any]
    context: StudyContext
    wall_s: float = 0.0


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------- identity
def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def study_identity(cfg: Config, session, *, kind: str, method: str) -> dict[str, Any]:
    """What makes two runs the same study (see the module docstring)."""
    import dataclasses

    data = dataclasses.asdict(cfg.data)
    if data.get("path"):
        data["path"] = str(cfg.resolve_path(data["path"]))
    s = cfg.search
    return _plain({
        "model": session.adapter.identity,
        "data": data,
        "fit": {"kind": kind, "ridge": cfg.fit.ridge, "mode": cfg.fit.mode,
                "capture_dtype": cfg.capture.dtype},
        "evaluate": {"head": cfg.evaluate.head, "probe_c": cfg.evaluate.probe_c},
        "objectives": list(s.objectives),
        "budgets": {"flops": s.budget_flops, "params": s.budget_params, "latency": s.budget_latency},
        "space": {"method": method, "max_span": s.max_span, "pairs": [list(p) for p in session.pairs],
                  "screening": s.screening},
    })


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out |= _flatten(v, f"{prefix}{k}.")
        return out
    return {prefix.rstrip("."): d}


def identity_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    a, b = _flatten(old), _flatten(new)
    lines = []
    for key in sorted(set(a) | set(b)):
        if a.get(key, "<unset>") != b.get(key, "<unset>"):
            lines.append(f"{key}: {_short(a.get(key, '<unset>'))} → {_short(b.get(key, '<unset>'))}")
    return lines


def _short(v: Any) -> str:
    s = json.dumps(v, default=str)
    return s if len(s) <= 60 else s[:57] + "..."


def _refuse(where: str, old: dict[str, Any], new: dict[str, Any]) -> IdentityError:
    diff = identity_diff(old, new)
    keys = ", ".join(line.split(":", 1)[0] for line in diff)
    detail = "; ".join(diff[:8]) + (f"; and {len(diff) - 8} more" if len(diff) > 8 else "")
    return IdentityError(
        f"{where} holds a study with a different identity (differing keys: {keys}): {detail}. "
        "Use another --out (or --study-name with its own --storage), or delete the old study to start over"
    )


# ---------------------------------------------------------------------- setup
def needs_labels(cfg: Config) -> bool | None:
    """Accuracy is computed when it is an objective or costs nothing per trial (fixed-probe, native head);
    a fidelity-only study with the default probe head leaves it empty (a probe fit per trial is the
    most expensive part of a trial)."""
    if "accuracy" in cfg.search.objectives or cfg.evaluate.head in ("fixed-probe", "native"):
        return None
    return False


def prepare(cfg: Config, *, progress: bool = True, session=None, objective: Objective | None = None) -> StudyContext:
    """Session, objective, space and identity for ``cfg``; checks that the study can run at all.

    ``objective`` (optional) reuses an :class:`Objective` (and its memo) built on ``session`` for the same fit
    kind and objectives, e.g. to run several searches over one set of evaluations."""
    from rba.session import Session

    s = cfg.search
    method = s.method
    kind = "identity" if method == "block-drop" else cfg.fit.kind
    if method == "block-drop" and cfg.fit.kind != "identity":
        _log(f"block-drop: spans are replaced by the identity (fit kind \"identity\" instead of {cfg.fit.kind!r})")
    if session is None:
        session = Session(cfg, need_labels=needs_labels(cfg), progress=progress)
    if objective is None or objective.session is not session:
        objective = Objective(session, kind=kind)
    elif (objective.kind, objective.objectives, objective.budgets) != (kind, list(s.objectives),
                                                                         Objective(session, kind=kind).budgets):
        raise ConfigError("the objective passed to run_search does not match the config (fit kind, objectives, budgets)")
    objective.check()
    space = SpanSpace(session.adapter.num_blocks, session.pairs)
    out = cfg.output_dir()
    out.mkdir(parents=True, exist_ok=True)
    storage = s.storage or f"sqlite:///{(out / 'study.db').resolve()}"
    name = s.study_name or "rba"
    identity = study_identity(cfg, session, kind=kind, method=method)
    ctx = StudyContext(cfg=cfg, session=session, objective=objective, space=space, out=out, storage_url=storage,
                       study_name=name, identity=identity, method=method, progress=progress)
    if method == "exhaustive" and space.count() > EXHAUSTIVE_LIMIT:
        raise ConfigError(
            f"--method exhaustive: {space.count():,} configurations ({space.describe()}) exceed the limit of "
            f"{EXHAUSTIVE_LIMIT:,}; lower search.max_span, or use --method optuna or random"
        )
    if s.backend == "ray" and s.n_jobs != 1:
        _log("note: search.n_jobs is ignored by the ray backend (use --max-concurrent)")
    return ctx


def _storage(url: str):
    from search._storage import open_storage

    return open_storage(url)


def open_study(ctx: StudyContext, sampler=None):
    """Create or resume the study; refuse a different identity; fail and re-enqueue RUNNING leftovers."""
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    marker = ctx.out / "study.json"
    if marker.exists():
        try:
            old = json.loads(marker.read_text())
        except json.JSONDecodeError:
            old = None
        if old is not None and old.get("identity") != ctx.identity:
            raise _refuse(f"output folder {ctx.out}", old.get("identity", {}), ctx.identity)
    storage = _storage(ctx.storage_url)
    directions = ctx.objective.directions
    existing = {s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    fresh = ctx.study_name not in existing
    if not fresh:
        study = optuna.load_study(study_name=ctx.study_name, storage=storage, sampler=sampler)
        old = study.user_attrs.get(IDENTITY_ATTR)
        if old is None:
            raise IdentityError(f"storage {ctx.storage_url} already holds a study {ctx.study_name!r} that rba did not "
                                "create: choose another --study-name or --storage")
        if old != ctx.identity:
            raise _refuse(f"study {ctx.study_name!r} in {ctx.storage_url}", old, ctx.identity)
    else:
        study = optuna.create_study(storage=storage, study_name=ctx.study_name, directions=directions,
                                    sampler=sampler)
        study.set_user_attr(IDENTITY_ATTR, ctx.identity)
        study.set_user_attr("rba_identity_hash", config_hash(ctx.identity))
    atomic_write_json(marker, {"identity": ctx.identity, "identity_hash": config_hash(ctx.identity),
                               "study_name": ctx.study_name, "storage": ctx.storage_url})
    # a kill leaves trials RUNNING: they become FAIL and their configuration runs again
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_user_attr(t._trial_id, "error", "interrupted: left RUNNING by a killed run")
        study.tell(t.number, state=TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"source": f"rerun of trial {t.number}"})
        _log(f"resume: trial {t.number} ({t.user_attrs.get('spans', '?')}) was left running; marked FAIL, rerun")
    return study, fresh


def complete_count(study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def _waiting_spans(ctx: StudyContext, study) -> set[str]:
    from optuna.trial import TrialState

    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    return {format_spans(ctx.space.repair(t.system_attrs.get("fixed_params", t.params))) for t in waiting}


def plan(ctx: StudyContext, study, fresh: bool) -> int:
    """Enqueue the planned configurations (priors, or the baseline's list); returns how many trials to run
    (for ``optuna``: up to the total; for baselines: the planned configurations not yet complete)."""
    from optuna.trial import TrialState

    cfg = ctx.cfg
    if ctx.table is None:
        ctx.table = span_scores(ctx.session.stats, ctx.session.pairs, cfg.fit.ridge)
    done = {t.user_attrs.get("spans") for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    waiting = _waiting_spans(ctx, study)
    method = ctx.method
    if method == "optuna":
        planned = (prior_configurations(ctx.table, front_priors(ctx.table, ctx.objective))
                   if (cfg.search.priors and fresh) else [])
        planned = [(f"prior: {label}", s) for label, s in planned][: max(0, ctx.total - len(done))]
    elif method == "exhaustive":
        planned = [("exhaustive", s) for s in ctx.space.configurations()]
    elif method == "random":
        planned = [("random", s) for s in ctx.space.sample(cfg.search.trials, seed=cfg.search.seed)]
    elif method == "br-greedy":
        planned = [(f"br-greedy {len(s)}", s) for s in br_greedy(ctx.table)]
    elif method == "block-drop":
        planned = [(f"block-drop {len(s)}", s) for s in block_drop_order(ctx.session.stats, ctx.session.pairs)]
    else:
        raise ConfigError(f"unknown search.method {method!r}")
    for label, spans in planned:
        key = format_spans(spans)
        if key in done or key in waiting:
            continue
        study.enqueue_trial(ctx.space.encode(spans), user_attrs={"source": label})
        waiting.add(key)
    if method == "optuna":
        return max(0, ctx.total - complete_count(study))
    if method != "optuna" and ctx.total != len(planned) and method != "random":
        _log(f"{method}: {len(planned)} planned configurations (search.trials does not apply)")
    return len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


# ---------------------------------------------------------------------- recording a trial
def record(trial, result: dict[str, Any], objective: Objective) -> None:
    """Result columns as user attributes, budgets as Optuna constraints (set before the trial is told)."""
    trial.set_user_attr("result", {c: result[c] for c in RESULT_COLUMNS[1:]} | {"feasible": bool(result["feasible"])})
    for name, value in result["constraints"].items():
        trial.set_constraint(name, float(value))


def record_screened(trial, spans, proxy: float, objective: Objective) -> None:
    cost = objective.cost(spans)
    constraints = objective.constraints(cost)
    trial.set_user_attr("result", {c: cost[c] for c in ("flops", "flops_frac", "params", "params_frac", "latency_ms")}
                        | {"feasible": all(v <= 0 for v in constraints.values()), "proxy": proxy})
    for name, value in constraints.items():
        trial.set_constraint(name, float(value))


# ---------------------------------------------------------------------- the whole search
def run_search(cfg: Config, progress: bool = True, *, session=None, objective: Objective | None = None) -> SearchResult:
    """Run (or resume) the study that ``cfg`` describes and write its files; returns tables and context.

    ``session`` / ``objective``: reuse ones built earlier (``rba run``, benchmarks); by default both are built
    from ``cfg``."""
    t0 = time.time()
    ctx = prepare(cfg, progress=progress, session=session, objective=objective)
    if progress:
        _log(f"search: {ctx.space.describe()}; method {ctx.method}, backend {cfg.search.backend}, "
             f"objectives {', '.join(ctx.objective.objectives)}; output {ctx.out}")
    sampler = make_sampler(cfg, ctx.method)
    study, fresh = open_study(ctx, sampler)
    if cfg.search.screening:
        from search.screening import Screen

        ctx.screen = Screen(ctx.objective)
        ctx.screen.seed([parse_spans(s) for s in _complete_spans(study)])
    n = plan(ctx, study, fresh)
    if not fresh and progress:
        _log(f"resume: {complete_count(study)} of {ctx.total if ctx.method == 'optuna' else 'planned'} trials "
             f"complete; running {n} more")
    if n > 0:
        if cfg.search.backend == "ray":
            from search.ray_backend import run_ray

            run_ray(ctx, study, n, sampler)
        else:
            from search.optuna_backend import run_optuna

            run_optuna(ctx, study, n)
    result = finish(ctx, study)
    result.wall_s = time.time() - t0
    return result


def _complete_spans(study) -> list[str]:
    from optuna.trial import TrialState

    return [t.user_attrs["spans"] for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if "spans" in t.user_attrs]


def finish(ctx: StudyContext, study) -> SearchResult:
    """Write the tables, the plot and the run records."""
    from search.pareto import front_frame, plot_front, trials_frame, write_tables

    trials = trials_frame(study)
    front = front_frame(study, trials)
    write_tables(ctx.out, trials, front)
    reference = None
    try:
        reference = ctx.objective([])
    except Exception as exc:  # the plot goes on without the reference point
        _log(f"warning: could not evaluate the unmodified model for the plot: {exc}")
    baselines = {}
    if ctx.table is not None:
        greedy = [format_spans(s) for s in br_greedy(ctx.table)]
        rows = trials[trials["spans"].isin(greedy) & (trials["state"] == "COMPLETE")].drop_duplicates("spans")
        if len(rows) >= 2:
            baselines["BR-greedy"] = rows
    title = (f"{ctx.session.adapter.describe()}: {ctx.method}"
             + (f" ({ctx.cfg.search.sampler})" if ctx.method == "optuna" else "")
             + f", {int((trials['state'] == 'COMPLETE').sum())} trials")
    plot_front(ctx.out / "pareto.png", trials, front, objective_columns=ctx.objective.columns,
               budgets=ctx.objective.budgets, reference=reference, baselines=baselines, title=title)
    ctx.session.write_run_info(ctx.out, command="search", study={
        "name": ctx.study_name, "storage": ctx.storage_url, "method": ctx.method,
        "backend": ctx.cfg.search.backend, "sampler": ctx.cfg.search.sampler,
        "identity_hash": config_hash(ctx.identity), "trials_complete": int((trials["state"] == "COMPLETE").sum()),
        "front_size": len(front), "space": ctx.space.describe(),
        "screened_out": getattr(ctx.screen, "screened_out", 0),
    })
    if ctx.progress:
        cols = ["spans"] + [c for c in ctx.objective.columns if c != "spans"]
        if len(front):
            _log(front[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        _log(f"search: {len(trials)} trials, front of {len(front)}; wrote {ctx.out}/trials.csv, trials.parquet, "
             "pareto.csv, pareto.png")
    return SearchResult(out=ctx.out, trials=trials, front=front, study_name=ctx.study_name,
                        storage=ctx.storage_url, identity=ctx.identity, context=ctx)


# ---------------------------------------------------------------------- rba run
def _choose(front: pd.DataFrame, objectives: list[str]) -> pd.Series | None:
    """The front member with the best accuracy (else the best first objective), "none" only if alone."""
    if not len(front):
        return None
    cand = front[front["spans"] != "none"]
    cand = cand if len(cand) else front
    name = "accuracy" if "accuracy" in objectives else objectives[0]
    col, direction = OBJECTIVES[name]
    ranked = cand.sort_values([col, "flops_frac"], ascending=[direction == "minimize", True])
    return ranked.iloc[0]


def run_study(cfg: Config, progress: bool = True) -> Path:
    """``rba run``: scores → search → export of the chosen front member → report.md. Returns the report."""
    from rba.export import export_model
    from rba.metrics._table import plot_scores, score_table
    from rba.session import Session

    t0 = time.time()
    out = cfg.output_dir()
    out.mkdir(parents=True, exist_ok=True)
    session = Session(cfg, need_labels=needs_labels(cfg), progress=progress)
    table = score_table(session.stats, cfg.fit.ridge)
    with atomic_path(out / "scores.csv") as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    plot_scores(table, out / "scores.png", title=f"{session.adapter.describe()}, n = {session.stats.n} vectors")
    result = run_search(cfg, progress=progress, session=session)
    ctx = result.context
    chosen = _choose(result.front, ctx.objective.objectives)
    lines = [f"# rba study: {cfg.name}", "",
             f"- model: {session.adapter.describe()}",
             f"- data: {cfg.data.kind} {cfg.data.path or ''} (calibration {len(session.splits.calibration)}, "
             f"probe {len(session.splits.probe)}, eval {len(session.splits.eval)})",
             f"- fit: {ctx.objective.kind}, mode {cfg.fit.mode}, ridge {cfg.fit.ridge:g}",
             f"- search: {ctx.method} ({cfg.search.backend}, sampler {cfg.search.sampler}), objectives "
             f"{', '.join(ctx.objective.objectives)}, budgets {ctx.objective.budgets or 'none'}; {ctx.space.describe()}",
             f"- trials: {int((result.trials['state'] == 'COMPLETE').sum())} complete of {len(result.trials)}; "
             f"front: {len(result.front)} configurations", "",
             "Files: scores.csv, scores.png, trials.csv, trials.parquet, pareto.csv, pareto.png, "
             "config.resolved.toml, run.json" + (", export/" if chosen is not None else ""), "",
             "## Front", "", _markdown(result.front), ""]
    if chosen is not None:
        spans = parse_spans(chosen["spans"])
        folder = export_model(session, spans, out / "export", kind=ctx.objective.kind, mode=ctx.objective.mode)
        measured = session.evaluate_export(folder)
        lines += ["## Exported configuration", "",
                  f"`{chosen['spans']}` (best {'accuracy' if 'accuracy' in ctx.objective.objectives else ctx.objective.objectives[0]} "
                  f"on the front), written to `export/` (model.safetensors + recipe.json). Reloaded and evaluated "
                  "end to end (latency measured, not modelled):", "",
                  _markdown(pd.DataFrame([{"source": "search (modelled latency)"} | {c: chosen[c] for c in RESULT_COLUMNS}]
                                         + [{"source": "export (measured)"} | {c: measured.get(c) for c in RESULT_COLUMNS}])), ""]
    else:
        lines += ["No feasible configuration: nothing exported.", ""]
    lines += [f"Wall time: {time.time() - t0:.1f} s.", ""]
    report = out / "report.md"
    atomic_write_text(report, "\n".join(lines))
    if progress:
        _log(f"run: wrote {report}")
    return report


def _markdown(df: pd.DataFrame) -> str:
    if not len(df):
        return "(empty)"
    cols = list(df.columns)

    def fmt(v):
        if isinstance(v, float):
            return "" if math.isnan(v) else (f"{v:.4g}" if abs(v) < 1e5 else f"{v:.3e}")
        return str(v)

    rows = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    rows += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in df.itertuples(index=False)]
    return "\n".join(rows)
