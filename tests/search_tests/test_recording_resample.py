"""After a repeated proposal the study's own sampler is asked again, and a uniform draw fills in only when it keeps
repeating itself or has no relative proposals: scripted samplers on a 3-block space, no model."""

from __future__ import annotations

from types import SimpleNamespace

import optuna
import pytest

from rba.spans import format_spans
from search.recording import RESAMPLE_ATTEMPTS, enqueue_unseen
from search.space import SpanSpace

SPACE = SpanSpace(3, [(i, j) for i in range(3) for j in range(i + 1, 4)])


class Scripted(optuna.samplers.BaseSampler):
    """Relative proposals from a script of configurations (then the last one again); independent ones at random."""

    def __init__(self, script):
        self.script = list(script)
        self.asked = 0
        self._random = optuna.samplers.RandomSampler(seed=0)

    def infer_relative_search_space(self, study, trial):
        return SPACE.distributions()

    def sample_relative(self, study, trial, search_space):
        spans = self.script[min(self.asked, len(self.script) - 1)]
        self.asked += 1
        return SPACE.encode(spans)

    def sample_independent(self, study, trial, name, distribution):
        return self._random.sample_independent(study, trial, name, distribution)


def _repeat(sampler, seen_spans):
    """A study where ``seen_spans`` are complete, and a running trial that repeats the first of them."""
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(0))
    for spans in seen_spans:
        study.add_trial(optuna.trial.create_trial(params=SPACE.encode(spans), distributions=SPACE.distributions(),
                                                  values=[0.5, 0.5], user_attrs={"spans": format_spans(spans)}))
    study.sampler = sampler
    trial = study.ask(fixed_distributions=SPACE.distributions())
    return study, trial, {format_spans(s) for s in seen_spans}


def _waiting(study):
    waiting = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
    assert len(waiting) == 1
    t = waiting[0]
    return format_spans(SPACE.repair(t.system_attrs["fixed_params"])), t.user_attrs["source"]


def test_the_sampler_is_asked_again_first():
    seen = [[(0, 1)], [(1, 3)], []]
    new = [(0, 2)]
    sampler = Scripted([seen[0], seen[0], seen[1], new])  # the trial's repeat, two more, then an unseen one
    study, trial, keys = _repeat(sampler, seen)
    assert enqueue_unseen(SimpleNamespace(space=SPACE), study, keys, seed=0, trial=trial)
    assert _waiting(study) == ("0-2", "sampler, after a repeat") and sampler.asked == 4


def test_a_sampler_that_keeps_repeating_falls_back_to_a_uniform_draw():
    seen = [[(0, 1)], [(1, 3)], []]
    sampler = Scripted([seen[0]])
    study, trial, keys = _repeat(sampler, seen)
    assert enqueue_unseen(SimpleNamespace(space=SPACE), study, keys, seed=0, trial=trial)
    spans, source = _waiting(study)
    assert source == "unseen after a repeat" and spans not in keys and sampler.asked == 1 + RESAMPLE_ATTEMPTS


@pytest.mark.parametrize("with_trial", [True, False])
def test_without_relative_proposals_a_uniform_draw(with_trial):
    seen = [[(0, 1)], []]
    study, trial, keys = _repeat(optuna.samplers.RandomSampler(seed=1), seen)
    assert enqueue_unseen(SimpleNamespace(space=SPACE), study, keys, seed=0, trial=trial if with_trial else None)
    spans, source = _waiting(study)
    assert source == "unseen after a repeat" and spans not in keys
