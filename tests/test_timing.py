"""rba.timing, the one timer, on a fake clock: workloads that "take" a known time advance the clock and record
their order, so the protocol (warm-up of both, ABBA, synchronisation, the repeat rule, the paired result) is
checked exactly and nothing is timed for real."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rba import timing
from rba.timing import FAST_REPEATS, compare, time_ms


class FakeClock:
    """A clock that moves only when a workload runs; ``events`` records runs and synchronisations in order."""

    def __init__(self):
        self.now = 0.0
        self.events: list[str] = []

    def __call__(self) -> float:
        return self.now

    def workload(self, name: str, seconds):
        """A callable that takes ``seconds`` (a number, or a function of how many runs came before)."""
        def run():
            runs = sum(e in ("a", "b") for e in self.events)
            self.now += seconds(runs) if callable(seconds) else seconds
            self.events.append(name)
        return run

    def sync(self):
        self.events.append("sync")


def test_warm_up_of_both_sides_then_abba_repeats():
    clock = FakeClock()
    c = compare(clock.workload("a", 0.4), clock.workload("b", 0.2), repeats=3, warmup=2, clock=clock, sync=False)
    # a round takes 1.2 s (not fast): exactly 3 repeats, each A B B A, after 2 warm-up rounds
    assert clock.events == ["a", "b", "b", "a"] * 5
    assert c.repeats == 3 and c.order == "ABBA"
    assert c.a_times_ms == pytest.approx([400.0] * 3) and c.b_times_ms == pytest.approx([200.0] * 3)
    assert c.speedup == pytest.approx(2.0) and c.b_faster == 1.0
    assert (c.speedup_low, c.speedup_high) == (pytest.approx(2.0), pytest.approx(2.0))


def test_fast_repeats_are_raised_to_the_minimum():
    clock = FakeClock()
    c = compare(clock.workload("a", 0.01), clock.workload("b", 0.01), repeats=5, clock=clock, sync=False)
    assert c.repeats == FAST_REPEATS == 20
    assert clock.events.count("a") == 2 * (2 + 20)  # two runs per round: 2 warm-up rounds, 20 repeats
    t = time_ms(clock.workload("a", 0.003), repeats=1, samples=3, clock=clock, sync=False)
    assert t.repeats == 20 and t.median_ms == pytest.approx(1.0)
    slow = time_ms(clock.workload("a", 1.5), repeats=2, clock=clock, sync=False)
    assert slow.repeats == 2 and slow.median_ms == pytest.approx(1500.0)


def test_abba_cancels_a_linear_drift_that_ab_charges_to_b():
    # A and B cost the same, but every run takes 1 ms longer than the one before (warming machine, rising load)
    def drift(runs):
        return 1.0 + 0.001 * runs

    clock = FakeClock()
    c = compare(clock.workload("a", drift), clock.workload("b", drift), repeats=4, clock=clock, sync=False)
    assert c.ratios == pytest.approx(np.ones(4), rel=1e-12)
    # the same drift timed A then B by hand: B, always second, looks slower in every repeat
    clock = FakeClock()
    a, b = clock.workload("a", drift), clock.workload("b", drift)
    ab = []
    for _ in range(4):
        t0 = clock()
        a()
        t1 = clock()
        b()
        ab.append((t1 - t0) / (clock() - t1))
    assert np.all(np.array(ab) < 1.0)


def test_the_headline_is_the_median_of_paired_ratios():
    # per-repeat seconds where the ratio of the medians and the median of the ratios disagree
    a_per_repeat, b_per_repeat = [1.0, 3.0, 2.0, 2.2, 1.1], [2.5, 2.9, 2.1, 2.05, 1.0]
    # 2 warm-up rounds, then 5 repeats; each side runs twice per round (A B B A), the same time both runs
    a_s = iter([1.0] * 4 + [v for v in a_per_repeat for _ in range(2)])
    b_s = iter([1.0] * 4 + [v for v in b_per_repeat for _ in range(2)])
    clock = FakeClock()
    c = compare(clock.workload("a", lambda _: next(a_s)), clock.workload("b", lambda _: next(b_s)), repeats=5,
                samples=4, clock=clock, sync=False, fast_repeats=0)
    a, b = np.array(a_per_repeat) * 1000 / 4, np.array(b_per_repeat) * 1000 / 4
    assert c.a_times_ms == pytest.approx(list(a)) and c.b_times_ms == pytest.approx(list(b))
    assert c.speedup == pytest.approx(np.median(a / b)) and c.speedup > 1
    assert c.ratio_of_medians == pytest.approx(np.median(a) / np.median(b)) and c.ratio_of_medians < 1
    assert (c.a_ms, c.b_ms) == (pytest.approx(np.median(a)), pytest.approx(np.median(b)))
    assert c.b_faster == pytest.approx(np.mean(b < a)) == 0.6
    assert min(a / b) - 1e-9 <= c.speedup_low <= c.speedup <= c.speedup_high <= max(a / b) + 1e-9


def test_each_run_is_synchronised_before_and_after():
    clock = FakeClock()
    time_ms(clock.workload("a", 2.0), repeats=2, warmup=1, clock=clock, sync=clock.sync)
    assert clock.events == ["sync", "a", "sync"] * 3


def test_cuda_is_synchronised_only_once_torch_uses_it(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: calls.append("sync"))
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    clock = FakeClock()
    compare(clock.workload("a", 2.0), clock.workload("b", 2.0), repeats=1, warmup=0, clock=clock)
    assert calls == []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    compare(clock.workload("a", 2.0), clock.workload("b", 2.0), repeats=1, warmup=0, clock=clock)
    assert calls == ["sync"] * 8  # before and after each of the four runs


def test_the_cost_model_times_every_part_through_the_timer(tmp_path, monkeypatch):
    """Every latency of the cost model's table is a synchronised, warmed-up median of at least FAST_REPEATS runs
    (tiny blocks are fast): counted through the synchronisation hook."""
    from conftest import tiny_vit_config

    from rba.cost import CostModel
    from rba.session import Session

    session = Session(tiny_vit_config(tmp_path), progress=False)
    calls = []
    monkeypatch.setattr(timing, "_default_sync", lambda: lambda: calls.append(1))
    model = CostModel.measure(session.adapter, session.splits.eval.samples[:4], batch_size=2, latency_repeats=1)
    parts = 1 + session.adapter.num_blocks + 1 + len(set(model.dims))  # embedding, blocks, head, one map per width
    assert len(calls) == parts * 2 * (1 + FAST_REPEATS)
    assert all(t > 0 for t in model.block_latency_ms)


def test_the_older_protocols_are_gone():
    """One protocol: no A-then-B order to choose, and no wrappers of the older report measurement."""
    with pytest.raises(TypeError):
        compare(lambda: None, lambda: None, order="AB")
    assert not hasattr(timing, "interleaved_speedup") and not hasattr(timing, "speedup_text")
