"""Ray Tune backend (``--backend ray``): a function trainable around the shared objective, proposals from
the same Optuna study (space, sampler, storage) as the Optuna backend, through its public ask / tell.

* **Constraints**: a trial's result carries its constraint values (``constraint_<budget>``);
  :class:`SpanSearcher` records them (``set_constraint``) and the result columns (user attributes)
  on the Optuna trial *before* it is told, so budgets work exactly as with the Optuna backend.
* **Shared state**: the driver builds the session once and puts the statistics, the cost model (its latency
  table is measured once, so every worker prices configurations identically) and the config into the object
  store (``tune.with_parameters``). Each worker process rebuilds the model and the evaluator's boundary caches
  of the probe/eval splits once (one forward pass) and keeps them for every trial it runs (actors are
  reused): those caches are L × n × T × D floats (gigabytes for a BERT on 1000+1000 samples) and would
  cost more to ship through the store than to recompute.
* **Cluster**: ``--address`` joins an existing cluster (its workers must be able to import ``rba`` and
  ``search``); otherwise ``ray.init(address="local", num_cpus=os.cpu_count())`` starts a local one, with ``max_concurrent``
  trials each given ``num_cpus // max_concurrent`` CPUs.
* **Failures**: a trial that raises is retried ``max_failures`` times (``FailureConfig``); then it is
  recorded FAIL with its error (user attribute ``error``) and the study goes on. Only distinct completed
  configurations count towards ``trials``; a repeated proposal never reaches a worker (see
  :func:`search.recording.record_duplicate`).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import torch
from optuna.trial import TrialState
from ray import tune
from ray.tune import Callback
from ray.tune.search import Searcher

from rba.config import config_hash
from rba.errors import RBAError
from rba.progress import TrialProgress
from rba.session import Session
from rba.spans import format_spans
from search._storage import worker_label
from search.objective import RESULT_COLUMNS
from search.recording import (
    DUPLICATE_ATTR,
    StudyContext,
    complete_count,
    completed,
    enqueue_unseen,
    log,
    needs_labels,
    record,
    record_duplicate,
    record_screened,
    trial_outcome,
)
from search.space import SpanSpace

_log = logging.getLogger(__name__)

__all__ = ["run_ray", "SharedState"]


@dataclass
class SharedState:
    """What every worker needs, shipped once through the object store."""

    cfg: Any
    stats: Any
    cost_model: Any
    #: the driver's objective class (a subclass of :class:`~search.objective.Objective` runs as itself)
    objective_type: type
    kind: str
    key: str
    num_blocks: int
    pairs: list
    threads: int
    gap: int = 0


_WORKER_OBJECTIVES: dict[str, Any] = {}
#: driver side: key → (study context, completion callback), kept out of the pickled searcher
_DRIVER: dict[str, tuple[StudyContext, Any, int]] = {}


def _worker_objective(shared: SharedState):
    """The worker process's objective for this study, built on its first trial and then reused."""
    objective = _WORKER_OBJECTIVES.get(shared.key)
    if objective is None:

        # the driver's statistics and cost model: no recapture, no re-measurement
        session = Session(shared.cfg, need_labels=needs_labels(shared.cfg), progress=False, stats=shared.stats,
                          cost_model=shared.cost_model)
        objective = shared.objective_type(session, kind=shared.kind)
        _WORKER_OBJECTIVES.clear()
        _WORKER_OBJECTIVES[shared.key] = objective
    return objective


def _trainable(config: dict[str, Any], shared: SharedState) -> None:
    torch.set_num_threads(max(1, shared.threads))
    objective = _worker_objective(shared)
    spans = SpanSpace(shared.num_blocks, shared.pairs, gap=shared.gap).repair(config)
    result = objective(spans)
    report = {c: result[c] for c in RESULT_COLUMNS} | {"feasible": bool(result["feasible"])}
    report |= {f"constraint_{k}": float(v) for k, v in result["constraints"].items()}
    tune.report(report)


