"""Span fits: one plug-in class (:class:`Fit`), its registry, and the built-in closed-form fits.

A fit plug-in states what it learns from (``needs``: the streamed ``"statistics"``, or ``"vectors"``, a bounded
sample of paired calibration vectors for fits that train), returns a :class:`SpanFit` (its tensors, the SSE on
what it saw), and declares its replacement module (:meth:`Fit.module`), from which the cost model reads
parameters and FLOPs. Building the module from a solution and swapping it into a model is :mod:`rba.apply`'s job.

Built in, from the statistics (float64, ridge-stabilised normal equations, Cholesky):

* ``affine``: ``W = (A_i + λI) \\ B_ij`` with A_i = Σ x̃_i x̃_iᵀ, B_ij = Σ x̃_i x_jᵀ, λ = ridge · mean diagonal
  of the system (tr(A_i)/(D+1)); the bias row is ridged like the rest.
* ``linear``: the same without the bias row/column.
* ``identity``: x ↦ x, the skip baseline (no parameters).

Built in, trained on calibration vectors (:mod:`rba._translators`): the paper's translator baselines ``mlp`` and
``res-mlp``, and ``mlp-wide``, ``identity-mlp``, ``affine-mlp``; Adam on the MSE between boundaries i and j, as
:class:`TrainSettings` say.

``SSE = s_j − 2·tr(Wᵀ B) + tr(Wᵀ A W)``, which for the ridge solution is ``s_j − tr(WᵀB) − λ‖W‖²``. The
factorisation of A_i + λI is computed once per start boundary. The statistics are sums about a centre per
boundary (:mod:`rba.statistics`); the affine fit solves this same problem in those shifted coordinates, and the
linear fit reads the plain sums recovered from them.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import math
import warnings
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Literal, cast

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from rba._modules import Skip, SpanMap
from rba._registry import FITS, check_name
from rba._threads import single_thread
from rba.errors import ConfigError, SpanError
from rba.spans import Span
from rba.statistics import Statistics, plain_cross_from

__all__ = ["Fit", "FitInput", "FoldFit", "SpanFit", "STOP_REASONS", "TrainSettings", "RankDeficientWarning", "fit_label", "fit_span", "get_fit", "list_fits",
           "register_fit", "ill_conditioning", "conditioning_certificate", "rank_deficient"]

#: smallest/largest eigenvalue of the unridged system below which the ridge is what makes it solvable
RANK_DEFICIENT_RATIO = 1e-10

Needs = Literal["statistics", "vectors"]


class RankDeficientWarning(UserWarning):
    """The normal equations of a span are (numerically) singular; the ridge takes over."""


#: why a training run stopped (``SpanFit.info["stopped"]``): its step budget, early stopping, the wall-clock cap
STOP_REASONS = ("steps", "patience", "max_seconds")


@dataclass(frozen=True)
class TrainSettings:
    """How a fit that trains (``trained = True``) runs its optimiser: at most ``steps`` Adam steps on minibatches of
    ``batch_size`` paired vectors (the whole sample when it is smaller), at the learning rate :meth:`lr_at` gives.

    The defaults are the paper's budget (300 steps, constant lr 1e-3, no early stopping). To train to convergence:
    ``holdout`` > 0 sets that fraction of the paired vectors aside (a fixed draw from the seed) and evaluates their
    MSE every ``eval_every`` steps; training keeps the weights of the best evaluation and stops after ``patience``
    evaluations without improvement. ``schedule = "cosine"`` decays lr to 0 at ``steps``, after ``warmup_steps``
    of linear warm-up. ``max_seconds`` (off by default: a capped run is not reproducible to the step) stops a run
    after that much wall clock. The field names are those of
    ``[fit]`` (:meth:`of`)."""

    steps: int = 300
    lr: float = 1e-3
    batch_size: int = 1024
    schedule: Literal["constant", "cosine"] = "constant"
    warmup_steps: int = 0
    holdout: float = 0.0
    eval_every: int = 50
    patience: int = 10
    max_seconds: float | None = None

    def __post_init__(self):
        # (a config has been checked already, as [fit]; this is the same check for settings made in Python)
        checks = [("steps", self.steps >= 0, "at least 0"), ("lr", self.lr > 0, "above 0"),
                  ("batch_size", self.batch_size >= 1, "at least 1"), ("warmup_steps", self.warmup_steps >= 0,
                                                                       "at least 0"),
                  ("holdout", 0 <= self.holdout < 1, "at least 0 and below 1 (e.g. 0.1; 0: no early stopping)"),
                  ("eval_every", self.eval_every >= 1, "at least 1"), ("patience", self.patience >= 1, "at least 1"),
                  ("max_seconds", self.max_seconds is None or self.max_seconds > 0,
                   "above 0 (seconds of wall clock per trained fit), or unset")]
        for name, ok, bound in checks:
            if not ok:
                raise ConfigError(f"fit.{name} = {getattr(self, name)!r}: it must be {bound}")
        if self.schedule not in ("constant", "cosine"):
            raise ConfigError(f"fit.schedule = {self.schedule!r} is not one of constant, cosine")
        if self.warmup_steps and self.warmup_steps >= self.steps:
            raise ConfigError(f"fit.warmup_steps = {self.warmup_steps} is not below fit.steps = {self.steps}: "
                              "lower warmup_steps, or raise steps")

    @classmethod
    def of(cls, fit_config) -> "TrainSettings":
        """The settings of a ``[fit]`` section (:class:`rba.config.FitConfig`), read by field name."""
        return cls(**{f.name: getattr(fit_config, f.name) for f in dataclasses.fields(cls)})

    def lr_at(self, step: int) -> float:
        """The learning rate of step ``step`` (0-based): ``lr`` · (step + 1)/warmup_steps during the warm-up, then
        ``lr`` (constant), or ``lr`` · ½(1 + cos(π·(step − warmup_steps)/(steps − warmup_steps))) (cosine)."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.schedule == "constant":
            return self.lr
        return self.lr * 0.5 * (1 + math.cos(math.pi * (step - self.warmup_steps) / (self.steps - self.warmup_steps)))


