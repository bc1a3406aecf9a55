"""Library calls leave the process's global state as they found it: the environment (the BERT builders switch the
hub off only while they load) and Optuna's log verbosity (quiet only while a search runs)."""

from __future__ import annotations

import os

import optuna
from conftest import tiny_config

import rba
from rba.adapters import create_adapter


def test_building_a_bert_adapter_leaves_the_environment_alone(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    before = _hub_settings()
    adapter = create_adapter(tiny_config(tmp_path, "bert"))
    assert adapter.num_blocks == 4
    assert _hub_settings() == before and "HF_HUB_OFFLINE" not in before


def _hub_settings() -> dict[str, str]:
    """The environment's hub switches (torch may add its own variables on first use, e.g. an inductor cache)."""
    return {k: v for k, v in os.environ.items() if k.startswith(("HF_", "TRANSFORMERS_"))}


def test_a_search_leaves_optuna_verbosity_alone(tmp_path):
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        cfg = tiny_config(tmp_path, search={"trials": 2, "priors": False, "objectives": ["fidelity", "flops"]},
                          output={"dir": str(tmp_path / "out")})
        result = rba.search(cfg, progress=False)
        assert len(result.trials) == 2
        assert optuna.logging.get_verbosity() == optuna.logging.WARNING
    finally:
        optuna.logging.set_verbosity(before)


def test_the_cli_configures_logging_only_while_it_runs(capsys):
    """main() gives rba's and search's loggers its stderr handler and level for the command, then puts them back
    (tests and scripts call it in-process)."""
    import logging

    from rba.cli import main

    loggers = [logging.getLogger(name) for name in ("rba", "search")]
    before = [(lg.level, lg.propagate, list(lg.handlers)) for lg in loggers]
    assert main(["ls", "fits"]) == 0
    assert "affine" in capsys.readouterr().out.split()
    assert [(lg.level, lg.propagate, list(lg.handlers)) for lg in loggers] == before
