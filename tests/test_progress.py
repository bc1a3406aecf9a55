"""What a command says while it works (``rba.progress``): the trial ETA on a fake clock, plain lines without a
terminal and bars on one, the verbosity levels, and ``rba run`` / ``rba search`` as a user sees them with stderr
redirected (no bar control characters, a line per phase and per trial; ``--quiet``: nothing;
``--verbose``: the timings, checked against ``trials.csv``)."""

from __future__ import annotations

import io
import logging
import re
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest

from rba import progress
from rba.cli import main as cli_main

sys.path.insert(0, str(Path(__file__).resolve().parent / "search_tests"))
from _search_helpers import single_thread  # noqa: E402,F401  (autouse fixture: tiny models on a loaded machine)

CONTROL = re.compile(r"[\r\x1b]")  # carriage returns (tqdm redraws) and escape sequences (cursor moves)

TOML = """
[model]
kind = "timm"
name = "test_vit"
pretrained = false
options = {{ depth = 4 }}
[data]
kind = "synthetic"
image_size = 32
calibration = 24
probe = 24
eval = 24
options = {{ modality = "image", classes = 3 }}
[capture]
cache_dir = "{cache}"
[evaluate]
latency_repeats = 1
[search]
objectives = ["fidelity", "flops"]
"""


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


@contextmanager
def _rba_log_level(level: int):
    """The ``rba`` logger at ``level`` inside the block (the verbosity is read from it), as it was after it."""
    logger = logging.getLogger("rba")
    saved = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(saved)


@pytest.fixture(autouse=True)
def _normal_level():
    with _rba_log_level(logging.NOTSET):  # the Python API's default
        yield


@pytest.mark.parametrize("level, verbosity", [(logging.NOTSET, progress.NORMAL), (logging.INFO, progress.NORMAL),
                                              (logging.WARNING, progress.QUIET), (logging.ERROR, progress.QUIET),
                                              (logging.DEBUG, progress.VERBOSE)])
def test_the_verbosity_is_the_level_set_on_the_rba_logger(level, verbosity):
    with _rba_log_level(level):
        assert progress.verbosity() == verbosity


# ---------------------------------------------------------------------- ETA
def test_eta_says_estimating_until_a_trial_completes_then_leaves_the_first_trial_out():
    clock = Clock()
    eta = progress.Eta(total=10, clock=clock)
    assert eta.remaining_s() is None and eta.text() == "ETA estimating…"
    clock.t = 100.0  # the first trial: warm-up and caches
    eta.update(1)
    assert eta.remaining_s() == pytest.approx(9 * 100.0)  # one completion: all there is to go on
    for t, n in ((110.0, 2), (120.0, 3), (130.0, 4)):
        clock.t = t
        eta.update(n)
    # 10 s per trial since the first completion, 6 trials to go; a naive mean over all 4 would say 6 * 32.5 s
    assert eta.remaining_s() == pytest.approx(60.0)
    assert eta.text() == "ETA 1 min 00 s"
    clock.t = 190.0
    eta.update(10)
    assert eta.remaining_s() == 0 and eta.text() == "done"


def test_eta_of_a_resumed_study_shared_with_other_processes():
    clock = Clock()
    eta = progress.Eta(total=20, initial=8, clock=clock)
    clock.t = 30.0
    eta.update(8)  # nothing new: not a completion
    assert eta.remaining_s() is None
    clock.t = 40.0
    eta.update(9)  # first completion of this process's watch: 40 s for 1 trial
    assert eta.remaining_s() == pytest.approx(11 * 40.0)
    clock.t = 50.0
    eta.update(12)  # another process completed two more meanwhile: 3 trials in 10 s
    assert eta.remaining_s() == pytest.approx(8 * 10.0 / 3)


@pytest.mark.parametrize("seconds, text", [(0.4213, "0.42 s"), (12.34, "12.3 s"), (245.2, "4 min 05 s"),
                                           (3725.0, "1 h 02 min")])
def test_format_duration(seconds, text):
    assert progress.format_duration(seconds) == text


# ---------------------------------------------------------------------- lines and bars
def test_without_a_terminal_lines_and_no_control_characters(capsys, monkeypatch):
    monkeypatch.setattr(progress, "LINE_INTERVAL_S", 0.05)
    with progress.phase("model: loading"):
        time.sleep(0.3)  # a long wait: lines keep coming while it runs
    with progress.bar(30, "capture", "samples") as b:
        for _ in range(3):
            b.update(10)
    trials = progress.TrialProgress(3, 0)
    for k in range(3):
        trials.finished(k, k + 1, outcome=f"1-{k + 2}: fidelity 0.9")
    trials.close()
    err = capsys.readouterr().err
    assert not CONTROL.search(err)
    lines = err.splitlines()
    waiting = lines[:lines.index("model: loading: done")]
    assert waiting and all(re.fullmatch(r"model: loading: 0\.\d\d s so far", ln) for ln in waiting), err
    assert "capture: 30/30 samples" in lines
    assert "trials: 0 of 3 complete; ETA estimating…" in lines
    done = [ln for ln in lines if ln.startswith("trial ")]
    assert [ln.split(":")[0] for ln in done] == ["trial 0", "trial 1", "trial 2"]
    assert done[-1].endswith("3 of 3 complete, done")
    assert not re.search(r"\bin \d+\.\d+ s\b", err)  # timings are --verbose's