class SpanSearcher(Searcher):
    """A Tune ``Searcher`` over the study's Optuna ``ask`` / ``tell`` (public API only): records the repaired
    configuration on ask, and the result columns and constraint values before ``tell``; screening (if on) happens
    here, before a trial reaches a worker. Tune's trial ids map to asked Optuna trials; the Optuna storage holds
    everything a resumed run needs, so :meth:`save` records only which study this is."""

    def __init__(self, *, study, distributions: dict, metric: list[str], mode: list[str], driver_key: str):
        super().__init__(metric=metric, mode=mode)
        self._study = study
        self._distributions = distributions
        self._asked: dict[str, Any] = {}
        self._told: set[str] = set()
        # the study context lives in the driver process; Tune pickles its searcher, so keep a key only
        self._driver_key = driver_key
        self._failed: set[str] = set()
        self._failed_spans: set[str] = set()
        self._worker = worker_label()  # the driver asks and tells every trial

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "w", encoding="utf-8") as f:
            json.dump({"optuna_study": self._study.study_name}, f)

    def restore(self, checkpoint_path: str) -> None:
        pass  # the Optuna storage is the record; rba resumes from it, not from Tune's checkpoint

    @property
    def _ctx(self) -> StudyContext:
        return _DRIVER[self._driver_key][0]

    @property
    def _on_complete(self):
        return _DRIVER[self._driver_key][1]

    @property
    def _target(self) -> int:
        return _DRIVER[self._driver_key][2]

    def _ask(self, trial_id: str) -> dict:
        if trial_id not in self._asked:
            self._asked[trial_id] = self._study.ask(fixed_distributions=self._distributions)
        return dict(self._asked[trial_id].params)

    def _tell(self, trial_id: str, values=None, state=TrialState.COMPLETE) -> None:
        ot_trial = self._asked[trial_id]
        try:
            self._study.tell(ot_trial, values, state=state)
        except (ValueError, RuntimeError) as exc:  # e.g. a NaN value: Optuna refuses it, the trial stays unfinished
            log(f"trial {ot_trial.number}: could not be told ({exc})")
        self._told.add(trial_id)

    def suggest(self, trial_id: str):
        # Tune's num_samples is only an upper bound: the study is done when enough trials COMPLETE, so a
        # failed trial is replaced within the same run
        done = complete_count(self._study)
        if done >= self._target:
            return Searcher.FINISHED
        if self._ctx.method != "optuna" and not self._study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            return Searcher.FINISHED  # a baseline runs its planned configurations only
        live = sum(1 for t in self._asked if t not in self._told)
        if done + live >= self._target:
            return None  # wait for the running trials before proposing more
        for _ in range(1000):
            params = self._ask(trial_id)
            ot_trial = self._asked[trial_id]
            spans = self._ctx.space.repair(params)
            key = format_spans(spans)
            ot_trial.set_user_attr("worker", self._worker)
            ot_trial.set_user_attr("spans", key)
            recorded = completed(self._study)
            if key in recorded:  # a repeat: told with the earlier values, no worker spent; a new configuration next
                if self._ctx.method == "optuna":
                    enqueue_unseen(self._ctx, self._study, recorded, seed=self._ctx.cfg.search.seed + ot_trial.number,
                                   trial=ot_trial)
                values = record_duplicate(ot_trial, recorded[key])
                self._study.tell(ot_trial, values, state=TrialState.COMPLETE)
                del self._asked[trial_id]
                continue
            running = {t.user_attrs.get("spans"): t.number for tid, t in self._asked.items()
                       if tid != trial_id and tid not in self._told}
            if key in running:
                # a repeat of a trial still running: its values are not known yet, so it is told FAIL (samplers
                # skip it) and left out of the tables like any repeat; a new configuration comes next
                if self._ctx.method == "optuna":
                    enqueue_unseen(self._ctx, self._study, set(recorded) | set(running),
                                   seed=self._ctx.cfg.search.seed + ot_trial.number)
                ot_trial.set_user_attr(DUPLICATE_ATTR, int(running[key]))
                self._study.tell(ot_trial, state=TrialState.FAIL)
                del self._asked[trial_id]
                continue
            if key in self._failed_spans and "source" not in ot_trial.user_attrs:
                # it already failed after its retries in this run: do not spend a worker on it again
                ot_trial.set_user_attr("error", "skipped: this configuration failed earlier in this run")
                self._study.tell(ot_trial, state=TrialState.FAIL)
                del self._asked[trial_id]
                continue
            screen = self._ctx.screen
            if screen is None:
                return params
            ok, proxy = screen.admit(spans, force="source" in ot_trial.user_attrs)
            if ok:
                return params
            record_screened(ot_trial, spans, proxy, self._ctx.objective)
            self._study.tell(ot_trial, state=TrialState.PRUNED)
            del self._asked[trial_id]
        return params

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        ot_trial = self._asked.get(trial_id)
        if ot_trial is None or trial_id in self._told:
            return
        if error:
            # told by fail() once the error text is known (the Tune callback runs right after this)
            self._failed.add(trial_id)
            return
        if result and all(c in result for c in RESULT_COLUMNS):
            res = {c: result[c] for c in RESULT_COLUMNS} | {"feasible": bool(result.get("feasible", True))}
            res["constraints"] = {k[len("constraint_"):]: v for k, v in result.items() if k.startswith("constraint_")}
            record(ot_trial, res, self._ctx.objective)
        values = [result.get(m) for m in self.metric] if result else None
        if values is None or any(v is None for v in values):
            self._tell(trial_id, state=TrialState.PRUNED)
        else:
            self._tell(trial_id, values)
        if self._on_complete:
            self._on_complete(ot_trial, "COMPLETE" if result else "PRUNED")

    def fail(self, trial_id: str, message: str) -> None:
        ot_trial = self._asked.get(trial_id)
        if ot_trial is None or trial_id in self._told:
            return
        ot_trial.set_user_attr("error", message)
        self._failed_spans.add(ot_trial.user_attrs.get("spans", ""))
        self._failed.discard(trial_id)
        self._tell(trial_id, state=TrialState.FAIL)
        if self._on_complete:
            self._on_complete(ot_trial, "FAIL")

    def flush(self) -> None:
        for trial_id in list(self._failed):
            self.fail(trial_id, "failed (error text unavailable)")


