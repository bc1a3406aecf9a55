"""The one objective every backend and baseline calls: configuration → fits → cost → evaluation → result.

``Objective(session)(spans)`` fits every span through the session (independently from the cached statistics,
or sequentially with ``[fit] mode = "sequential"``: :meth:`rba.session.Session.maps` handles the mode), prices
the configuration with the session's cost model, evaluates it with the session's evaluator (prefix reuse and
prefix memo) and returns the result columns plus feasibility and the constraint values. Results are memoised per configuration string.

Objective values (what the samplers see):

=========  ===========  =========
name       column       direction
=========  ===========  =========
accuracy   accuracy     maximise
fidelity   fidelity     maximise
flops      flops_frac   minimise
params     params_frac  minimise
latency    latency_ms   minimise
=========  ===========  =========

FLOPs and parameters are optimised as fractions of the unmodified model, latency in milliseconds per sample
(from the per-block latency table); a front does not change when an objective is scaled by a constant.
Budgets are fractions of the unmodified model; the constraint value of a budget b on cost fraction c is
``c − b`` (feasible when ≤ 0), latency's fraction being ``latency_ms`` over the unmodified model's.
"""

from __future__ import annotations

import math
import threading
import warnings
from functools import cached_property
from typing import Any, Sequence

import torch

from rba.apply import walk_spans
from rba.errors import BudgetError, ConfigError
from rba.metrics import LSResidual
from rba.names import BUDGET_KEYS, OBJECTIVES, QUALITY, RESULT_COLUMNS, maps_tag
from rba.spans import Span, format_spans
from search.baselines import proxy_front
from search.space import SpanSpace, fit_space

__all__ = ["Objective", "OBJECTIVES", "RESULT_COLUMNS", "BUDGET_KEYS", "QUALITY", "STOP_KEYS", "FrontPoint",
           "dominated_by"]

#: what a result stopped early carries besides the result columns
STOP_KEYS = ("stopped_early", "eval_fraction", "eval_samples", "accuracy_se", "fidelity_se", "perplexity_se",
             "kl_se", "top1_se")
#: a front member as early stopping sees it: (trial number, {objective column: value})
FrontPoint = tuple[int, dict[str, float]]


