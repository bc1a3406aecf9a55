"""rba: find redundant blocks, replace spans of them with closed-form linear maps, search span sets.

The public API; the ``rba`` command line is a thin layer over it::

    import rba

    cfg = rba.load_config("studies/minilm_reviews.toml")
    session = rba.Session(cfg)
    session.scores()                       # DataFrame: start, end, then a column per metric (rba ls metrics)
    session.evaluate("2-4")                # accuracy, fidelity, flops, params, latency of one configuration
    session.export("2-4", "runs/m_2-4")    # model.safetensors + recipe.json
    approx = rba.load_export("runs/m_2-4")  # its adapter; approx.model is the nn.Module
    rba.head_logits(approx, inputs)        # the exported classifier head's logits
    result = rba.search(cfg, trials=40)    # trials and Pareto front (Optuna or Ray Tune)

Importing ``rba`` is cheap: torch, the model libraries and Optuna load when a name that needs them is first used.
"""

from __future__ import annotations

import copy
import importlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rba.adapters import register_adapter
    from rba.config import Config, load_config
    from rba.errors import RBAError
    from rba.export import head_logits, load_export
    from rba.fit import register_fit
    from rba.metrics import register_metric
    from rba.samplers import register_sampler
    from rba.session import Session
    from search import SearchResult

__version__ = "0.1.0"

__all__ = ["__version__", "Config", "load_config", "Session", "search", "load_export", "head_logits",
           "register_adapter", "register_fit", "register_metric", "register_sampler", "RBAError"]

# public name -> the module that defines it, imported on first access (PEP 562)
_HOMES = {
    "Config": "rba.config",
    "load_config": "rba.config",
    "Session": "rba.session",
    "load_export": "rba.export",
    "head_logits": "rba.export",
    "register_adapter": "rba.adapters",
    "register_fit": "rba.fit",
    "register_metric": "rba.metrics",
    "register_sampler": "rba.samplers",
    "RBAError": "rba.errors",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'rba' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def search(config: Config | str | os.PathLike, *, out: str | os.PathLike | None = None, progress: bool = True,
           session: Session | None = None, **settings: Any) -> SearchResult:
    """Run (or resume) the span-set search that ``config`` (a :class:`Config` or a TOML path) describes, and
    write its files (trials, Pareto front, plots) to ``out`` (default: the config's output folder).

    ``settings`` are ``[search]`` keys, as the CLI flags set them: ``rba.search(cfg, trials=40,
    objectives=["fidelity", "flops"], budget_flops=0.7)``. The given config is not modified. ``session``
    reuses a :class:`Session` built for the same config (its statistics and caches). Progress bars and phase
    lines go to stderr, as the CLI's do, ending with where the files were written; ``progress=False`` silences
    them."""
    from rba.config import Config, load_config  # lazy: `import rba` stays light (pydantic loads on first use)
    from search import run_search  # the search package is imported only here: `import rba` stays light

    cfg = load_config(config) if not isinstance(config, Config) else copy.deepcopy(config)
    overrides = {f"search.{key}": value for key, value in settings.items()}
    overrides["output.dir"] = None if out is None else str(Path(out))
    return run_search(cfg.override(overrides), progress=progress, session=session)
