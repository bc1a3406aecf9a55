"""The held-out test split (``[data] test``): drawn after eval from the same permutation, so the other splits,
the statistics cache key and the study identity are those of the same config without it; a configuration
scored on it sample by sample matches a hand-written forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import staged_forward, tiny_vit_config

from rba.data import load_dataset, make_splits
from rba.errors import ConfigError
from rba.evaluate import LinearProbe
from rba.session import Session

SIZES = {"calibration": 30, "probe": 24, "eval": 20}


def _npz(tmp_path, n=100):
    rng = np.random.default_rng(5)
    path = tmp_path / "digits.npz"
    np.savez(path, images=rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8),
             labels=rng.integers(0, 3, size=n))
    return path


def _config(tmp_path, test, **data):
    return tiny_vit_config(tmp_path, data={"kind": "npz", "path": str(_npz(tmp_path)), **SIZES, "test": test,
                                           "options": {}, **data})


def test_test_split_leaves_the_other_splits_byte_for_byte(tmp_path):
    without, with_test = _config(tmp_path, 0), _config(tmp_path, 17)
    a = make_splits(load_dataset(without), without, need_labels=True)
    b = make_splits(load_dataset(with_test), with_test, need_labels=True)
    assert a.test is None and "test" not in a.indices
    for name in ("calibration", "probe", "eval"):
        assert a.indices[name].tobytes() == b.indices[name].tobytes()
        assert np.asarray(getattr(a, name).samples).tobytes() == np.asarray(getattr(b, name).samples).tobytes()
        assert np.asarray(getattr(a, name).labels).tobytes() == np.asarray(getattr(b, name).labels).tobytes()
    # the test split: the next 17 of the same permutation (written out here), disjoint from the others
    perm = np.random.default_rng(with_test.data.seed).permutation(100)
    start = sum(SIZES.values())
    np.testing.assert_array_equal(b.indices["test"], np.sort(perm[start : start + 17]))
    others = np.concatenate([b.indices[k] for k in SIZES])
    assert len(b.test) == 17 and not np.intersect1d(b.indices["test"], others).size
    images = np.load(tmp_path / "digits.npz")["images"]
    np.testing.assert_array_equal(np.asarray(b.test.samples), images[b.indices["test"]])


def test_test_split_keeps_the_statistics_key_and_the_study_identity(tmp_path):
    from search.identity import study_identity

    s0 = Session(_config(tmp_path, 0), progress=False, measure_latency=False)
    s1 = Session(_config(tmp_path, 17), progress=False, measure_latency=False)
    assert s0.statistics_key() == s1.statistics_key()
    kind = s0.cfg.fit.kind
    assert study_identity(s0.cfg, s0, kind=kind, method="optuna") == study_identity(s1.cfg, s1, kind=kind,
                                                                                     method="optuna")
    # synthetic data sized by the splits is another data set when the test split grows: another study
    syn0 = Session(tiny_vit_config(tmp_path), progress=False, measure_latency=False)
    syn1 = Session(tiny_vit_config(tmp_path, data={"test": 8}), progress=False, measure_latency=False)
    assert study_identity(syn0.cfg, syn0, kind=kind, method="optuna") != study_identity(syn1.cfg, syn1, kind=kind,
                                                                                         method="optuna")


def test_too_few_samples_names_the_test_split(tmp_path):
    cfg = _config(tmp_path, 40)
    with pytest.raises(Exception, match=r"test 40\) but .* has only 100: lower data.calibration/probe/eval/test"):
        make_splits(load_dataset(cfg), cfg, need_labels=True)


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("test-split")
    return Session(_config(tmp, 23), progress=False, measure_latency=False)


@pytest.mark.parametrize("text", ["none", "2-4", "1-2,4-6"])
def test_per_sample_scores_on_the_test_split_match_a_hand_written_forward(session, text):
    spans = session.parse(text)
    maps = session.maps(spans)
    scores = session.evaluate_split(spans, "test")
    splits = session.splits
    adapter = session.adapter
    with torch.inference_mode():
        original = staged_forward(adapter, adapter.collate(splits.test.samples))
        replaced = staged_forward(adapter, adapter.collate(splits.test.samples), dict(zip(spans, maps)))
        probe_x = staged_forward(adapter, adapter.collate(splits.probe.samples), dict(zip(spans, maps)))
    cos = F.cosine_similarity(replaced.double(), original.double(), dim=1).numpy()
    np.testing.assert_allclose(scores.cosine, cos, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(scores.index, splits.indices["test"])
    np.testing.assert_array_equal(scores.label, splits.test.labels)
    # the default probe head: fitted on this configuration's probe split, then applied to the test split
    num_classes = int(max(splits.probe.labels.max(), splits.eval.labels.max())) + 1
    probe = LinearProbe(session.cfg.evaluate.probe_c).fit(probe_x.float(), torch.as_tensor(splits.probe.labels),
                                                          num_classes)
    agree = np.mean(scores.prediction == probe.predict(replaced.float()).numpy())
    assert agree >= 0.95  # float32 rounding between two forwards may flip a sample on a class boundary
    correct = scores.prediction == splits.test.labels
    assert scores.accuracy == pytest.approx(correct.mean())
    assert scores.accuracy_se == pytest.approx(np.sqrt(correct.mean() * (1 - correct.mean()) / len(correct)))
    assert scores.fidelity_se == pytest.approx(cos.std(ddof=1) / np.sqrt(len(cos)), rel=1e-4)


def test_per_sample_scores_on_eval_agree_with_the_search_scores(session):
    result = session.evaluate("2-5")
    per = session.evaluate_split("2-5", "eval")
    assert per.accuracy == pytest.approx(result["accuracy"]) and per.fidelity == pytest.approx(result["fidelity"])
    np.testing.assert_array_equal(per.index, session.splits.indices["eval"])
    assert "test" not in session.evaluator.parts  # a trial never runs the test split


def test_scoring_on_a_missing_test_split_is_refused(tmp_path):
    s = Session(_config(tmp_path, 0), progress=False, measure_latency=False)
    with pytest.raises(ConfigError, match="data.test = 0: there is no test split"):
        s.evaluate_split("none", "test")


def test_a_configuration_scored_on_eval_then_test_fits_its_probe_once(session, monkeypatch):
    fits = []
    real_fit = LinearProbe._fit
    monkeypatch.setattr(LinearProbe, "_fit", lambda self, *a: fits.append(1) or real_fit(self, *a))
    session.evaluator.clear_memo()
    first = session.evaluate("1-3")
    per = session.evaluate_split("1-3", "test")
    assert len(fits) == 1  # the test split reuses the probe fitted on the same pooled probe rows
    session.evaluate("3-5")
    assert len(fits) == 2  # another configuration: other probe rows, a new fit
    # the memoised probe gives what a fresh evaluator (nothing memoised) gives
    session.evaluator.clear_memo()
    assert session.evaluate("1-3")["accuracy"] == first["accuracy"]
    np.testing.assert_array_equal(session.evaluate_split("1-3", "test").prediction, per.prediction)
    assert len(fits) == 3
