"""A search study from start to files: session → objective → study (identity, resume) → proposals → backend
→ trials.csv / trials.parquet / pareto.csv / pareto.png / config.resolved.toml / run.json / study.json.

Every method runs inside one Optuna study in the output folder (sqlite unless ``search.storage`` says
otherwise), so resuming, the tables and the front work the same for the samplers and the baselines:

* ``optuna``: the configured sampler proposes; priors (``search.priors``) are enqueued first.
* the baselines (``rba ls methods``: exhaustive, random, br-greedy, proxy-front, shortgpt / block-drop,
  shortgpt-affine, sleb, gromov, gromov-affine, random-lesions): the configurations are planned up front and
  enqueued; the trials run them in order.

Each method is an entry of :mod:`rba.methods` (its planner in :mod:`search.methods`, its fit kind: the
block-removal baselines replace spans by the identity).

**Study identity** (:mod:`search.identity`): the same identity resumes; ``trials`` is the total number of
completed trials, shared by every process working on the study. Trials whose process died are failed and
their configuration runs again (:mod:`search._storage`); a different identity in the same folder (or under the
same study name in the storage) is refused, naming the keys that differ.

Modules: this one plans and runs; :mod:`search.recording` holds what the backends share, :mod:`search.report`
writes the files at the end. The backends import from those, never from here.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import optuna
import pandas as pd
from optuna.trial import TrialState
from sqlalchemy.exc import DBAPIError

from rba.config import Config, config_hash
from rba.errors import ConfigError, RBAError
from rba.files import atomic_path, atomic_write_json, refuse_other_work
from rba.methods import get_method
from rba.metrics import plot_scores, score_table
from rba.progress import info, phase
from rba.session import Session
from rba.spans import format_spans, parse_spans
from search._storage import (
    heartbeat_interval,
    live_trials,
    open_storage,
    recorded_storage,
    recover_abandoned,
    register_worker,
    storage_error,
)
from search.baselines import span_scores
from search.identity import IDENTITY_ATTR, IdentityError, refusal, study_identity
from search.methods import within_space
from search.objective import Objective
from search.optuna_backend import run_optuna
from search.recording import SearchResult, StudyContext, complete_count, completed, needs_labels
from search.report import finish, write_report
from search.samplers import make_sampler
from search.screening import Screen

__all__ = ["run_search", "run_study", "prepare", "check_inputs", "open_study", "plan", "storage_url", "StudyBusyError",
           "StudyFileError"]


class StudyBusyError(RBAError):
    """Another process is working on the study, and this run cannot share it."""


class StudyFileError(RBAError):
    """A study file in the output folder cannot be read."""


def storage_url(cfg: Config) -> str:
    """``search.storage``, or the SQLite file ``study.db`` in the output folder."""
    return cfg.search.storage or f"sqlite:///{(cfg.output_dir() / 'study.db').resolve()}"


def _open_storage(cfg: Config):
    # Optuna records heartbeats only inside study.optimize; the Ray backend asks and tells
    return open_storage(storage_url(cfg), heartbeats=cfg.search.backend != "ray")


def _read_marker(path: Path) -> dict | None:
    """``study.json`` (the identity, study name and storage of the folder's study), or None when absent."""
    if not path.exists():
        return None
    try:
        marker = json.loads(path.read_text())
        if not isinstance(marker, dict) or not isinstance(marker.get("identity"), dict):
            raise ValueError("no identity in it")
        return marker
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise StudyFileError(f"{path} cannot be read ({str(exc).splitlines()[0]}): it only repeats the identity stored "
                             "in the study itself; delete it and rerun to resume the study, or use another --out") from None


def check_inputs(cfg: Config):
    """What can be checked before any long work: the heartbeat setting, the Ray address, ``study.json`` and the
    storage (opened when it is named or already exists; a new default ``study.db`` is created only later).
    Returns the open storage, or None."""
    heartbeat_interval()
    if cfg.search.backend == "ray" and cfg.search.ray_address:
        from search.ray_backend import check_address  # lazy: ray loads only for --backend ray

        check_address(cfg.search.ray_address)
    refuse_other_work(cfg.output_dir(), "study", "a study (`rba search` / `rba run`)")
    _read_marker(cfg.output_dir() / "study.json")
    if not (cfg.search.storage or (cfg.output_dir() / "study.db").exists()):
        return None
    storage = _open_storage(cfg)
    try:
        optuna.get_all_study_names(storage)
    except (DBAPIError, optuna.exceptions.StorageInternalError) as exc:
        raise storage_error(storage_url(cfg), exc) from None
    return storage


# ---------------------------------------------------------------------- setup
def prepare(cfg: Config, *, progress: bool = True, session=None, objective: Objective | None = None) -> StudyContext:
    """Session, objective, space and identity for ``cfg``; checks that the study can run at all.

    ``objective`` (optional) reuses an :class:`Objective` (and its memo) built on ``session`` for the same fit
    kind and objectives, e.g. to run several searches over one set of evaluations."""

    s = cfg.search
    method = s.method
    spec = get_method(method)
    kind = spec.fit_kind(cfg.fit.kind)
    if kind != cfg.fit.kind:
        info(f"{method}: spans are replaced by the identity (fit kind {kind!r} instead of {cfg.fit.kind!r})",
             enabled=progress)
    if session is None:
        session = Session(cfg, need_labels=needs_labels(cfg), progress=progress)
    if objective is None or objective.session is not session:
        objective = Objective(session, kind=kind)
    elif (objective.kind, objective.objectives, objective.budgets) != (kind, list(s.objectives),
                                                                         Objective(session, kind=kind).budgets):
        raise ConfigError("the objective passed to run_search does not match the config (fit kind, objectives, budgets)")
    objective.check()
    space = objective.space  # what the fit kind can replace (a fold: a kept block before each span)
    out = cfg.output_dir()
    out.mkdir(parents=True, exist_ok=True)
    storage = storage_url(cfg)
    name = s.study_name or "rba"
    identity = study_identity(cfg, session, kind=kind, method=method)
    ctx = StudyContext(cfg=cfg, session=session, objective=objective, space=space, out=out, storage_url=storage,
                       study_name=name, identity=identity, method=method, progress=progress)
    spec.check_study(ctx)
    return ctx


def open_study(ctx: StudyContext, sampler=None):
    """Create or resume the study; refuse a different identity; rerun the trials of local runs that died.
    Returns ``(study, fresh)``; the storage is kept in ``ctx.storage``."""
    marker = ctx.out / "study.json"
    old = _read_marker(marker)
    if old is not None and old["identity"] != ctx.identity:
        raise refusal(f"output folder {ctx.out}", old["identity"], ctx.identity)
    if ctx.storage is None:
        ctx.storage = _open_storage(ctx.cfg)
    storage = ctx.storage
    try:
        study = optuna.create_study(storage=storage, study_name=ctx.study_name, directions=ctx.objective.directions,
                                    sampler=sampler)
        fresh = True
        with warnings.catch_warnings():  # experimental since Optuna 3.2, and unchanged since
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(ctx.objective.columns)  # optuna-dashboard labels the objectives with them
        study.set_user_attr(IDENTITY_ATTR, ctx.identity)
        study.set_user_attr("rba_identity_hash", config_hash(ctx.identity))
    except optuna.exceptions.DuplicatedStudyError:
        fresh = False
        study = optuna.load_study(study_name=ctx.study_name, storage=storage, sampler=sampler)
        old = _stored_identity(study)
        if old is None:
            raise IdentityError(f"storage {ctx.storage_url} already holds a study {ctx.study_name!r} that rba did not "
                                "create: choose another --study-name or --storage") from None
        if old != ctx.identity:
            raise refusal(f"study {ctx.study_name!r} in {ctx.storage_url}", old, ctx.identity) from None
    atomic_write_json(marker, {"identity": ctx.identity, "identity_hash": config_hash(ctx.identity),
                               "study_name": ctx.study_name, "storage": recorded_storage(ctx.cfg.search.storage)})
    register_worker(study)
    for number in recover_abandoned(study, storage):
        info(f"resume: trial {number} was left running by a process that has ended; marked FAIL, rerun",
             enabled=ctx.progress)
    return study, fresh


def _stored_identity(study, wait_s: float = 5.0):
    """The identity stored in ``study``, waiting briefly for a process that has just created the study to
    write it (create and set_user_attr are two transactions)."""
    deadline = time.time() + wait_s
    while True:
        old = study.user_attrs.get(IDENTITY_ATTR)
        if old is not None or time.time() >= deadline:
            return old
        time.sleep(0.2)


def _refuse_if_shared(ctx: StudyContext, study) -> None:
    """Under Ray, trials are asked and told by the driver without heartbeats, so a dead driver's trial could
    not be told from a live one on another host: a Ray run does not share its study."""

    live = live_trials(study)
    if live:
        workers = sorted({str(t.user_attrs.get("worker", "unknown")) for t in live})
        raise StudyBusyError(
            f"study {ctx.study_name!r} in {ctx.storage_url} is being run by another process ({', '.join(workers)}; "
            f"{len(live)} trial(s) running): --backend ray does not share a study. Wait for it to finish, use "
            "--backend optuna to add a worker, or another --out / --study-name")


def _waiting_spans(ctx: StudyContext, study) -> set[str]:
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    return {format_spans(ctx.space.repair(t.system_attrs.get("fixed_params", t.params))) for t in waiting}


def plan(ctx: StudyContext, study, fresh: bool) -> int:
    """Enqueue the planned configurations (priors, or the baseline's list); returns how many trials to run
    (for ``optuna``: up to the total; for baselines: the planned configurations not yet complete)."""
    cfg = ctx.cfg
    if ctx.table is None:
        ctx.table = span_scores(ctx.session.stats, ctx.space.pairs, cfg.fit.ridge)
    done = set(completed(study))
    waiting = _waiting_spans(ctx, study)
    spec = get_method(ctx.method)
    planned = spec.plan(ctx, fresh)
    if spec.sampled:
        planned = planned[: max(0, ctx.total - len(done))]
    planned, unfit = within_space(ctx, planned)
    if unfit:
        info(f"{ctx.method}: {len(unfit)} planned configuration(s) left out ({', '.join(unfit[:3])}"
             f"{', ...' if len(unfit) > 3 else ''}): fit kind {ctx.objective.kind!r} cannot replace them",
             enabled=ctx.progress)
    for label, spans in planned:
        key = format_spans(spans)
        if key in done or key in waiting:
            continue
        study.enqueue_trial(ctx.space.encode(spans), user_attrs={"source": label})
        waiting.add(key)
    if spec.sampled:
        return max(0, ctx.total - complete_count(study))
    if ctx.total != len(planned) and not spec.uses_trials:
        info(f"{ctx.method}: {len(planned)} planned configurations (search.trials does not apply)",
             enabled=ctx.progress)
    return len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


# ---------------------------------------------------------------------- the whole search
def run_search(cfg: Config, progress: bool = True, *, session=None, objective: Objective | None = None) -> SearchResult:
    """Run (or resume) the study that ``cfg`` describes and write its files; returns tables and context.

    ``session`` / ``objective``: reuse ones built earlier (``rba run``, benchmarks); by default both are built
    from ``cfg``."""
    t0 = time.time()
    storage = check_inputs(cfg)
    ctx = prepare(cfg, progress=progress, session=session, objective=objective)
    ctx.storage = storage
    info(f"search: {ctx.space.describe()}; method {ctx.method}, backend {cfg.search.backend}, "
         f"objectives {', '.join(ctx.objective.objectives)}; output {ctx.out}", enabled=progress)
    if cfg.search.early_stop and (cfg.search.backend == "ray" or ctx.method != "optuna"):
        info("search: early_stop applies to method optuna on the optuna backend; these trials run in full",
             enabled=progress)
    with _optuna_errors_only():
        sampler = make_sampler(cfg, ctx.method)
        before = {p for p in _study_files(ctx) if p.exists()}
        study = None
        try:
            study, fresh = open_study(ctx, sampler)
            if cfg.search.backend == "ray":
                _refuse_if_shared(ctx, study)
            if cfg.search.screening:

                ctx.screen = Screen(ctx.objective)
                ctx.screen.seed([parse_spans(s) for s in _complete_spans(study)])
            n = plan(ctx, study, fresh)
            if not fresh:
                info(f"resume: {complete_count(study)} of {ctx.total if ctx.method == 'optuna' else 'planned'} trials "
                     f"complete; running {n} more", enabled=progress)
            if n > 0:
                # the cost model (FLOPs, per-block latency) and the evaluation caches (a forward pass over the eval and
                # probe splits), built here with their own lines rather than inside the first trial, whose time would
                # otherwise mislead the ETA (Ray's workers build their own caches)
                ctx.session.cost_model  # noqa: B018  (a cached property: read to build it, as said above)
                if cfg.search.backend != "ray":
                    ctx.session.evaluator  # noqa: B018  (the same)
                if cfg.search.backend == "ray":
                    from search.ray_backend import run_ray  # lazy: ray loads only for --backend ray

                    run_ray(ctx, study, n, sampler)
                else:

                    run_optuna(ctx, study, n)
        except BaseException:
            if study is not None and fresh and _never_ran(study):
                _forget(ctx, study, keep=before)
            raise
        with phase("search: tables and front plot", enabled=progress):
            result = finish(ctx, study)
    result.wall_s = time.time() - t0
    return result


@contextmanager
def _optuna_errors_only() -> Iterator[None]:
    """Optuna's own log at ERROR while a search runs (failed trials are reported by the backends, in one line),
    and at the caller's level again afterwards."""
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(before)


def _study_files(ctx: StudyContext) -> list[Path]:
    files = [ctx.out / "study.json"]
    if not ctx.cfg.search.storage:
        files += [ctx.out / name for name in ("study.db", "study.db-wal", "study.db-shm")]
    return files


def _never_ran(study) -> bool:
    return all(t.state == TrialState.WAITING for t in study.get_trials(deepcopy=False))


def _forget(ctx: StudyContext, study, keep: set[Path]) -> None:
    """Undo the creation of a study whose start failed before any trial ran, so that the corrected rerun
    starts afresh instead of meeting the failed attempt's identity."""
    if ctx.cfg.search.storage:
        optuna.delete_study(study_name=ctx.study_name, storage=ctx.storage)
    ctx.storage.engine.dispose()
    for path in _study_files(ctx):
        if path not in keep:
            path.unlink(missing_ok=True)


def _complete_spans(study) -> list[str]:
    return [t.user_attrs["spans"] for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if "spans" in t.user_attrs]


def run_study(cfg: Config, progress: bool = True) -> Path:
    """``rba run``: scores → search → export of the chosen front member → report.md. Returns the report."""

    t0 = time.time()
    load_start = os.getloadavg()[0]
    out = cfg.output_dir()
    out.mkdir(parents=True, exist_ok=True)
    session = Session(cfg, need_labels=needs_labels(cfg), progress=progress)
    session.stats  # noqa: B018  (model load and capture, each shown as it runs)
    with phase("scores: scores.csv, scores.png", enabled=progress):
        table = score_table(session.stats, cfg.fit.ridge)
        with atomic_path(out / "scores.csv") as tmp:
            table.to_csv(tmp, index=False, float_format="%.6g")
        plot_scores(table, out / "scores.png", title=f"{session.adapter.describe()}, n = {session.stats.n} vectors")
    setup_s = time.time() - t0
    before = _completed_before(out)
    result = run_search(cfg, progress=progress, session=session)
    # accuracy of the front, the baselines, the export and its latency: each evaluation counted as it happens
    with phase("report: front accuracy, baselines, export, latency", enabled=progress, unit="evaluations"):
        return write_report(result, started=t0, setup_s=setup_s, completed_before=before, load_start=load_start)


def _completed_before(out: Path) -> int:
    """Completed trials an earlier run of the study left in ``trials.csv`` (0 for a fresh study): the report
    says how many trials this run's search time covers."""
    try:
        return int((pd.read_csv(out / "trials.csv", usecols=["state"])["state"] == "COMPLETE").sum())
    except (OSError, ValueError):
        return 0
