"""The Optuna sampler a study uses, from ``search.sampler``: the built-in factories of the sampler registry.

The registry itself (names, ``register_sampler``) is :mod:`rba.samplers`, so configs validate the name without
importing this package; these factories load on first use.
"""

from __future__ import annotations

import warnings

import optuna

from rba.config import Config
from rba.errors import ConfigError
from rba.samplers import get_sampler_factory, list_samplers, register_sampler

__all__ = ["make_sampler", "register_sampler", "list_samplers"]


def make_sampler(cfg: Config, method: str):
    if method != "optuna":
        return optuna.samplers.RandomSampler(seed=cfg.search.seed)  # never asked: baselines enqueue every trial
    try:
        factory = get_sampler_factory(cfg.search.sampler)
    except KeyError as exc:
        raise ConfigError(f"search.sampler: {exc.args[0]}") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return factory(cfg)


def tpe_sampler(cfg: Config):
    return optuna.samplers.TPESampler(seed=cfg.search.seed, multivariate=True)


def nsga2_sampler(cfg: Config):
    pop = max(8, min(50, cfg.search.trials // 4))
    return optuna.samplers.NSGAIISampler(seed=cfg.search.seed, population_size=pop)


def random_sampler(cfg: Config):
    return optuna.samplers.RandomSampler(seed=cfg.search.seed)


def gp_sampler(cfg: Config):
    return optuna.samplers.GPSampler(seed=cfg.search.seed)
