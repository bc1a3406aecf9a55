"""Study identity: what makes two runs the same study, and the refusal when they are not.

The identity is a plain JSON dict of model, data (its settings and a digest of each split's contents, not the
files' paths: :func:`rba.data.data_identity`), fit, evaluation head, objectives, budgets and search space
(method, max_span, valid spans, screening). It is stored in the study (user attribute ``rba_identity``) and in
the output folder's ``study.json``; a run whose identity differs from the stored one is refused with a message
naming the keys that differ (:mod:`rba._folders`, shared with the other output folders). Sampler, seed,
``trials`` and the backend are not part of it.
"""

from __future__ import annotations

import json
from typing import Any, cast

from rba.config import Config
from rba.data import data_identity
from rba.files import FolderError, identity_diff
from rba.files import refusal as _refusal
from rba.fit import get_fit

__all__ = ["IDENTITY_ATTR", "IdentityError", "study_identity", "identity_diff", "refusal"]

#: the study user attribute holding the identity
IDENTITY_ATTR = "rba_identity"


class IdentityError(FolderError):
    """The output folder or the storage holds a study with a different identity."""


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def study_identity(cfg: Config, session, *, kind: str, method: str) -> dict[str, Any]:
    """The identity of the study ``cfg`` describes, for fit kind ``kind`` and search method ``method``."""
    s = cfg.search
    fit = {"kind": kind, "ridge": cfg.fit.ridge, "mode": cfg.fit.mode, "capture_dtype": cfg.capture.dtype}
    if get_fit(kind).trained:  # a trained fit's maps also depend on how it trains
        fit |= {"steps": cfg.fit.steps, "lr": cfg.fit.lr, "batch_size": cfg.fit.batch_size,
                "max_vectors": cfg.fit.max_vectors} | cfg.fit.changed_training()
    return _plain({
        "model": session.adapter.identity,
        "data": data_identity(cfg, session.splits),
        "fit": fit,
        "evaluate": {"head": cfg.evaluate.head, "probe_c": cfg.evaluate.probe_c},
        "objectives": list(s.objectives),
        "budgets": {"flops": s.budget_flops, "params": s.budget_params, "latency": s.budget_latency},
        "space": {"method": method, "max_span": s.max_span, "pairs": [list(p) for p in session.pairs],
                  "screening": s.screening},
    })


def refusal(where: str, old: dict[str, Any], new: dict[str, Any]) -> IdentityError:
    """The error for a study at ``where`` whose stored identity ``old`` differs from ``new``."""
    return cast(IdentityError, _refusal(where, old, new, error=IdentityError))  # (an instance of error)
