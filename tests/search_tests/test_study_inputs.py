"""Bad storage and Ray inputs through the CLI: one line ``rba: error: …``, exit 2, before any long work, and a
start that fails leaves no study behind; Ctrl-C stops with one line, exit 130, and the study resumes."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest
from _search_helpers import (
    single_thread,  # noqa: F401  (autouse fixture)
    study_dict,
    write_config,
)
from conftest import slowed_cli

from rba.cli import main

REPO = Path(__file__).resolve().parents[2]


def _one_line_error(capsys, argv: list[str], *needles: str) -> str:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("rba: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


def _config(tmp_path: Path, **search) -> Path:
    raw = study_dict(tmp_path / "cache", tmp_path / "out", search={"trials": 3, "priors": False} | search)
    return write_config(tmp_path / "study.toml", raw)


def _no_statistics(tmp_path: Path) -> bool:
    """Nothing was captured: the error came before the long work."""
    return not list((tmp_path / "cache").glob("**/stats-*"))


@pytest.mark.parametrize("url, needles", [
    ("bogus", ["--storage 'bogus' is not a storage URL", "sqlite:///"]),
    ("nosuchdb://x/y", ["--storage 'nosuchdb://x/y' is not a storage URL"]),
    ("sqlite:////nonexistent-folder/x/study.db", ["cannot open the study storage", "unable to open database file"]),
])
def test_bad_storage_url(tmp_path, capsys, url, needles):
    _one_line_error(capsys, ["search", _config(tmp_path), "--storage", url, "--quiet"], *needles)
    assert _no_statistics(tmp_path) and not (tmp_path / "out").exists()


def test_corrupt_study_files(tmp_path, capsys):
    config = _config(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "study.db").write_bytes(os.urandom(4096))
    _one_line_error(capsys, ["search", config, "--quiet"], f"{out / 'study.db'}", "not a readable database",
                    "move it away")
    (out / "study.db").unlink()
    (out / "study.json").write_text('{"identity": {"model": ')
    _one_line_error(capsys, ["search", config, "--quiet"], f"{out / 'study.json'} cannot be read", "delete it")
    assert _no_statistics(tmp_path)
    # as the message says: without study.json the study runs (and writes it again)
    (out / "study.json").unlink()
    assert main(["search", str(config), "--quiet"]) == 0
    assert (out / "study.json").exists()


def test_failed_start_leaves_no_study_behind(tmp_path, capsys):
    """--address auto with no Ray cluster: one line, and no study.db / study.json, so the corrected rerun (here
    with other objectives, i.e. another identity) is not refused as a different study."""
    pytest.importorskip("ray")
    config = _config(tmp_path)
    _one_line_error(capsys, ["search", config, "--backend", "ray", "--address", "auto", "--quiet"],
                    "cannot join the Ray cluster at --address auto", "ray start --head")
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.name.startswith("study")) == []
    assert main(["search", str(config), "--objectives", "fidelity,params", "--quiet"]) == 0


def test_port_that_is_not_ray_is_refused_quickly(tmp_path, capsys):
    """An address whose port accepts TCP but is not Ray: one line within 30 s (ray.init would wait minutes)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    port = server.getsockname()[1]

    def answer():  # a line-based server: reads nothing, sends a banner, keeps the connection open
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.sendall(b"220 not ray\r\n")

    threading.Thread(target=answer, daemon=True).start()
    t0 = time.time()
    try:
        _one_line_error(capsys, ["search", _config(tmp_path), "--backend", "ray", "--address", f"127.0.0.1:{port}",
                                 "--quiet"], f"Ray address 127.0.0.1:{port} accepts connections but is not a Ray cluster")
    finally:
        server.close()
    assert time.time() - t0 < 30 and _no_statistics(tmp_path)


