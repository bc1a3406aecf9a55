"""Bounded samples of boundary vectors, for what statistics cannot give: fits that train (``needs = "vectors"``)
and held-out errors.

:func:`collect_vectors` runs the model over samples and keeps, at each boundary asked for, the vectors of the
first samples up to ``limit`` per boundary, in sample order: two boundaries with the same layout hold the same
vectors' representations row for row, so a span's (x_i, x_j) are paired. The memory is stated (and refused above
``capture.max_memory_gb``) before the pass starts.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Sequence

import torch

from rba.adapters import Adapter
from rba.capture import boundary_vectors
from rba.errors import DataError

if TYPE_CHECKING:
    from rba.data import Samples

log = logging.getLogger(__name__)

__all__ = ["vectors_nbytes", "collect_vectors"]


def vectors_nbytes(dims: Sequence[int], boundaries: Sequence[int], limit: int) -> int:
    """Bytes of float32 samples of at most ``limit`` vectors at each of ``boundaries``."""
    return 4 * limit * sum(dims[k] for k in boundaries)


@torch.inference_mode()
def collect_vectors(adapter: Adapter, samples: Samples, boundaries: Sequence[int], *, limit: int,
                    batch_size: int, max_memory_gb: float, progress: bool = True,
                    what: str = "calibration", skip_first_token: bool = False) -> dict[int, torch.Tensor]:
    """{boundary: (n_k, D_k) float32 CPU tensor}: the vectors of the first ``samples`` at each of ``boundaries``,
    at most ``limit`` each. Refused before any forward pass when the sample could exceed ``max_memory_gb``."""
    boundaries = sorted(set(boundaries))
    if not boundaries:
        return {}
    dims = adapter.dims()
    nbytes = vectors_nbytes(dims, boundaries, limit)
    msg = (f"vectors: up to {limit} {what} vectors at boundaries {','.join(map(str, boundaries))}: "
           f"{nbytes / 2**20:.1f} MiB")
    if nbytes > max_memory_gb * 2**30:
        raise DataError(f"{msg} exceeds capture.max_memory_gb = {max_memory_gb}: lower fit.max_vectors, or raise "
                        "capture.max_memory_gb")
    if progress:
        log.info(msg)
    kept: dict[int, list[torch.Tensor]] = {k: [] for k in boundaries}
    counts = dict.fromkeys(boundaries, 0)
    for _, vecs in boundary_vectors(adapter, samples, batch_size, skip_first_token=skip_first_token):
        for k in boundaries:
            if counts[k] < limit:
                v = vecs[k][: limit - counts[k]].float().cpu()
                kept[k].append(v)
                counts[k] += v.shape[0]
        if all(c >= limit for c in counts.values()):
            break
    return {k: torch.cat(parts) if parts else torch.empty(0, dims[k]) for k, parts in kept.items()}
