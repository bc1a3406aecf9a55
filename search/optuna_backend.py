"""Optuna backend: ``study.optimize`` over the shared objective, one trial at a time (``search.timeout``).

Only distinct COMPLETE configurations count towards ``search.trials`` (capped at the size of the space): a
repeated proposal is told COMPLETE with the earlier trial's values and the user attribute ``duplicate_of`` (no
evaluation; see :func:`search.recording.record_duplicate`), and a configuration not yet evaluated is enqueued
after it. A failed trial (recorded FAIL, its error in the user attribute ``error``) or a screened-out one
(PRUNED) is replaced by a new proposal, in rounds, until the total is reached, the timeout passes, or a whole
round completes nothing new. The total is the study's, not the process's: several processes on one study each
stop once it has ``trials`` distinct COMPLETE configurations, so together they finish between ``trials`` and
``trials + processes − 1``.
"""

from __future__ import annotations

import logging
import threading
import time

import optuna
from optuna.trial import TrialState

from rba.errors import RBAError
from rba.progress import TrialProgress
from rba.spans import format_spans
from search._optuna_private import heartbeat_thread_target
from search._storage import first_heartbeat, worker_label
from search.recording import (
    StudyContext,
    TrialFailure,
    complete_count,
    completed,
    enqueue_unseen,
    front_points,
    record,
    record_duplicate,
    record_screened,
    trial_outcome,
)

log = logging.getLogger(__name__)

__all__ = ["run_optuna", "trial_function"]


def trial_function(ctx: StudyContext):
    """The function Optuna calls: suggest → repair → (repeat?) → (screen) → objective → record."""
    objective, space, screen = ctx.objective, ctx.space, ctx.screen
    worker = worker_label()
    early_stop = ctx.cfg.search.early_stop and ctx.method == "optuna"

    def run(trial: optuna.Trial):
        first_heartbeat(ctx.storage, trial)
        trial.set_user_attr("worker", worker)
        spans = space.suggest(trial)
        key = format_spans(spans)
        trial.set_user_attr("spans", key)
        done = completed(trial.study)
        if key in done:  # a repeat: no evaluation, the earlier values; a new configuration comes next
            if ctx.method == "optuna":
                enqueue_unseen(ctx, trial.study, done, seed=ctx.cfg.search.seed + trial.number, trial=trial)
            return record_duplicate(trial, done[key])
        if screen is not None:
            ok, proxy = screen.admit(spans, force="source" in trial.user_attrs)
            if not ok:
                record_screened(trial, spans, proxy, objective)
                raise optuna.TrialPruned(f"screened out (proxy {proxy:.4g})")
        try:
            result = objective(spans, front=front_points(trial.study, objective) if early_stop else None)
        except RBAError:
            raise
        except Exception as exc:
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
            raise TrialFailure(f"trial {trial.number} ({format_spans(spans)}): {type(exc).__name__}: {exc}") from exc
        record(trial, result, objective)
        return objective.values(result)

    return run


def run_optuna(ctx: StudyContext, study, n: int) -> None:
    cfg = ctx.cfg
    fn = trial_function(ctx)
    baseline = ctx.method != "optuna"
    total = complete_count(study) + n if baseline else ctx.total
    bar = TrialProgress(total, complete_count(study), enabled=ctx.progress)
    columns = ctx.objective.columns

    def callback(study, trial):
        if trial.state == TrialState.FAIL:
            bar.write(f"trial {trial.number} failed: {trial.user_attrs.get('error', '?')}")
        else:  # other processes on the study complete trials too: the count is the study's
            duration = trial.duration.total_seconds() if trial.duration is not None else None
            bar.finished(trial.number, complete_count(study), outcome=trial_outcome(trial, columns),
                         duration_s=duration)
        if baseline and not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            study.stop()  # a baseline runs its planned configurations only, whoever runs them

    def enough(study, trial):
        if complete_count(study) >= ctx.total:
            study.stop()  # the total counts distinct configurations (Optuna's MaxTrialsCallback counts repeats)

    callbacks = [callback] if baseline else [callback, enough]
    deadline = None if cfg.search.timeout is None else time.time() + cfg.search.timeout
    idle = 0
    try:
        while True:
            missing = n if baseline else ctx.total - complete_count(study)
            if missing <= 0:
                break
            timeout = None if deadline is None else deadline - time.time()
            if timeout is not None and timeout <= 0:
                break
            before = complete_count(study)
            study.optimize(fn, n_trials=missing, timeout=timeout, catch=(TrialFailure,), callbacks=callbacks,
                           gc_after_trial=False, show_progress_bar=False)
            if baseline:
                break
            if complete_count(study) > before:
                idle = 0
                continue
            # a round of repeats enqueued new configurations: run them (at most 3 rounds in a row without progress)
            idle += 1
            if idle >= 3 or not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
                log.warning(f"search: a round of {missing} trials completed no new configuration; stopping")
                break
    except KeyboardInterrupt:
        _stop_stray_heartbeats()
        raise
    finally:
        bar.close()


def _stop_stray_heartbeats() -> None:
    """Stop Optuna heartbeat threads that a Ctrl-C left running.

    ``study.optimize`` starts one (not a daemon) per trial in a ``with`` block; a KeyboardInterrupt that lands
    inside its ``Thread.start`` (waiting for the new thread to run, long enough on a loaded machine) skips the
    block's exit, so the thread records heartbeats forever and the interpreter waits for it at exit: the process
    printed ``rba: interrupted`` and never ended. Its arguments are (trial id, storage, stop event)."""
    target = heartbeat_thread_target()
    for thread in threading.enumerate():
        if getattr(thread, "_target", None) is target:
            thread._args[2].set()  # type: ignore[attr-defined]  # Thread's private arguments (typeshed omits them)
            thread.join(timeout=10)
