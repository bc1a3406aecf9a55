"""Compute cost of a configuration: FLOPs and parameters (counted once per block), latency (a per-block
table measured once). A span costs what its fit plug-in's module costs (:meth:`rba.fit.Fit.num_params`,
:meth:`~rba.fit.Fit.flops_per_vector`); everything else is the unmodified model's.

FLOPs are per sample, counted (PyTorch's FlopCounterMode: matrix products and convolutions) on the sample whose
length is closest to the split's mean; for token models that is ``reference_length`` tokens, so FLOPs per token
are ``flops / reference_length``. ``base_flops`` holds everything outside the blocks: the embedding and the
pooling, and the head the adapter's :meth:`~rba.adapters.Adapter.logits` applies -- for a decoder LM its LM head
on every token (2·T·D·V for T tokens, hidden size D and vocabulary V: most of a small LM's compute, e.g. Gemma 3
270M's 262k-entry vocabulary). Parameters are every parameter of the model, counted once: the embeddings and
the head included (tied input and output embeddings once), so ``params_frac`` is a fraction of the whole
model."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from rba.adapters import Adapter
from rba.apply import SpanMap
from rba.fit import get_fit
from rba.spans import Span
from rba.timing import time_ms

if TYPE_CHECKING:
    from rba.data import Samples

__all__ = ["CostModel"]


def _count_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@dataclass
class CostModel:
    """Per-sample FLOPs, parameters and latency of every part of the model."""

    base_flops: int
    """embedding + pooling + head"""
    block_flops: list[int]
    vectors_per_sample: list[float]
    """vectors per sample at each boundary (mean token count, or H·W)"""
    total_params: int
    block_params: list[int]
    dims: list[int]
    base_latency_ms: float = float("nan")
    block_latency_ms: list[float] = field(default_factory=list)
    map_latency_table: dict[int, float] = field(default_factory=dict)
    """start width D → measured latency of one affine D×D map on a batch"""
    batch_size: int = 1
    reference_length: float = 0.0

    @property
    def total_flops(self) -> int:
        return self.base_flops + sum(self.block_flops)

    @property
    def total_latency_ms(self) -> float:
        return self.base_latency_ms + sum(self.block_latency_ms)

    def map_flops(self, span: Span, kind: str) -> int:
        """Per-sample FLOPs of the map the fit plug-in ``kind`` declares for ``span``."""
        i, j = span
        return int(round(get_fit(kind).flops_per_vector(self.dims[i], self.dims[j]) * self.vectors_per_sample[i]))

    @staticmethod
    def map_params(dim_in: int, dim_out: int, kind: str) -> int:
        return get_fit(kind).num_params(dim_in, dim_out)

    def map_latency_ms(self, span: Span, kind: str) -> float:
        """The latency table times one affine D×D map per start width; another map is priced by its FLOPs
        relative to that one (the identity is free, a linear map costs what the affine one does)."""
        i, j = span
        measured = self.map_latency_table.get(self.dims[i], 0.0)
        reference = get_fit("affine").flops_per_vector(self.dims[i], self.dims[j])
        return measured * (get_fit(kind).flops_per_vector(self.dims[i], self.dims[j]) / reference)

    def cost(self, spans: Sequence[Span], kind: str = "affine") -> dict[str, float]:
        flops = self.total_flops
        params = self.total_params
        latency = self.total_latency_ms
        for i, j in spans:
            flops += self.map_flops((i, j), kind) - sum(self.block_flops[i:j])
            params += self.map_params(self.dims[i], self.dims[j], kind) - sum(self.block_params[i:j])
            if self.block_latency_ms:
                latency += self.map_latency_ms((i, j), kind)
                latency -= sum(self.block_latency_ms[i:j])
        return {
            "flops": float(flops),
            "flops_frac": flops / self.total_flops,
            "params": float(params),
            "params_frac": params / self.total_params,
            "latency_ms": latency / self.batch_size if self.block_latency_ms else float("nan"),
        }

    # ------------------------------------------------------------------ measurement
    @classmethod
    @torch.inference_mode()
    def measure(cls, adapter: Adapter, samples: Samples, *, batch_size: int = 64, latency_repeats: int = 5,
                measure_latency: bool = True, max_probe_samples: int = 256) -> "CostModel":
        """Count FLOPs on the sample whose length is closest to the mean (all images are equal), and time
        every block at ``batch_size`` on that sample repeated."""
        probe = samples[:max_probe_samples]
        lengths = []
        for start in range(0, len(probe), 64):
            _, ctx = adapter.embed(adapter.collate(probe[start : start + 64]))
            if ctx.mask is not None:
                lengths.extend(ctx.mask.sum(1).tolist())
        if lengths:
            mean_len = sum(lengths) / len(lengths)
            ref = min(range(len(lengths)), key=lambda k: abs(lengths[k] - mean_len))
        else:
            mean_len, ref = 0.0, 0
        one = adapter.collate(probe[ref : ref + 1])
        L = adapter.num_blocks

        holder: dict[str, Any] = {}

        def run_embed():
            holder["h"], holder["ctx"] = adapter.embed(one)

        embed_flops = _count_flops(run_embed)
        ctx = holder["ctx"]
        states = [h for _, h in adapter.boundaries(holder["h"], ctx)]
        block_flops = [_count_flops(lambda k=k: adapter.run_block(k, states[k], ctx)) for k in range(L)]
        h = states[-1]

        def run_head():
            pooled = adapter.pool(h, ctx)
            adapter.logits(pooled)

        head_flops = _count_flops(run_head)
        vectors = [float(adapter.vectors(s, ctx).shape[0]) for s in states]
        dims = [int(s.shape[1] if adapter.layout == "pixels" else s.shape[-1]) for s in states]
        block_params = [_params(adapter.blocks[k]) for k in range(L)]
        model = cls(
            base_flops=embed_flops + head_flops,
            block_flops=block_flops,
            vectors_per_sample=vectors,
            total_params=_params(adapter.model),
            block_params=block_params,
            dims=dims,
            batch_size=batch_size,
            reference_length=mean_len,
        )
        if measure_latency:
            model._measure_latency(adapter, probe[ref : ref + 1], batch_size, latency_repeats)
        return model

    def _measure_latency(self, adapter: Adapter, one_sample, batch_size: int, repeats: int) -> None:
        batch = adapter.collate(list(one_sample) * batch_size if isinstance(one_sample, list)
                                else np.repeat(np.asarray(one_sample), batch_size, axis=0))
        h, ctx = adapter.embed(batch)
        embed_ms = time_ms(lambda: adapter.embed(batch), repeats=repeats).median_ms
        states = [h for _, h in adapter.boundaries(h, ctx)]
        block_ms = [time_ms(partial(adapter.run_block, k, states[k], ctx), repeats=repeats).median_ms
                    for k in range(adapter.num_blocks)]
        h = states[-1]
        head_ms = time_ms(lambda: adapter.logits(adapter.pool(h, ctx)), repeats=repeats).median_ms
        maps = {}
        for k, d in enumerate(self.dims):
            if d not in maps:
                m = SpanMap(d, d, layout=adapter.layout).to(states[k].device, states[k].dtype)
                maps[d] = time_ms(partial(m, states[k]), repeats=repeats).median_ms
        self.base_latency_ms = embed_ms + head_ms
        self.block_latency_ms = block_ms
        self.map_latency_table = maps

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
