"""Sequential fitting (``[fit] mode = "sequential"``): each span of a configuration is fitted on the
activations of the network whose earlier spans are already replaced.

For a configuration ``s_1 < s_2 < … < s_m`` the first span's fit is the independent one (nothing before it
is replaced). Span ``s_k = (i, j)`` is fitted with

* input: boundary i of the network with ``s_1 .. s_{k-1}`` replaced (by their own sequential fits);
* target: boundary j of the **unmodified** network,

so each map also corrects the error the earlier replacements left at its input: it learns to land back on
the original trajectory that the following blocks were trained on.

The statistics this needs (Σ x̃ x̃ᵀ of the modified input, Σ x̃ x_jᵀ against the original target) come from
one forward pass over the calibration split per configuration **prefix**. One pass serves every span that can
follow the prefix (every valid span starting at or after its end), so configurations sharing a prefix share
the pass; results are memoised (LRU, within a memory budget) per prefix and per (prefix, span).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, Sequence

import torch
from torch import nn

from rba.apply import span_module
from rba.capture import check_finite, iter_batches
from rba.errors import SpanError
from rba.fit import SpanFit, fit_span, get_fit
from rba.progress import bar as progress_bar
from rba.spans import Span
from rba.statistics import Statistics, add_products, centred

if TYPE_CHECKING:
    from rba.adapters import Adapter
    from rba.config import Config
    from rba.data import Splits

__all__ = ["SequentialFitter", "PrefixStatistics"]

Prefix = tuple[Span, ...]


class SessionParts(Protocol):
    """What sequential fitting reads from a :class:`rba.session.Session` (which is built on this module, so it is
    described here rather than imported)."""

    @property
    def cfg(self) -> Config: ...

    @property
    def adapter(self) -> Adapter: ...

    @property
    def splits(self) -> Splits: ...

    @property
    def stats(self) -> Statistics: ...

    @property
    def pairs(self) -> list[Span]: ...

    def fit(self, span: Span, kind: str | None = None, *, refit: bool = False) -> SpanFit: ...


@dataclass
class PrefixStatistics:
    """Statistics of the network with ``prefix`` replaced, for the spans that may follow it."""

    prefix: Prefix
    n: int
    gram: dict[int, torch.Tensor]
    """start boundary i → Σ u_i u_iᵀ of the modified network, u_i = [x_i − c_i, 1] (float64)"""
    cross: dict[Span, torch.Tensor]
    """span (i, j) → Σ u_i(modified) (x_j(original) − c_j)ᵀ (float64)"""
    sq: dict[int, float]
    """start boundary i → Σ ‖x_i − c_i‖² of the modified network (float64)"""

    def nbytes(self) -> int:
        return sum(t.numel() * 8 for t in self.gram.values()) + sum(t.numel() * 8 for t in self.cross.values())

    def view(self, original: Statistics, span: Span) -> Statistics:
        """A :class:`Statistics` that :func:`rba.fit.fit_span` reads for ``span``: boundary i is the modified
        input, boundary j (its Σ‖x_j − c_j‖², for the SSE) and everything else the original network's. The
        sums are about the original statistics' centres c_k (close to the modified network's means too)."""
        i, _ = span
        gram, sq = list(original.centred_gram), list(original.centred_sq)
        gram[i], sq[i] = self.gram[i], self.sq[i]
        return Statistics(dims=original.dims, pairs=[span], n=self.n, center=original.center, centred_gram=gram,
                          centred_cross={span: self.cross[span]}, centred_sq=sq, cos_sum={span: float("nan")},
                          meta={"sequential_prefix": list(self.prefix)})


class SequentialFitter:
    """Sequential fits and replacement modules for configurations of one :class:`~rba.session.Session`."""

    def __init__(self, session: SessionParts, *, memo_bytes: int = 1 << 30, progress: bool = False):
        self.session = session
        self.memo_bytes = memo_bytes
        self.progress = progress
        self._stats: OrderedDict[tuple[Prefix, str], PrefixStatistics] = OrderedDict()
        self._stats_bytes = 0
        self._fits: OrderedDict[tuple[Prefix, Span, str], SpanFit] = OrderedDict()
        self._fit_bytes = 0
        self._modules: dict[tuple[Prefix, Span, str], nn.Module] = {}
        self._lock = threading.RLock()
        #: number of calibration passes run (one per distinct prefix not in the memo); tests read it
        self.passes = 0

    # ------------------------------------------------------------------ public
    def fits(self, spans: Sequence[Span], kind: str | None = None) -> list[SpanFit]:
        """The sequential fit of every span of the configuration ``spans`` (sorted, non-overlapping)."""
        kind = kind or self.session.cfg.fit.kind
        spans = sorted(spans)
        with self._lock:
            return [self._fit(tuple(spans[:k]), s, kind) for k, s in enumerate(spans)]

    def maps(self, spans: Sequence[Span], kind: str | None = None) -> list[nn.Module]:
        """Replacement modules (on the model's device and dtype) for the configuration ``spans``."""
        kind = kind or self.session.cfg.fit.kind
        spans = sorted(spans)
        with self._lock:
            return [self._module(tuple(spans[:k]), s, kind) for k, s in enumerate(spans)]

    # ------------------------------------------------------------------ memoised pieces
    def _fit(self, prefix: Prefix, span: Span, kind: str) -> SpanFit:
        if not prefix or kind == "identity":
            # nothing replaced before it (or a data-free map): the independent fit, exactly
            return self.session.fit(span, kind)
        if get_fit(kind).needs != "statistics":
            raise SpanError(f"fit kind {kind!r} trains on calibration vectors, and sequential fitting supports fits "
                            "from statistics only: set [fit] mode = \"independent\"")
        key = (prefix, span, kind)
        if key in self._fits:
            self._fits.move_to_end(key)
            return self._fits[key]
        stats = self._prefix_stats(prefix, kind)
        fit = fit_span(stats.view(self.session.stats, span), span, kind, self.session.cfg.fit.ridge)
        size = _nbytes(fit)
        self._fits[key] = fit
        self._fit_bytes += size
        while self._fit_bytes > self.memo_bytes and len(self._fits) > 1:
            _, old = self._fits.popitem(last=False)
            self._fit_bytes -= _nbytes(old)
        return fit

    def _module(self, prefix: Prefix, span: Span, kind: str) -> nn.Module:
        key = (prefix, span, kind)
        if key not in self._modules:
            if len(self._modules) > 4096:
                self._modules.clear()
            adapter = self.session.adapter
            dtype = next(adapter.model.parameters()).dtype
            self._modules[key] = span_module(self._fit(prefix, span, kind), adapter.layout, dtype).to(adapter.device)
        return self._modules[key]

    def _prefix_stats(self, prefix: Prefix, kind: str) -> PrefixStatistics:
        key = (prefix, kind)
        if key in self._stats:
            self._stats.move_to_end(key)
            return self._stats[key]
        maps = [self._module(prefix[:k], s, kind) for k, s in enumerate(prefix)]
        stats = self._capture(prefix, maps)
        self._stats[key] = stats
        self._stats_bytes += stats.nbytes()
        while self._stats_bytes > self.memo_bytes and len(self._stats) > 1:
            _, old = self._stats.popitem(last=False)
            self._stats_bytes -= old.nbytes()
        return stats

    # ------------------------------------------------------------------ the calibration pass
    @torch.inference_mode()
    def _capture(self, prefix: Prefix, maps: Sequence[nn.Module]) -> PrefixStatistics:
        """One pass over the calibration split: the original network to every target boundary, and the
        network with ``prefix`` replaced from the prefix's first start to every later span start."""
        session = self.session
        adapter = session.adapter
        end = prefix[-1][1]
        pairs = [(i, j) for i, j in session.pairs if i >= end]
        starts = sorted({i for i, _ in pairs})
        if not pairs:
            raise ValueError(f"no valid span can follow {_fmt(prefix)}")
        targets = sorted({j for _, j in pairs})
        target_set = set(targets)
        replace = dict(zip(prefix, maps))
        first = prefix[0][0]
        dtype = {"float32": torch.float32, "float64": torch.float64}[session.cfg.capture.dtype]
        dev = adapter.device
        dims = session.stats.dims
        # about the original statistics' centres, in the capture dtype (see rba.statistics)
        center = {k: session.stats.center[k].to(dtype=dtype, device=dev) for k in set(starts) | target_set}
        gram = {i: torch.zeros(dims[i] + 1, dims[i] + 1, dtype=torch.float64, device=dev) for i in starts}
        sq = {i: torch.zeros((), dtype=torch.float64, device=dev) for i in starts}
        cross = {p: torch.zeros(dims[p[0]] + 1, dims[p[1]], dtype=torch.float64, device=dev) for p in pairs}
        by_i: dict[int, list[int]] = {}
        for i, j in pairs:
            by_i.setdefault(i, []).append(j)
        n = 0
        samples = session.splits.calibration.samples
        self.passes += 1
        desc = f"sequential pass after {_fmt(prefix)}"
        with progress_bar(len(samples), desc, "samples", enabled=self.progress) as bar:
            for _, chunk in iter_batches(samples, session.cfg.capture.batch_size):
                h, ctx = adapter.embed(adapter.collate(chunk))
                original: dict[int, torch.Tensor] = {}
                start_state = h
                for k, state in adapter.boundaries(h, ctx, stop=max(targets)):
                    if k == first:
                        start_state = state
                    if k in target_set:
                        original[k] = centred(adapter.vectors(state, ctx).to(dtype), center[k])
                # the modified network, from the prefix's first start to the last span start after it
                modified: dict[int, torch.Tensor] = {}
                for k, h in adapter.boundaries(start_state, ctx, start=first, stop=starts[-1], replace=replace):
                    if k in gram:
                        modified[k] = adapter.vectors(h, ctx).to(dtype)
                for i in starts:
                    x = modified[i]
                    check_finite(x, i, "calibration split (sequential fit)")
                    add_products(gram[i], centred(x, center[i], sq[i]), [(cross[(i, j)], original[j]) for j in by_i[i]])
                n += modified[starts[0]].shape[0]
                bar.update(len(chunk))
        return PrefixStatistics(prefix=prefix, n=n, gram={k: v.cpu() for k, v in gram.items()},
                                cross={k: v.cpu() for k, v in cross.items()}, sq={k: float(v) for k, v in sq.items()})


def _nbytes(fit: SpanFit) -> int:
    return sum(t.numel() * t.element_size() for t in fit.tensors.values())


def _fmt(prefix: Prefix) -> str:
    return ",".join(f"{i}-{j}" for i, j in prefix)
