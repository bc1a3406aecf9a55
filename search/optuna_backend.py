"""Optuna backend: ``study.optimize`` over the shared objective, one trial at a time (``search.timeout``).

Only COMPLETE trials count towards ``search.trials``: a failed trial (recorded FAIL, its error in the user
attribute ``error``) or a screened-out one (PRUNED) is replaced by a new proposal, in rounds, until the total
is reached, the timeout passes, or a whole round completes nothing. The total is the study's, not the
process's: several processes on one study each stop once it has ``trials`` COMPLETE trials (Optuna's
``MaxTrialsCallback``), so together they finish between ``trials`` and ``trials + processes − 1``.
"""

from __future__ import annotations

import sys
import time

from rba.errors import RBAError
from rba.spans import format_spans
from search._storage import worker_label
from search.recording import StudyContext, TrialFailure, complete_count, record, record_screened

__all__ = ["run_optuna", "trial_function"]


def trial_function(ctx: StudyContext):
    """The function Optuna calls: suggest → repair → (screen) → objective → record."""
    import optuna

    objective, space, screen = ctx.objective, ctx.space, ctx.screen
    worker = worker_label()

    def run(trial: optuna.Trial):
        trial.set_user_attr("worker", worker)
        spans = space.suggest(trial)
        trial.set_user_attr("spans", format_spans(spans))
        if screen is not None:
            ok, proxy = screen.admit(spans, force="source" in trial.user_attrs)
            if not ok:
                record_screened(trial, spans, proxy, objective)
                raise optuna.TrialPruned(f"screened out (proxy {proxy:.4g})")
        try:
            result = objective(spans)
        except RBAError:
            raise
        except Exception as exc:
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
            raise TrialFailure(f"trial {trial.number} ({format_spans(spans)}): {type(exc).__name__}: {exc}") from exc
        record(trial, result, objective)
        return objective.values(result)

    return run


def run_optuna(ctx: StudyContext, study, n: int) -> None:
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState
    from tqdm.auto import tqdm

    cfg = ctx.cfg
    fn = trial_function(ctx)
    baseline = ctx.method != "optuna"
    total = complete_count(study) + n if baseline else ctx.total
    bar = tqdm(total=total, initial=complete_count(study), desc="trials", unit="trial", disable=not ctx.progress,
               dynamic_ncols=True)

    def callback(study, trial):
        if trial.state == TrialState.COMPLETE:
            bar.update(complete_count(study) - bar.n)  # other processes on the study complete trials too
        elif trial.state == TrialState.FAIL:
            bar.write(f"trial {trial.number} failed: {trial.user_attrs.get('error', '?')}")
        if baseline and not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            study.stop()  # a baseline runs its planned configurations only, whoever runs them

    callbacks = [callback] if baseline else [callback, MaxTrialsCallback(ctx.total, states=(TrialState.COMPLETE,))]
    deadline = None if cfg.search.timeout is None else time.time() + cfg.search.timeout
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
            if complete_count(study) == before:
                print(f"search: a round of {missing} trials completed none; stopping", file=sys.stderr)
                break
    finally:
        bar.close()
