"""The encoding: repair always yields a valid configuration at minimal Hamming distance, every valid
configuration is reachable, counts match an independent enumeration, and every Optuna sampler drives it."""

from __future__ import annotations

import itertools

import optuna
import pytest

from rba.spans import check_spans
from search.space import CHOICES, SpanSpace


def _all_spans(L, max_span=None):
    m = L if max_span is None else max_span
    return [(i, j) for i in range(L) for j in range(i + 1, min(L, i + m) + 1)]


def _brute_configurations(L, pairs):
    """Every set of non-overlapping spans from ``pairs``, by checking all subsets (independent of SpanSpace)."""
    out = []
    for r in range(len(pairs) + 1):
        for combo in itertools.combinations(pairs, r):
            s = sorted(combo)
            if all(b <= c for (_, b), (c, _) in zip(s, s[1:])):
                out.append(s)
    return out


def _encode(L, spans):
    vec = ["keep"] * L
    for i, j in spans:
        vec[i] = "start"
        for k in range(i + 1, j):
            vec[k] = "continue"
    return vec


# an EfficientNet-like pattern: only some boundaries share a layout
SPARSE = (7, [(1, 2), (1, 3), (2, 3), (4, 5), (4, 6), (4, 7), (5, 6), (5, 7), (6, 7)])


@pytest.mark.parametrize("L,pairs", [(5, _all_spans(5)), (5, _all_spans(5, max_span=2)), SPARSE],
                         ids=["L5-all", "L5-max2", "sparse"])
def test_repair_is_valid_and_nearest(L, pairs):
    space = SpanSpace(L, pairs)
    configs = _brute_configurations(L, pairs)
    encodings = [(_encode(L, c), c) for c in configs]
    for vec in itertools.product(CHOICES, repeat=L):
        spans = space.repair(list(vec))
        check_spans(spans, num_blocks=L)  # sorted, in range, non-overlapping
        assert set(spans) <= set(pairs)
        got = sum(a != b for a, b in zip(vec, _encode(L, spans)))
        nearest = min(sum(a != b for a, b in zip(vec, e)) for e, _ in encodings)
        assert got == nearest, (vec, spans)


@pytest.mark.parametrize("L,pairs", [(5, _all_spans(5)), (6, _all_spans(6, max_span=3)), SPARSE],
                         ids=["L5-all", "L6-max3", "sparse"])
def test_every_configuration_reachable_and_counted(L, pairs):
    space = SpanSpace(L, pairs)
    configs = _brute_configurations(L, pairs)
    assert space.count() == len(configs)
    assert sorted(map(tuple, space.configurations())) == sorted(map(tuple, configs))
    for c in configs:
        params = space.encode(c)
        assert all(v in space.choices[k] for k, v in enumerate(params.values()))
        assert space.repair(params) == c
    images = {tuple(space.repair(list(v))) for v in itertools.product(CHOICES, repeat=L)}
    assert images == {tuple(c) for c in configs}


def test_fibonacci_counts():
    fib = [0, 1]
    while len(fib) < 30:
        fib.append(fib[-1] + fib[-2])
    for L in (1, 2, 5, 6, 12):
        assert SpanSpace(L, _all_spans(L)).count() == fib[2 * L + 1]
    assert SpanSpace(5, _all_spans(5)).count() == 89
    assert SpanSpace(6, _all_spans(6)).count() == 233


def test_random_sample_distinct_and_valid():
    space = SpanSpace(6, _all_spans(6))
    picks = space.sample(50, seed=3)
    assert len({tuple(p) for p in picks}) == 50
    assert picks == space.sample(50, seed=3)
    assert len(space.sample(1000, seed=0)) == 233


