"""The study storage, and which RUNNING trials still have a live process.

**Heartbeats** (Optuna's ``RDBStorage`` mechanism): while a trial runs, its process records a heartbeat every
``RBA_HEARTBEAT_S`` seconds (default 30). A RUNNING trial without one for twice that long is stale: any
process working on the study fails it (``optuna.storages.fail_stale_trials``, which ``study.optimize`` runs
before each trial) and Optuna's ``RetryHeartbeatStaleTrialCallback`` enqueues its configuration again, with
``source`` = ``rerun of trial N``. Optuna counts a trial without any heartbeat as never stale, so each trial's
first one is written before the trial is labelled (:func:`first_heartbeat`). Live trials of other processes are
never touched, so several processes can work on one study.

A trial whose process ran on this host and has exited (user attribute ``worker`` = ``host:pid``, set as the
trial starts) is failed at once when a run starts (:func:`recover_abandoned`), through the same callback: a
killed local run need not wait for the grace period. Every process registers itself in the study before its
first trial (study user attribute ``rba_worker:host:pid``), so a trial killed before its label was set is
recovered the same way when every other registered process ran on this host and has exited.

For SQLite: write-ahead logging with ``synchronous=NORMAL`` (a commit does not wait for an fsync; a killed
process still loses nothing it committed), and every transaction takes the write lock when it begins
(``BEGIN IMMEDIATE``). SQLite ignores ``SELECT … FOR UPDATE``, so with the driver's deferred transactions two
processes could both read an enqueued trial as WAITING and run it twice, or one fail on a read lock it cannot
upgrade.
"""

from __future__ import annotations

import copy
import datetime
import os
import socket
import sqlite3
import time
import warnings
from contextlib import closing
from pathlib import Path

import optuna
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, NoSuchModuleError, OperationalError

from rba.errors import ConfigError, RBAError
from rba.files import pid_alive

__all__ = ["StorageError", "open_storage", "storage_error", "heartbeat_interval", "worker_label", "live_trials",
           "abandoned_trials", "recover_abandoned", "recorded_storage", "register_worker", "first_heartbeat", "HEARTBEAT_ENV", "RERUNS",
           "WORKER_ATTR"]

#: environment variable: seconds between a running trial's heartbeats (the grace period is twice that)
HEARTBEAT_ENV = "RBA_HEARTBEAT_S"
DEFAULT_HEARTBEAT_S = 30
#: how many times the configuration of a trial whose process died is run again
RERUNS = 3


class StorageError(RBAError):
    """The study storage cannot be opened or read."""


def heartbeat_interval() -> int:
    raw = os.environ.get(HEARTBEAT_ENV, "")
    if not raw:
        return DEFAULT_HEARTBEAT_S
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"{HEARTBEAT_ENV}={raw!r}: the heartbeat interval is a whole number of seconds, at least 1 "
                          f"(unset it for the default of {DEFAULT_HEARTBEAT_S})")
    return value


