"""Several real ``rba search`` processes on one study: they share its total, never fail each other's live
trials, and a worker killed with SIGKILL has its trial recovered by the survivor after the heartbeat grace
period. A Ray run refuses a study another process is working on."""

from __future__ import annotations

import datetime
import os
import signal
import sqlite3
import subprocess
from pathlib import Path

import pytest
from _search_helpers import (
    single_thread,  # noqa: F401  (autouse fixture)
    study_dict,
    write_config,
)
from conftest import slowed_cli, wait_for

from rba.cli import main

REPO = Path(__file__).resolve().parents[2]
HEARTBEAT_S = 1  # grace period: 2 s


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A statistics cache filled once, so that workers started together spend their start-up alike."""
    from rba.config import load_config
    from rba.session import Session

    folder = tmp_path_factory.mktemp("workers-cache")
    config = write_config(folder / "warm.toml", study_dict(folder, folder / "warm-out"))
    _ = Session(load_config(config), need_labels=False, progress=False).stats  # warms the cache
    return folder


def _worker(config: Path, log: Path, hold_s: float = 0.3) -> subprocess.Popen:
    """``rba search CONFIG`` in its own process, each trial held for ``hold_s`` so that workers overlap."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", RBA_HEARTBEAT_S=str(HEARTBEAT_S))
    return subprocess.Popen([*slowed_cli("search.objective", "Objective.__call__", hold_s), "search", str(config),
                             "--quiet"], cwd=str(REPO), env=env, stdout=subprocess.DEVNULL, stderr=log.open("w"))


def _rows(db: Path, *sql: str) -> list[tuple] | tuple[list[tuple], ...]:
    """The rows of each query, all read from one snapshot (one read transaction), so that rows of one query never
    name a trial the other has not seen yet; empty lists while the file is missing or locked."""
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5, isolation_level=None)
        try:
            con.execute("begin")
            results = tuple(con.execute(query).fetchall() for query in sql)
            con.execute("commit")
        finally:
            con.close()
    except sqlite3.Error:
        results = tuple([] for _ in sql)
    return results[0] if len(sql) == 1 else results


def _states(db: Path) -> dict[str, int]:
    return dict(_rows(db, "select state, count(*) from trials group by state"))


def _finish(*procs: subprocess.Popen, logs: list[Path], timeout_s: float = 240) -> list[int]:
    codes = []
    for proc in procs:
        try:
            codes.append(proc.wait(timeout=timeout_s))
        except subprocess.TimeoutExpired:
            proc.kill()
            codes.append(proc.wait())
    for code, log in zip(codes, logs):
        assert code in (0, -signal.SIGKILL), log.read_text()[-3000:]
    return codes


def _trials(db: Path) -> dict[int, dict]:
    """number → state, worker, source, spans and duplicate_of (user attributes read straight from SQLite, not
    through rba)."""
    trials, attributes = _rows(db, "select number, state, datetime_start, datetime_complete from trials",
                               "select t.number, a.key, a.value_json from trial_user_attributes a "
                               "join trials t on t.trial_id = a.trial_id where a.key in ('worker', 'source', 'spans', "
                               "'duplicate_of')")
    out = {number: {"state": state, "start": start, "complete": complete} for number, state, start, complete in trials}
    for number, key, value in attributes:
        out[number][key] = value.strip('"')
    return out


def _distinct_complete(trials: dict[int, dict]) -> set[str]:
    """The configurations of the COMPLETE trials that are not repeats (what ``trials`` counts); every repeat
    names an earlier COMPLETE trial of the same configuration."""
    for t in trials.values():
        if "duplicate_of" in t:
            earlier = trials[int(t["duplicate_of"])]
            assert earlier["state"] == "COMPLETE" and earlier["spans"] == t["spans"] and "duplicate_of" not in earlier
    return {t["spans"] for t in trials.values() if t["state"] == "COMPLETE" and "duplicate_of" not in t}