@pytest.mark.parametrize("sampler", ["tpe", "nsga2", "random", "gp"])
def test_every_sampler_drives_the_encoding(sampler):
    from rba.config import Config
    from search.samplers import make_sampler

    cfg = Config.from_dict({"search": {"sampler": sampler, "trials": 12, "seed": 1}})
    space = SpanSpace(5, _all_spans(5, max_span=3))
    valid = {tuple(c) for c in space.configurations()}
    # one objective: a multi-objective GP step costs seconds; the encoding is what is under test
    study = optuna.create_study(direction="maximize", sampler=make_sampler(cfg, "optuna"))
    seen = []

    def objective(trial):
        spans = space.suggest(trial)
        seen.append(tuple(spans))
        return sum(j - i for i, j in spans) - 0.5 * sum((j - i) ** 2 for i, j in spans)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    n = 13  # past the 10 random start-up trials
    study.optimize(objective, n_trials=n)
    assert len(seen) == n and all(s in valid for s in seen)
    assert all(t.state.name == "COMPLETE" for t in study.trials)


def test_repair_ties_replace_fewer_blocks():
    space = SpanSpace(5, _all_spans(5))
    # a stray "continue" is equally far from "none", "0-2" and "1-2": the repair replaces nothing
    assert space.repair(["keep", "continue", "keep", "keep", "keep"]) == []
    assert space.repair(["continue", "keep", "keep", "keep", "keep"]) == []
    # a span too long for max_span is cut, not extended
    short = SpanSpace(5, _all_spans(5, max_span=2))
    assert short.repair(["start", "continue", "continue", "keep", "keep"]) == [(0, 2)]


@pytest.mark.parametrize("L,pairs", [(6, _all_spans(6)), (7, _all_spans(7, max_span=3)), SPARSE],
                         ids=["L6-all", "L7-max3", "sparse"])
def test_proxy_front_is_the_brute_force_front(L, pairs):
    """The DP's front of (Σ proxy, Σ cost) equals the non-dominated set of an explicit enumeration."""
    import random

    from search.baselines import proxy_front

    rng = random.Random(L * 100 + len(pairs))
    proxy = {p: rng.random() for p in pairs}
    # a span's cost change: a map is cheaper than its blocks, a little more for longer spans
    cost = {(i, j): -(j - i) + 0.3 * rng.random() for i, j in pairs}
    def configurations(k):  # every configuration of blocks k.., recursively (block k kept, or a span from k)
        if k == L:
            return [[]]
        out = configurations(k + 1)
        for i, j in pairs:
            if i == k:
                out = out + [[(i, j)] + rest for rest in configurations(j)]
        return out

    points = [(sum(proxy[s] for s in c), sum(cost[s] for s in c), c) for c in configurations(0)]
    expected = sorted((p, c) for p, c, _ in points
                      if not any(q <= p and d <= c and (q < p or d < c) for q, d, _ in points))
    front = proxy_front(L, pairs, proxy, cost)
    assert sorted((round(p, 12), round(c, 12)) for p, c, _ in front) == [(round(p, 12), round(c, 12)) for p, c in expected]
    for p, c, spans in front:  # each member's values are its own spans' sums, and it is a valid configuration
        check_spans(spans, num_blocks=L)
        assert p == pytest.approx(sum(proxy[s] for s in spans)) and c == pytest.approx(sum(cost[s] for s in spans))
    assert [c for _, c, _ in front] == sorted(c for _, c, _ in front)


def test_bisection_order_is_coarse_to_fine():
    from search.baselines import bisection_order

    # breadth first over halves: (0..9) → 4; (0..3) → 1, (5..9) → 7; then 0, 2, 5, 8; then 3, 6, 9
    assert bisection_order(10) == [4, 1, 7, 0, 2, 5, 8, 3, 6, 9]
    assert bisection_order(7) == [3, 1, 5, 0, 2, 4, 6]
    assert bisection_order(0) == [] and bisection_order(1) == [0]
    for n in range(30):
        assert sorted(bisection_order(n)) == list(range(n))


@pytest.mark.parametrize("L,pairs", [(6, _all_spans(6)), (7, _all_spans(7, max_span=3)), SPARSE],
                         ids=["L6-all", "L7-max3", "sparse"])