def test_a_phase_that_fails_leaves_the_error_alone(capsys, monkeypatch):
    """A bad input found while the model loads is one line, ``rba: error: …``, with nothing before it, even
    when the load is slow (model and data phases have no "so far" lines)."""
    monkeypatch.setattr(progress, "LINE_INTERVAL_S", 0.05)
    with pytest.raises(ValueError):
        with progress.phase("model: loading", heartbeat=False):
            time.sleep(0.3)
            raise ValueError("bad image size")
    with pytest.raises(ValueError):
        with progress.bar(10, "capture", "samples") as b:
            b.update(5)
            raise ValueError("NaN at boundary 3")
    assert capsys.readouterr().err == ""


def test_on_a_terminal_bars(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    monkeypatch.setattr(progress, "interactive", lambda: True)
    with progress.bar(4, "capture", "samples") as b:
        b.update(4)
    trials = progress.TrialProgress(2, 0)
    trials.finished(0, 1, outcome="x")
    trials.close()
    out = stream.getvalue()
    assert "\rcapture:   0%|" in out and "0/4 [" in out  # tqdm's frames (redrawn at most every 0.1 s)
    assert "\rtrials:   0%|" in out and "ETA estimating…" in out and "1/2 [" in out


def test_quiet_prints_nothing_but_failures_and_verbose_adds_timings(capsys):
    with _rba_log_level(progress.LOG_LEVELS[progress.QUIET]):
        with progress.phase("model: loading"):
            pass
        with progress.bar(2, "capture", "samples") as b:
            b.update(2)
        trials = progress.TrialProgress(2, 0)
        trials.finished(0, 1, outcome="x", duration_s=1.5)
        trials.write("trial 1 failed: ValueError: boom")
        trials.close()
        progress.info("an informative line")
    assert capsys.readouterr().err == "trial 1 failed: ValueError: boom\n"

    with _rba_log_level(progress.LOG_LEVELS[progress.VERBOSE]):
        with progress.phase("model: loading"):
            pass
        trials = progress.TrialProgress(2, 0)
        trials.finished(0, 1, outcome="x", duration_s=1.5)
        trials.close()
    lines = capsys.readouterr().err.splitlines()
    assert re.fullmatch(r"model: loading: in \d\.\d\d s", lines[0]), lines
    assert lines[2].startswith("trial 0 in 1.50 s: x; 1 of 2 complete")


def test_tick_counts_in_the_innermost_counted_phase(capsys):
    with progress.phase("report", unit="evaluations") as outer:
        with progress.phase("export"):  # not counted: the tick goes to the report
            progress.tick()
        with pytest.raises(ValueError):
            with progress.phase("export", unit="files") as inner:  # counted: its ticks are its own
                progress.tick(5)
                raise ValueError("disk full")
        progress.tick(2)  # the failed inner phase no longer counts
    progress.tick()  # no counted phase open: nothing happens
    assert outer.n == 3 and inner.n == 5


# ---------------------------------------------------------------------- the commands, stderr redirected
@pytest.fixture(scope="module")
def config(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("progress")
    path = tmp / "tiny.toml"
    path.write_text(TOML.format(cache=tmp / "cache"))
    return tmp, path


def test_verbose_run_without_a_terminal_shows_each_phase_and_trial_in_plain_lines_with_timings(config, capsys):
    tmp, path = config
    assert cli_main(["run", str(path), "--out", str(tmp / "run"), "--trials", "2", "--verbose"]) == 0
    err = capsys.readouterr().err
    assert not CONTROL.search(err), repr(err[:500])
    lines = err.splitlines()
    # every phase has its line, and --verbose says how long it took
    for phase in ("model: loading timm test_vit", "scores: scores.csv, scores.png", "cost model: FLOPs and per-block "
                  "latency", "search: tables and front plot"):
        assert any(re.fullmatch(re.escape(phase) + r": in \d+\.\d+ s", ln) for ln in lines), (phase, err)
    for phase, count in (("capture", "24/24 samples"), ("evaluation cache (eval split)", "24/24 samples"),
                         ("report: front accuracy, baselines, export, latency", r"evaluations: \d+")):
        assert any(re.fullmatch(re.escape(phase) + f": {count} in " + r"\d+\.\d+ s", ln) for ln in lines), (phase, err)
    assert "trials: 0 of 2 complete; ETA estimating…" in lines
    assert any(re.fullmatch(r"trials: 2 of 2 complete in \d+\.\d+ s", ln) for ln in lines)
    # one line per trial: its spans and values as trials.csv has them, and its time as Optuna recorded it
    trials = pd.read_csv(tmp / "run" / "trials.csv")
    line = re.compile(r"trial (\d+) in (\d+\.\d+) s: (.*); (\d) of 2 complete, (.*)")
    done = [m for m in map(line.fullmatch, lines) if m]
    assert len(done) == len(trials) == 2
    for m, row in zip(done, trials.itertuples()):
        assert int(m[1]) == row.number
        assert m[3] == f"{row.spans}: fidelity {row.fidelity:.4g}, flops_frac {row.flops_frac:.4g}"
        assert float(m[2]) == pytest.approx(row.duration_s, abs=0.006 if row.duration_s < 10 else 0.06)  # as rounded
    assert done[0][5].startswith("ETA ") and done[1][5] == "done"


def test_quiet_search_prints_nothing(config, capsys):
    tmp, path = config
    assert cli_main(["search", str(path), "--out", str(tmp / "quiet"), "--trials", "2", "--quiet"]) == 0
    assert capsys.readouterr() == ("", "")  # no warnings or errors to report here; stdout holds no table either
    assert len(pd.read_csv(tmp / "quiet" / "trials.csv")) == 2


def test_quiet_and_verbose_together_is_a_usage_error(config, capsys):
    _, path = config
    with pytest.raises(SystemExit) as exc:
        cli_main(["search", str(path), "--quiet", "--verbose"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("rba: error: ") and "not allowed with argument" in err
