"""Study identity: what makes two runs the same study, and the refusal when they are not.

The identity is a plain JSON dict of model, data, fit, evaluation head, objectives, budgets and search space
(method, max_span, valid spans, screening). It is stored in the study (user attribute ``rba_identity``) and in
the output folder's ``study.json``; a run whose identity differs from the stored one is refused with a message
naming the keys that differ. Sampler, seed, ``trials`` and the backend are not part of it.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from rba.config import Config
from rba.errors import RBAError
from rba.fit import get_fit

__all__ = ["IDENTITY_ATTR", "IdentityError", "study_identity", "identity_diff", "refusal"]

#: the study user attribute holding the identity
IDENTITY_ATTR = "rba_identity"


class IdentityError(RBAError):
    """The output folder or the storage holds a study with a different identity."""


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def study_identity(cfg: Config, session, *, kind: str, method: str) -> dict[str, Any]:
    """The identity of the study ``cfg`` describes, for fit kind ``kind`` and search method ``method``."""
    data = dataclasses.asdict(cfg.data)
    for key in ("path", "calibration_path"):
        if data.get(key):
            data[key] = str(cfg.resolve_path(data[key]))
    for key in ("calibration_path", "calibration_kind"):  # a transfer's keys: absent (as before they existed) when unset
        if data.get(key) is None:
            data.pop(key, None)
    if not (cfg.data.kind == "synthetic" and "n" not in cfg.data.options):
        # held out after the other splits, which stay as they were: the search never sees it (synthetic data sized
        # by the splits is the exception: more test samples make another data set)
        data.pop("test", None)
    s = cfg.search
    fit = {"kind": kind, "ridge": cfg.fit.ridge, "mode": cfg.fit.mode, "capture_dtype": cfg.capture.dtype}
    if get_fit(kind).trained:  # a trained fit's maps also depend on how it trains
        fit |= {"steps": cfg.fit.steps, "lr": cfg.fit.lr, "batch_size": cfg.fit.batch_size,
                "max_vectors": cfg.fit.max_vectors}
    return _plain({
        "model": session.adapter.identity,
        "data": data,
        "fit": fit,
        "evaluate": {"head": cfg.evaluate.head, "probe_c": cfg.evaluate.probe_c},
        "objectives": list(s.objectives),
        "budgets": {"flops": s.budget_flops, "params": s.budget_params, "latency": s.budget_latency},
        "space": {"method": method, "max_span": s.max_span, "pairs": [list(p) for p in session.pairs],
                  "screening": s.screening},
    })


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out |= _flatten(v, f"{prefix}{k}.")
        return out
    return {prefix.rstrip("."): d}


def identity_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """One ``"key: old → new"`` line per dotted key whose value differs."""
    a, b = _flatten(old), _flatten(new)
    lines = []
    for key in sorted(set(a) | set(b)):
        if a.get(key, "<unset>") != b.get(key, "<unset>"):
            lines.append(f"{key}: {_short(a.get(key, '<unset>'))} → {_short(b.get(key, '<unset>'))}")
    return lines


def _short(v: Any) -> str:
    s = json.dumps(v, default=str)
    return s if len(s) <= 60 else s[:57] + "..."


def refusal(where: str, old: dict[str, Any], new: dict[str, Any]) -> IdentityError:
    """The error for a study at ``where`` whose stored identity ``old`` differs from ``new``."""
    diff = identity_diff(old, new)
    keys = ", ".join(line.split(":", 1)[0] for line in diff)
    detail = "; ".join(diff[:8]) + (f"; and {len(diff) - 8} more" if len(diff) > 8 else "")
    return IdentityError(
        f"{where} holds a study with a different identity (differing keys: {keys}): {detail}. "
        "Use another --out (or --study-name with its own --storage), or delete the old study to start over"
    )