@dataclass(frozen=True)
class FitInput:
    """What a fit plug-in receives for one span (i, j): ``statistics`` when it ``needs = "statistics"``, else
    ``vectors`` = (x_i, x_j), a bounded sample of paired calibration vectors, (n, dim_in) and (n, dim_out)."""

    span: Span
    dim_in: int
    dim_out: int
    ridge: float = 1e-6
    statistics: Statistics | None = None
    vectors: tuple[torch.Tensor, torch.Tensor] | None = None
    seed: int = 0
    train: TrainSettings = TrainSettings()


@dataclass
class SpanFit:
    """A fit plug-in's solution for one span: its tensors (float64, named as the plug-in chooses) and the
    squared error Σ‖x̂_j − x_j‖² on the vectors it was fitted on. ``sse`` may be given as a function of no
    arguments, called once when the value is first read (a search that only applies the map never pays for it)."""

    span: Span
    kind: str
    dim_in: int
    dim_out: int
    tensors: dict[str, torch.Tensor]
    sse: float
    ridge_lambda: float = 0.0
    info: dict[str, float | str] = field(default_factory=dict)
    """anything else the plug-in reports (e.g. a trained fit's final loss, why its training stopped)"""

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_sse"] = self.sse  # a pending computation is resolved, not pickled
        return state

    @property
    def weight(self) -> torch.Tensor | None:
        """D_in × D_out (affine, linear, identity), else None"""
        return self.tensors.get("weight")

    @property
    def bias(self) -> torch.Tensor | None:
        return self.tensors.get("bias")

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The fitted map applied to vectors x (n, D_in), in float64."""
        return get_fit(self.kind).predict(self, x)

    @property
    def num_params(self) -> int:
        return get_fit(self.kind).num_params(self.dim_in, self.dim_out)


def _get_sse(fit: SpanFit) -> float:
    value = fit.__dict__["_sse"]
    if callable(value):
        value = fit.__dict__["_sse"] = float(value())
    return value


def _set_sse(fit: SpanFit, value) -> None:
    fit.__dict__["_sse"] = value


# the dataclass's field, read and written through the property (its __init__, repr, eq and replace included)
# (mypy keeps the field's type, float: what a read returns)
SpanFit.sse = property(_get_sse, _set_sse, doc="Σ‖x̂_j − x_j‖² on the fitted vectors (computed on first read)")  # type: ignore[assignment]


class Fit(abc.ABC):
    """A fit plug-in: learns one span's replacement map from its input and declares the module that applies it.

    Subclasses implement :meth:`fit` and :meth:`module`; register them with ``@register_fit("name")``. The
    defaults of :meth:`state_dict`, :meth:`predict`, :meth:`num_params` and :meth:`flops_per_vector` derive
    everything else from the module.
    """

    #: what :meth:`fit` reads from its :class:`FitInput`: ``statistics`` or ``vectors``
    needs: ClassVar[Needs] = "statistics"
    #: trained by an optimiser (not closed form); shown wherever fits are listed
    trained: ClassVar[bool] = False
    #: the map acts on the MLP output of the block before the span and is multiplied into its down projection
    #: (:class:`FoldFit`): the statistics then carry the MLP outputs, and :mod:`rba.apply` folds instead of swapping
    folds: ClassVar[bool] = False
    #: the registry name, set by :func:`register_fit`
    name: str = ""

    @abc.abstractmethod
    def fit(self, data: FitInput) -> SpanFit:
        """The solution for ``data.span``."""

    @abc.abstractmethod
    def module(self, dim_in: int, dim_out: int, *, layout: str, span: Span) -> nn.Module:
        """The replacement module's skeleton (shapes right, values arbitrary) for a boundary tensor of
        ``layout``: what a reloaded export is rebuilt from before its weights are loaded."""

    def state_dict(self, fit: SpanFit) -> dict[str, torch.Tensor]:
        """The solution as the skeleton's ``state_dict`` (default: the fit's tensors under the same names)."""
        return fit.tensors

    def predict(self, fit: SpanFit, x: torch.Tensor) -> torch.Tensor:
        """The solution applied to vectors x (n, dim_in) in float64 (default: through a float64 module)."""
        m = self.module(fit.dim_in, fit.dim_out, layout="tokens", span=fit.span).double()
        m.load_state_dict({k: t.double() for k, t in self.state_dict(fit).items()}, strict=True)
        with torch.no_grad():
            return m(x.double())

    def num_params(self, dim_in: int, dim_out: int) -> int:
        return _module_costs(self, dim_in, dim_out)[0]

    def flops_per_vector(self, dim_in: int, dim_out: int) -> int:
        """Forward FLOPs of the map per vector, as ``torch.utils.flop_counter`` counts them."""
        return _module_costs(self, dim_in, dim_out)[1]


_COSTS: dict[tuple[str, int, int], tuple[int, int]] = {}


def _module_costs(plugin: Fit, dim_in: int, dim_out: int) -> tuple[int, int]:
    """(parameters, FLOPs per vector) of the plug-in's module, counted once per shape on the meta device."""
    key = (plugin.name or type(plugin).__name__, dim_in, dim_out)
    if key not in _COSTS:
        with torch.device("meta"):
            m = plugin.module(dim_in, dim_out, layout="tokens", span=(0, 1))
            x = torch.empty(1, dim_in)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            m(x)
        _COSTS[key] = (sum(p.numel() for p in m.parameters()), int(counter.get_total_flops()))
    return _COSTS[key]