class Objective:
    """Evaluate configurations of one :class:`~rba.session.Session` (thread-safe, memoised)."""

    def __init__(self, session, *, kind: str | None = None, mode: str | None = None,
                 objectives: Sequence[str] | None = None, budgets: dict[str, float | None] | None = None):
        cfg = session.cfg
        self.session = session
        self.kind = kind or cfg.fit.kind
        self.mode = mode or cfg.fit.mode
        self.objectives = list(objectives or cfg.search.objectives)
        for name in self.objectives:
            if name not in OBJECTIVES:
                raise ConfigError(f"unknown objective {name!r}; choose from {', '.join(OBJECTIVES)}")
        if budgets is None:
            budgets = {name: getattr(cfg.search, key) for name, key in BUDGET_KEYS.items()}
        self.budgets = {k: float(v) for k, v in budgets.items() if v is not None}
        self._memo: dict[str, dict[str, Any]] = {}
        self._lock = threading.RLock()
        self.evaluations = 0
        """number of configurations evaluated in full (memo misses)"""
        self.stopped = 0
        """number of evaluations stopped early"""

    # ------------------------------------------------------------------ description
    @property
    def directions(self) -> list[str]:
        return [OBJECTIVES[o][1] for o in self.objectives]

    @property
    def columns(self) -> list[str]:
        return [OBJECTIVES[o][0] for o in self.objectives]

    @cached_property
    def space(self) -> SpanSpace:
        """The configurations this objective's fit kind can replace (:func:`search.space.fit_space`): what the
        samplers, priors and baselines propose."""
        return fit_space(self.session.adapter.num_blocks, self.session.pairs, self.kind)

    @property
    def tag(self) -> str:
        return maps_tag(self.kind, self.mode)

    def values(self, result: dict[str, Any]) -> list[float]:
        return [float(result[c]) for c in self.columns]

    def check(self) -> None:
        """Refuse settings that cannot work before any trial runs (labels, latency, budgets)."""
        s = self.session
        if "accuracy" in self.objectives and not s.need_labels:
            raise ConfigError("objective \"accuracy\" needs labels, and this data set has none: "
                              "use objectives = [\"fidelity\", ...] (label-free)")
        needs_latency = "latency" in self.objectives or "latency" in self.budgets
        if needs_latency and not math.isfinite(self.base_cost()["latency_ms"]):
            raise ConfigError("latency objective or budget, but latency was not measured "
                              "(evaluate.latency_repeats must be ≥ 1)")
        self.check_budgets()

    # ------------------------------------------------------------------ costs and budgets
    def base_cost(self) -> dict[str, float]:
        return self.session.cost_model.cost([], self.kind)

    def cost(self, spans: Sequence[Span]) -> dict[str, float]:
        return self.session.cost_model.cost(sorted(spans), self.kind)

    def fractions(self, cost: dict[str, float]) -> dict[str, float]:
        base = self.base_cost()["latency_ms"]
        return {"flops": cost["flops_frac"], "params": cost["params_frac"],
                "latency": cost["latency_ms"] / base if base and math.isfinite(base) else math.nan}

    def constraints(self, cost: dict[str, float]) -> dict[str, float]:
        """Budget name → cost fraction − budget (feasible when every value is ≤ 0)."""
        frac = self.fractions(cost)
        return {name: frac[name] - b for name, b in self.budgets.items()}

    @property
    def cost_name(self) -> str:
        """The cost the search trades against (the first of flops / params / latency among the objectives;
        flops when none is, or when latency was not measured)."""
        name = next((o for o in self.objectives if o in BUDGET_KEYS), "flops")
        if name == "latency" and not math.isfinite(self.fractions(self.base_cost())["latency"]):
            return "flops"
        return name

    def span_cost_deltas(self, name: str) -> dict[Span, float]:
        """Span of :attr:`space` → how much replacing it changes the cost fraction ``name`` (costs add over spans)."""
        base = self.fractions(self.base_cost())[name]
        return {p: self.fractions(self.cost([p]))[name] - base for p in self.space.pairs}

    def feasible(self, spans: Sequence[Span]) -> bool:
        return all(v <= 0 for v in self.constraints(self.cost(spans)).values())

    def reachable(self, name: str) -> tuple[float, list[Span]]:
        """The smallest cost fraction any configuration reaches for ``name`` (flops|params|latency), and
        one configuration reaching it (exact: costs add over spans, so a DP over boundaries finds it)."""
        pairs = self.space.pairs
        # with a zero proxy the front is the single cheapest configuration
        front = proxy_front(self.space.num_blocks, pairs, dict.fromkeys(pairs, 0.0), self.span_cost_deltas(name),
                            gap=self.space.gap)
        spans = front[0][2]
        return self.fractions(self.cost(spans))[name], spans

    def check_budgets(self) -> None:
        """Raise :class:`BudgetError` when a budget is below what any configuration reaches."""
        for name, budget in self.budgets.items():
            low, spans = self.reachable(name)
            if low > budget + 1e-12:
                raise BudgetError(
                    f"search.budget_{name} = {budget:g} cannot be met: the smallest reachable {name} is "
                    f"{low:.4f} of the unmodified model (configuration {format_spans(spans)!r}, fit kind "
                    f"{self.kind!r}, max_span {self.session.cfg.search.max_span}); raise the budget to at least "
                    f"{math.ceil(low * 1000) / 1000:g}"
                )

    # ------------------------------------------------------------------ fits and evaluation
    def maps(self, spans: Sequence[Span]):
        """Replacement modules for ``spans``: the session's, in this objective's fit kind and mode."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # rank-deficient boundaries: the ridge handles them
            return self.session.maps(sorted(spans), self.kind, mode=self.mode)

    def proxy(self, spans: Sequence[Span]) -> float:
        """Statistics-only quality proxy for screening: Σ ls_residual of the spans (lower is better)."""

        if not hasattr(self, "_ls"):
            self._ls: dict[Span, float] = {}
        metric = LSResidual(self.session.cfg.fit.ridge)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for s in spans:
                if s not in self._ls:
                    self._ls[s] = float(metric(self.session.stats, s))
        return float(sum(self._ls[s] for s in spans))

    def __call__(self, spans: Sequence[Span], front: Sequence[FrontPoint] | None = None) -> dict[str, Any]:
        """Result columns (:data:`RESULT_COLUMNS`) + ``feasible`` + ``constraints`` for a configuration.

        ``front`` (early stopping, ``[search] early_stop``): the current front's points. The eval split is then
        scored in growing subsets (:meth:`rba.evaluate.Evaluator.eval_stages`), and the evaluation stops at the
        first subset where a front point dominates the configuration by more than the subset's standard error
        (:func:`dominated_by`); the result then holds the subset's scores, ``stopped_early`` (the front point's
        trial number), ``eval_fraction`` and the standard errors, and is not memoised as a full result."""
        spans = sorted((int(i), int(j)) for i, j in spans)
        key = format_spans(spans)
        with self._lock:
            if key in self._memo:
                return _copy(self._memo[key])
            cost = self.cost(spans)
            constraints = self.constraints(cost)
            maps = self.maps(spans)
            if front and self.quality_columns:
                scores = self._staged(spans, maps, cost, front)
            else:
                scores = self.session.evaluator.score(walk_spans(spans, maps), maps, tag=self.tag)
            result = {"spans": key} | scores | cost
            extra = {k: scores[k] for k in STOP_KEYS if k in scores}
            result = {c: result[c] for c in RESULT_COLUMNS}
            result["feasible"] = all(v <= 0 for v in constraints.values())
            result["constraints"] = constraints
            if extra:
                return result | extra  # a partial evaluation: not memoised
            self._memo[key] = result
            self.evaluations += 1
            return _copy(result)

    @property
    def quality_columns(self) -> list[str]:
        """The objectives estimated on the eval split (accuracy, fidelity), as result columns."""
        return [OBJECTIVES[o][0] for o in self.objectives if o in QUALITY]

    def _staged(self, spans: list[Span], maps, cost: dict[str, float], front: Sequence[FrontPoint]) -> dict[str, Any]:
        """Scores on growing subsets of the eval split; the probe (if any) is fitted once, on the whole probe split."""
        ev = self.session.evaluator
        run = ev.forward(walk_spans(spans, maps), maps, tag=self.tag)
        pooled_probe = run.pooled("probe", range(len(ev.parts["probe"].contexts))) if "probe" in ev.parts else None
        probe = ev.probe_for({"probe": pooled_probe}) if ev.need_labels and pooled_probe is not None else None
        stages = ev.eval_stages()
        costs = {c: float(cost[c]) for c in self.columns if c not in self.quality_columns}
        batches: list[int] = []
        parts: list = []
        for stage in stages[:-1]:
            batches += stage
            parts.append(run.pooled("eval", stage))
            rows = ev.parts["eval"].rows(batches)
            part = ev.subset_scores(torch.cat(parts), rows, probe)
            quality = {c: part[c] for c in self.quality_columns}
            se = {c: part[f"{c}_se"] for c in self.quality_columns}
            by = dominated_by(front, costs, quality, se, self.directions_by_column)
            if by is not None:
                self.stopped += 1
                return part | {"stopped_early": by}
        parts.append(run.pooled("eval", stages[-1]))
        batches += stages[-1]
        run.finish()
        pooled_eval = torch.empty_like(torch.cat(parts))
        pooled_eval[ev.parts["eval"].rows(batches)] = torch.cat(parts)  # back in the split's order
        return ev.score_pooled({"eval": pooled_eval, "probe": pooled_probe}, probe)

    @property
    def directions_by_column(self) -> dict[str, str]:
        return dict(zip(self.columns, self.directions))


def dominated_by(front: Sequence[FrontPoint], costs: dict[str, float], quality: dict[str, float],
                 se: dict[str, float], directions: dict[str, str]) -> int | None:
    """The trial number of a front point that dominates a partly evaluated configuration by more than the standard
    error of its estimates, or None: at most its cost in every cost objective (exact, from the cost model), and
    better than its estimate by more than one standard error in every quality objective."""
    for number, point in front:
        if not all(_no_worse(point[c], v, directions[c]) for c, v in costs.items()):
            continue
        if all(_better_by(point[c], v, se[c], directions[c]) for c, v in quality.items()):
            return int(number)
    return None


def _no_worse(a: float, b: float, direction: str) -> bool:
    return a <= b if direction == "minimize" else a >= b


def _better_by(a: float, b: float, margin: float, direction: str) -> bool:
    return a > b + margin if direction == "maximize" else a < b - margin


def _copy(result: dict[str, Any]) -> dict[str, Any]:
    out = dict(result)
    out["constraints"] = dict(result["constraints"])
    return out
