"""What both backends share: the study context, the result of a search, and how a trial is recorded
(result columns as user attributes, budgets as Optuna constraints, set before the trial is told).

The study storage and the liveness of trials live in :mod:`search._storage`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from optuna.trial import TrialState

from rba.config import Config
from rba.spans import format_spans
from search.objective import RESULT_COLUMNS, STOP_KEYS, Objective
from search.space import SpanSpace

_log = logging.getLogger(__name__)

__all__ = ["StudyContext", "SearchResult", "TrialFailure", "needs_labels", "record", "record_screened",
           "record_duplicate", "complete_count", "completed", "enqueue_unseen", "resample", "DUPLICATE_ATTR", "STOPPED_ATTR",
           "front_points", "log", "trial_outcome"]

#: user attribute of a trial whose configuration an earlier trial already evaluated: that trial's number
DUPLICATE_ATTR = "duplicate_of"
#: user attribute of a trial stopped early (``[search] early_stop``): the number of the front member that dominated
#: it; its values are the eval subset's estimates, and the user attribute ``early_stop`` says which subset
STOPPED_ATTR = "stopped_early"


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
    storage: Any = None
    started: float = field(default_factory=time.time)

    @property
    def total(self) -> int:
        """``search.trials``: distinct configurations to complete, capped at the size of the space."""
        return int(min(self.cfg.search.trials, self.space.count()))


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


def log(msg: str) -> None:
    """A line of the search's results (the front, where the files went): logged at INFO."""
    _log.info(msg)


def needs_labels(cfg: Config) -> bool | None:
    """Accuracy is computed when it is an objective or costs nothing per trial (fixed-probe, native head);
    a fidelity-only study with the default probe head leaves it empty (a probe fit per trial is the
    most expensive part of a trial)."""
    if "accuracy" in cfg.search.objectives or cfg.evaluate.head in ("fixed-probe", "native"):
        return None
    return False


# ---------------------------------------------------------------------- recording a trial
def record(trial, result: dict[str, Any], objective: Objective) -> None:
    """Result columns as user attributes, budgets as Optuna constraints (set before the trial is told)."""
    trial.set_user_attr("result", {c: result[c] for c in RESULT_COLUMNS[1:]} | {"feasible": bool(result["feasible"])})
    for name, value in result["constraints"].items():
        trial.set_constraint(name, float(value))
    if result.get(STOPPED_ATTR) is not None:
        trial.set_user_attr(STOPPED_ATTR, int(result[STOPPED_ATTR]))
        trial.set_user_attr("early_stop", {k: result[k] for k in STOP_KEYS[1:] if k in result})


def front_points(study, objective: Objective) -> list[tuple[int, dict[str, float]]]:
    """The study's current front as early stopping compares against it: Optuna's ``best_trials`` (complete,
    feasible, non-dominated), less trials stopped early and repeats, as (number, {objective column: value})."""
    out = []
    for t in study.best_trials:
        if STOPPED_ATTR in t.user_attrs or DUPLICATE_ATTR in t.user_attrs:
            continue
        out.append((t.number, dict(zip(objective.columns, map(float, t.values)))))
    return out


def record_screened(trial, spans, proxy: float, objective: Objective) -> None:
    cost = objective.cost(spans)
    constraints = objective.constraints(cost)
    trial.set_user_attr("result", {c: cost[c] for c in ("flops", "flops_frac", "params", "params_frac", "latency_ms")}
                        | {"feasible": all(v <= 0 for v in constraints.values()), "proxy": proxy})
    for name, value in constraints.items():
        trial.set_constraint(name, float(value))


def completed(study) -> dict[str, Any]:
    """Configuration string → the first COMPLETE trial that evaluated it (duplicates left out)."""
    out: dict[str, Any] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        key = t.user_attrs.get("spans")
        if DUPLICATE_ATTR not in t.user_attrs and key not in out:
            out[key] = t
    return out


def complete_count(study) -> int:
    """Distinct configurations completed (what ``search.trials`` counts): duplicates do not count."""
    return len(completed(study))