def test_proxy_layers_are_brute_force_nondominated_sorting(L, pairs):
    """Layer k = the non-dominated configurations among those not in layers 1..k−1 (every configuration,
    enumerated explicitly, compared pairwise; the unmodified one takes part but is never returned); the first
    layer equals the DP front; a filter (like a budget) removes configurations before the sorting."""
    import random

    from search.baselines import proxy_front, proxy_layers

    rng = random.Random(L * 7 + len(pairs))
    proxy = {p: rng.random() for p in pairs}
    cost = {(i, j): -(j - i) + 0.3 * rng.random() for i, j in pairs}
    cost[pairs[0]] = 0.5  # a map dearer than its blocks: dominated by the unmodified model

    def configurations(k):  # every configuration of blocks k.. (block k kept, or a span from k)
        if k == L:
            return [()]
        return configurations(k + 1) + [((i, j),) + rest for i, j in pairs if i == k for rest in configurations(j)]

    def keep(c):
        return len(c) != 2

    rest = {c: (sum(proxy[s] for s in c), sum(cost[s] for s in c)) for c in configurations(0) if keep(c)}
    expected = []
    for _ in range(3):
        layer = {c for c, (p, d) in rest.items()
                 if not any(q <= p and e <= d and (q < p or e < d) for q, e in rest.values())}
        expected.append(layer - {()})  # the unmodified configuration takes part, but is never proposed
        rest = {c: v for c, v in rest.items() if c not in layer}
    got = proxy_layers(L, pairs, proxy, cost, 3, keep=lambda spans: keep(tuple(spans)))
    assert [{tuple(s) for s in layer} for layer in got] == expected
    for layer in got:  # each sorted by cost
        costs = [sum(cost[s] for s in c) for c in layer]
        assert costs == sorted(costs)
    first = proxy_layers(L, pairs, proxy, cost, 1)[0]
    assert first == [spans for _, _, spans in proxy_front(L, pairs, proxy, cost) if spans]


@pytest.mark.parametrize("L,pairs", [(5, _all_spans(5)), (6, _all_spans(6, max_span=2))], ids=["L5-all", "L6-max2"])
def test_fold_space_is_the_brute_force_foldable_configurations(L, pairs):
    """A fold's space (spans from boundary 1 on, a kept block between spans) counts, enumerates, repairs to and
    prices exactly the configurations an explicit enumeration with that rule finds."""
    import random

    from search.baselines import proxy_front
    from search.space import fit_space

    space = fit_space(L, pairs, "fold")
    every = _brute_configurations(L, pairs)
    foldable = [c for c in every
                if all(i >= 1 for i, _ in c) and all(c2 >= b + 1 for (_, b), (c2, _) in zip(c, c[1:]))]
    assert space.count() == len(foldable) < len(every)
    assert sorted(map(tuple, space.configurations())) == sorted(map(tuple, foldable))
    assert space.allows([(1, 2), (3, 4)]) and not space.allows([(1, 2), (2, 3)]) and not space.allows([(0, 2)])
    encodings = [_encode(L, c) for c in foldable]
    for vec in itertools.product(CHOICES, repeat=L):  # every vector repairs to a foldable configuration, nearest
        spans = space.repair(list(vec))
        assert spans in foldable
        got = sum(a != b for a, b in zip(vec, _encode(L, spans)))
        assert got == min(sum(a != b for a, b in zip(vec, e)) for e in encodings), (vec, spans)
    rng = random.Random(L)
    proxy = {p: rng.random() for p in space.pairs}
    cost = {(i, j): -(j - i) + 0.3 * rng.random() for i, j in space.pairs}
    points = [(sum(proxy[s] for s in c), sum(cost[s] for s in c)) for c in foldable]
    expected = sorted((round(p, 12), round(c, 12)) for p, c in points
                      if not any(q <= p and d <= c and (q < p or d < c) for q, d in points))
    front = proxy_front(L, space.pairs, proxy, cost, gap=space.gap)
    assert sorted((round(p, 12), round(c, 12)) for p, c, _ in front) == expected
    assert all(s in foldable for _, _, s in front)
    assert fit_space(L, pairs, "affine").count() == len(every)
