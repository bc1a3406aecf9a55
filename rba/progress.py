"""What a long command tells its user while it works: tqdm bars on a terminal, plain lines everywhere else.

The verbosity is the level of the ``rba`` logger itself (:func:`verbosity`), which the command line sets from
``--quiet`` / ``--verbose`` (:data:`LOG_LEVELS`) and puts back when it returns; this module keeps no state of its own:

* ``QUIET`` (``--quiet``; the logger at WARNING or above): nothing but errors and warnings;
* ``NORMAL``: a line as each phase ends (model load, capture, evaluation caches, post-search steps) and one per
  finished trial; while a phase runs, a bar on a terminal, elsewhere (logs, CI: no bar control characters) a
  line every :data:`LINE_INTERVAL_S` seconds, so that no wait is silent for long;
* ``VERBOSE`` (``--verbose``; the logger at DEBUG): also how long each phase and each trial took.

``NORMAL`` is also what an unset level (the Python API's default) means, so the bars show from Python too.

Callers pass ``enabled`` (their ``progress`` switch: off for library calls that asked for silence, for
tests and for Ray workers); output happens only when it is on and the level is above ``QUIET``.

Two kinds of output: the progress display (bars, their plain-line form, per-trial lines) goes to stderr as tqdm
does, by default from the Python API too; messages (a phase's summary, notes, warnings) are log records of the
module's logger (``logging.getLogger(__name__)``, through :func:`info`, :func:`detail`, :func:`write`). The CLI
gives the ``rba`` and ``search`` loggers a :class:`LineHandler` at the level of its verbosity
(:data:`LOG_LEVELS`); from Python they follow your logging configuration (``logging.basicConfig(level="INFO",
format="%(message)s")`` shows what the CLI shows; warnings show without one).

A phase with a ``unit`` counts the :func:`tick` calls made inside it: the innermost such phase open in the
current context (a ``contextvars`` variable, set by :func:`phase` and reset as it ends), so the code that does
the work (``Session.evaluate``) need not be handed the phase of the command that asked for it.

Trial ETAs (:class:`Eta`) leave out the first trial, which carries warm-up and cache building: with two or
more trials complete, the time per trial is the mean interval between completions since the first one.
"""

from __future__ import annotations

import contextvars
import logging
import os
import sys
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

__all__ = ["QUIET", "NORMAL", "VERBOSE", "LOG_LEVELS", "LineHandler", "verbosity", "interactive", "write", "info",
           "detail", "bar", "phase", "tick", "Eta", "TrialProgress", "format_duration", "LINE_INTERVAL_S"]

QUIET, NORMAL, VERBOSE = 0, 1, 2
#: the level of rba's and search's loggers at each verbosity (the CLI sets it)
LOG_LEVELS = {QUIET: logging.WARNING, NORMAL: logging.INFO, VERBOSE: logging.DEBUG}
_log = logging.getLogger(__name__)
#: on a non-terminal, counted work prints a progress line at most this often (and always at the start)
LINE_INTERVAL_S = 10.0
#: the innermost counted phase open in this context, for :func:`tick`
_counting: contextvars.ContextVar["_Progress | None"] = contextvars.ContextVar("rba_counting", default=None)


def verbosity() -> int:
    """``QUIET``, ``NORMAL`` or ``VERBOSE``, from the level set on the ``rba`` logger itself (not inherited: an
    unset level, the Python API's default, is ``NORMAL``): WARNING or above is ``QUIET``, DEBUG or below
    ``VERBOSE``. The CLI sets it from ``--quiet`` / ``--verbose``; from Python,
    ``logging.getLogger("rba").setLevel("WARNING")`` hides the bars as ``--quiet`` does."""
    level = logging.getLogger("rba").level
    if level == logging.NOTSET:
        return NORMAL
    if level >= LOG_LEVELS[QUIET]:
        return QUIET
    return VERBOSE if level <= LOG_LEVELS[VERBOSE] else NORMAL


def interactive() -> bool:
    """Whether stderr is a terminal that has a width: bars there, plain lines otherwise (a pseudo-terminal
    without a size would show tqdm's bars as nothing at all)."""
    stream = sys.stderr
    try:
        if not stream.isatty():
            return False
        return os.get_terminal_size(stream.fileno()).columns > 0
    except (AttributeError, ValueError, OSError):  # replaced by an object without isatty or fileno, or closed
        return False


def _display(msg: str) -> None:
    """One line on stderr (the current one), above any open bar on a terminal: the progress display's own lines
    (bars' plain-line form without a terminal) and, through :class:`LineHandler`, the CLI's log lines."""
    if interactive():
        from tqdm import tqdm  # lazy: tqdm, for bars on a terminal only (a fast CLI start)

        tqdm.write(msg, file=sys.stderr)  # above any open bar, which is redrawn below
    else:
        sys.stderr.write(msg + "\n")
        sys.stderr.flush()


