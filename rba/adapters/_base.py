"""The one plug-in point for model families: an :class:`Adapter` turns a model into an ordered list of
blocks with boundaries that rba can measure, replace and evaluate.

Every adapter runs the model in stages -- ``embed`` (input → boundary 0), ``run_block`` (boundary k →
boundary k+1), ``pool`` (last boundary → the model's own pooled representation) and ``logits`` (the
native head) -- so that capture sees every boundary in one pass and evaluation can start from any
cached boundary (prefix reuse).
"""

from __future__ import annotations

import abc
import collections
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Protocol, Sequence

import torch
from torch import nn

from rba.errors import ModelError
from rba.spans import Span

if TYPE_CHECKING:
    from rba.data import Samples

__all__ = ["Adapter", "Context", "Span", "Layout"]

#: "tokens": boundaries are (N, T, D) with a (N, T) mask of real tokens; vectors are the real tokens.
#: "pixels": boundaries are (N, C, H, W); vectors are the N·H·W positions, each of C channels.
Layout = str


class Blocks(Protocol):
    """What an adapter's ``blocks`` is: an ``nn.ModuleList``, an ``nn.Sequential``, or a writable view over blocks
    held in several containers (``rba.adapters._cnn.BlockList``)."""

    def __len__(self) -> int: ...

    def __getitem__(self, k: int, /) -> nn.Module: ...

    def __setitem__(self, k: int, module: nn.Module, /) -> None: ...


@dataclass
class Context:
    """What blocks need besides the hidden state (attention masks), and what pooling needs.

    ``mask`` is (N, T) bool, True on real tokens; None for pixel layouts or unpadded token inputs.
    ``extra`` carries family-specific tensors (e.g. BERT's extended attention mask).
    """

    mask: torch.Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def select(self, index: torch.Tensor | slice) -> "Context":
        """The context of a sub-batch (rows ``index``)."""
        mask = None if self.mask is None else self.mask[index]
        extra = {k: (v[index] if torch.is_tensor(v) and v.dim() > 0 else v) for k, v in self.extra.items()}
        return Context(mask=mask, extra=extra)

    def to(self, device: torch.device | str) -> "Context":
        mask = None if self.mask is None else self.mask.to(device)
        extra = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in self.extra.items()}
        return Context(mask=mask, extra=extra)