def record_duplicate(trial, earlier) -> list[float]:
    """Mark ``trial`` as a repeat of the COMPLETE trial ``earlier``; returns the values to tell it with.

    The repeat is told COMPLETE with the earlier trial's values and constraints, not FAIL or PRUNED: Optuna's
    multi-objective samplers (TPE, NSGA-II, GP) learn only from COMPLETE trials, so a repeat told otherwise
    would leave the sampler free to propose the same point again and again. No evaluation runs, ``trials``
    does not count it (:func:`complete_count`), and the tables leave it out (``search.pareto.trials_frame``)."""
    trial.set_user_attr(DUPLICATE_ATTR, int(earlier.number))
    for attr in ("result", STOPPED_ATTR, "early_stop"):
        if attr in earlier.user_attrs:
            trial.set_user_attr(attr, earlier.user_attrs[attr])
    for name, value in earlier.constraints.items():
        trial.set_constraint(name, float(value))
    return list(earlier.values)


#: how many more proposals the study's sampler is asked for after a repeat before a uniform draw fills in
RESAMPLE_ATTEMPTS = 8


def enqueue_unseen(ctx: StudyContext, study, seen, seed: int, trial=None) -> bool:
    """After a repeated proposal, enqueue one configuration not yet evaluated, so that every repeat is followed by a
    new configuration and a study whose sampler keeps repeating itself still reaches ``trials`` (or the whole
    space). Returns False when every configuration has been evaluated.

    With ``trial`` (the repeat), the study's own sampler is asked again first (:func:`resample`): its next
    proposals on the same history, up to :data:`RESAMPLE_ATTEMPTS`, and the first unseen one is enqueued. Only
    when it keeps repeating itself (or samples independently, as the random sampler does) is the configuration
    drawn uniformly from the unseen ones. A uniform draw after every repeat would hand a converging TPE's trials
    to random search: on MiniLM (233 configurations, 60 trials, no priors) most of the study's trials became
    such draws (benchmarks/RESULTS.md, search quality)."""

    space = ctx.space
    seen = set(seen)
    n = space.count()
    if len(seen) >= n:
        return False
    if trial is not None:
        spans = resample(ctx, study, trial, seen)
        if spans is not None:
            study.enqueue_trial(space.encode(spans), user_attrs={"source": "sampler, after a repeat"})
            return True
    draws = space.sample(n, seed=seed) if n <= 4096 else space.sample(64, seed=seed)
    for spans in draws:
        if format_spans(spans) not in seen:
            study.enqueue_trial(space.encode(spans), user_attrs={"source": "unseen after a repeat"})
            return True
    return False


def resample(ctx: StudyContext, study, trial, seen, attempts: int = RESAMPLE_ATTEMPTS):
    """The first configuration not in ``seen`` among the study sampler's next ``attempts`` relative proposals for
    ``trial``'s place in the history (Optuna's public ``infer_relative_search_space`` / ``sample_relative``), or
    None (also for samplers without relative sampling)."""

    sampler = study.sampler
    frozen = next((t for t in study.get_trials(deepcopy=False) if t.number == trial.number), None)
    if frozen is None:
        return None
    space = sampler.infer_relative_search_space(study, frozen)
    if not space:
        return None
    for _ in range(attempts):
        params = sampler.sample_relative(study, frozen, space)
        if len(params) < ctx.space.num_blocks:
            return None
        spans = ctx.space.repair(params)
        if format_spans(spans) not in seen:
            return spans
    return None


def trial_outcome(trial, columns: list[str]) -> str:
    """A finished trial in a few words, for the progress line: its spans and values, or why it has none."""
    spans = trial.user_attrs.get("spans", "?")
    if trial.state == TrialState.COMPLETE and DUPLICATE_ATTR in trial.user_attrs:
        return f"{spans}: a repeat of trial {trial.user_attrs[DUPLICATE_ATTR]} (not evaluated again, not counted)"
    if trial.state == TrialState.COMPLETE:
        values = ", ".join(f"{c} {v:.4g}" for c, v in zip(columns, trial.values or []))
        feasible = trial.user_attrs.get("result", {}).get("feasible", True)
        return f"{spans}: {values}" + ("" if feasible else " (over budget)")
    if trial.state == TrialState.PRUNED:
        return f"{spans}: screened out"
    return f"{spans}: {trial.state.name.lower()}"
