"""What both backends share: the study context, the result of a search, and how a trial is recorded
(result columns as user attributes, budgets as Optuna constraints, set before the trial is told).

The study storage and the liveness of trials live in :mod:`search._storage`.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from rba.config import Config
from search.objective import RESULT_COLUMNS, Objective
from search.space import SpanSpace

__all__ = ["StudyContext", "SearchResult", "TrialFailure", "needs_labels", "record", "record_screened",
           "complete_count", "log"]


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


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


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


def record_screened(trial, spans, proxy: float, objective: Objective) -> None:
    cost = objective.cost(spans)
    constraints = objective.constraints(cost)
    trial.set_user_attr("result", {c: cost[c] for c in ("flops", "flops_frac", "params", "params_frac", "latency_ms")}
                        | {"feasible": all(v <= 0 for v in constraints.values()), "proxy": proxy})
    for name, value in constraints.items():
        trial.set_constraint(name, float(value))


def complete_count(study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
