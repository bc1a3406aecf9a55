"""Which RUNNING trials count as abandoned (their process is known to have ended) and how they are recovered,
on a real SQLite study with hand-made trials (no model)."""

from __future__ import annotations

import datetime
import os
import socket
import subprocess
import sys

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from search._storage import WORKER_ATTR, abandoned_trials, live_trials, open_storage, recover_abandoned

HOST = socket.gethostname()


@pytest.fixture
def dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _running(study, number: int, worker: str | None, age_s: float = 0.0) -> None:
    """A RUNNING trial labelled by ``worker`` (None: not labelled yet), whose process registered in the study."""
    if worker is not None:
        study.set_user_attr(WORKER_ATTR + worker, "registered")
    study.add_trial(FrozenTrial(
        number=number, state=TrialState.RUNNING, value=None, values=None,
        datetime_start=datetime.datetime.now() - datetime.timedelta(seconds=age_s), datetime_complete=None,
        params={"block_00": "keep"}, distributions={"block_00": CategoricalDistribution(["keep", "start"])},
        user_attrs={} if worker is None else {"worker": worker}, system_attrs={}, intermediate_values={},
        trial_id=number))


def _study(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return optuna.create_study(storage=storage, study_name="rba"), storage


def test_labelled_trials_of_exited_local_processes_are_abandoned(tmp_path, dead_pid):
    study, storage = _study(tmp_path)
    _running(study, 0, f"{HOST}:{dead_pid}")  # its process has exited: abandoned at once
    _running(study, 1, f"{HOST}:{os.getppid()}", 60.0)  # a live process on this host
    _running(study, 2, "another-host:1234", 60.0)  # another host: left to the heartbeats
    _running(study, 3, None, 60.0)  # unlabelled, and live processes are registered: it may be theirs
    assert [t.number for t in abandoned_trials(study)] == [0]
    assert [t.number for t in live_trials(study)] == [1, 2, 3]
    assert recover_abandoned(study, storage) == [0]
    trials = study.get_trials(deepcopy=False)
    assert trials[0].state == TrialState.FAIL and "interrupted" in trials[0].user_attrs["error"]
    rerun = [t for t in trials if t.state == TrialState.WAITING]
    assert len(rerun) == 1 and rerun[0].user_attrs == {"source": "rerun of trial 0"}
    assert rerun[0].params == trials[0].params
    assert recover_abandoned(study, storage) == []  # recovered once


@pytest.mark.parametrize("other", [None, "live here", "another host"])
def test_unlabelled_trial_is_abandoned_only_when_every_registered_process_has_exited(tmp_path, dead_pid, other):
    study, storage = _study(tmp_path)
    _running(study, 0, f"{HOST}:{dead_pid}")
    _running(study, 1, None)  # its process was killed between starting it and labelling it, or has just started it
    if other is not None:  # a process that registered and has not labelled a trial yet
        study.set_user_attr(WORKER_ATTR + (f"{HOST}:{os.getppid()}" if other == "live here" else "another-host:1"), "")
    expected = [0, 1] if other is None else [0]
    assert [t.number for t in abandoned_trials(study)] == expected
    assert sorted(recover_abandoned(study, storage)) == expected
    # this process's own registration never makes a trial look abandoned or live
    study.set_user_attr(WORKER_ATTR + f"{HOST}:{os.getpid()}", "")
    assert [t.number for t in live_trials(study)] == ([] if other is None else [1])
