"""The Optuna sampler a study uses, from ``search.sampler`` (``tpe``, ``nsga2``, ``random``, ``gp``)."""

from __future__ import annotations

import warnings

from rba.config import Config
from rba.errors import ConfigError

__all__ = ["make_sampler"]


def make_sampler(cfg: Config, method: str):
    import optuna

    seed = cfg.search.seed
    if method != "optuna":
        return optuna.samplers.RandomSampler(seed=seed)  # never asked: baselines enqueue every trial
    name = cfg.search.sampler
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "tpe":
            return optuna.samplers.TPESampler(seed=seed, multivariate=True)
        if name == "nsga2":
            pop = max(8, min(50, cfg.search.trials // 4))
            return optuna.samplers.NSGAIISampler(seed=seed, population_size=pop)
        if name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if name == "gp":
            return optuna.samplers.GPSampler(seed=seed)
    raise ConfigError(f"unknown sampler {name!r}")
