"""Where and in which dtype the model runs: ``[model] device`` and ``[model] forward_dtype``.

Statistics are accumulated in float64 and fits solved in float64 whatever the forward dtype; the forward dtype
only sets the precision of the model's own computation (and of the replacement maps run inside it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from rba.errors import ConfigError, ModelError

if TYPE_CHECKING:
    from rba.adapters._base import Adapter

__all__ = ["resolve_device", "FORWARD_DTYPES", "set_forward_dtype"]

#: ``[model] forward_dtype`` -> torch dtype
FORWARD_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """``cpu`` | ``cuda`` | ``auto`` as a torch device: ``cuda`` without a visible GPU is a ConfigError, ``auto``
    falls back to the CPU (the CLI says so in a note)."""
    if name == "cpu":
        return torch.device("cpu")
    if name not in ("cuda", "auto"):
        raise ConfigError(f"model.device = {name!r} is not one of cpu, cuda, auto")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if name == "cuda":
        raise ConfigError("model.device = 'cuda' but torch sees no CUDA GPU on this machine: use --device cpu, or "
                          "auto (the GPU when there is one)")
    return torch.device("cpu")


def set_forward_dtype(adapter: Adapter, name: str, *, what: str) -> Adapter:
    """Cast ``adapter``'s model to ``forward_dtype`` ``name`` and run one forward on its example inputs, so that
    an operation the device cannot run in that dtype (float16 on some CPUs) is one clear error now, not a
    traceback in the middle of the capture. ``what`` names the model in that message."""
    dtype = FORWARD_DTYPES[name]
    if dtype == torch.float32 and adapter.dtype == torch.float32:
        return adapter
    adapter.model.to(dtype)
    # part of the model's identity, so statistics caches, study identities and exports tell the dtypes apart
    # (float32, the default, adds nothing: the identities of float32 models are unchanged)
    adapter.identity = dict(adapter.identity) | {"forward_dtype": name}
    try:
        with torch.inference_mode():
            h, ctx = adapter.embed(adapter.example_inputs())
            adapter.pool(adapter.last_boundary(h, ctx), ctx)
    except (RuntimeError, NotImplementedError, TypeError) as exc:
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        alt = "bfloat16 or float32" if name == "float16" else "float32"
        raise ModelError(f"model.forward_dtype = {name!r} is not supported by {what} on {adapter.device.type} "
                         f"({reason}): use forward_dtype = {alt}, or a device that runs {name}") from None
    return adapter
