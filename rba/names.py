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

__all__ = ["ObjectiveSpec", "OBJECTIVES", "QUALITY", "COST_COLUMNS", "BUDGET_KEYS", "RESULT_COLUMNS", "LM_COLUMNS",
           "LM_KINDS", "DEFAULT_OBJECTIVES", "HEAD_ATTR", "config_hash", "maps_tag", "maximised", "objective_of"]


class ObjectiveSpec(NamedTuple):
    """One objective ``search.objectives`` may name."""

    column: str
    """the result column the search optimises"""
    direction: Literal["maximize", "minimize"]
    quality: bool
    """estimated on the eval split (with a standard error); otherwise exact, from the cost model"""
    budget: str | None = None
    """the ``[search]`` key of its budget (a fraction of the unmodified model), if it takes one"""
    models: Literal["any", "encoder", "lm"] = "any"
    """the models it applies to: "lm" the next-token objectives of decoder LMs (:data:`LM_KINDS`), "encoder" those
    of the others (accuracy needs a classifier head or a probe on one pooled row per sample)"""
    log_scale: bool = False
    """a minimised quality measured in nats (kl): a relative rule (``run.max_rise``, the hypervolume reference)
    acts on it as the difference of logarithms, ``log(1 + r)``, which is the rise of the model's cross-entropy
    that a relative rise r of its perplexity is; the others' relative rules multiply"""


#: objective name → spec, in the order the export rule looks for them (the first quality, the first cost)
OBJECTIVES: dict[str, ObjectiveSpec] = {
    "accuracy": ObjectiveSpec("accuracy", "maximize", quality=True, models="encoder"),
    "fidelity": ObjectiveSpec("fidelity", "maximize", quality=True),
    # decoder LMs, on the eval split's texts (:mod:`rba.evaluate`): exp of the mean next-token NLL of the text's own
    # tokens; mean KL(unmodified ‖ configuration) of the next-token distribution; the share of tokens whose
    # predicted next token is the unmodified model's. All label-free.
    "perplexity": ObjectiveSpec("perplexity", "minimize", quality=True, models="lm"),
    "kl": ObjectiveSpec("kl", "minimize", quality=True, models="lm", log_scale=True),
    "top1": ObjectiveSpec("top1", "maximize", quality=True, models="lm"),
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
#: the model kinds (``[model] kind``) that are decoder language models, scored by the "lm" objectives
LM_KINDS = frozenset({"causal-lm"})
#: ``search.objectives`` when a config names none: by whether the model is a decoder LM
DEFAULT_OBJECTIVES = {False: ["accuracy", "flops"], True: ["kl", "flops"]}

#: the result columns of the decoder-LM objectives (NaN for other models; absent from files of an older rba)
LM_COLUMNS = tuple(spec.column for spec in OBJECTIVES.values() if spec.models == "lm")
#: what evaluating one configuration returns, in this order
RESULT_COLUMNS = ["spans", "accuracy", "fidelity", *LM_COLUMNS, "flops", "flops_frac", "params", "params_frac",
                  "latency_ms"]


def objective_of(column: str) -> ObjectiveSpec | None:
    """The spec of the objective whose result column is ``column`` (None for other columns)."""
    return next((spec for spec in OBJECTIVES.values() if spec.column == column), None)


def maximised(column: str) -> bool:
    """Whether higher is better in result column ``column`` (accuracy, fidelity, top1); every other objective
    column is minimised."""
    spec = objective_of(column)
    return spec is not None and spec.direction == "maximize"


#: the attribute of an exported model that holds its fitted probe head (adapters leave it out of their forward)
HEAD_ATTR = "rba_head"


def config_hash(payload: Any) -> str:
    """A stable short hash of JSON-able data."""
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def maps_tag(kind: str, mode: str) -> str:
    """What the evaluator's prefix memo keys replacement modules by: maps differ by fit kind and mode."""
    return f"{kind}/{mode}"