def _check_integrity(db: Path) -> None:
    assert _rows(db, "pragma integrity_check") == [("ok",)]


def _two_workers(tmp_path: Path, cache: Path, total: int, storage: str | None = None):
    extra = {"storage": storage} if storage else {}
    configs = [write_config(tmp_path / f"w{k}.toml", study_dict(
        cache, tmp_path / ("out" if storage is None else f"out{k}"),
        search={"trials": total, "objectives": ["fidelity", "flops"], "sampler": "random"} | extra))
        for k in (1, 2)]
    return configs


@pytest.mark.parametrize("shared", ["folder", "sqlite-url"])
def test_two_workers_share_the_total(tmp_path, cache, shared):
    """Two processes on one study (one --out folder, or one sqlite:/// URL used from two --out folders): both
    exit 0, neither fails the other's trial, and together they complete between trials and trials + 1."""
    total = 16
    db = tmp_path / ("out/study.db" if shared == "folder" else "shared.db")
    configs = _two_workers(tmp_path, cache, total, storage=None if shared == "folder" else f"sqlite:///{db}")
    logs = [tmp_path / "w1.log", tmp_path / "w2.log"]
    # 16 trials of at least 0.6 s: the second worker's start-up may lag the first's by seconds on a loaded machine
    first, second = _worker(configs[0], logs[0], hold_s=0.6), _worker(configs[1], logs[1], hold_s=0.6)
    assert _finish(first, second, logs=logs) == [0, 0]
    trials = _trials(db)
    complete = [t for t in trials.values() if t["state"] == "COMPLETE"]
    assert total <= len(_distinct_complete(trials)) <= total + 1
    assert not [t for t in trials.values() if t["state"] in ("FAIL", "RUNNING")]
    assert {t["worker"].rsplit(":", 1)[1] for t in complete} == {str(first.pid), str(second.pid)}  # both worked
    _check_integrity(db)


def test_killed_worker_trial_recovered_after_grace_period(tmp_path, cache):
    """kill -9 one of two workers while it runs a trial: the survivor fails that trial once its heartbeat is
    older than the grace period, runs its configuration again, and the study still reaches its total."""
    total = 20
    db = tmp_path / "out" / "study.db"
    configs = _two_workers(tmp_path, cache, total)
    logs = [tmp_path / "w1.log", tmp_path / "w2.log"]
    first, second = _worker(configs[0], logs[0], hold_s=1.5), _worker(configs[1], logs[1], hold_s=1.5)

    def first_is_early_in_a_trial() -> bool:
        """The first worker runs a trial it started under 0.5 s ago (so the kill lands inside its 1.5 s hold),
        the second has started one (so it is past its start-up, where it would recover the trial at once), and
        at least 8 trials remain (so the survivor still starts trials after the grace period)."""
        rows = _trials(db)
        trials = rows.values()
        done = len(_distinct_complete(rows))
        assert done <= total - 8, "the second worker started too late: the first ran most trials alone"
        now = datetime.datetime.now()
        return any(t["state"] == "RUNNING" and t.get("worker", "").endswith(f":{first.pid}")
                   and (now - datetime.datetime.fromisoformat(t["start"])).total_seconds() < 0.5 for t in trials) \
            and any(t.get("worker", "").endswith(f":{second.pid}") for t in trials)

    try:
        assert wait_for(first_is_early_in_a_trial, timeout_s=180), "timed out waiting for both workers running trials"
    except AssertionError:
        for proc in (first, second):  # leave no worker running behind a failed test
            proc.kill()
            proc.wait()
        raise
    first.send_signal(signal.SIGKILL)
    killed_at = datetime.datetime.now()
    assert _finish(first, second, logs=logs) == [-signal.SIGKILL, 0]
    trials = _trials(db)
    killed = [n for n, t in trials.items() if t.get("worker", "").endswith(f":{first.pid}") and t["state"] == "FAIL"]
    assert len(killed) == 1, trials
    failed_at = datetime.datetime.fromisoformat(trials[killed[0]]["complete"])
    # failed by the survivor's heartbeat check, not at once: the grace period (2 heartbeats) minus the at most
    # one heartbeat interval between the trial's last heartbeat and the kill
    assert (failed_at - killed_at).total_seconds() >= HEARTBEAT_S - 0.1
    reruns = [t for t in trials.values() if t.get("source") == f"rerun of trial {killed[0]}"]
    assert len(reruns) == 1 and reruns[0]["state"] == "COMPLETE"
    assert reruns[0]["worker"].endswith(f":{second.pid}")
    assert sum(t["state"] == "COMPLETE" for t in trials.values()) >= total
    assert not [t for t in trials.values() if t["state"] == "RUNNING"]
    _check_integrity(db)


