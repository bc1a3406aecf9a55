"""Names shared across layers, with no rba imports of their own: the bottom of the import graph.

Anything several layers must agree on and that is plain data lives here, so that no module imports a higher
layer for a name: the objectives a search optimises (one table, :data:`OBJECTIVES`, from which the config
validation, the search, the export rule and the plots read), the result columns of a configuration, the hash that
keys caches and studies, and the attribute an export's classifier head is saved under.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal, NamedTuple

__all__ = ["ObjectiveSpec", "OBJECTIVES", "QUALITY", "COST_COLUMNS", "BUDGET_KEYS", "RESULT_COLUMNS", "HEAD_ATTR",
           "config_hash", "maps_tag"]


class ObjectiveSpec(NamedTuple):
    """One objective ``search.objectives`` may name."""

    column: str
    """the result column the search optimises"""
    direction: Literal["maximize", "minimize"]
    quality: bool
    """estimated on the eval split (with a standard error); otherwise exact, from the cost model"""
    budget: str | None = None
    """the ``[search]`` key of its budget (a fraction of the unmodified model), if it takes one"""


#: objective name → spec, in the order the export rule looks for them (the first quality, the first cost)
OBJECTIVES: dict[str, ObjectiveSpec] = {
    "accuracy": ObjectiveSpec("accuracy", "maximize", quality=True),
    "fidelity": ObjectiveSpec("fidelity", "maximize", quality=True),
    "flops": ObjectiveSpec("flops_frac", "minimize", quality=False, budget="budget_flops"),
    "params": ObjectiveSpec("params_frac", "minimize", quality=False, budget="budget_params"),
    "latency": ObjectiveSpec("latency_ms", "minimize", quality=False, budget="budget_latency"),
}
#: the objectives estimated on the eval split
QUALITY = tuple(name for name, spec in OBJECTIVES.items() if spec.quality)
#: cost objective → its result column (minimised)
COST_COLUMNS = {name: spec.column for name, spec in OBJECTIVES.items() if not spec.quality}
#: budget name → SearchConfig field
BUDGET_KEYS = {name: spec.budget for name, spec in OBJECTIVES.items() if spec.budget}

#: what evaluating one configuration returns, in this order
RESULT_COLUMNS = ["spans", "accuracy", "fidelity", "flops", "flops_frac", "params", "params_frac", "latency_ms"]

#: the attribute of an exported model that holds its fitted probe head (adapters leave it out of their forward)
HEAD_ATTR = "rba_head"


def config_hash(payload: Any) -> str:
    """A stable short hash of JSON-able data."""
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def maps_tag(kind: str, mode: str) -> str:
    """What the evaluator's prefix memo keys replacement modules by: maps differ by fit kind and mode."""
    return f"{kind}/{mode}"