def test_ctrl_c_lost_in_a_weakref_callback_still_stops(tmp_path, capsys, monkeypatch):
    """A KeyboardInterrupt raised inside a weakref callback (where a Ctrl-C lands when the garbage collector runs
    one, e.g. SQLAlchemy's) is "ignored" by Python: the search still stops, exit 130, one line."""
    import weakref

    from search.objective import Objective

    call, calls = Objective.__call__, []

    def interrupted_in_callback(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            def collected(_):
                raise KeyboardInterrupt

            target = type("Target", (), {})()
            ref = weakref.ref(target, collected)  # noqa: F841  (the callback runs as ``target`` goes)
            del target
        return call(self, *args, **kwargs)

    monkeypatch.setattr(Objective, "__call__", interrupted_in_callback)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, whatever ran before
    try:
        code = main(["search", str(_config(tmp_path, trials=4)), "--quiet"])
    finally:
        signal.signal(signal.SIGINT, previous)
    err = capsys.readouterr().err
    assert code == 130 and err == "rba: interrupted\n", err
    assert len(calls) <= 2  # stopped at once, not after the remaining trials


def test_ctrl_c_one_line_exit_130_then_resume(tmp_path):
    config = _config(tmp_path, trials=8)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    # SIGINT back to its default in the child: a shell's background job (`pytest &`) ignores it, and an ignored
    # SIGINT stays ignored across exec, so Ctrl-C would never reach the search
    proc = subprocess.Popen([*slowed_cli("search.objective", "Objective.__call__", 0.5), "search", str(config),
                             "--quiet"], cwd=str(REPO), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    db = tmp_path / "out" / "study.db"

    def complete() -> int:
        try:
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
            try:
                # distinct configurations: repeats (user attribute duplicate_of) do not count
                return con.execute("select count(*) from trials where state = 'COMPLETE' and trial_id not in "
                                   "(select trial_id from trial_user_attributes where key = 'duplicate_of')"
                                   ).fetchone()[0]
            finally:
                con.close()
        except sqlite3.Error:
            return 0

    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None and not (db.exists() and complete() >= 2):
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.count("\n") == 1 and err.startswith("rba: interrupted"), err
    done = complete()
    assert 2 <= done < 8
    assert main(["search", str(config), "--quiet"]) == 0
    assert complete() == 8


def test_ctrl_c_while_a_heartbeat_starts_leaves_no_thread_running(tmp_path, capsys, monkeypatch):
    """Ctrl-C inside Optuna's heartbeat ``Thread.start`` (the thread runs, the ``with`` that stops it is not yet
    entered): exit 130 with one line, and no thread the search started still runs. A non-daemon heartbeat thread
    left running kept the interrupted process alive at exit (the test above then timed out after SIGINT)."""
    from optuna.storages._heartbeat import HeartbeatThread

    started = []
    original = HeartbeatThread.start

    def start(self):
        original(self)
        started.append(self)
        if len(started) == 2:  # the second trial's heartbeat: one trial is on record
            raise KeyboardInterrupt

    monkeypatch.setattr(HeartbeatThread, "start", start)
    before = set(threading.enumerate())
    try:
        assert main(["search", str(_config(tmp_path)), "--quiet"]) == 130
        assert capsys.readouterr().err == "rba: interrupted\n"
        assert [t.name for t in threading.enumerate() if t not in before and not t.daemon] == []
    finally:
        for heartbeat in started:  # never leave this process unable to exit, whatever failed above
            heartbeat._stop_event.set()


def test_sqlite_file_of_another_program_is_refused_untouched(tmp_path, capsys):
    """--storage naming an SQLite database that holds other tables (no Optuna storage): refused in one line before
    Optuna adds its tables, so the other program's database is left as it was."""
    db = tmp_path / "shop.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO customers (name) VALUES ('ada')")
    conn.close()
    before = db.read_bytes()
    _one_line_error(capsys, ["search", _config(tmp_path), "--storage", f"sqlite:///{db}", "--quiet"],
                    f"the study storage sqlite:///{db} is an SQLite database of something else (tables customers",
                    "point --storage at a new file")
    assert db.read_bytes() == before
    with sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True) as conn:
        assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")] == ["customers"]
    conn.close()


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_in_memory_storage_is_refused_naming_why(tmp_path, capsys, url):
    _one_line_error(capsys, ["search", _config(tmp_path), "--storage", url, "--quiet"],
                    f"--storage {url!r} is an in-memory SQLite database", "sqlite:///PATH/study.db")
    assert _no_statistics(tmp_path)


def test_locked_storage_error_names_the_lock():
    """What the opening reports when SQLite's busy timeout runs out (the driver's own error): the lock, not the
    folder's permissions."""
    from sqlalchemy.exc import OperationalError

    from search._storage import storage_error

    exc = OperationalError("BEGIN IMMEDIATE", {}, sqlite3.OperationalError("database is locked"))
    message = str(storage_error("sqlite:///x/study.db", exc))
    assert "stayed locked by another process past the busy timeout (database is locked)" in message
    assert "writable" not in message and "\n" not in message


def test_a_clashing_studies_table_is_named_as_a_clash(tmp_path, capsys):
    """An SQLite file with Optuna's version table but a ``studies`` table of another schema: the error quotes the
    database's own cause and calls it a clash, not Optuna's "e.g. exceeding max length" nor a folder to check."""
    db = tmp_path / "clash.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE version_info (version_info_id INTEGER PRIMARY KEY, schema_version INTEGER, "
                     "library_version TEXT)")
        conn.execute("CREATE TABLE studies (id INTEGER, name TEXT)")
    conn.close()
    err = _one_line_error(capsys, ["search", _config(tmp_path), "--storage", f"sqlite:///{db}", "--quiet"],
                          f"the study storage sqlite:///{db} holds tables that clash with Optuna's (no such column: "
                          "studies.", "point --storage at a new file")
    assert "exceeding max length" not in err and "writable" not in err
    assert _no_statistics(tmp_path)


def test_storage_errors_quote_the_database_under_optunas_wrapper():
    """Optuna wraps a failed commit in StorageInternalError ("… e.g. exceeding max length"): the message is the
    driver's error under it, sorted by cause; an unknown cause is quoted without a guess at the folder."""
    import optuna
    from sqlalchemy.exc import OperationalError

    from search._storage import storage_error

    def wrapped(text):
        try:
            try:
                raise OperationalError("INSERT", {}, sqlite3.OperationalError(text))
            except OperationalError as inner:
                raise optuna.exceptions.StorageInternalError("An exception is raised during the commit. This "
                                                             "typically happens due to invalid data in the commit, "
                                                             "e.g. exceeding max length.") from inner
        except optuna.exceptions.StorageInternalError as exc:
            return str(storage_error("sqlite:///s.db", exc))

    assert "clash with Optuna's (table studies has no column named study_name)" in wrapped(
        "table studies has no column named study_name")
    assert "the disk is full (database or disk is full)" in wrapped("database or disk is full")
    assert "check that its folder exists and is writable" in wrapped("unable to open database file")
    other = wrapped("something unforeseen")
    assert "(something unforeseen)" in other and "writable" not in other and "max length" not in other
