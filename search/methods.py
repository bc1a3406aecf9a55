"""The planners behind the methods registry (:mod:`rba.methods`): ``plan_NAME(ctx, fresh) -> [(label, spans),
...]``, the configurations a method's trials evaluate, in order (labels become the trials' ``source``).

The selection algorithms live in :mod:`search.baselines`; these functions read what each needs from the study
context (statistics, score table, objective, space, seed).
"""

from __future__ import annotations

from rba.errors import ConfigError
from rba.progress import info
from search import baselines
from search.recording import StudyContext

__all__ = ["plan_priors", "plan_exhaustive", "plan_random", "plan_br_greedy", "plan_proxy_front", "plan_shortgpt",
           "plan_shortgpt_affine", "plan_sleb", "plan_gromov", "plan_random_lesions", "check_exhaustive",
           "plan_replaceme", "check_replaceme", "within_space"]

Plan = list[tuple[str, list[tuple[int, int]]]]


def within_space(ctx: StudyContext, planned: Plan) -> tuple[Plan, list[str]]:
    """The planned configurations the study's space holds (``ctx.space``: what its fit kind can replace), and the
    labels of those it does not (e.g. shortgpt-affine's run of blocks cut at max_span into touching spans, which a
    fold cannot hold)."""
    kept = [(label, spans) for label, spans in planned if ctx.space.allows(spans)]
    return kept, [label for label, spans in planned if not ctx.space.allows(spans)]


def plan_priors(ctx: StudyContext, fresh: bool) -> Plan:
    """The sampler search's priors (a new study only): ``search.priors = true``: the proxy fronts (at most half the
    trials: the sampler keeps the rest), the best single spans and the BR-greedy combinations; ``"proxy"``: the
    proxy fronts and the best ls_residual span only, nothing br proposes (for a search compared with BR-greedy);
    ``false``: none. A prior whose exact cost breaks a budget would be evaluated for nothing and is left out."""
    priors = ctx.cfg.search.priors
    if not (priors and fresh):
        return []
    front = baselines.front_priors(ctx.table, ctx.objective, count=max(1, ctx.total // 2))
    planned = baselines.prior_configurations(ctx.table, front, br=priors is True, gap=ctx.space.gap)
    return [(f"prior: {label}", s) for label, s in planned if ctx.objective.feasible(s)]


def check_exhaustive(ctx: StudyContext) -> None:
    if ctx.space.count() > baselines.EXHAUSTIVE_LIMIT:
        raise ConfigError(
            f"--method exhaustive: {ctx.space.count():,} configurations ({ctx.space.describe()}) exceed the limit of "
            f"{baselines.EXHAUSTIVE_LIMIT:,}; lower search.max_span, or use --method optuna or random"
        )


def plan_exhaustive(ctx: StudyContext, fresh: bool) -> Plan:
    return [("exhaustive", s) for s in ctx.space.configurations()]


def plan_random(ctx: StudyContext, fresh: bool) -> Plan:
    return [("random", s) for s in ctx.space.sample(ctx.cfg.search.trials, seed=ctx.cfg.search.seed)]


def plan_br_greedy(ctx: StudyContext, fresh: bool) -> Plan:
    return [(f"br-greedy {len(s)}", s) for s in baselines.br_greedy(ctx.table, ctx.space.gap)]


def plan_proxy_front(ctx: StudyContext, fresh: bool) -> Plan:
    """The proxy fronts' members within the budgets, layer by layer, coarse to fine: the first ``search.trials``."""
    front = baselines.front_priors(ctx.table, ctx.objective, count=ctx.total)
    return [("proxy front" if layer == 1 else f"proxy front, layer {layer}", s) for layer, s in front]


def plan_shortgpt(ctx: StudyContext, fresh: bool) -> Plan:
    # labelled with the name the study uses (block-drop studies keep their labels)
    return [(f"{ctx.method} {len(s)}", s) for s in baselines.shortgpt_order(ctx.session.stats, ctx.space.pairs)]


def plan_shortgpt_affine(ctx: StudyContext, fresh: bool) -> Plan:
    """ShortGPT's ranking among the blocks the fit kind can replace (a fold: not block 0), runs merged; a run cut
    at max_span into touching spans that a fold cannot hold is left out by :func:`search.study.plan`."""
    order = baselines.shortgpt_order(ctx.session.stats, ctx.space.pairs)
    return [(f"{ctx.method} {len(s)}", baselines.merge_runs(s, ctx.space.pairs)) for s in order]


def plan_sleb(ctx: StudyContext, fresh: bool) -> Plan:
    report = ctx.cfg.report
    order, evaluations = baselines.sleb_order(ctx.objective, stride=report.sleb_stride,
                                              min_flops=report.baseline_min_flops)
    info(f"{ctx.method}: removal order chosen with {evaluations} evaluations on every {report.sleb_stride}th batch "
         "of the eval split", enabled=ctx.progress)
    return [(f"{ctx.method} {len(s)}", s) for s in order]


def plan_gromov(ctx: StudyContext, fresh: bool) -> Plan:
    """One span per length (gromov: dropped; gromov-affine: fitted, by the method's fit kind)."""
    spans = baselines.gromov_spans(baselines.angular_distances(ctx.session, ctx.space.pairs))
    return [(f"{ctx.method} n={j - i}", [(i, j)]) for i, j in spans]


def plan_random_lesions(ctx: StudyContext, fresh: bool) -> Plan:
    stats, pairs = ctx.session.stats, ctx.space.pairs
    blocks = [i for i, j in pairs if j == i + 1 and stats.dims[i] == stats.dims[j]]
    lesions = baselines.random_lesions(blocks, ctx.cfg.search.trials, ctx.cfg.search.seed)
    return [(f"{ctx.method} {len(s)}", s) for s in lesions]


def check_replaceme(ctx: StudyContext) -> None:
    """Refuse, before any pass: a model without tokens, one whose blocks cannot fold (a ModelError from
    :meth:`rba.adapters.Adapter.fold_target`: Gemma 3, CNNs), or a max_span below 25% of the blocks."""
    adapter = ctx.session.adapter
    if adapter.layout != "tokens":
        raise ConfigError(f"--method replaceme reads the last token of each sample; {adapter.describe()} has no tokens")
    for k in range(adapter.num_blocks - 1):  # every block a span from boundary k + 1 folds into
        adapter.fold_target(k)
    n, limit = baselines.replaceme_length(ctx.session.adapter.num_blocks), ctx.cfg.search.max_span
    if limit is not None and limit < n:
        raise ConfigError(f"--method replaceme replaces {n} of {ctx.session.adapter.num_blocks} blocks (25%), but "
                          f"search.max_span = {limit}: raise search.max_span to at least {n}")


def plan_replaceme(ctx: StudyContext, fresh: bool) -> Plan:
    """ReplaceMe's span of 25% of the blocks first, then the same choice for every other length up to max_span
    (shortest first), so that it meets the other methods at their budgets; each fitted with ``fold``."""
    blocks = ctx.session.adapter.num_blocks
    first = baselines.replaceme_length(blocks)
    limit = min(ctx.cfg.search.max_span or blocks, blocks - 1)
    lengths = [first, *(m for m in range(1, limit + 1) if m != first)]
    distances = baselines.replaceme_distances(ctx.session, lengths)
    plans = []
    for n in lengths:
        candidates = [s for s in distances if s[1] - s[0] == n]
        if candidates:
            i, j = min(candidates, key=lambda s: (distances[s], s))  # ties: the earliest, as ReplaceMe's stable sort
            plans.append((f"{ctx.method} n={n}", [(i, j)]))
    return plans
