"""The methods registry and the baselines, each against a selection written out here on a tiny ViT: numpy cosines
and angular distances on materialised activations, a hand-run greedy removal over a hand-written forward, and
what each method's study then evaluates."""

from __future__ import annotations

import itertools

import numpy as np
import optuna
import pytest
import torch
from _search_helpers import (
    make_config,
    materialise,
    single_thread,  # noqa: F401  (autouse fixture)
)
from conftest import staged_forward

from rba.cli import build_parser
from rba.cli import main as cli_main
from rba.config import Config
from rba.errors import ConfigError, RBAError
from rba.methods import get_method, list_methods
from rba.session import Session
from search import baselines, run_search
from search.baselines import (
    angular_distances,
    best_single_spans,
    br_greedy,
    front_priors,
    gromov_spans,
    merge_runs,
    prior_configurations,
    random_lesions,
    shortgpt_order,
    sleb_order,
    span_scores,
)
from search.objective import Objective

DEPTH = 6


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A 6-block tiny ViT (every span valid), fidelity and FLOPs; eval in 3 batches of 16, so SLEB's subset (every
    4th batch) is the eval split's first 16 samples."""
    tmp = tmp_path_factory.mktemp("methods")
    cache = tmp / "cache"
    cfg = make_config(tmp, cache, depth=DEPTH, evaluate={"batch_size": 16})
    return tmp, cache, Session(cfg, need_labels=False, progress=False)


def _config(study, name, **search):
    tmp, cache, _ = study
    return make_config(tmp, cache, name=name, depth=DEPTH, evaluate={"batch_size": 16}, search=search)


def _calibration_vectors(session):
    return materialise(session.adapter, session.splits.calibration.samples)


def _cos(a, b):
    return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


