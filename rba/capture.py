"""One forward pass over the calibration split that streams sufficient statistics at every boundary.

The pass (batches in length order, every boundary's vectors checked finite) feeds a
:class:`~rba.statistics.StatisticsCollector`; what it accumulates, and why about a centre, is described in
:mod:`rba.statistics`.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from rba.errors import ConfigError, DataError
from rba.progress import bar
from rba.spans import Span
from rba.statistics import Statistics, StatisticsCollector, statistics_nbytes

if TYPE_CHECKING:
    from rba.adapters import Adapter, Context
    from rba.data import Samples

log = logging.getLogger(__name__)

__all__ = ["capture_statistics", "boundary_vectors", "iter_batches", "length_order", "check_finite", "mlp_pairs",
           "without_first_token"]


def length_order(samples: Samples) -> np.ndarray | None:
    """An order that batches texts of similar length together (padding per real token drops from ~2 to ~1.06
    on movie reviews); None for images, which need no padding. Statistics are sums, so order does not
    change them beyond rounding."""
    if len(samples) and isinstance(samples[0], str):
        return np.argsort([len(s) for s in samples], kind="stable")
    return None


def iter_batches(samples: Samples, batch_size: int):
    for start in range(0, len(samples), batch_size):
        yield start, samples[start : start + batch_size]


def check_finite(h: torch.Tensor, k: int, where: str) -> None:
    # NaN and ±Inf always reach the sum, so a finite sum clears the tensor in one read, without a mask
    # (a non-finite sum of finite values, an overflow, falls through to the exact check)
    if torch.isfinite(h.sum()) or torch.isfinite(h).all():
        return
    bad = (~torch.isfinite(h)).sum().item()
    raise DataError(
        f"{bad} NaN/Inf values at boundary {k} on the {where}: "
        "the model overflows on this data (check the weights, the input scaling, or use capture.dtype = \"float64\")"
    )


def boundary_vectors(adapter: Adapter, samples: Samples, batch_size: int, *, skip_first_token: bool = False):
    """Per batch of the calibration samples: (batch size, every boundary's vectors), each checked finite —
    the forward path of the statistics pass (call under ``torch.inference_mode()``). ``skip_first_token``: each
    sample's first real token left out (:func:`without_first_token`)."""
    for n, vecs, _ in _batch_vectors(adapter, samples, batch_size, mlp_blocks=0, skip_first_token=skip_first_token):
        yield n, vecs


def without_first_token(h: torch.Tensor, ctx: Context) -> Context:
    """A context whose mask leaves out the first real token of every sample of ``h`` (N, T, D): the rows the
    statistics see with ``[capture] skip_first_token``. A decoder LM's first token carries massive activations (on
    SmolLM2-135M a norm of ≈ 20,000 against ≈ 170, and 98% of the variance of boundaries 12–28 from 1% of the
    tokens), which dominate every variance-normalised score (docs/decoder-lms.md)."""
    mask = ctx.mask if ctx.mask is not None else torch.ones(h.shape[:2], dtype=torch.bool, device=h.device)
    return dataclasses.replace(ctx, mask=mask & (mask.long().cumsum(dim=1) > 1))


def _batch_vectors(adapter: Adapter, samples: Samples, batch_size: int, *, mlp_blocks: int,
                   skip_first_token: bool = False):
    """:func:`boundary_vectors`, plus the MLP outputs of blocks 0..mlp_blocks-1 as vectors (forward hooks on the
    modules :meth:`~rba.adapters.Adapter.fold_target` names), in the same rows."""
    if skip_first_token and adapter.layout != "tokens":
        raise ConfigError(f"capture.skip_first_token = true, but {adapter.describe()} has no tokens: set it to false")
    modules = [adapter.blocks[e].get_submodule(adapter.fold_target(e)) for e in range(mlp_blocks)]
    outputs: dict[int, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda _m, _in, out, e=e: outputs.__setitem__(e, out))
             for e, m in enumerate(modules)]
    try:
        for _, chunk in iter_batches(samples, batch_size):
            outputs.clear()
            h, ctx = adapter.embed(adapter.collate(chunk))
            rows = without_first_token(h, ctx) if skip_first_token else ctx
            vecs = [adapter.vectors(h_k, rows) for _, h_k in adapter.boundaries(h, ctx)]
            for k, v in enumerate(vecs):
                check_finite(v, k, "calibration split")
            mlp = [adapter.vectors(outputs[e], rows) for e in range(mlp_blocks)]
            yield len(chunk), vecs, mlp
    finally:
        for hook in hooks:
            hook.remove()


def mlp_pairs(pairs: Sequence[Span]) -> list[tuple[int, int]]:
    """The (block, boundary) products a fold fit of ``pairs`` needs: for every span (i, j) with i ≥ 1, the MLP
    output of block i − 1 against boundaries i and j."""
    return sorted({(i - 1, k) for i, j in pairs if i >= 1 for k in (i, j)})


@torch.inference_mode()
def capture_statistics(adapter: Adapter, samples: Samples, *, pairs: Sequence[Span], batch_size: int = 64,
                       dtype: str = "float32", max_memory_gb: float = 8.0, progress: bool = True,
                       key: str = "", meta: dict[str, Any] | None = None, mlp_outputs: bool = False,
                       skip_first_token: bool = False) -> Statistics:
    """Run ``adapter`` once over ``samples`` and return the streamed statistics; with ``mlp_outputs`` (a fit that
    folds) also those of the MLP outputs of the blocks before the spans' starts (:func:`mlp_pairs`); with
    ``skip_first_token``, over every real token but each sample's first (:func:`without_first_token`)."""
    dims = adapter.dims()
    products = mlp_pairs(pairs) if mlp_outputs else []
    blocks = max((e for e, _ in products), default=-1) + 1
    targets = [adapter.fold_target(e) for e in range(blocks)]  # a model that cannot fold says so before the pass
    mlp_dims = [dims[e + 1] for e in range(blocks)]  # an MLP output is added to the residual stream: its width
    nbytes = statistics_nbytes(dims, pairs, mlp_dims, products)
    limit = max_memory_gb * 2**30
    msg = (f"statistics: {nbytes / 2**20:.1f} MiB for {len(dims)} boundaries and {len(pairs)} spans"
           + (f" (with the MLP outputs of {blocks} blocks)" if blocks else ""))
    if nbytes > limit:
        raise DataError(
            f"{msg} exceeds capture.max_memory_gb = {max_memory_gb}: lower search.max_span "
            "(memory grows with the number of spans), or raise capture.max_memory_gb"
        )
    if progress:
        log.info(msg)
    torch_dtype = {"float32": torch.float32, "float64": torch.float64}[dtype]
    collector = StatisticsCollector(dims, pairs, dtype=torch_dtype, device=adapter.device, mlp_dims=mlp_dims,
                                    mlp_pairs=products)
    order = length_order(samples)
    if order is not None:
        samples = [samples[i] for i in order]
    with bar(len(samples), "capture", "samples", enabled=progress) as progress_bar:
        for n, vecs, mlp in _batch_vectors(adapter, samples, batch_size, mlp_blocks=blocks,
                                           skip_first_token=skip_first_token):
            collector.update(vecs, mlp)
            progress_bar.update(n)
    bias = [adapter.blocks[e].get_submodule(t).bias is not None for e, t in enumerate(targets)]
    return collector.result(key=key, meta=meta, mlp_meta={"modules": targets, "bias": bias})