class LineHandler(logging.Handler):
    """Log records as plain lines on stderr, above any open progress bar: the handler the CLI gives rba's and
    search's loggers (from Python, configure logging as you like, e.g. ``logging.basicConfig(level="INFO")``)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            _display(self.format(record))
        except Exception:  # noqa: BLE001 -- logging's contract: a failing handler reports, never raises
            self.handleError(record)


def write(msg: str, *, logger: logging.Logger | None = None) -> None:
    """A warning or failure: shown whatever the verbosity (logged at WARNING)."""
    (logger or _log).warning(msg)


def info(msg: str, *, enabled: bool = True, logger: logging.Logger | None = None) -> None:
    """A line as a phase ends (logged at INFO), unless ``enabled`` is off."""
    if enabled:
        (logger or _log).info(msg)


def detail(msg: str, *, enabled: bool = True, logger: logging.Logger | None = None) -> None:
    """A timing, for ``--verbose`` (logged at DEBUG), unless ``enabled`` is off."""
    if enabled:
        (logger or _log).debug(msg)


def format_duration(seconds: float) -> str:
    """``0.42 s``, ``12.3 s``, ``4 min 05 s``, ``1 h 02 min``."""
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    seconds = int(round(seconds))
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


# ---------------------------------------------------------------------- phases and counted work
class _Every:
    """Calls ``fn`` every ``interval`` seconds on a daemon thread until :meth:`stop`."""

    def __init__(self, interval: float, fn: Callable[[], None]):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval, fn), daemon=True, name="rba-progress")
        self._thread.start()

    def _run(self, interval: float, fn: Callable[[], None]) -> None:
        while not self._stop.wait(interval):
            fn()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class _Progress:
    """A phase, optionally counted (``unit``, ``total``).

    On a terminal, a tqdm bar kept ticking by a thread (the elapsed time moves even while nothing is counted).
    Elsewhere, a line every :data:`LINE_INTERVAL_S` seconds while it runs. Either way, one line when it ends
    (``model: loading …: done``, ``capture: 600/600 samples``; ``--verbose`` adds the time): a phase that fails
    within those first seconds, e.g. on a bad input, leaves the error as the only line."""

    def __init__(self, desc: str, *, total: int | None, unit: str | None, enabled: bool, initial: int = 0,
                 heartbeat: bool = True, clock: Callable[[], float] = time.perf_counter):
        self.desc, self.total, self.unit = desc, total, unit
        self.on = bool(enabled) and verbosity() > QUIET
        self.n = initial
        self.clock = clock
        self.started = clock()
        self._bar = self._ticker = None
        if not self.on:
            return
        if interactive():
            from tqdm import tqdm  # lazy: tqdm, for bars on a terminal only (a fast CLI start)

            fmt = (None if total is not None else "{desc} [{elapsed}]" if unit is None
                   else "{desc} [{elapsed}, {unit}: {n_fmt}]")
            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit or "it", leave=False,
                             dynamic_ncols=True, file=sys.stderr, bar_format=fmt)
            self._ticker = _Every(1.0, self._bar.refresh)
        elif heartbeat:
            self._ticker = _Every(LINE_INTERVAL_S, self._line)

    def _count(self) -> str:
        if self.total is None:
            return f"{self.unit}: {self.n}"
        return f"{self.n}/{self.total} {self.unit}"

    def _line(self) -> None:
        counted = f"{self._count()}, " if self.unit is not None else ""
        _display(f"{self.desc}: {counted}{format_duration(self.clock() - self.started)} so far")

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)

    def __enter__(self) -> "_Progress":
        return self

    def __exit__(self, kind, value, tb) -> None:
        self.close(ok=kind is None)

    def close(self, *, ok: bool = True) -> None:
        """End the phase; ``ok`` False (it raised): no closing line, the error says what happened."""
        if not self.on:
            return
        self.on = False
        if self._ticker is not None:
            self._ticker.stop()
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if not ok:
            return
        counted = self._count() if self.unit is not None else ""
        if verbosity() >= VERBOSE:
            took = format_duration(self.clock() - self.started)
            _display(f"{self.desc}: {counted + ' ' if counted else ''}in {took}")
        else:
            _display(f"{self.desc}: {counted or 'done'}")


def bar(total: int | None, desc: str, unit: str, *, enabled: bool = True, initial: int = 0) -> _Progress:
    """Counted work (``update(n)``; use it as a context manager): a bar on a terminal, else a line every
    :data:`LINE_INTERVAL_S` seconds while it runs; a line as it ends (with ``--verbose``, the time taken)."""
    return _Progress(desc, total=total, unit=unit, enabled=enabled, initial=initial)


@contextmanager
def phase(desc: str, *, enabled: bool = True, unit: str | None = None, heartbeat: bool = True) -> Iterator[_Progress]:
    """A step of a command: a spinner on a terminal, a line every :data:`LINE_INTERVAL_S` seconds elsewhere, and
    a line as it ends (with ``--verbose``, its time). With ``unit``, :func:`tick` calls inside it count
    (``report: …: evaluations: 7``).

    ``heartbeat=False``: no lines while it runs, off a terminal, for phases that find bad inputs (model load,
    data): their error is then the only line, however slowly the machine imports the model's library."""
    p = _Progress(desc, total=None, unit=unit, enabled=enabled, heartbeat=heartbeat)
    token = _counting.set(p) if unit is not None else None
    try:
        yield p
    except BaseException:
        p.close(ok=False)
        raise
    finally:
        if token is not None:
            _counting.reset(token)
    p.close()


