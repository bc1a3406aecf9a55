"""Trained translators, the baselines the paper compares its linear maps with: fit kinds ``mlp`` and ``res-mlp``.

Both learn x_j ≈ f(x_i) per vector (token or pixel position) from a bounded sample of paired calibration vectors
(``needs = "vectors"``), with Adam on the mean squared error, as the paper's code does (TOAST:
``sgd_mlp_align_state`` and ``sgd_deepmlp_align_state``: 300 steps, lr 1e-3):

* ``mlp``: Linear D→D/2, GELU, Linear D/2→D.
* ``res-mlp``: n = LayerNorm(x); LayerNorm(n + Linear(Dropout(SiLU(Linear(n))))), all D→D, dropout 0.2
  (active while training only).

Training (:func:`train_translator`) is seeded: under ``torch.random.fork_rng`` the global generator is seeded
with ``seed`` before the module is built (its initial weights) and drives dropout; the minibatch order is a
separate ``torch.Generator(seed)`` drawing one permutation of the sample per epoch, minibatches taken in turn
(a sample no larger than ``batch_size`` is one full batch, in its own order, as in the paper). Same seed, same
vectors, same settings → the same weights. Training runs in float32 on the CPU; the solution is kept in
float64 like every fit's.
"""

from __future__ import annotations

import time
from typing import Callable, Protocol, cast

import torch
import torch.nn.functional as F
from torch import nn

from rba.errors import SpanError
from rba.fit import Fit, FitInput, SpanFit, TrainSettings
from rba.spans import Span

__all__ = ["MLPFit", "ResMLPFit", "MLPTranslator", "ResMLPTranslator", "train_translator"]

#: res-mlp's dropout probability (the paper's LearningBlock)
RES_MLP_DROPOUT = 0.2


class _VectorWise(nn.Module):
    """Applies :meth:`map` to every vector of a boundary tensor: the last axis of tokens (B, T, D), the channel
    axis of pixels (B, C, H, W)."""

    def __init__(self, layout: str, span: Span):
        super().__init__()
        self.layout = layout
        self.span = tuple(span)

    def map(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.layout == "pixels":
            return self.map(h.movedim(1, -1)).movedim(-1, 1)
        return self.map(h)

    def extra_repr(self) -> str:
        return f"span={self.span[0]}-{self.span[1]}, layout={self.layout}"


class MLPTranslator(_VectorWise):
    """``mlp``: Linear D_in→D_out/2, GELU, Linear D_out/2→D_out."""

    def __init__(self, dim_in: int, dim_out: int, *, layout: str = "tokens", span: Span = (0, 1)):
        super().__init__(layout, span)
        hidden = max(1, dim_out // 2)
        self.fc1 = nn.Linear(dim_in, hidden)
        self.fc2 = nn.Linear(hidden, dim_out)

    def map(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class ResMLPTranslator(_VectorWise):
    """``res-mlp``: n = LayerNorm(x), then LayerNorm(n + Linear(Dropout(SiLU(Linear(n))))). Built in eval mode
    (dropout off); :func:`train_translator` switches it to training mode for its steps only."""

    def __init__(self, dim_in: int, dim_out: int, *, layout: str = "tokens", span: Span = (0, 1),
                 dropout: float = RES_MLP_DROPOUT):
        super().__init__(layout, span)
        if dim_in != dim_out:
            raise SpanError(f"span {span[0]}-{span[1]}: res-mlp adds its input to its output and needs equal sizes, "
                            f"the boundaries have D = {dim_in} and {dim_out}")
        self.norm1 = nn.LayerNorm(dim_in)
        self.fc1 = nn.Linear(dim_in, dim_in)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(dim_in, dim_in)
        self.norm2 = nn.LayerNorm(dim_in)
        self.train(False)

    def map(self, x: torch.Tensor) -> torch.Tensor:
        n = self.norm1(x)
        return self.norm2(n + self.fc2(self.dropout(F.silu(self.fc1(n)))))


def train_translator(build: Callable[[], nn.Module], x: torch.Tensor, y: torch.Tensor, *, settings: TrainSettings,
                     seed: int) -> tuple[nn.Module, list[float]]:
    """Build a module with ``build()`` and train it to map ``x`` (n, D_in) to ``y`` (n, D_out): ``settings.steps``
    Adam steps on ``F.mse_loss`` over minibatches, as the module docstring describes. Returns the trained module
    (eval mode, float32) and the loss of every step. The global random state is left as it was."""
    n = x.shape[0]
    if n == 0:
        raise SpanError("a trained fit got no calibration vectors: raise data.calibration")
    with torch.random.fork_rng(devices=[]), torch.inference_mode(False), torch.enable_grad():
        x = x.detach().to(torch.float32).clone()  # out of inference mode: autograd may save them
        y = y.detach().to(torch.float32).clone()
        torch.manual_seed(seed)
        module = build().to(torch.float32)
        order = torch.Generator().manual_seed(seed)
        opt = torch.optim.Adam(module.parameters(), lr=settings.lr)
        bs = min(settings.batch_size, n)
        perm, pos = torch.empty(0, dtype=torch.long), n  # pos = n: the first minibatch draws a permutation
        losses = []
        module.train()
        for _ in range(settings.steps):
            if bs == n:
                xb, yb = x, y
            else:
                if pos + bs > n:
                    perm, pos = torch.randperm(n, generator=order), 0
                idx = perm[pos : pos + bs]
                pos += bs
                xb, yb = x[idx], y[idx]
            opt.zero_grad()
            loss = F.mse_loss(module(xb), yb)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        module.eval()
    return module, losses


class _TranslatorClass(Protocol):
    """A translator's class, as :class:`_TranslatorFit` builds it."""

    def __call__(self, dim_in: int, dim_out: int, *, layout: str, span: Span) -> _VectorWise: ...


class _TranslatorFit(Fit):
    """A translator trained on paired calibration vectors; its module is the one trained."""

    needs = "vectors"
    trained = True
    translator: _TranslatorClass

    def fit(self, data: FitInput) -> SpanFit:
        x, y = cast(tuple[torch.Tensor, torch.Tensor], data.vectors)  # needs = "vectors": the session passes them
        t0 = time.perf_counter()
        module, losses = train_translator(
            lambda: self.module(data.dim_in, data.dim_out, layout="tokens", span=data.span), x, y,
            settings=data.train, seed=data.seed)
        fit_s = time.perf_counter() - t0
        with torch.no_grad():
            sse = float(((module(x.to(torch.float32)).double() - y.double()) ** 2).sum())
        tensors = {k: v.detach().double().clone() for k, v in module.state_dict().items()}
        info = {"fit_s": fit_s, "steps": float(data.train.steps), "vectors": float(x.shape[0]),
                "first_loss": losses[0] if losses else float("nan"),
                "final_loss": losses[-1] if losses else float("nan")}
        return SpanFit(data.span, self.name, data.dim_in, data.dim_out, tensors, sse, info=info)

    def module(self, dim_in: int, dim_out: int, *, layout: str, span: Span) -> nn.Module:
        return self.translator(dim_in, dim_out, layout=layout, span=span)


class MLPFit(_TranslatorFit):
    translator = MLPTranslator


class ResMLPFit(_TranslatorFit):
    translator = ResMLPTranslator