def _error_text(trial) -> str:
    """The failed trial's traceback text. ``handle_error`` has just written it to the driver's staging
    folder (``trial.error_file``); ``trial.get_error()`` reads the storage copy, which only exists after Tune
    syncs the experiment, so it is the fallback, not the first choice."""
    try:
        local = trial.error_file
        if local and os.path.exists(local):
            with open(local, encoding="utf-8", errors="replace") as f:
                return f.read()
    except Exception:
        pass
    try:
        err = trial.get_error()
        return str(err) if err is not None else ""
    except Exception:
        return ""


class RecordErrors(Callback):
    """Gives the searcher each failed trial's error text (after Tune's retries are spent)."""

    def __init__(self, searcher: SpanSearcher):
        self.searcher = searcher

    def on_trial_error(self, iteration, trials, trial, **info):
        text = _error_text(trial)
        lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
        errs = [ln for ln in lines if "Error" in ln or "Exception" in ln]
        message = (errs[-1] if errs else (lines[-1] if lines else "trial failed"))[:500]
        self.searcher.fail(trial.trial_id, message)


def run_ray(ctx: StudyContext, study, n: int, sampler) -> None:
    cfg = ctx.cfg
    s = cfg.search
    session = ctx.session
    started = False
    if not ray.is_initialized():
        root = str(Path(__file__).resolve().parent.parent)
        env = {"PYTHONPATH": os.pathsep.join([root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
        kwargs: dict[str, Any] = {"runtime_env": {"env_vars": env}, "log_to_driver": ctx.progress,
                                  "include_dashboard": False,
                                  # --quiet: no "Started a local Ray instance" / "Connecting to …" INFO lines
                                  "logging_level": logging.INFO if ctx.progress else logging.WARNING}
        try:
            if s.ray_address:
                ray.init(address=s.ray_address, **kwargs)
            else:
                # "local": a new instance of its own, even where `ray start` left a cluster running on this machine
                # (ray.init would join that one, and refuse num_cpus there)
                ray.init(address="local", num_cpus=os.cpu_count() or 1, **kwargs)
        except ConnectionError as exc:  # e.g. --address auto with no cluster running
            raise RBAError(f"cannot join the Ray cluster at --address {s.ray_address}: {str(exc).splitlines()[0]} "
                           "Start one with `ray start --head`, or drop --address to run a local Ray") from None
        started = True
    try:
        cpus = ray.cluster_resources().get("CPU", 1.0)
        concurrent = max(1, s.max_concurrent)
        per_trial = 1 if s.ray_address else max(1, int(cpus // concurrent))
        shared = SharedState(cfg=cfg, stats=session.stats, cost_model=session.cost_model,
                             objective_type=type(ctx.objective), kind=ctx.objective.kind,
                             key=config_hash(ctx.identity) + session.stats.key,
                             num_blocks=ctx.space.num_blocks, pairs=list(ctx.space.pairs), gap=ctx.space.gap,
                             threads=per_trial)
        trainable = tune.with_resources(tune.with_parameters(_trainable, shared=shared), {"cpu": per_trial})
        baseline = ctx.method != "optuna"
        total = complete_count(study) + n if baseline else ctx.total
        bar = TrialProgress(total, complete_count(study), enabled=ctx.progress, desc="trials (ray)")

        def on_complete(ot_trial, state):
            if state == "FAIL":
                bar.write(f"trial {ot_trial.number} failed: {ot_trial.user_attrs.get('error', '?')}")
                return
            if not ctx.progress:
                return
            frozen = study.get_trials(deepcopy=False)[ot_trial.number]  # told by now: its state, values, duration
            duration = frozen.duration.total_seconds() if frozen.duration is not None else None
            bar.finished(ot_trial.number, complete_count(study), outcome=trial_outcome(frozen, ctx.objective.columns),
                         duration_s=duration)

        driver_key = shared.key
        _DRIVER[driver_key] = (ctx, on_complete, total)
        metric = ctx.objective.columns
        mode = ["max" if d == "maximize" else "min" for d in ctx.objective.directions]
        missing = total - complete_count(study)
        searcher = SpanSearcher(study=study, distributions=ctx.space.distributions(), metric=metric, mode=mode,
                                driver_key=driver_key)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=searcher,
                                        # an upper bound: failed trials are replaced, the searcher stops the run
                                        num_samples=missing + max(10, missing),
                                        max_concurrent_trials=concurrent, reuse_actors=True,
                                        time_budget_s=s.timeout),
            run_config=tune.RunConfig(
                name=f"{ctx.study_name}-{int(time.time())}",
                storage_path=str((ctx.out / "ray").resolve()),
                failure_config=tune.FailureConfig(max_failures=s.max_failures),
                callbacks=[RecordErrors(searcher)],
                verbose=0,
            ),
        )
        handlers = _signal_handlers()
        try:
            tuner.fit()
            searcher.flush()
        finally:
            _restore(handlers)
            bar.close()
            _DRIVER.pop(driver_key, None)
        if complete_count(study) < total:
            _log.warning(f"search (ray): {complete_count(study)} of {total} trials complete (failures or timeout)")
    finally:
        if started:
            ray.shutdown()


def _signal_handlers() -> dict:
    """The SIGINT / SIGUSR1 handlers before ``Tuner.fit``: Tune installs its own (a first Ctrl-C ends the run
    gracefully) and puts the old one back only when that signal comes, so after a run that was not interrupted,
    a Ctrl-C during the export or the next study of the same process would only log a Tune warning."""
    if threading.current_thread() is not threading.main_thread():
        return {}  # Tune installs none either
    names = [n for n in ("SIGINT", "SIGUSR1") if hasattr(signal, n)]
    return {getattr(signal, n): signal.getsignal(getattr(signal, n)) for n in names}


def _restore(handlers: dict) -> None:
    for signum, handler in handlers.items():
        if handler is not None:  # None: installed outside Python, cannot be put back from here
            signal.signal(signum, handler)


#: HTTP/2 client connection preface and an empty SETTINGS frame (RFC 9113 §3.4)
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def check_address(address: str, timeout_s: float = 5.0) -> None:
    """Refuse a ``--address`` that is not a reachable Ray cluster at once: ray.init retries an unreachable one,
    or one whose port accepts connections but is not Ray, for minutes. A Ray head's address is its GCS, a gRPC
    (HTTP/2) server, which answers the HTTP/2 preface with a SETTINGS frame; Ray has no public call to ask
    this quickly, so the probe is written here."""
    if address in ("auto", "local") or address.startswith("ray://"):
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise RBAError(f"Ray address {address!r} is not HOST:PORT (e.g. 127.0.0.1:6379, as `ray start --head` prints)")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s) as conn:
            conn.settimeout(timeout_s)
            conn.sendall(_H2_PREFACE)
            head = conn.recv(9)
    except socket.timeout:
        head = b""
    except OSError as exc:
        raise RBAError(
            f"Ray address {address} is unreachable ({exc.strerror or exc}): start the cluster with "
            "`ray start --head` and pass the address it prints, or drop --address to run a local Ray"
        ) from None
    if len(head) < 4 or head[3] != 0x04:  # the frame type of SETTINGS
        raise RBAError(
            f"Ray address {address} accepts connections but is not a Ray cluster (no gRPC answer within "
            f"{timeout_s:g} s): pass the address `ray start --head` prints (its GCS port, 6379 by default), or drop "
            "--address to run a local Ray"
        )