# ---------------------------------------------------------------------- the registry
def test_every_method_is_registered_listed_and_checked(capsys):
    assert list_methods() == ["optuna", "exhaustive", "random", "br-greedy", "proxy-front", "shortgpt", "block-drop",
                              "shortgpt-affine", "sleb", "gromov", "gromov-affine", "random-lesions", "replaceme"]
    assert get_method("block-drop") is get_method("shortgpt")
    assert [get_method(m).kind for m in ("shortgpt", "sleb", "gromov", "random-lesions")] == ["identity"] * 4
    assert [get_method(m).kind for m in ("shortgpt-affine", "gromov-affine", "br-greedy", "optuna")] == [None] * 4
    assert cli_main(["ls", "methods"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in lines] == list_methods()
    assert "alias of shortgpt" in next(ln for ln in lines if ln.startswith("block-drop"))
    with pytest.raises(ConfigError, match="search.method = 'sleeb' is not one of .*Did you mean 'sleb'"):
        Config.from_dict({"search": {"method": "sleeb"}})
    with pytest.raises(KeyError, match="Did you mean 'gromov'"):
        get_method("gromow")
    with pytest.raises(ConfigError, match="search.priors = 'proxi' is not one of true, false, proxy"):
        Config.from_dict({"search": {"priors": "proxi"}})
    parse = build_parser().parse_args
    assert [parse(["search", "x.toml", "--priors", w]).priors for w in ("all", "proxy", "none")] == [True, "proxy", False]


# ---------------------------------------------------------------------- ShortGPT
def test_shortgpt_ranks_blocks_by_block_influence(study):
    _, _, session = study
    x = _calibration_vectors(session)
    influence = [1 - _cos(x[k], x[k + 1]).mean() for k in range(DEPTH)]
    order = sorted(range(DEPTH), key=lambda k: (influence[k], k))
    expected = [sorted((k, k + 1) for k in order[:n]) for n in range(1, DEPTH + 1)]
    assert shortgpt_order(session.stats, session.pairs) == expected


def test_runs_of_dropped_blocks_become_the_longest_valid_spans():
    every = [(i, j) for i in range(8) for j in range(i + 1, 9)]
    assert merge_runs([(1, 2), (2, 3), (4, 5), (5, 6), (6, 7)], every) == [(1, 3), (4, 7)]
    up_to_2 = [(i, j) for i, j in every if j - i <= 2]  # max_span 2: a run of 3 is 2 + 1
    assert merge_runs([(4, 5), (5, 6), (6, 7), (0, 1)], up_to_2) == [(0, 1), (4, 6), (6, 7)]
    no_3_5 = [p for p in every if p != (3, 5)]  # boundaries 3 and 5 of other layouts
    assert merge_runs([(3, 4), (4, 5)], no_3_5) == [(3, 4), (4, 5)]


# ---------------------------------------------------------------------- Gromov et al.
def test_gromov_picks_the_span_of_least_angular_distance_per_length(study):
    _, _, session = study
    x = _calibration_vectors(session)
    expected_d = {(i, j): float(np.mean(np.arccos(np.clip(_cos(x[i], x[j]), -1, 1)) / np.pi))
                  for i, j in session.pairs}
    got = angular_distances(session, session.pairs)
    assert got.keys() == expected_d.keys()
    for p in got:
        assert got[p] == pytest.approx(expected_d[p], rel=1e-5, abs=1e-7)
    expected = [min(((i, i + n) for i in range(DEPTH + 1 - n)), key=lambda s: (expected_d[s], s))
                for n in range(1, DEPTH + 1)]
    assert gromov_spans(got) == expected


# ---------------------------------------------------------------------- SLEB
def test_sleb_removes_greedily_by_the_end_metric(study):
    """The reference's loop by hand: fidelity on the eval split's first 16 samples of the network with the
    removed blocks skipped (a hand-written forward), never the first or last remaining block."""
    _, _, session = study
    adapter = session.adapter
    samples = session.splits.eval.samples[:16]

    def skip(h):
        return h

    with torch.inference_mode():
        x = adapter.collate(samples)
        original = staged_forward(adapter, x).double().numpy()

        def fidelity(blocks):
            out = staged_forward(adapter, x, {(k, k + 1): skip for k in blocks}).double().numpy()
            return float(_cos(out, original).mean())

        alive, removed, expected = list(range(DEPTH)), [], []
        while len(alive) > 2:
            scores = {k: fidelity(removed + [k]) for k in alive[1:-1]}
            best = max(scores, key=lambda k: (scores[k], -k))
            removed.append(best)
            alive.remove(best)
            expected.append(sorted((k, k + 1) for k in removed))
    order, evaluations = sleb_order(Objective(session, kind="identity"))
    assert order == expected
    assert evaluations == sum(range(1, DEPTH - 1))  # 4 + 3 + 2 + 1 candidates


def test_sleb_refuses_in_one_line_when_every_candidate_scores_nan(study, monkeypatch):
    """Every candidate's quality NaN (e.g. next-token objectives on texts of one token): no block can be chosen."""
    _, _, session = study
    monkeypatch.setattr(baselines, "_subset_quality", lambda *args: float("nan"))
    with pytest.raises(RBAError, match=r"every candidate block scored NaN fidelity .* removed, so none can be chosen"):
        sleb_order(Objective(session, kind="identity"))


def test_sleb_stops_at_the_flops_floor(study):
    """``[report] baseline_min_flops``: a removal that would go below it is never tried, so the order is the
    unbounded one's prefix that stays above it (every block of the tiny ViT costs the same: two removals)."""
    _, _, session = study
    objective = Objective(session, kind="identity")
    unbounded, _ = sleb_order(objective)
    floor = objective.cost([(1, 2), (2, 3)])["flops_frac"] - 1e-9  # two blocks removed: still at or above it
    order, evaluations = sleb_order(objective, min_flops=floor)
    assert order == unbounded[:2]
    assert evaluations == 4 + 3  # a third removal's candidates all fall below the floor: none is evaluated


def test_report_baselines_listed_and_within_their_flops_window(study):
    """``[report] baselines`` as a list plans those methods only; ``baseline_min_flops`` / ``baseline_max_flops``
    keep the planned configurations whose FLOPs fraction lies inside the window: the same rows as without it,
    filtered here by their own flops_frac column."""
    import search._results as results
    from search.study import prepare

    _, _, session = study
    found = {}
    for window in [(0.0, 1.0), (0.5, 0.85)]:
        cfg = _config(study, f"window{window[0]}", objectives=["fidelity", "flops"])
        cfg.report.baselines = ["shortgpt", "gromov"]
        cfg.report.baseline_min_flops, cfg.report.baseline_max_flops = window
        found[window], _ = results._baseline_rows(prepare(cfg, progress=False, session=session), {})
    every, inside = found[(0.0, 1.0)], found[(0.5, 0.85)]
    assert set(every["method"]) == {"shortgpt", "gromov"} and len(every) == 2 * DEPTH  # 1..6 blocks each
    expected = every[(every["flops_frac"] >= 0.5) & (every["flops_frac"] <= 0.85)]
    assert 0 < len(inside) < len(every)
    assert list(zip(inside["method"], inside["spans"])) == list(zip(expected["method"], expected["spans"]))


# ---------------------------------------------------------------------- random lesions
def test_random_lesions_are_seeded_distinct_block_sets():
    blocks = [0, 1, 2, 4, 5]
    a = random_lesions(blocks, 12, seed=3)
    assert a == random_lesions(blocks, 12, seed=3) and a != random_lesions(blocks, 12, seed=4)
    sets = [tuple(i for i, _ in spans) for spans in a]
    assert len(set(sets)) == 12 and all(s and set(s) <= set(blocks) for s in sets)
    assert all(spans == [(k, k + 1) for k in sorted(k for k, _ in spans)] for spans in a)
    every = {frozenset(c) for n in range(1, 6) for c in itertools.combinations(blocks, n)}
    assert {frozenset(i for i, _ in s) for s in random_lesions(blocks, 100, seed=0)} == every  # all 31


# ---------------------------------------------------------------------- priors without BR-greedy
def test_proxy_priors_leave_out_what_br_proposes(study):
    _, _, session = study
    table = span_scores(session.stats, session.pairs, session.cfg.fit.ridge)
    front = front_priors(table, Objective(session))
    every = prior_configurations(table, front)
    proxy = prior_configurations(table, front, br=False)
    from_br = [spans for label, spans in best_single_spans(table) if label == "best br"] + br_greedy(table)
    assert any(spans in from_br for _, spans in every)
    assert not any(label.startswith(("best br", "br-greedy")) for label, _ in proxy)
    assert [s for _, s in proxy] == [s for label, s in every if not label.startswith(("best br", "br-greedy"))]


# ---------------------------------------------------------------------- as studies
def test_baselines_run_as_studies(study):
    """Each method's trials evaluate its plan, in its fit kind: removals cost the removed blocks and add nothing;
    fitted spans add their maps' parameters."""
    _, _, session = study
    cm = session.cost_model
    x = _calibration_vectors(session)
    influence = [1 - _cos(x[k], x[k + 1]).mean() for k in range(DEPTH)]
    ranked = sorted(range(DEPTH), key=lambda k: (influence[k], k))
    d = session.adapter.dims()[0]

    def params(spans, fitted):
        removed = sum(sum(cm.block_params[i:j]) for i, j in spans)
        return cm.total_params - removed + (len(spans) * (d * d + d) if fitted else 0)

    runs = {}
    for method, search in [("shortgpt-affine", {}), ("gromov", {}), ("random-lesions", {"trials": 4, "seed": 1}),
                           ("proxy-front", {"trials": 5}), ("sleb", {}), ("optuna", {"trials": 6, "priors": "proxy"})]:
        res = run_search(_config(study, method, method=method, **search), progress=False, session=session)
        done = res.trials[res.trials["state"] == "COMPLETE"]
        trials = optuna.load_study(study_name="rba", storage=res.storage).get_trials(deepcopy=False)
        source = {t.number: t.user_attrs.get("source", "") for t in trials}
        runs[method] = done.assign(source=[source[n] for n in done["number"]])
        fitted = get_method(method).kind is None
        for r in done.itertuples():
            spans = [] if r.spans == "none" else [tuple(map(int, s.split("-"))) for s in r.spans.split(",")]
            assert r.params == params(spans, fitted), (method, r.spans)
    affine = [",".join(f"{i}-{j}" for i, j in merge_runs([(k, k + 1) for k in ranked[:n]], session.pairs))
              for n in range(1, DEPTH + 1)]
    assert list(runs["shortgpt-affine"]["spans"]) == list(dict.fromkeys(affine))  # a repeated configuration runs once
    assert list(runs["gromov"]["spans"]) == [f"{i}-{j}" for i, j in gromov_spans(angular_distances(session, session.pairs))]
    assert list(runs["random-lesions"]["spans"]) == [",".join(f"{i}-{j}" for i, j in s) for s in random_lesions(
        range(DEPTH), 4, seed=1)]
    assert len(runs["proxy-front"]) == 5 and runs["proxy-front"]["source"].str.startswith("proxy front").all()
    assert list(runs["sleb"]["spans"]) == [",".join(f"{i}-{j}" for i, j in s) for s in sleb_order(
        Objective(session, kind="identity"))[0]]
    sources = runs["optuna"]["source"]
    assert sources.str.startswith("prior: proxy front").any() and not sources.str.contains("br").any()