class RerunStale(RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a stale trial; the rerun carries only ``source`` = ``rerun of trial N`` (not the
    stale trial's ``worker`` or result attributes)."""

    def __call__(self, study, trial):
        trial = copy.deepcopy(trial)
        trial.user_attrs = {"source": f"rerun of trial {trial.number}"}
        super().__call__(study, trial)


def _sqlite_connect(dbapi_connection, _record) -> None:
    dbapi_connection.isolation_level = None  # no deferred BEGIN from the driver: _begin_immediate issues its own
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def _begin_immediate(connection) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


class Storage(optuna.storages.RDBStorage):
    """``RDBStorage`` with the SQLite settings applied whenever its engine is built (also when Ray unpickles it)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._tune_engine()

    def __setstate__(self, state):
        super().__setstate__(state)
        self._tune_engine()

    def _tune_engine(self) -> None:
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_connect)
            event.listen(self.engine, "begin", _begin_immediate)
            self.engine.dispose()  # connections opened while creating the tables reconnect with the settings


def _rerun() -> RerunStale:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        return RerunStale(max_retry=RERUNS)


def open_storage(url: str, *, heartbeats: bool = True) -> Storage:
    """The study storage at ``url``; with ``heartbeats``, every :func:`heartbeat_interval` seconds, a grace
    period twice that, stale trials rerun up to :data:`RERUNS` times (Optuna runs heartbeats only inside
    ``study.optimize``: the Ray backend, which asks and tells, opens it without)."""
    _refuse_unusable_sqlite(url)
    kwargs: dict = {"engine_kwargs": {"connect_args": {"timeout": 60}}} if url.startswith("sqlite") else {}
    if heartbeats:
        interval = heartbeat_interval()
        kwargs |= {"heartbeat_interval": interval, "grace_period": 2 * interval, "heartbeat_stale_trial_callback": _rerun()}
    attempts = 3
    while True:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExperimentalWarning)
                return Storage(url, **kwargs)
        except (OperationalError, IntegrityError) as exc:
            # two processes creating the tables of a new database at once (seen: "table already exists", and a
            # duplicate schema version row): the later one finds them made when it tries again
            attempts -= 1
            if attempts and (isinstance(exc, IntegrityError) or "already exists" in str(exc)):
                time.sleep(0.5)
                continue
            raise storage_error(url, exc) from None
        except (ArgumentError, NoSuchModuleError, ImportError, ValueError) as exc:
            raise StorageError(f"--storage {url!r} is not a storage URL this installation can open ({_reason(exc)}): "
                               "use sqlite:///PATH/study.db, or a database URL whose driver is installed "
                               "(e.g. postgresql://user@host/db with psycopg2)") from None
        except DBAPIError as exc:
            raise storage_error(url, exc) from None


def recorded_storage(configured: str | None) -> str:
    """The study storage as output files record it: ``study.db`` for an output folder's own SQLite file (no path
    of this machine in a moved or committed folder), else the configured URL without its password."""
    if not configured:
        return "study.db"
    try:
        return make_url(configured).render_as_string(hide_password=True)
    except ArgumentError:
        return configured


#: the table every Optuna storage holds (its schema version)
_OPTUNA_TABLE = "version_info"


def _refuse_unusable_sqlite(url: str) -> None:
    """Refuse an in-memory SQLite storage, and an SQLite file that holds tables but is not an Optuna storage
    (another program's database) before Optuna creates its tables in it. A file SQLite cannot read is left to the
    opening, which names the cause."""

    try:
        parsed = make_url(url)
    except ArgumentError:
        return  # not a URL: the opening says so
    path = parsed.database
    if parsed.get_backend_name() != "sqlite":
        return
    if not path or path == ":memory:" or "mode=memory" in url:
        raise StorageError(f"--storage {url!r} is an in-memory SQLite database: it is gone when its connection closes "
                           "(no resume, no other workers, no tables at the end); use sqlite:///PATH/study.db")
    if not Path(path).is_file():
        return
    try:
        with closing(sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)) as conn:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error:
        return
    if tables and _OPTUNA_TABLE not in tables:
        shown = ", ".join(sorted(tables)[:5]) + (", …" if len(tables) > 5 else "")
        raise StorageError(f"the study storage {url} is an SQLite database of something else (tables {shown}; no "
                           "Optuna study tables): rba does not add its tables to it; point --storage at a new file "
                           "(sqlite:///PATH/study.db) or at an existing Optuna storage")


#: what the database says when the tables it holds are not the ones Optuna's schema expects
_CLASH = ("no such table", "no such column", "has no column", "already exists", "undefined column", "undefinedtable",
          "does not exist")
#: what it says when it cannot open or write the file (the folder, the permissions, the disk)
_UNOPENED = ("unable to open database file", "readonly database", "read-only", "permission denied", "disk i/o error")


def storage_error(url: str, exc: Exception) -> StorageError:
    """The one-line error for a database that is there but cannot be used as a study storage, naming the cause the
    database gave (Optuna's own wrapper, "… e.g. exceeding max length", says nothing of it)."""
    reason = _reason(exc)
    low = reason.lower()
    if "database is locked" in low or "database table is locked" in low:
        return StorageError(f"the study storage {url} stayed locked by another process past the busy timeout ({reason}): "
                            "wait for the process holding it (or end it), then rerun the same command: the study "
                            "resumes")
    if "not a database" in low or "malformed" in low:
        return StorageError(f"the study storage {url} is not a readable database ({reason}): it is corrupt or another "
                            "kind of file; move it away to start the study afresh, or point --storage / --out elsewhere")
    if any(t in low for t in _CLASH):
        return StorageError(f"the study storage {url} holds tables that clash with Optuna's ({reason}): it is another "
                            "program's database, or one of another Optuna version; point --storage at a new file "
                            "(sqlite:///PATH/study.db) or at an existing Optuna storage")
    if "database or disk is full" in low or "no space left" in low:
        return StorageError(f"the study storage {url} cannot grow: the disk is full ({reason}); free some space, then "
                            "rerun the same command: the study resumes")
    if any(t in low for t in _UNOPENED):
        return StorageError(f"cannot open the study storage {url} ({reason}): check that its folder exists and is "
                            "writable (or that the database server runs), or choose another --storage / --out")
    return StorageError(f"the study storage {url} cannot be used ({reason}): choose another --storage / --out, or "
                        "rerun the same command if the database was busy")


def _reason(exc: BaseException) -> str:
    """The database's own words: the driver's error under SQLAlchemy's and Optuna's wrappers."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        orig = getattr(cause, "orig", None)
        if orig is not None:
            return str(orig).splitlines()[0]
        cause = cause.__cause__ or cause.__context__
    return str(exc).splitlines()[0]


# ---------------------------------------------------------------------- which process runs a trial
def worker_label() -> str:
    """``host:pid`` of this process, recorded on every trial it runs (user attribute ``worker``)."""
    return f"{socket.gethostname()}:{os.getpid()}"


#: prefix of the study user attributes that register the processes which worked on the study
WORKER_ATTR = "rba_worker:"


def first_heartbeat(storage, trial) -> None:
    """Record ``trial``'s first heartbeat in ``storage`` (the study's, from :func:`open_storage`) now, before the trial is labelled with its ``worker``.

    Optuna records it from its heartbeat thread, concurrently with the objective, and never counts a RUNNING
    trial without any heartbeat as stale: a process killed before that thread's first write would leave its trial
    RUNNING for every other process (seen under load, with the write lock held by another worker). With this beat
    first, every labelled trial has a heartbeat, so a survivor fails it after the grace period; a trial killed
    before it is labelled is recovered by :func:`recover_abandoned`. Optuna ignores the duplicate row should the
    thread insert one at the same time."""
    if storage.get_heartbeat_interval() is not None:
        study_id = storage.get_study_id_from_name(trial.study.study_name)
        storage.record_heartbeat(storage.get_trial_id_from_study_id_trial_number(study_id, trial.number))


def register_worker(study) -> None:
    """Record this process in the study before it runs any trial (a trial is labelled only once it runs)."""
    study.set_user_attr(WORKER_ATTR + worker_label(), datetime.datetime.now().isoformat(timespec="seconds"))


def _exited_here(label: str) -> bool:
    """The process ``host:pid`` ran on this host and no longer runs."""
    host, _, pid = label.rpartition(":")
    return host == socket.gethostname() and pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid))


def _running(study) -> tuple[list[FrozenTrial], list[FrozenTrial]]:
    """The RUNNING trials, split into (abandoned, live)."""
    others = {k[len(WORKER_ATTR):] for k in study.user_attrs if k.startswith(WORKER_ATTR)} - {worker_label()}
    all_gone = all(_exited_here(label) for label in others)
    abandoned: list[FrozenTrial] = []
    live: list[FrozenTrial] = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        gone = _exited_here(str(t.user_attrs["worker"])) if "worker" in t.user_attrs else all_gone
        (abandoned if gone else live).append(t)
    return abandoned, live


def abandoned_trials(study) -> list:
    """RUNNING trials whose process is known to have ended: labelled (user attribute ``worker``) by a process
    on this host that has exited; or unlabelled (its process was killed between starting the trial and
    labelling it) when every other process registered on the study ran on this host and has exited."""
    return _running(study)[0]


def live_trials(study) -> list:
    """RUNNING trials whose process may still run (another host's, or one on this host that still runs)."""
    return _running(study)[1]


def recover_abandoned(study, storage: Storage) -> list[int]:
    """Fail the :func:`abandoned_trials` and enqueue their configuration again with the stale-trial callback (as
    a missed heartbeat would). Returns the failed trials' numbers."""
    study_id = storage.get_study_id_from_name(study.study_name)
    rerun = _rerun()
    recovered = []
    for t in abandoned_trials(study):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        owner = t.user_attrs.get("worker", "a process on this host")
        try:
            storage.set_trial_user_attr(trial_id, "error", f"interrupted: its process ({owner}) ended while it ran")
            if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:
            continue  # another process recovered it first
        rerun(study, storage.get_trial(trial_id))
        recovered.append(t.number)
    return recovered
