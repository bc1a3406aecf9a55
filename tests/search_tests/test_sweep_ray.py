"""A 2-study sweep on a real two-node Ray cluster (``ray.cluster_utils.Cluster``, one CPU per node): the driver
is SIGKILLed during the second study, and a rerun resumes both studies without losing a finished trial."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from _search_helpers import study_dict, write_config
from conftest import slowed_cli, wait_for

REPO = Path(__file__).resolve().parents[2]


def _started(db: Path) -> int:
    """How many trials of the study have started (RUNNING or finished)."""
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=5) as con:
            return con.execute("SELECT COUNT(*) FROM trials WHERE state != 'WAITING'").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def _complete(db: Path) -> dict[int, str]:
    """Trial number → spans of the COMPLETE trials, read from the SQLite file directly."""
    if not db.exists():
        return {}
    try:
        with sqlite3.connect(db, timeout=5) as con:
            rows = con.execute("SELECT t.number, a.value_json FROM trials t JOIN trial_user_attributes a "
                               "ON a.trial_id = t.trial_id WHERE t.state = 'COMPLETE' AND a.key = 'spans'").fetchall()
    except sqlite3.OperationalError:
        return {}
    return {n: v for n, v in rows}


@pytest.mark.slow
def test_sweep_on_two_node_cluster_resumes_after_sigkill(tmp_path):
    pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    total = 4
    raw = study_dict(tmp_path / "cache", tmp_path / "unused", search={"trials": total})
    raw.pop("output")
    write_config(tmp_path / "base.toml", raw)
    (tmp_path / "sweep.toml").write_text('base = "base.toml"\n[sweep]\n"search.seed" = [0, 1]\n')
    out = tmp_path / "batch"
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
        argv = ["run", str(tmp_path / "sweep.toml"), "--out", str(out), "--backend", "ray", "--address",
                cluster.address, "--max-concurrent", "2", "--quiet"]
        # the driver proposes each trial 0.5 s late, so the kill lands inside the second study's search (the
        # first study finished, the second with trials started and possibly some complete)
        proc = subprocess.Popen([*slowed_cli("search.ray_backend", "SpanSearcher.suggest", 0.5), *argv], cwd=str(REPO), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        first, second = out / "search.seed=0" / "study.db", out / "search.seed=1" / "study.db"
        killed = wait_for(lambda: _started(second) >= 1 and len(_complete(second)) < total, timeout_s=150, proc=proc)
        if killed:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert killed, f"the sweep finished or failed before the kill: {proc.stderr.read()[-2000:]}"
        assert (out / "search.seed=0" / "report.md").exists() and not (out / "summary.csv").exists()
        before = {1: _complete(first), 2: _complete(second)}
        assert len(before[1]) == total and len(before[2]) < total
        rerun = subprocess.run(["python3", "-m", "rba.cli", *argv], cwd=str(REPO), env=env, capture_output=True,
                               text=True, timeout=150)
        assert rerun.returncode == 0, rerun.stderr[-2000:]
        after = {1: _complete(first), 2: _complete(second)}
        for k in (1, 2):  # every finished trial kept, and the total reached
            assert all(after[k].get(n) == spans for n, spans in before[k].items())
            assert len(after[k]) == total
        summary = pd.read_csv(out / "summary.csv")
        assert list(summary["study"]) == ["search.seed=0", "search.seed=1"]
        assert list(summary["trials_complete"]) == [total, total]
        assert (out / "fronts.png").exists()
    finally:
        cluster.shutdown()
