"""Session: typed hand-over of parts built elsewhere, clear_caches, and the verified statistics cache."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from conftest import materialise, tiny_vit_config

from rba.errors import CacheError
from rba.session import Session
from rba.statistics import Statistics


def _stats_files(folder):
    return sorted(folder.glob("stats-*.safetensors"))


def _count_blocks(monkeypatch, adapter) -> list[int]:
    calls = [0]
    run_block = adapter.run_block

    def counted(k, h, ctx):
        calls[0] += 1
        return run_block(k, h, ctx)

    monkeypatch.setattr(adapter, "run_block", counted)
    return calls


def _without_latency(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "latency_ms"}  # not measured here: NaN


def test_clear_caches_makes_the_next_evaluation_cold(tmp_path, monkeypatch):
    session = Session(tiny_vit_config(tmp_path), progress=False, measure_latency=False)
    session.stats, session.evaluator, session.cost_model  # noqa: B018 (built before counting)
    calls = _count_blocks(monkeypatch, session.adapter)
    first = _without_latency(session.evaluate("1-2,3-5"))
    cold = calls[0]
    fit = session.fit((1, 2))
    calls[0] = 0
    assert _without_latency(session.evaluate("1-2,3-5")) == first
    assert calls[0] < cold  # the prefix memo skipped the blocks before boundary 5
    assert session.fit((1, 2)) is fit

    session.clear_caches()
    calls[0] = 0
    assert _without_latency(session.evaluate("1-2,3-5")) == first
    assert calls[0] == cold
    assert session.fit((1, 2)) is not fit


def test_clear_caches_on_a_fresh_session_builds_nothing(tmp_path):
    session = Session(tiny_vit_config(tmp_path), progress=False)
    session.clear_caches()
    assert not (tmp_path / "cache").exists()


def test_handed_over_parts_are_used_and_checked(tmp_path):
    cfg = tiny_vit_config(tmp_path)
    built = Session(cfg, progress=False, measure_latency=False)
    shared = Session(cfg, progress=False, adapter=built.adapter, stats=built.stats, cost_model=built.cost_model)
    assert shared.adapter is built.adapter and shared.stats is built.stats and shared.cost_model is built.cost_model

    other = tiny_vit_config(tmp_path, data={"seed": 1})  # another calibration split: other statistics
    with pytest.raises(ValueError, match="another model, calibration split or capture setting"):
        Session(other, progress=False, stats=built.stats).stats  # noqa: B018  (reading it checks the handed-over stats)


def _seeded_vit(tmp_path, seed: int):
    # another random init: another model identity, same everything else
    return tiny_vit_config(tmp_path, model={"options": {"seed": seed}})


def test_foreign_cache_under_the_expected_name_is_rebuilt(tmp_path, caplog):
    cache = tmp_path / "cache"
    a = Session(_seeded_vit(tmp_path, 1), progress=False)
    assert a.stats.n > 0
    [foreign] = _stats_files(cache)
    b = Session(_seeded_vit(tmp_path, 2), progress=False)
    expected = cache / f"stats-{b.statistics_key()}.safetensors"
    assert expected != foreign
    shutil.copy(foreign, expected)
    shutil.copy(foreign.with_suffix(".safetensors.json"), expected.with_suffix(".safetensors.json"))
    with caplog.at_level("WARNING", logger="rba"):  # the session's warning is a log record (the CLI prints it)
        stats = b.stats
    [line] = [r.getMessage() for r in caplog.records if "warning" in r.getMessage()]
    assert line.startswith(f"rba: warning: statistics cache {expected} was built for another request (its model differ")
    assert line.endswith("; rebuilding it")
    # the rebuilt statistics are b's model's: the Gram matrix of its materialised boundary-0 vectors
    x = materialise(b.adapter, b.splits.calibration.samples, batch_size=16)[0]
    xt = np.hstack([x, np.ones((len(x), 1))])
    np.testing.assert_allclose(stats.gram[0].numpy(), xt.T @ xt, rtol=1e-5, atol=1e-3)
    # and the file under b's name now holds them and verifies against b's request
    again = Statistics.load(expected, request=b.statistics_request())
    assert again.key == b.statistics_key()
    assert not np.allclose(again.gram[0].numpy(), Statistics.load(foreign).gram[0].numpy())


def test_load_names_what_differs(tmp_path):
    session = Session(tiny_vit_config(tmp_path), progress=False)
    session.stats  # noqa: B018  (reading it captures and caches the statistics file)
    [path] = _stats_files(tmp_path / "cache")
    request = session.statistics_request()
    assert Statistics.load(path, request=request).key == session.statistics_key()
    for part, change in [("calibration", lambda r: r | {"calibration": "0" * 16}),
                         ("dtype", lambda r: r | {"dtype": "float64"}),
                         ("model", lambda r: r | {"model": r["model"] | {"weights": "0123abcd"}})]:
        with pytest.raises(CacheError, match=rf"was built for another request \(its {part} differ"):
            Statistics.load(path, request=change(request))


def test_clear_caches_forgets_sequential_fits(tmp_path):
    session = Session(tiny_vit_config(tmp_path, fit={"mode": "sequential"}), progress=False, measure_latency=False)
    first = _without_latency(session.evaluate("1-2,3-5"))
    assert session.sequential.passes == 1
    assert _without_latency(session.evaluate("1-2,3-5")) == first and session.sequential.passes == 1  # memoised
    fitter = session.sequential
    session.clear_caches()
    assert _without_latency(session.evaluate("1-2,3-5")) == first
    assert session.sequential is not fitter and session.sequential.passes == 1  # the pass ran again