_PLUGINS: dict[str, Fit] = {}
"""fit kind → its plug-in instance, made on first use"""


def register_fit(name: str):
    """Class decorator: register a :class:`Fit` subclass under ``[fit] kind = name``."""

    check_name("fit kind", name)  # at the call, before any class is decorated

    def deco(cls: type[Fit]) -> type[Fit]:
        if not (isinstance(cls, type) and issubclass(cls, Fit)):
            raise TypeError(f"register_fit({name!r}) decorates a subclass of rba.fit.Fit, got {cls!r}")
        FITS.register(name, cls)
        return cls

    return deco


def list_fits() -> list[str]:
    """Registered fit kinds, sorted."""
    return sorted(FITS.names())


def get_fit(name: str) -> Fit:
    """The plug-in registered as ``name``; an :class:`~rba.errors.UnknownNameError` naming the known ones (and the
    closest) otherwise."""
    plugin = _PLUGINS.get(name)
    if plugin is None:
        plugin = FITS.get(name)()
        plugin.name = name
        _PLUGINS[name] = plugin
    return plugin


def fit_label(kind: str) -> str:
    """A fit kind as tables, plots and reports show it: a trained kind carries ``(trained)``."""
    return f"{kind} (trained)" if get_fit(kind).trained else kind


def fit_span(stats: Statistics | None, span: Span, kind: str = "affine", ridge: float = 1e-6, *,
             vectors: tuple[torch.Tensor, torch.Tensor] | None = None, seed: int = 0,
             train: TrainSettings | None = None) -> SpanFit:
    """Fit ``span`` with the plug-in ``kind``, from ``stats`` or from paired ``vectors`` (x_i, x_j), as it needs;
    a fit that trains runs with ``train`` (default: :class:`TrainSettings`) and ``seed``."""
    plugin = get_fit(kind)
    i, j = span
    if plugin.needs == "statistics":
        if stats is None:
            raise SpanError(f"fit kind {kind!r} fits from statistics, but none were given for span {i}-{j}")
        stats.require(span)
        dims = stats.dims[i], stats.dims[j]
    else:
        if vectors is None:
            raise SpanError(f"fit kind {kind!r} trains on calibration vectors (x_i, x_j), but none were given for "
                            f"span {i}-{j}")
        x, y = vectors
        if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
            raise SpanError(f"span {i}-{j}: vectors must be paired (n, D_in) and (n, D_out), got {tuple(x.shape)} "
                            f"and {tuple(y.shape)}")
        dims = x.shape[1], y.shape[1]
    data = FitInput(span=span, dim_in=int(dims[0]), dim_out=int(dims[1]), ridge=ridge, seed=seed,
                    train=train or TrainSettings(),
                    statistics=stats if plugin.needs == "statistics" else None,
                    vectors=vectors if plugin.needs == "vectors" else None)
    with single_thread():
        fit = plugin.fit(data)
    _require_finite(fit, plugin, data)
    return fit