def tick(n: int = 1) -> None:
    """Count ``n`` units of work in the innermost counted phase open in this context (nothing when there is
    none)."""
    p = _counting.get()
    if p is not None:
        p.update(n)


# ---------------------------------------------------------------------- trials
class Eta:
    """Time left for a study from the completions seen so far.

    ``None`` (shown as "estimating…") until a trial completes. After one, the remaining trials times the time
    that first completion took (warm-up included: an overestimate). From two on, the mean interval between
    completions since the first one, so the first trial's warm-up and cache building is left out; completions
    by other processes on the same study count too, so several workers shorten the estimate."""

    def __init__(self, total: int, initial: int = 0, *, clock: Callable[[], float] = time.monotonic):
        self.total, self.initial, self.clock = total, initial, clock
        self.started = clock()
        self.points: list[tuple[float, int]] = []

    def update(self, complete: int) -> None:
        """``complete``: the study's count of completed trials now."""
        last = self.points[-1][1] if self.points else self.initial
        if complete > last:
            self.points.append((self.clock(), complete))

    @property
    def per_trial_s(self) -> float | None:
        if not self.points:
            return None
        if len(self.points) == 1:
            t, n = self.points[0]
            return (t - self.started) / (n - self.initial)
        (t0, n0), (t1, n1) = self.points[0], self.points[-1]
        return (t1 - t0) / (n1 - n0)

    def remaining_s(self) -> float | None:
        per = self.per_trial_s
        if per is None:
            return None
        done = self.points[-1][1]
        return max(0, self.total - done) * per

    def text(self) -> str:
        left = self.remaining_s()
        if left is None:
            return "ETA estimating…"
        return "done" if self.points[-1][1] >= self.total else f"ETA {format_duration(left)}"


class TrialProgress:
    """The trials of a search: a bar with :class:`Eta` on a terminal, else one line per finished trial
    (``--verbose`` adds each trial's time)."""

    def __init__(self, total: int, initial: int, *, enabled: bool = True, desc: str = "trials",
                 clock: Callable[[], float] = time.monotonic):
        self.total, self.desc = total, desc
        self.eta = Eta(total, initial, clock=clock)
        self.n = initial
        self.on = bool(enabled) and verbosity() > QUIET
        self._bar = self._ticker = None
        if not self.on:
            return
        if interactive():
            from tqdm import tqdm  # lazy: tqdm, for bars on a terminal only (a fast CLI start)

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit="trial", dynamic_ncols=True,
                             file=sys.stderr,
                             bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")
            self._bar.set_postfix_str(self.eta.text())
            self._ticker = _Every(1.0, self._bar.refresh)  # the elapsed time moves during a long trial
        else:
            _display(f"{desc}: {initial} of {total} complete; {self.eta.text()}")

    def finished(self, number: int, complete: int, *, outcome: str, duration_s: float | None = None) -> None:
        """Trial ``number`` has ended (``outcome``: a few words, e.g. ``2-4: fidelity 0.95, flops_frac 0.8``);
        the study now has ``complete`` completed trials."""
        self.eta.update(complete)
        if not self.on:
            self.n = complete
            return
        took = f" in {format_duration(duration_s)}" if (duration_s is not None and verbosity() >= VERBOSE) else ""
        if self._bar is not None:
            self._bar.set_postfix_str(self.eta.text(), refresh=False)
            self._bar.update(max(0, complete - self.n))
            if took:
                self._bar.write(f"trial {number}{took}: {outcome}", file=sys.stderr)
        else:
            _display(f"trial {number}{took}: {outcome}; {complete} of {self.total} complete, {self.eta.text()}")
        self.n = complete

    def write(self, msg: str) -> None:
        """A message between trials (a failure), whatever the verbosity."""
        if self._bar is not None:
            self._bar.write(msg, file=sys.stderr)
        else:
            _display(msg)

    def close(self) -> None:
        if self._ticker is not None:
            self._ticker.stop()
            self._ticker = None
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self.on:
            took = format_duration(self.eta.clock() - self.eta.started)
            detail(f"{self.desc}: {self.n} of {self.total} complete in {took}")
            self.on = False
