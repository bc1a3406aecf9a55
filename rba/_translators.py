"""Trained translators: the baselines the paper compares its linear maps with (fit kinds ``mlp`` and ``res-mlp``),
and three that test whether training, rather than the map's form, is what they lack.

Each learns x_j ≈ f(x_i) per vector (token or pixel position) from a bounded sample of paired calibration vectors
(``needs = "vectors"``), with Adam on the mean squared error, as the paper's code does (TOAST:
``sgd_mlp_align_state`` and ``sgd_deepmlp_align_state``: 300 steps, lr 1e-3, the defaults of
:class:`~rba.fit.TrainSettings`, which also train to convergence: early stopping, a cosine schedule):

* ``mlp``: Linear D→D/2, GELU, Linear D/2→D.
* ``res-mlp``: n = LayerNorm(x); LayerNorm(n + Linear(Dropout(SiLU(Linear(n))))), all D→D, dropout 0.2
  (active while training only).
* ``mlp-wide``: ``mlp`` without the bottleneck, Linear D→D, GELU, Linear D→D.
* ``identity-mlp`` and ``affine-mlp``: x ↦ x·A + b + ``mlp-wide``(x), the MLP's last layer starting at zero, so
  that training starts from the identity (A = I, b = 0) or from the closed-form ``affine`` fit of the same
  training vectors (:func:`affine_start`, the statistics fit's solver), and can only be better than its start on
  what it trains on, early stopping aside.

Training (:func:`train_translator`) is seeded: under ``torch.random.fork_rng`` the global generator is seeded
with ``seed`` before the module is built (its initial weights) and drives dropout; the minibatch order is a
separate ``torch.Generator(seed)`` drawing one permutation of the sample per epoch, minibatches taken in turn
(a sample no larger than ``batch_size`` is one full batch, in its own order, as in the paper). The held-out
vectors of early stopping are a third draw, ``torch.randperm`` from another ``torch.Generator(seed)``. Same seed,
same vectors, same settings → the same weights, unless the wall-clock cap (``max_seconds``) stops a run. Training
runs in float32 on the CPU; the solution is kept in float64 like every fit's.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Protocol, cast

import torch
import torch.nn.functional as F
from torch import nn

from rba.errors import SpanError
from rba.fit import Fit, FitInput, SpanFit, TrainSettings, fit_span
from rba.spans import Span
from rba.statistics import StatisticsCollector

__all__ = ["MLPFit", "ResMLPFit", "WideMLPFit", "IdentityMLPFit", "AffineMLPFit", "MLPTranslator",
           "ResMLPTranslator", "WideMLPTranslator", "SkipMLPTranslator", "Training", "affine_start",
           "train_translator"]

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

    #: the hidden width as a fraction of D_out
    width = 0.5

    def __init__(self, dim_in: int, dim_out: int, *, layout: str = "tokens", span: Span = (0, 1)):
        super().__init__(layout, span)
        hidden = max(1, int(dim_out * self.width))
        self.fc1 = nn.Linear(dim_in, hidden)
        self.fc2 = nn.Linear(hidden, dim_out)

    def map(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class WideMLPTranslator(MLPTranslator):
    """``mlp-wide``: Linear D_in→D_out, GELU, Linear D_out→D_out (no bottleneck)."""

    width = 1.0


class SkipMLPTranslator(WideMLPTranslator):
    """``identity-mlp``, ``affine-mlp``: x·A + b + fc2(GELU(fc1(x))), A and b in ``skip`` (a Linear D_in→D_out)."""

    def __init__(self, dim_in: int, dim_out: int, *, layout: str = "tokens", span: Span = (0, 1)):
        super().__init__(dim_in, dim_out, layout=layout, span=span)
        self.skip = nn.Linear(dim_in, dim_out)

    def map(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + super().map(x)


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


@dataclass
class Training:
    """What a training run did: the loss of every step, the steps it ran and why it stopped (``"steps"``, its
    budget; ``"patience"``, early stopping; ``"max_seconds"``, the wall-clock cap), and with held-out vectors their
    count, the best held-out MSE and the step whose weights were kept (0: the starting weights)."""

    losses: list[float] = field(default_factory=list)
    steps: int = 0
    stopped: str = "steps"
    heldout: int = 0
    best_heldout_mse: float = math.nan
    best_step: int = 0


def train_translator(build: Callable[[], nn.Module], x: torch.Tensor, y: torch.Tensor, *, settings: TrainSettings,
                     seed: int, start: Callable[[nn.Module, torch.Tensor, torch.Tensor], None] | None = None,
                     ) -> tuple[nn.Module, Training, torch.Tensor]:
    """Build a module with ``build()``, set its starting weights with ``start(module, x, y)`` (on the training
    vectors, when given) and train it to map ``x`` (n, D_in) to ``y`` (n, D_out): Adam on ``F.mse_loss`` over
    minibatches, as :class:`TrainSettings` and the module docstring describe. Returns the trained module (eval
    mode, float32), what the run did, and the indices of the vectors it trained on (all of them without a
    hold-out). The global random state is left as it was."""
    n = x.shape[0]
    if n == 0:
        raise SpanError("a trained fit got no calibration vectors: raise data.calibration")
    train_idx = torch.arange(n)
    held_idx = train_idx[:0]
    if settings.holdout > 0:
        n_held = max(1, round(settings.holdout * n))
        if n_held >= n:
            raise SpanError(f"fit.holdout = {settings.holdout:g} leaves none of the {n} paired vectors to train on: "
                            "lower fit.holdout, or raise fit.max_vectors / data.calibration")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        held_idx, train_idx = perm[:n_held].sort().values, perm[n_held:].sort().values
    log = Training(heldout=len(held_idx))
    with torch.random.fork_rng(devices=[]), torch.inference_mode(False), torch.enable_grad():
        x = x.detach().to(torch.float32).clone()  # out of inference mode: autograd may save them
        y = y.detach().to(torch.float32).clone()
        x_held, y_held = x[held_idx], y[held_idx]
        if log.heldout:
            x, y = x[train_idx], y[train_idx]
        n = x.shape[0]
        torch.manual_seed(seed)
        module = build().to(torch.float32)
        if start is not None:
            with torch.no_grad():
                start(module, x, y)
        order = torch.Generator().manual_seed(seed)
        opt = torch.optim.Adam(module.parameters(), lr=settings.lr)
        bs = min(settings.batch_size, n)
        perm, pos = torch.empty(0, dtype=torch.long), n  # pos = n: the first minibatch draws a permutation
        best: dict[str, torch.Tensor] = {}

        def evaluate(step: int) -> bool:
            """Score the held-out vectors, keeping the weights when they are the best yet; True when ``patience``
            evaluations have passed since the best (evaluations fall every ``eval_every`` steps)."""
            module.eval()
            with torch.no_grad():
                mse = float(F.mse_loss(module(x_held), y_held))
            module.train()
            if not best or mse < log.best_heldout_mse or (math.isnan(log.best_heldout_mse) and not math.isnan(mse)):
                log.best_heldout_mse, log.best_step = mse, step
                best.update({k: v.detach().clone() for k, v in module.state_dict().items()})
                return False
            return step - log.best_step >= settings.patience * settings.eval_every

        module.train()
        t0 = time.perf_counter()
        if log.heldout:
            evaluate(0)
        for step in range(settings.steps):
            if settings.max_seconds is not None and time.perf_counter() - t0 > settings.max_seconds:
                log.stopped = "max_seconds"
                break
            if bs == n:
                xb, yb = x, y
            else:
                if pos + bs > n:
                    perm, pos = torch.randperm(n, generator=order), 0
                idx = perm[pos : pos + bs]
                pos += bs
                xb, yb = x[idx], y[idx]
            for group in opt.param_groups:
                group["lr"] = settings.lr_at(step)
            opt.zero_grad()
            loss = F.mse_loss(module(xb), yb)
            loss.backward()
            opt.step()
            log.losses.append(float(loss.detach()))
            log.steps = step + 1
            if log.heldout and (log.steps % settings.eval_every == 0 or log.steps == settings.steps):
                if evaluate(log.steps):
                    log.stopped = "patience"
                    break
        if best:
            module.load_state_dict(best)
        module.eval()
    return module, log, train_idx


def affine_start(module: nn.Module, x: torch.Tensor, y: torch.Tensor, *, ridge: float, span: Span) -> None:
    """Set ``module.skip`` (x·A + b) to the closed-form ``affine`` fit of y on x, solved as the statistics fit
    solves it (the same ridge), from statistics of these vectors accumulated in float64."""
    i, j = span
    if x.shape[1] != y.shape[1]:  # (spans join boundaries of one shape; the statistics' cosines need it)
        raise SpanError(f"span {i}-{j}: affine-mlp starts from an affine fit solved as from statistics, which needs "
                        f"equal sizes; the boundaries have D = {x.shape[1]} and {y.shape[1]}; use mlp-wide")
    collector = StatisticsCollector([x.shape[1], y.shape[1]], [(0, 1)], dtype=torch.float64)
    collector.update([x.double(), y.double()])
    # the statistics know the span as 0-1; its warnings (a rank-deficient input) are re-issued naming the real one
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = fit_span(collector.result(), (0, 1), "affine", ridge)
    for w in caught:
        warnings.warn(str(w.message).replace("span 0-1", f"span {i}-{j} (affine start of a trained fit)", 1),
                      w.category, stacklevel=2)
    skip = cast(nn.Linear, module.skip)
    skip.weight.copy_(fit.tensors["weight"].T)
    skip.bias.copy_(fit.tensors["bias"])
    _zero_last_layer(module)


def identity_start(module: nn.Module, x: torch.Tensor, y: torch.Tensor, *, span: Span) -> None:
    """Set ``module.skip`` to the identity (needs D_in = D_out) and zero the MLP's last layer."""
    skip = cast(nn.Linear, module.skip)
    if skip.in_features != skip.out_features:
        raise SpanError(f"span {span[0]}-{span[1]}: identity-mlp starts at the identity and needs equal sizes, the "
                        f"boundaries have D = {skip.in_features} and {skip.out_features}; use affine-mlp")
    skip.weight.copy_(torch.eye(skip.in_features))
    skip.bias.zero_()
    _zero_last_layer(module)