def _require_finite(fit: SpanFit, plugin: Fit, data: FitInput) -> None:
    """Every fit, of every kind, before anything uses or exports it: NaN/Inf in its tensors (or in its SSE, when
    already computed) stop it with one line, rather than spread into errors, accuracies and exported weights."""
    bad = [name for name, t in fit.tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    sse = fit.__dict__.get("_sse")
    if not bad and (callable(sse) or sse is None or math.isfinite(sse)):
        return
    i, j = data.span
    what = f"NaN/Inf in {', '.join(bad[:3])}{' …' if len(bad) > 3 else ''}" if bad else f"its error is {sse}"
    if plugin.trained:
        loss = fit.info.get("final_loss")
        fix = (f"training diverged (final loss {loss:.3g}); lower [fit] lr (now {data.train.lr:g})"
               if loss is not None else f"training diverged; lower [fit] lr (now {data.train.lr:g})")
    else:
        fix = "the statistics or the system are not finite; raise [fit] ridge, or check the model's activations"
    raise SpanError(f"span {i}-{j}: the {plugin.name or type(plugin).__name__} fit is not finite ({what}): {fix}")


def ill_conditioning(stats: Statistics, k: int, *, with_bias: bool = True) -> float:
    """Smallest / largest eigenvalue of the unridged Gram matrix Σ x̃ x̃ᵀ at boundary k (plain coordinates), by a
    full eigen-analysis (the exact reference; a fit's rank-deficiency check uses :func:`rank_deficient`)."""
    cache = stats.scratch.setdefault("conditioning", {})
    key = (k, with_bias)
    if key not in cache:
        cache[key] = _eigen_ratio(_gram(stats, k, with_bias))
    return cache[key]


def _gram(stats: Statistics, k: int, with_bias: bool) -> torch.Tensor:
    a = stats.plain_gram(k)
    return a if with_bias else a[:-1, :-1]


def _eigen_ratio(a: torch.Tensor) -> float:
    ev = torch.linalg.eigvalsh(a)
    return float(ev[0].clamp_min(0) / ev[-1]) if float(ev[-1]) > 0 else 0.0


#: unit roundoff of float64
_UNIT_ROUNDOFF = 2.0 ** -53


def conditioning_certificate(a: torch.Tensor, threshold: float = RANK_DEFICIENT_RATIO, *,
                             expect: bool | None = None, candidate: torch.Tensor | None = None) -> bool | None:
    """Whether λ_min(a)/λ_max(a) < ``threshold`` for a symmetric positive semi-definite float64 ``a``, decided by a
    ``candidate``'s Rayleigh quotient (a few matrix-vector products) or one to four Cholesky factorisations (O(n³/3)
    each, against the eigen-analysis's ≈ 30× that on one core): True or False when certified, None when λ_min lies
    too close to the threshold to tell (then ask :func:`ill_conditioning`).

    A computed Cholesky factor is the exact one of a matrix within ‖E‖₂ ≤ (n + 1)·u·tr of the one factored
    (u = 2⁻⁵³; Higham, *Accuracy and Stability of Numerical Algorithms*, Thm 10.3, with ‖|L||Lᵀ|‖_F ≤ tr), and a
    breakdown means that nearby matrix is not positive definite. So, with δ = (n + 1)·u·tr(a):

    * λ_max lies between θ, the Rayleigh quotient of a few power iterations, and an upper bound Λ: ‖a‖_F, or
      μ + (n + 1)·u·nμ when μI − a factors, μ = 1.001·θ (tried only when ‖a‖_F does not decide).
    * If a − σI factors with σ = threshold·Λ + δ, then λ_min > threshold·λ_max: False.
    * If a − σ'I breaks down with σ' = threshold·θ − δ, then λ_min ≤ threshold·θ ≤ threshold·λ_max: True.
    * Otherwise None.

    * Before any factorisation, if a ``candidate`` vector v is given (e.g. from inverse iteration with a ridged
      inverse the fit already holds): λ_min ≤ vᵀav/vᵀv for every v, so a Rayleigh quotient q with
      q + ε ≤ threshold·(θ − ε) certifies True, ε = 2n·u·‖a‖_F bounding the rounding of either quotient.

    The tests cannot disagree, so their order does not change the answer, only its cost: ``expect = True``
    (e.g. the answer at a neighbouring boundary of the same model) runs the breakdown test first, so a deficient
    matrix takes one factorisation instead of two; otherwise the positive-definite test runs first."""
    n = a.shape[0]
    trace = float(torch.diagonal(a).sum())
    if not trace > 0:
        return True if trace == 0 else None
    delta = (n + 1) * _UNIT_ROUNDOFF * trace

    @functools.cache
    def rayleigh() -> float:
        """θ (computed when a test needs it)"""
        v = a.sum(1) + torch.diagonal(a)  # a start with weight on the dominant directions of a data Gram matrix
        theta = float(torch.diagonal(a).max())
        for _ in range(8):
            norm = float(v.norm())
            if not norm > 0:
                break
            v = v / norm
            av = a @ v
            theta = max(theta, float(v @ av))
            v = av
        return theta

    def factors(shift: float, sign: float = 1.0) -> bool:
        """Whether sign·a − shift·I factors (one copy of a)."""
        m = a.neg() if sign < 0 else a.clone()
        m.diagonal().sub_(shift)
        return int(torch.linalg.cholesky_ex(m).info) == 0

    def certified_false() -> bool:  # λ_max ≤ ‖a‖_F
        return factors(threshold * float(torch.linalg.matrix_norm(a)) + delta)

    def certified_true() -> bool:
        shift = threshold * rayleigh() - delta
        return shift > 0 and not factors(shift)

    if candidate is not None and float(candidate.norm()) > 0:
        v = candidate / candidate.norm()
        eps = 2 * n * 1.01 * _UNIT_ROUNDOFF * float(torch.linalg.matrix_norm(a))
        q = float(v @ (a @ v))
        # θ from the largest diagonal entry (a lower bound on λ_max too) first: enough when q is at rounding level;
        # the power iteration only when q is below threshold·tr(a), without which no θ ≤ λ_max ≤ tr(a) can do
        if q + eps <= threshold * (float(torch.diagonal(a).max()) - eps) or (
                q + eps <= threshold * trace and q + eps <= threshold * (rayleigh() - eps)):
            return True
    if expect is True and certified_true():
        return True
    if certified_false():
        return False
    if expect is not True and certified_true():
        return True
    mu = 1.001 * rayleigh()  # a tighter upper bound on λ_max, for λ_min just above the threshold
    if factors(-mu, sign=-1.0) and factors(threshold * (mu + (n + 1) * _UNIT_ROUNDOFF * n * mu) + delta):
        return False
    return None


def rank_deficient(stats: Statistics, k: int, *, with_bias: bool = True) -> tuple[bool, str]:
    """Whether the unridged Gram matrix at boundary k has λ_min/λ_max < :data:`RANK_DEFICIENT_RATIO`, and the ratio
    as text: certified by :func:`conditioning_certificate` (Cholesky factorisations), else from the full
    eigen-analysis (:func:`ill_conditioning`)."""
    cache = stats.scratch.setdefault("deficient", {})
    key = (k, with_bias)
    if key not in cache:
        # neighbouring boundaries of one model tend to agree (e.g. every boundary of a post-LN model is deficient
        # with the ones column): the nearest decided one orders the certificate's tests
        near = sorted((abs(kk - k), d) for (kk, wb), (d, _) in cache.items() if wb == with_bias)
        expect = near[0][1] if near else None
        # the candidate is worth its inverse iteration where deficiency is likely (a neighbour was deficient, or none
        # is decided yet); a model whose boundaries are well conditioned (CNN stages) pays it once
        candidate = _null_candidate(stats, k, with_bias) if expect is not False else None
        decided = conditioning_certificate(_gram(stats, k, with_bias), expect=expect, candidate=candidate)
        if decided is None:
            ratio = ill_conditioning(stats, k, with_bias=with_bias)
            cache[key] = ratio < RANK_DEFICIENT_RATIO, f"{ratio:.1e}"
        else:
            cache[key] = decided, ("below " if decided else "at least ") + f"{RANK_DEFICIENT_RATIO:.0e}"
    return cache[key]


def _null_candidate(stats: Statistics, k: int, with_bias: bool, steps: int = 3) -> torch.Tensor | None:
    """A vector near the plain Gram matrix's weakest direction at boundary k, by a few steps of inverse iteration
    with the ridged inverse a fit from k already computed (None when none has): what lets a rank-deficient
    boundary be certified without a factorisation of its own. Its accuracy only decides whether that shortcut
    works, never the answer (see :func:`conditioning_certificate`).

    With the bias the cached inverse is (A_c + λM)⁻¹ in the centred coordinates, and (a + λI)⁻¹ = T⁻¹(A_c + λM)⁻¹T⁻ᵀ
    with T⁻¹ = [[I, 0], [−cᵀ, 1]] (:func:`_ridged`)."""
    cached = [inv for (kk, wb, _), (inv, _) in stats.scratch.get("inverse", {}).items() if kk == k and wb == with_bias]
    if not cached:
        return None
    inv = cached[0]
    v = torch.randn(inv.shape[0], dtype=inv.dtype, generator=torch.Generator().manual_seed(0))
    c = stats.center[k] if with_bias else None
    for _ in range(steps):
        if c is not None:
            y = v.clone()
            y[:-1].sub_(c, alpha=float(v[-1]))  # T⁻ᵀv
            v = inv @ y
            v[-1] -= c @ v[:-1]  # T⁻¹(…)
        else:
            v = inv @ v
        v = v / v.norm()
    return v


# ---------------------------------------------------------------------- closed-form fits from statistics
def _ridged(a: torch.Tensor, lam: float, c: torch.Tensor | None) -> torch.Tensor:
    """a + λ·M, formed in one copy of a: M = I when c is None; else M = T⁻ᵀT⁻¹ for the shift x̃ = u·T,
    T = [[I, 0], [cᵀ, 1]], i.e. [[I + ccᵀ, −c], [−cᵀ, 1]], so that the plain ridge λ‖W‖² is λ·tr(W'ᵀ M W') in
    the centred unknowns W' = T·W."""
    out = a.clone()
    d = out.shape[0] - (0 if c is None else 1)
    out.diagonal().add_(lam)
    if c is not None:
        out[:d, :d].addr_(c, c, alpha=lam)
        out[:d, d].sub_(c, alpha=lam)
        out[d, :d].sub_(c, alpha=lam)
    return out


def _inverse(stats: Statistics, k: int, ridge: float, span: Span, *, with_bias: bool) -> tuple[torch.Tensor, float]:
    """The inverse of the ridged normal matrix at boundary k, and λ, computed once per boundary and reused by
    every span that starts there (a search fits many spans from the same start). Cholesky; if that fails
    (ridge 0 on a singular A), λ is raised tenfold until it works.

    With the bias (affine): (Σ u uᵀ + λM)⁻¹ in the centred coordinates u = [x − c, 1], M = T⁻ᵀT⁻¹, which is
    the plain problem (A + λI) exactly, changed by the shift. Without it (linear): (Σ x xᵀ + λI)⁻¹, the plain
    Gram recovered in float64. λ = ridge · tr(A)/(D+1) with A the plain system, as documented."""
    cache = stats.scratch.setdefault("inverse", {})
    key = (k, with_bias, ridge)
    if key in cache:
        return cache[key]
    n = stats.count(k)
    if with_bias:
        a = stats.centred_gram[k]
        plain_trace = stats.sum_sq(k) + n
    else:
        a = stats.plain_gram(k)[:-1, :-1]
        plain_trace = stats.sum_sq(k)
    scale = plain_trace / a.shape[0]
    if not scale > 0:
        raise SpanError(f"span {span[0]}-{span[1]}: the input boundary's vectors are all zero; nothing to fit")
    lam = ridge * scale
    for _ in range(20):
        chol, info = torch.linalg.cholesky_ex(_ridged(a, lam, stats.center[k] if with_bias else None))
        if int(info) == 0:
            # exactly symmetric; LAPACK returns it column-major, and its transpose is the same matrix row-major,
            # the layout of every B it multiplies (no copy)
            cache[key] = torch.cholesky_inverse(chol).mT, lam
            return cache[key]
        lam = max(lam * 10, 1e-12 * scale)
        warnings.warn(
            f"span {span[0]}-{span[1]}: normal equations not positive definite; ridge raised to λ = {lam:.3g}",
            RankDeficientWarning,
            stacklevel=4,
        )
    raise SpanError(f"span {span[0]}-{span[1]}: normal equations could not be solved (statistics hold NaN/Inf?)")


def _solve(stats: Statistics, span: Span, ridge: float, *,
           with_bias: bool) -> tuple[torch.Tensor, float, Callable[[], float]]:
    """W (rows: the input's D, then the bias row when ``with_bias``) minimising Σ‖x̃_i W − x_j‖² + λ‖W‖², and
    a function that returns its SSE (read only when asked: a trial applies the map and never needs it)."""
    i, j = span
    return _solve_system(stats, i, span, ridge, with_bias=with_bias, bu=stats.centred_cross[span],
                         cj=stats.center[j], sq_j=stats.centred_sq[j],
                         plain_b=lambda: stats.plain_cross(span)[:-1], plain_sq=lambda: stats.sum_sq(j))


def _solve_system(stats: Statistics, i: int, span: Span, ridge: float, *, with_bias: bool, bu: torch.Tensor,
                  cj: torch.Tensor, sq_j: float, plain_b: Callable[[], torch.Tensor], plain_sq: Callable[[], float],
                  where: str = "") -> tuple[torch.Tensor, float, Callable[[], float]]:
    """The least squares of a target y on the input x̃_i = [x_i, 1] of ``stats``' boundary i, from the target's
    sums: ``bu`` = Σ u_i (y − c_y)ᵀ, its centre ``cj`` = c_y and ``sq_j`` = Σ‖y − c_y‖² (and, without the bias,
    ``plain_b()`` = Σ x_i yᵀ and ``plain_sq()`` = Σ‖y‖²). The target is boundary j for the span fits, the fold's
    residual-stream difference for :class:`FoldFit`.

    Affine, in the centred coordinates: (Σ u uᵀ + λM) W' = Σ u_i x_jᵀ, then W = T⁻¹W' (the weight rows are
    W'[:-1], the bias is W'[-1] − c_iᵀW'[:-1]). The SSE comes from the centred sums, which carry no mean:
    with W'' = W' less c_j in its bias row, (Σ u uᵀ)W'' = Σ u v_jᵀ − λMW', so
    SSE = Σ‖v_j‖² − tr(W''ᵀ Σ u v_jᵀ) − λ·tr(W''ᵀMW'), and MW' = [W'[:-1] − c_i b; b] with b the bias.
    Linear: plain sums, SSE = s_j − tr(WᵀB) − λ‖W‖² (because (A + λI)W = B)."""
    inv, lam = _inverse(stats, i, ridge, span, with_bias=with_bias)
    if with_bias:
        ci = stats.center[i]
        su = stats.centred_gram[i][-1]
        wp = inv @ bu
        wp.addr_(inv @ su, cj)  # W' = inv·(Σ u_i v_jᵀ + (Σ u_i) c_jᵀ), no temporary of the system's size
        top = wp[:-1]
        last = wp[-1].clone()  # W'[-1], before the bias replaces it
        bias = last - ci @ top
        wp[-1] = bias
        w = wp

        def sse() -> float:
            # the sums of the docstring without forming W'' or MW': tr(W''ᵀ Σ u v_jᵀ) = ⟨W', Σ u v_jᵀ⟩ − c_j·(Σ v_j),
            # and tr(W''ᵀMW') = ‖W'[:-1]‖² − c_iᵀ W'[:-1] b + (W'[-1] − c_j)·b
            fit_term = (float(torch.dot(top.reshape(-1), bu[:-1].reshape(-1))) + float(last @ bu[-1])
                        - float(cj @ bu[-1]))
            reg_term = (float(torch.dot(top.reshape(-1), top.reshape(-1))) - float(ci @ (top @ bias))
                        + float((last - cj) @ bias))
            return max(sq_j - fit_term - lam * reg_term, 0.0)
    else:
        b = plain_b()
        w = inv @ b

        def sse() -> float:
            return max(plain_sq() - float((w * b).sum()) - lam * float((w * w).sum()), 0.0)
    _warn_if_singular(stats, span, with_bias, lam, k=i, where=where)
    return w, lam, sse


def _warn_if_singular(stats: Statistics, span: Span, with_bias: bool, lam: float, *, k: int | None = None,
                      where: str = "") -> None:
    """Warn once per span when the input's Gram matrix (boundary ``k``, default the span's start) is rank-deficient;
    ``where`` names that input in the message."""
    deficient, ratio = rank_deficient(stats, span[0] if k is None else k, with_bias=with_bias)
    if deficient:
        seen = stats.scratch.setdefault("warned", set())
        if span not in seen:
            seen.add(span)
            warnings.warn(
                f"span {span[0]}-{span[1]}: statistics at {where or f'boundary {span[0]}'} are rank-deficient "
                f"(eigenvalue ratio {ratio}); the ridge (λ = {lam:.3g}) takes over",
                RankDeficientWarning,
                stacklevel=4,
            )


class _LinearMapFit(Fit):
    """Least squares x_j ≈ x_i·W (+ b) from the statistics; the module is one :class:`SpanMap`."""

    with_bias: ClassVar[bool] = True

    def fit(self, data: FitInput) -> SpanFit:
        # (needs = "statistics": the session passes them)
        w, lam, sse = _solve(cast(Statistics, data.statistics), data.span, data.ridge, with_bias=self.with_bias)
        tensors = {"weight": w[:-1], "bias": w[-1]} if self.with_bias else {"weight": w}
        # sse is a function, read once when first needed (SpanFit's docstring); the field is typed as a read returns
        return SpanFit(data.span, self.name, data.dim_in, data.dim_out, tensors, sse, lam)  # type: ignore[arg-type]

    def module(self, dim_in: int, dim_out: int, *, layout: str, span: Span) -> nn.Module:
        return SpanMap(dim_in, dim_out, bias=self.with_bias, layout=layout, span=span)

    def state_dict(self, fit: SpanFit) -> dict[str, torch.Tensor]:
        out = {"linear.weight": fit.tensors["weight"].T}
        if self.with_bias:
            out["linear.bias"] = fit.tensors["bias"]
        return out

    def predict(self, fit: SpanFit, x: torch.Tensor) -> torch.Tensor:
        y = x.to(fit.tensors["weight"].dtype) @ fit.tensors["weight"]
        return y if fit.bias is None else y + fit.bias


class AffineFit(_LinearMapFit):
    with_bias = True


class LinearFit(_LinearMapFit):
    with_bias = False


class IdentityFit(Fit):
    """x_j ≈ x_i: the skip baseline (block-drop). Its SSE is Σ‖x_i − x_j‖² = s_i − 2·tr(B) + s_j."""

    def fit(self, data: FitInput) -> SpanFit:
        i, j = data.span
        if data.dim_in != data.dim_out:
            raise SpanError(f"span {i}-{j}: an identity map needs equal sizes, boundaries have D = {data.dim_in} "
                            f"and {data.dim_out}")
        sse = cast(Statistics, data.statistics).squared_distance(data.span)  # needs = "statistics"
        return SpanFit(data.span, self.name, data.dim_in, data.dim_out,
                       {"weight": torch.eye(data.dim_in, dtype=torch.float64)}, sse, 0.0)

    def module(self, dim_in: int, dim_out: int, *, layout: str, span: Span) -> nn.Module:
        return Skip()

    def state_dict(self, fit: SpanFit) -> dict[str, torch.Tensor]:
        return {}

    def predict(self, fit: SpanFit, x: torch.Tensor) -> torch.Tensor:
        return x.double()


class FoldFit(Fit):
    """ReplaceMe's map (Shopkhoev et al. 2025, ``mts-ai/ReplaceMe`` ``lstsq.py``), fitted from the statistics: for span
    (i, j), a D×D map T on m, the MLP output of block i − 1 (its down projection's output, before the residual add),
    so that the block's output h_i − m + m·T (+ c) approximates h_j. Least squares m̃·[T; c] ≈ h_j − h_i + m, ridged
    as ``affine`` (λ = ridge · mean diagonal of the system), with the bias c only where the down projection has one
    (GPT-2); ReplaceMe solves the same system without ridge or bias, with ``torch.linalg.inv``, on every token,
    padding included. Folded, T multiplies the down projection (W ← Tᵀ W; bias ← b·T + c) and blocks i..j−1 go:
    the model keeps its architecture, with fewer layers. The SSE is that of h_j, as for the span fits.

    From the statistics' MLP part (:attr:`Statistics.mlp`, captured only for this kind), with v = x − c per stream:
    Σ u_m (y − c_y)ᵀ = Σ u_m v_jᵀ − Σ u_m v_iᵀ + Σ u_m v_mᵀ and c_y = c_j − c_i + c_m."""

    folds = True

    def fit(self, data: FitInput) -> SpanFit:
        # (needs = "statistics": the session passes them)
        stats, (i, j) = cast(Statistics, data.statistics), data.span
        if i < 1:
            raise SpanError(f"span {i}-{j}: fit kind \"fold\" multiplies its map into the MLP of the block before the "
                            "span, and no block precedes boundary 0; use [fit] kind = \"affine\" for spans from 0")
        mlp, e = stats.mlp, i - 1
        if mlp is None or (e, j) not in stats.mlp_cross:
            raise SpanError(f"span {i}-{j}: these statistics hold no MLP outputs for it (they are captured with fit "
                            "kind \"fold\" only); capture them with [fit] kind = \"fold\"")
        ci_, cj_ = stats.mlp_cross[(e, i)], stats.mlp_cross[(e, j)]
        gram = mlp.centred_gram[e]
        bu = cj_ - ci_ + gram[:, :-1]
        cy = stats.center[j] - stats.center[i] + mlp.center[e]
        dot_ij = float(torch.diagonal(stats.centred_cross[(i, j)][:-1]).sum())
        dot_mj, dot_mi = (float(torch.diagonal(c[:-1]).sum()) for c in (cj_, ci_))
        sq_y = (stats.centred_sq[j] + stats.centred_sq[i] + mlp.centred_sq[e]
                - 2 * dot_ij + 2 * dot_mj - 2 * dot_mi)
        n = mlp.count(e)
        with_bias = bool(mlp.meta.get("bias", [False] * (e + 1))[e])
        w, lam, sse = _solve_system(
            mlp, e, data.span, data.ridge, with_bias=with_bias, bu=bu, cj=cy, sq_j=max(sq_y, 0.0),
            plain_b=lambda: plain_cross_from(bu, gram[-1], mlp.center[e], cy)[:-1],
            plain_sq=lambda: max(sq_y, 0.0) + 2 * float(cy @ bu[-1]) + n * float(cy @ cy),
            where=f"the MLP output of block {e}")
        tensors = {"weight": w[:-1], "bias": w[-1]} if with_bias else {"weight": w}
        # sse is a function, read once when first needed (SpanFit's docstring); the field is typed as a read returns
        return SpanFit(data.span, self.name, data.dim_in, data.dim_out, tensors, sse, lam)  # type: ignore[arg-type]

    def module(self, dim_in: int, dim_out: int, *, layout: str, span: Span) -> nn.Module:
        """The map as a :class:`SpanMap` on MLP outputs (what :meth:`predict` applies); in a model the map is folded
        into the down projection (:func:`rba.apply.fold_module`), so it adds no module."""
        return SpanMap(dim_in, dim_out, bias=True, layout=layout, span=span)

    def state_dict(self, fit: SpanFit) -> dict[str, torch.Tensor]:
        weight = fit.tensors["weight"]
        bias = fit.bias if fit.bias is not None else torch.zeros(fit.dim_out, dtype=weight.dtype)
        return {"linear.weight": weight.T, "linear.bias": bias}

    def predict(self, fit: SpanFit, x: torch.Tensor) -> torch.Tensor:
        """The map on MLP outputs x (n, D) of block i − 1 (not on boundary vectors)."""
        weight = fit.tensors["weight"]
        y = x.to(weight.dtype) @ weight
        return y if fit.bias is None else y + fit.bias

    def num_params(self, dim_in: int, dim_out: int) -> int:
        return 0  # multiplied into a down projection the model has anyway (and into its bias, where it has one)

    def flops_per_vector(self, dim_in: int, dim_out: int) -> int:
        return 0
