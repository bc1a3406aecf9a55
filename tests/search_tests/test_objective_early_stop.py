"""Early stopping (``[search] early_stop``): the eval split is scored in growing subsets and a trial stops when the
current front dominates it by more than the subset's standard error. Partial scores and standard errors are
checked against a hand computation (numpy lstsq maps on materialised activations, a staged forward written
apart from rba's evaluator); the rule against hand-made fronts; a study's tables against its trials."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch.nn.functional as F
from _search_helpers import (
    lstsq_fit,
    make_config,
    materialise,
    single_thread,  # noqa: F401  (autouse fixture)
    staged_forward,
)

from rba.session import Session
from search.objective import Objective, dominated_by

BATCH = 12  # 48 eval samples in 4 batches: stages are batch {0}, then {2}, then {1, 3}


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("early")
    cfg = make_config(tmp, tmp / "cache", evaluate={"batch_size": BATCH, "head": "fixed-probe"},
                      search={"objectives": ["fidelity", "accuracy", "flops"]})
    return Session(cfg, progress=False)


@pytest.fixture(scope="module")
def calibration(session):
    return materialise(session.adapter, session.splits.calibration.samples, batch_size=16)


def _hand_scores(session, calibration, spans, rows):
    """Per-sample cosines to the unmodified model and fixed-probe hits on eval samples ``rows``, by hand."""
    samples = session.splits.eval.samples[rows]
    weights = {(i, j): lstsq_fit(calibration[i], calibration[j], session.cfg.fit.ridge) for i, j in spans}
    got = staged_forward(session.adapter, samples, spans, weights)
    ref = staged_forward(session.adapter, samples, [], {})
    cos = F.cosine_similarity(got, ref, dim=1).numpy()
    pred = session.evaluator.fixed_probe.predict(got.float()).numpy()  # fitted once, on the unmodified model
    hits = (pred == np.asarray(session.splits.eval.labels)[rows]).astype(float)
    return cos, hits


def test_dominated_configuration_stops_at_first_subset(session, calibration):
    objective = Objective(session)
    spans = session.parse("1-3")
    cost = objective.cost(spans)
    # a front point cheaper than the configuration and perfect in quality dominates it by far
    front = [(7, {"fidelity": 1.0, "accuracy": 1.0, "flops_frac": cost["flops_frac"] - 0.01})]
    got = objective(spans, front=front)
    assert got["stopped_early"] == 7 and objective.stopped == 1 and objective.evaluations == 0
    n = len(session.splits.eval.samples)
    rows = np.arange(0, BATCH)  # the first stage: batch 0 (images keep the split's order)
    assert got["eval_samples"] == BATCH and got["eval_fraction"] == BATCH / n
    cos, hits = _hand_scores(session, calibration, spans, rows)
    m, fpc = len(rows), 1 - len(rows) / n
    assert got["fidelity"] == pytest.approx(cos.mean(), abs=2e-5)
    # fidelity is a mean of cosines: its SE is theirs; accuracy is a proportion: √(p(1 − p)/m)
    assert got["fidelity_se"] == pytest.approx(math.sqrt(cos.var(ddof=1) / m * fpc), rel=1e-3)
    p = hits.mean()
    assert abs(got["accuracy"] - p) <= 1 / m + 1e-12
    assert got["accuracy_se"] == pytest.approx(math.sqrt(got["accuracy"] * (1 - got["accuracy"]) / m * fpc))
    assert got["flops_frac"] == cost["flops_frac"]
    # the partial result is not remembered as the configuration's result
    full = objective(spans)
    assert "stopped_early" not in full and objective.evaluations == 1


def test_not_dominated_runs_in_full_and_equals_plain_evaluation(session):
    objective = Objective(session)
    spans = session.parse("0-2,3-4")
    cost = objective.cost(spans)
    plain = Objective(session)(spans)
    # perfect quality but dearer: never dominates; cheaper but worse than the trial: never dominates either
    front = [(1, {"fidelity": 1.0, "accuracy": 1.0, "flops_frac": cost["flops_frac"] + 0.01}),
             (2, {"fidelity": -1.0, "accuracy": 0.0, "flops_frac": 0.0})]
    got = objective(spans, front=front)
    assert "stopped_early" not in got and objective.stopped == 0 and got == plain


@pytest.mark.parametrize("margin, stops", [(0.99, False), (1.01, True)])
def test_rule_needs_more_than_one_standard_error(margin, stops):
    costs, quality, se = {"flops_frac": 0.5}, {"fidelity": 0.8}, {"fidelity": 0.05}
    directions = {"flops_frac": "minimize", "fidelity": "maximize"}
    front = [(3, {"fidelity": 0.8 + margin * 0.05, "flops_frac": 0.5})]  # equal cost, better quality
    assert (dominated_by(front, costs, quality, se, directions) == 3) is stops


def test_rule_every_objective():
    directions = {"flops_frac": "minimize", "accuracy": "maximize", "fidelity": "maximize"}
    costs, quality, se = {"flops_frac": 0.5}, {"accuracy": 0.6, "fidelity": 0.8}, {"accuracy": 0.1, "fidelity": 0.01}
    assert dominated_by([(0, {"accuracy": 0.75, "fidelity": 0.9, "flops_frac": 0.4})], costs, quality, se, directions) == 0
    # better by more than SE in fidelity, not in accuracy: not dominated by enough
    assert dominated_by([(0, {"accuracy": 0.65, "fidelity": 0.9, "flops_frac": 0.4})], costs, quality, se, directions) is None
    # far better in quality but dearer
    assert dominated_by([(0, {"accuracy": 1.0, "fidelity": 1.0, "flops_frac": 0.51})], costs, quality, se, directions) is None


def test_study_marks_stopped_trials_and_keeps_them_off_the_front(tmp_path):
    from search.optuna_backend import trial_function
    from search.pareto import TRIAL_COLUMNS
    from search.recording import complete_count
    from search.report import finish
    from search.study import open_study, prepare

    cfg = make_config(tmp_path, tmp_path / "cache", evaluate={"batch_size": BATCH},
                      search={"early_stop": True, "trials": 4, "priors": False})
    ctx = prepare(cfg, progress=False)
    # single-block spans cost the same: the best one, evaluated first, dominates the others by its fidelity
    plain = Objective(ctx.session, kind=ctx.objective.kind)
    singles = sorted(([s] for s in ctx.session.pairs if s[1] - s[0] == 1), key=lambda c: -plain(c)["fidelity"])
    fid = [plain(c)["fidelity"] for c in singles]
    assert fid[0] - fid[-1] > 0.05  # setup check: a gap far above the first subset's standard error
    study, _ = open_study(ctx)
    for spans in singles:
        study.enqueue_trial(ctx.space.encode(spans))
    study.optimize(trial_function(ctx), n_trials=len(singles))
    res = finish(ctx, study)
    trials = pd.read_csv(res.out / "trials.csv")
    front = pd.read_csv(res.out / "pareto.csv")
    assert list(trials.columns) == TRIAL_COLUMNS
    assert complete_count(study) == len(singles) == len(trials)  # stopped trials count towards trials
    stopped = trials[trials["stopped_early"]]
    assert len(stopped) >= 1 and not front["stopped_early"].any()
    assert not set(stopped["spans"]) & set(front["spans"])
    by_number = {t.number: t for t in study.trials}
    for _, row in trials.iterrows():
        t = by_number[int(row["number"])]
        key = str(row["spans"])
        if row["stopped_early"]:
            dom = by_number[t.user_attrs["stopped_early"]]
            info = t.user_attrs["early_stop"]
            assert info["eval_fraction"] < 1 and "stopped_early" not in dom.user_attrs
            assert dom.values[0] > row["fidelity"] + info["fidelity_se"]  # dominated by more than the SE
        else:  # a trial run in full holds the plain evaluation
            assert row["fidelity"] == pytest.approx(plain(ctx.session.parse(key))["fidelity"], abs=1e-12)
    assert singles[0] and ",".join(f"{i}-{j}" for i, j in singles[0]) in set(front["spans"])