class Adapter(abc.ABC):
    """A model seen as ``embed → blocks[0..L-1] → pool → head``.

    Subclasses implement :meth:`collate`, :meth:`embed` and :meth:`pool`; the rest has defaults that suit
    blocks called as ``block(h) -> h``.
    """

    #: see :data:`Layout`
    layout: Layout = "tokens"
    #: the export's recipe, set only on an adapter that :func:`rba.export.load_export` reloaded
    export_recipe: dict[str, Any]

    def __init__(self, model: nn.Module, blocks: Blocks, *, identity: dict[str, Any]):
        self.model = model.eval()
        self.blocks = blocks
        #: what makes this model this model (kind, name, weights hash): part of every cache key.
        self.identity = identity
        self._boundary_shapes: list[tuple[int, ...]] | None = None

    # ------------------------------------------------------------------ structure
    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the model computes in (``[model] forward_dtype``)."""
        return next(self.model.parameters()).dtype

    def to(self, device: torch.device | str) -> "Adapter":
        self.model.to(device)
        return self

    def to_model(self, x: torch.Tensor) -> torch.Tensor:
        """An input tensor on the model's device; floating inputs (images) also in the model's dtype."""
        return x.to(self.device, self.dtype) if x.is_floating_point() else x.to(self.device)

    # ------------------------------------------------------------------ staged forward
    @abc.abstractmethod
    def collate(self, samples: Samples) -> Any:
        """Raw samples (texts, or uint8 C×H×W arrays) → model inputs, with the model's own preprocessing."""

    @abc.abstractmethod
    def embed(self, inputs: Any) -> tuple[torch.Tensor, Context]:
        """Model inputs → (boundary-0 representation, context)."""

    def run_block(self, k: int, h: torch.Tensor, ctx: Context) -> torch.Tensor:
        """Boundary k → boundary k+1 through the original block k."""
        return self.blocks[k](h)

    def run_block_as(self, k: int, block: nn.Module, h: torch.Tensor, ctx: Context) -> torch.Tensor:
        """Boundary k → k+1 through ``block`` in place of block k (called as :meth:`run_block` calls block k)."""
        original = self.blocks[k]
        self.blocks[k] = block
        try:
            return self.run_block(k, h, ctx)
        finally:
            self.blocks[k] = original

    def fold_target(self, k: int) -> str:
        """The name, within block k, of the linear module whose output is the block's MLP output and is added to
        the residual stream as it is (the down projection): where ``[fit] kind = "fold"`` multiplies its map.
        Families that have one override this; the others raise a ModelError naming why and the fix."""
        raise ModelError(f"{self.describe()}: fit kind \"fold\" needs blocks whose MLP output is added to the "
                         f"residual stream as it is, and this model kind does not expose one; use [fit] kind = "
                         "\"affine\"")

    def without_blocks(self, drop: Sequence[int]) -> nn.Module:
        """A plain model of this family without blocks ``drop``, the others' weights as they stand (a fold's
        block included, when :func:`rba.apply.replace_` has put one in): what a fold exports in the model's own
        format. Families that can build one override this, with :meth:`save_native`."""
        raise ModelError(f"{self.describe()}: this model kind cannot export a model with fewer blocks in its own "
                         "format; export with [fit] kind = \"affine\" (a recipe export)")

    def save_native(self, model: nn.Module, folder: Path) -> None:
        """Write ``model`` (from :meth:`without_blocks`) into ``folder`` in its family's own format."""
        raise NotImplementedError

    def boundaries(self, h: torch.Tensor, ctx: Context, *, start: int = 0, stop: int | None = None,
                   replace: Mapping[Span, Callable[[torch.Tensor], torch.Tensor]] | None = None,
                   ) -> Iterator[tuple[int, torch.Tensor]]:
        """The forward through the blocks: ``(k, h_k)`` for every boundary reached, from ``(start, h)`` to
        boundary ``stop`` (default: the last, L).

        ``replace`` maps spans (i, j) to modules (h → h): where block i would run, the module runs instead
        and the walk jumps to boundary j, so boundaries inside a replaced span are never yielded. Every
        forward over the blocks (capture, evaluation, sequential fits, cost, boundary shapes) is this loop.
        """
        stop = self.num_blocks if stop is None else stop
        jumps = {i: (j, m) for (i, j), m in (replace or {}).items()}
        k = start
        yield k, h
        while k < stop:
            if k in jumps:
                j, module = jumps[k]
                # a fold (rba.apply.FoldedBlock) is block k with its down projection changed, run as block k is
                block = getattr(module, "folded_block", None)
                h = module(h) if block is None else self.run_block_as(k, block, h, ctx)
                k = j
            else:
                h, k = self.run_block(k, h, ctx), k + 1
            yield k, h

    def last_boundary(self, h: torch.Tensor, ctx: Context, **kwargs: Any) -> torch.Tensor:
        """The representation where :meth:`boundaries` ends (same arguments)."""
        walked = collections.deque(self.boundaries(h, ctx, **kwargs), maxlen=1)  # only the last is kept
        return walked[0][1] if walked else h

    @abc.abstractmethod
    def pool(self, h: torch.Tensor, ctx: Context) -> torch.Tensor:
        """Last boundary → the model's own pooled representation (N, F)."""

    def logits(self, pooled: torch.Tensor) -> torch.Tensor | None:
        """The model's native head on the pooled representation, or None when it has none."""
        return None

    def targets(self, inputs: Any, ctx: Context) -> torch.Tensor | None:
        """Decoder LMs: the next token's id for every pooled row of ``inputs`` (−1 on the last token of a text),
        what the next-token objectives score :meth:`logits` against; None for models that predict no next token."""
        return None

    # ------------------------------------------------------------------ vectors
    def vectors(self, h: torch.Tensor, ctx: Context) -> torch.Tensor:
        """A boundary's representation as (n, D) vectors: real tokens, or every pixel position."""
        if self.layout == "pixels":
            return h.permute(0, 2, 3, 1).reshape(-1, h.shape[1])
        if ctx.mask is None:
            return h.reshape(-1, h.shape[-1])
        return h[ctx.mask]

    def apply_map(self, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """Apply a vector map y = x·W + b to every vector of a boundary tensor (W is D_in × D_out)."""
        if self.layout == "pixels":  # channels-last in and out: the permutes are views, the product one GEMM
            y = h.permute(0, 2, 3, 1) @ weight
            return (y if bias is None else y + bias).permute(0, 3, 1, 2)
        y = h @ weight
        return y if bias is None else y + bias

    # ------------------------------------------------------------------ replacement in the real model
    def wrap_replacement(self, module: nn.Module) -> nn.Module:
        """Make ``module`` (h → h) callable exactly as the model's own forward calls a block.

        The default suits ``block(h) -> h``; families whose blocks take extra arguments or return tuples
        override this.
        """
        return module

    @abc.abstractmethod
    def forward(self, inputs: Any) -> torch.Tensor:
        """The real model's own end-to-end forward on ``inputs``, returning what :meth:`pool` returns.

        Independent of the staged methods: tests use it to check the staged forward, and that replacement
        modules swapped into ``blocks`` (:func:`rba.apply.replace_`) behave as the staged evaluation."""

    # ------------------------------------------------------------------ boundaries and spans
    def boundary_shapes(self, sample_inputs: Any | None = None) -> list[tuple[int, ...]]:
        """Per-sample shape of every boundary, with the token axis written as -1 (variable length).

        Measured once with a forward pass on ``sample_inputs`` (or :meth:`example_inputs`).
        """
        if self._boundary_shapes is None:
            inputs = sample_inputs if sample_inputs is not None else self.example_inputs()
            with torch.inference_mode():
                self._boundary_shapes = [self._shape_key(h) for _, h in self.boundaries(*self.embed(inputs))]
        return self._boundary_shapes

    def _shape_key(self, h: torch.Tensor) -> tuple[int, ...]:
        if self.layout == "pixels":
            return tuple(h.shape[1:])
        return (-1, h.shape[-1])

    def example_inputs(self) -> Any:
        """Inputs for one or two samples, used to discover boundary shapes and to count FLOPs."""
        raise NotImplementedError(f"{type(self).__name__} needs sample inputs to measure its boundaries")

    def dims(self) -> list[int]:
        """Vector size D at every boundary."""
        return [s[0] if self.layout == "pixels" else s[-1] for s in self.boundary_shapes()]

    def valid_spans(self, max_span: int | None = None) -> list[Span]:
        """Every span (i, j), i < j, whose two boundaries have the same layout, j - i ≤ max_span."""
        shapes = self.boundary_shapes()
        L = self.num_blocks
        limit = L if max_span is None else max_span
        return [
            (i, j)
            for i in range(L)
            for j in range(i + 1, min(L, i + limit) + 1)
            if shapes[i] == shapes[j]
        ]

    def describe(self) -> str:
        return f"{self.identity.get('kind')}:{self.identity.get('name')} ({self.num_blocks} blocks, {self.layout})"