def _zero_last_layer(module: nn.Module) -> None:
    # the map is its skip at the start; fc2's gradient is not zero there (GELU(fc1 x) is not), so training moves it
    fc2 = cast(nn.Linear, module.fc2)
    fc2.weight.zero_()
    fc2.bias.zero_()


class _TranslatorClass(Protocol):
    """A translator's class, as :class:`_TranslatorFit` builds it."""

    def __call__(self, dim_in: int, dim_out: int, *, layout: str, span: Span) -> _VectorWise: ...


class _TranslatorFit(Fit):
    """A translator trained on paired calibration vectors; its module is the one trained."""

    needs = "vectors"
    trained = True
    translator: _TranslatorClass

    def start(self, module: nn.Module, x: torch.Tensor, y: torch.Tensor, data: FitInput) -> None:
        """Set the starting weights from the training vectors (default: PyTorch's initialisation, kept)."""

    def fit(self, data: FitInput) -> SpanFit:
        x, y = cast(tuple[torch.Tensor, torch.Tensor], data.vectors)  # needs = "vectors": the session passes them
        t0 = time.perf_counter()
        module, log, train_idx = train_translator(
            lambda: self.module(data.dim_in, data.dim_out, layout="tokens", span=data.span), x, y,
            settings=data.train, seed=data.seed, start=lambda m, xs, ys: self.start(m, xs, ys, data))
        fit_s = time.perf_counter() - t0
        if log.heldout:  # the SSE and the vector count are those of what it trained on, as without a hold-out
            x, y = x[train_idx], y[train_idx]
        with torch.no_grad():
            sse = float(((module(x.to(torch.float32)).double() - y.double()) ** 2).sum())
        tensors = {k: v.detach().double().clone() for k, v in module.state_dict().items()}
        info: dict[str, float | str] = {
            "fit_s": fit_s, "steps": float(log.steps), "vectors": float(x.shape[0]),
            "first_loss": log.losses[0] if log.losses else float("nan"),
            "final_loss": log.losses[-1] if log.losses else float("nan"), "stopped": log.stopped}
        if log.heldout:
            info |= {"heldout_vectors": float(log.heldout), "best_heldout_mse": log.best_heldout_mse,
                     "best_step": float(log.best_step)}
        return SpanFit(data.span, self.name, data.dim_in, data.dim_out, tensors, sse, info=info)

    def module(self, dim_in: int, dim_out: int, *, layout: str, span: Span) -> nn.Module:
        return self.translator(dim_in, dim_out, layout=layout, span=span)


class MLPFit(_TranslatorFit):
    translator = MLPTranslator


class ResMLPFit(_TranslatorFit):
    translator = ResMLPTranslator


class WideMLPFit(_TranslatorFit):
    translator = WideMLPTranslator


class IdentityMLPFit(_TranslatorFit):
    translator = SkipMLPTranslator

    def start(self, module: nn.Module, x: torch.Tensor, y: torch.Tensor, data: FitInput) -> None:
        identity_start(module, x, y, span=data.span)


class AffineMLPFit(_TranslatorFit):
    translator = SkipMLPTranslator

    def start(self, module: nn.Module, x: torch.Tensor, y: torch.Tensor, data: FitInput) -> None:
        affine_start(module, x, y, ridge=data.ridge, span=data.span)
