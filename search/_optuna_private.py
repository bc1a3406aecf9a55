"""Optuna's private names rba needs, each with no public equivalent in Optuna, taken through
:func:`rba.compat.private_name` (version check, one-line failure when a name is gone).

* ``compute_hypervolume``: Optuna computes hypervolumes only internally (samplers, visualisation).
* ``HeartbeatThread``: to stop heartbeat threads a Ctrl-C left running (:func:`search.optuna_backend`).
"""

from __future__ import annotations

import numpy as np

from rba.compat import private_name

__all__ = ["TESTED", "compute_hypervolume", "heartbeat_thread_target"]

#: the Optuna versions the test suite passed with (constraints.txt)
TESTED = ">=5.0,<5.2"


def compute_hypervolume(loss_points: np.ndarray, reference_point: np.ndarray) -> float:
    """Hypervolume dominated by ``loss_points`` (every objective minimised) up to ``reference_point``."""
    fn = private_name("optuna", "optuna._hypervolume.compute_hypervolume", tested=TESTED)
    return float(fn(loss_points, reference_point))


def heartbeat_thread_target():
    """The function Optuna's heartbeat threads run (their ``Thread._target``); its args are (trial id, storage,
    stop event)."""
    return private_name("optuna", "optuna.storages._heartbeat.HeartbeatThread", tested=TESTED)._record_heartbeat
