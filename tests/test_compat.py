"""Private names of dependencies: the version check warns once outside the tested range, a missing name fails
in one line, and every private name rba uses today resolves on the installed versions."""

from __future__ import annotations

import warnings
from importlib.metadata import version

import numpy as np
import pytest

from rba import compat as _compat
from rba.compat import UntestedVersionWarning, private_name
from rba.errors import RBAError


@pytest.fixture(autouse=True)
def _fresh_checks():
    _compat._check_version.cache_clear()
    yield
    _compat._check_version.cache_clear()


def test_inside_the_tested_range_no_warning():
    installed = version("optuna")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fn = private_name("optuna", "optuna._hypervolume.compute_hypervolume", tested=f"=={installed}")
    assert callable(fn)


def test_outside_the_tested_range_warns_once_naming_package_version_and_range():
    installed = version("optuna")
    with pytest.warns(UntestedVersionWarning) as caught:
        private_name("optuna", "optuna._hypervolume.compute_hypervolume", tested="<1.0")
        private_name("optuna", "optuna.storages._heartbeat.HeartbeatThread", tested="<1.0")
    assert len(caught) == 1
    text = str(caught[0].message)
    assert "optuna" in text and installed in text and "<1.0" in text


def test_a_missing_name_fails_in_one_line():
    with pytest.raises(RBAError) as err:
        private_name("optuna", "optuna._hypervolume.no_such_function", tested=">=0")
    text = str(err.value)
    assert "\n" not in text and "optuna._hypervolume.no_such_function" in text and version("optuna") in text
    with pytest.raises(RBAError):
        private_name("optuna", "optuna._no_such_module.f", tested=">=0")


def test_optuna_private_names_resolve_and_agree_with_a_hand_computed_area():
    from search._optuna_private import TESTED, compute_hypervolume, heartbeat_thread_target

    with warnings.catch_warnings():
        warnings.simplefilter("error", UntestedVersionWarning)  # the installed Optuna is inside the tested range
        assert callable(heartbeat_thread_target())
        # two points (minimised) against (1, 1): staircase area by hand
        area = compute_hypervolume(np.array([[0.2, 0.6], [0.5, 0.3]]), np.array([1.0, 1.0]))
    assert area == pytest.approx((1 - 0.2) * (1 - 0.6) + (1 - 0.5) * (0.6 - 0.3))
    assert TESTED


def test_no_private_dependency_name_outside_the_compat_modules():
    """Only rba/compat.py's callers' modules name a dependency's private module: no ``optuna._``, ``timm``'s
    ``_pos_embed`` or transformers' ``_create_attention_masks`` anywhere else in the package."""
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parent.parent
    allowed = {"search/_optuna_private.py", "rba/compat.py"}
    pattern = re.compile(r"\b(optuna|ray|timm|transformers|torch)(\.[A-Za-z0-9]+)*\._[a-z]|_pos_embed|_create_attention_masks"
                         r"|\._ot_study|\._trial_id|study\._storage")
    offenders = []
    for path in sorted([*root.glob("rba/**/*.py"), *root.glob("search/**/*.py"), *root.glob("benchmarks/*.py")]):
        rel = path.relative_to(root).as_posix()
        if rel in allowed:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{rel}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
