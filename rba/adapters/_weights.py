"""Safe weight loading: safetensors, or ``torch.load(weights_only=True)``; never arbitrary unpickling."""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from rba._io import file_sha256
from rba.errors import ModelError

__all__ = ["load_weights", "load_into", "describe_mismatch", "file_digest", "weights_path", "check_weights_file"]


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    p = Path(path)
    if not p.exists():
        raise ModelError(f"weights file not found: {p} (set model.weights to a local file, or pretrained = false for random weights)")
    if p.suffix == ".safetensors":
        try:
            return load_file(str(p))
        except Exception as exc:
            raise ModelError(f"cannot read {p} as safetensors: {exc}") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's pickle-protocol notes: the error below says what matters
            state = torch.load(str(p), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's own text suggests weights_only=False, i.e. running the file's code: never do that
        found = re.search(r"GLOBAL ([\w.]+)|Unsupported operand (\d+)", str(exc))
        if found and found.group(1):
            detail = f"it references {found.group(1)}, which is not a tensor type"
        elif found:
            detail = f"unsupported pickle operation {found.group(2)}"
        else:
            detail = "rejected by torch.load(weights_only=True)"
        raise ModelError(
            f"refusing to load {p}: it is not a plain tensor checkpoint ({detail}); rba never unpickles arbitrary "
            "objects. Save a plain state_dict (torch.save(model.state_dict(), path)) or a .safetensors file"
        ) from None
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0].split(". ")[0].rstrip(".") if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"cannot load {p} as a torch checkpoint: {reason}. Use a .safetensors file or a plain state_dict checkpoint"
        ) from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ModelError(f"{p} does not hold a state_dict (got {type(state).__name__})")
    return state


def load_into(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` strictly; a mismatch names the first missing/unexpected keys and shape clashes."""
    mismatch = describe_mismatch(model, state, source)
    if mismatch:
        raise ModelError(mismatch)
    model.load_state_dict(state, strict=True)


def describe_mismatch(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> str | None:
    """How ``state`` fails to fit ``model`` (counts and a first example of each kind), or None when it fits."""
    own = model.state_dict()
    clashes = [k for k, v in state.items() if k in own and tuple(own[k].shape) != tuple(v.shape)]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if clashes or missing or unexpected:
        parts = []
        if clashes:
            k = clashes[0]
            parts.append(f"{len(clashes)} shape clashes (e.g. {k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)})")
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        return (f"weights file {source} does not match the architecture: " + "; ".join(parts)
                + ". Check model.name and model.options against the file")
    return None


_digests: dict[tuple[str, int, int], str] = {}


def weights_path(cfg, what: str) -> Path | None:
    """``model.weights`` resolved, or None for random weights; refuses ``pretrained = true`` without a file
    (nothing is ever downloaded). ``what`` names the model in the message."""
    m = cfg.model
    weights = cfg.resolve_path(m.weights)
    if m.pretrained and weights is None:
        raise ModelError(
            f"{what} needs pretrained weights: set model.weights to a local file "
            "(nothing is downloaded), or pretrained = false for random weights"
        )
    check_weights_file(cfg)  # before the model is even built
    return weights


def check_weights_file(cfg) -> None:
    """A ``model.weights`` file the config names for pretrained weights exists (one line with the way to make it
    otherwise): checked before the data are read or the model is built."""
    m = cfg.model
    weights = cfg.resolve_path(m.weights)
    if weights is not None and m.pretrained and not weights.exists():
        how = (f"make it with: {m.weights_hint}" if m.weights_hint else
               "set model.weights to a local file (relative paths start at the config's folder, or at the working "
               "directory for a study run by name), or pretrained = false for random weights")
        raise ModelError(f"weights file not found: {weights}; {how}")


def file_digest(path: str | Path) -> str:
    """Short sha256 of a weights file (part of the model's identity, hence of every cache key); cached on
    (path, size, mtime) so that large files are hashed once per process."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _digests:
        _digests[key] = file_sha256(path)[:16]
    return _digests[key]