def test_every_labelled_trial_has_a_heartbeat(tmp_path, cache, monkeypatch):
    """Optuna's heartbeat thread writes a trial's first heartbeat concurrently with the objective, and a RUNNING
    trial without any heartbeat is never stale: a process killed before that write would leave its trial running
    for every other worker. With the thread silenced (as if it had not written yet), each labelled trial still has
    a heartbeat: the one rba writes before labelling it."""
    import optuna.study._optimize as optimize
    from optuna.storages._heartbeat import NullHeartbeatThread

    monkeypatch.setattr(optimize, "get_heartbeat_thread", lambda *a: NullHeartbeatThread())
    config = _two_workers(tmp_path, cache, 4)[0]
    assert main(["search", str(config), "--quiet"]) == 0
    db = tmp_path / "out" / "study.db"
    labelled = {n for n, t in _trials(db).items() if "worker" in t}
    beats = {n for (n,) in _rows(db, "select t.number from trial_heartbeats h join trials t on t.trial_id = h.trial_id")}
    assert len(labelled) >= 4 and labelled <= beats


def test_ray_refuses_a_study_another_process_runs(tmp_path, cache, capsys):
    """--backend ray on a study with a live trial of another process: one line, exit 2, before Ray starts;
    that process goes on and finishes."""
    configs = _two_workers(tmp_path, cache, 12)
    db = tmp_path / "out" / "study.db"
    log = tmp_path / "w1.log"
    first = _worker(configs[0], log, hold_s=0.5)
    assert wait_for(lambda: _states(db).get("RUNNING", 0) >= 1 and _states(db).get("COMPLETE", 0) >= 1,
                    timeout_s=180), "timed out waiting for a trial"
    code = main(["search", str(configs[1]), "--backend", "ray", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("rba: error: ")
    assert "is being run by another process" in err and f":{first.pid}" in err and "--backend ray" in err
    import ray

    assert not ray.is_initialized()
    assert _finish(first, logs=[log]) == [0]
    assert len(_distinct_complete(_trials(db))) == 12


def test_bad_heartbeat_setting_is_one_line(tmp_path, cache, capsys, monkeypatch):
    config = _two_workers(tmp_path, cache, 2)[0]
    monkeypatch.setenv("RBA_HEARTBEAT_S", "0.5")
    code = main(["search", str(config), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "RBA_HEARTBEAT_S='0.5'" in err and "at least 1" in err
    assert not (tmp_path / "out" / "study.db").exists()


@pytest.mark.parametrize("how", ["flag", "config key"])
def test_removed_n_jobs_is_one_line(tmp_path, cache, capsys, how):
    raw = study_dict(cache, tmp_path / "out")
    if how == "config key":
        raw["search"]["n_jobs"] = 2
    config = write_config(tmp_path / "jobs.toml", raw)
    code = main(["search", str(config), "--quiet"] + (["--n-jobs", "2"] if how == "flag" else []))
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "search.n_jobs (--n-jobs) was removed" in err
    assert "several `rba search` processes" in err and not (tmp_path / "out").exists()
