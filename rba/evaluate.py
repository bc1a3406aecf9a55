"""Scoring a configuration: accuracy (probe / fixed-probe / native head) and fidelity on the eval split; for decoder
LMs, whose pooled rows are tokens, fidelity and the next-token objectives (perplexity, kl, top1: :mod:`rba._next_token`).

Statistics are per sample: a sample's value is the mean over its rows (one row per sample for encoders; for LMs its
real tokens, and for the next-token objectives the tokens that have a next token), so per-sample results pair
sample by sample (:mod:`rba.stats`). Fidelity is the mean over samples of their mean cosines; perplexity, kl and
top1 weigh every scored token alike (perplexity is then the model's own loss-based perplexity), with standard errors
over samples (a ratio estimator: tokens of one text are not independent).

The unmodified network's boundary representations of the probe and eval splits are cached once, so a
configuration whose first span starts at boundary a runs only blocks a..L−1, with each span as one matmul
(**prefix reuse**). States after each span are memoised per configuration prefix within a memory budget, so
configurations that share leading spans share that work.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Sequence, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rba._next_token import NextTokenReference, token_scores
from rba._threads import single_thread
from rba.adapters import Adapter, Context
from rba.capture import check_finite, iter_batches, length_order
from rba.errors import ConfigError, ModelError
from rba.progress import bar as progress_bar
from rba.spans import Span

__all__ = ["SplitCache", "Evaluator", "LinearProbe", "SpanForward", "SplitScores"]

#: the splits :meth:`Evaluator.per_sample` scores a configuration on
SCORED_SPLITS = ("eval", "test")


@dataclass
class SplitCache:
    """One split's original boundary representations, batch by batch, at the boundaries in ``keep``."""

    contexts: list[Context]
    states: list[dict[int, torch.Tensor]]
    pooled: torch.Tensor
    """the unmodified network's pooled representation (n, F)"""
    labels: torch.Tensor | None
    order: np.ndarray
    """row r of ``pooled`` / ``labels`` is sample ``order[r]`` of the split (texts are batched by length)"""
    sizes: list[int] = field(default_factory=list)
    """rows per batch: batch b holds rows ``sum(sizes[:b])`` up to ``sum(sizes[:b + 1])``"""
    row_sample: np.ndarray | None = None
    """the sample (a position in ``order``) each row belongs to; None: row r is sample r"""
    reference: NextTokenReference | None = None
    """decoder LMs: the unmodified model's next-token targets and distributions, per row"""

    @property
    def samples(self) -> int:
        return len(self.order)

    def sample_of(self, rows: torch.Tensor | np.ndarray) -> np.ndarray:
        """The sample (position in ``order``) of each of ``rows``."""
        rows = np.asarray(rows)
        return rows if self.row_sample is None else self.row_sample[rows]

    @classmethod
    @torch.inference_mode()
    def build(cls, adapter: Adapter, samples, labels, *, keep: set[int], batch_size: int, name: str,
              progress: bool = False) -> "SplitCache":
        contexts, states, pooled, targets, counts = [], [], [], [], []
        L = adapter.num_blocks
        order = length_order(samples)
        if order is None:
            order = np.arange(len(samples))
        else:
            samples = [samples[i] for i in order]
            labels = None if labels is None else np.asarray(labels)[order]
        with progress_bar(len(samples), f"evaluation cache ({name} split)", "samples", enabled=progress) as bar:
            for _, chunk in iter_batches(samples, batch_size):
                kept = {}
                inputs = adapter.collate(chunk)
                h, ctx = adapter.embed(inputs)
                following = adapter.targets(inputs, ctx)
                if following is not None:  # rows are tokens: the next-token objectives score them
                    assert ctx.mask is not None  # next-token rows are a text's real tokens: its mask says which
                    targets.append(following.cpu())
                    counts.append(ctx.mask.sum(1).cpu())
                state = h
                for k, state in adapter.boundaries(h, ctx):
                    if k in keep:
                        kept[k] = state
                check_finite(state, L, f"{name} split")  # the last boundary's
                contexts.append(ctx)
                states.append(kept)
                pooled.append(adapter.pool(state, ctx).float())
                bar.update(len(chunk))
        lab = None if labels is None else torch.as_tensor(np.asarray(labels), dtype=torch.long)
        rows = torch.cat(pooled)
        row_sample = reference = None
        if targets:
            row_sample = np.repeat(np.arange(len(order)), torch.cat(counts).numpy())
            reference = NextTokenReference.build(_logits_of(adapter), rows, torch.cat(targets))
        return cls(contexts, states, rows, lab, order, [len(p) for p in pooled], row_sample, reference)

    def rows(self, batches: Sequence[int]) -> torch.Tensor:
        """Row indices (into ``pooled`` / ``labels``) of ``batches``, in that order."""
        ends = np.cumsum(self.sizes)
        return torch.cat([torch.arange(int(ends[b] - self.sizes[b]), int(ends[b])) for b in batches])

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for s in self.states for t in s.values())


class LinearProbe:
    """Multinomial logistic regression, fixed L2 regularisation (scikit-learn's C), fitted by L-BFGS in
    float64 on standardised features: the paper's probe protocol."""

    def __init__(self, c: float = 1.0, max_iter: int = 200):
        self.c = c
        self.max_iter = max_iter

    def fit(self, x: torch.Tensor, y: torch.Tensor, num_classes: int) -> "LinearProbe":
        with torch.inference_mode(False), torch.no_grad(), single_thread():
            return self._fit(x.double().cpu().clone(), y.cpu().clone(), num_classes)

    def _fit(self, x: torch.Tensor, y: torch.Tensor, num_classes: int) -> "LinearProbe":
        self.mean = x.mean(0)
        self.std = x.std(0).clamp_min(1e-8)
        z = (x - self.mean) / self.std
        n, d = z.shape
        zt = z.T.contiguous()
        onehot = torch.zeros(n, num_classes, dtype=torch.float64)
        onehot[torch.arange(n), y.long()] = 1.0
        w = torch.zeros(d, num_classes, dtype=torch.float64)
        b = torch.zeros(num_classes, dtype=torch.float64)
        opt = torch.optim.LBFGS([w, b], lr=1, max_iter=self.max_iter, tolerance_grad=1e-7,
                                tolerance_change=1e-10, history_size=20, line_search_fn="strong_wolfe")
        reg = 1.0 / (2.0 * self.c * n)

        def closure():
            # mean cross-entropy + reg·‖w‖² and its gradient written out (the same iterates as autograd's): at probe
            # sizes autograd's graph and engine cost more than the two GEMMs
            logp = torch.log_softmax(torch.addmm(b, z, w), 1)
            loss = -torch.dot(logp.reshape(-1), onehot.reshape(-1)) / n + reg * torch.dot(w.reshape(-1), w.reshape(-1))
            g = logp.exp_().sub_(onehot)  # softmax − one-hot: n · ∂loss/∂logits
            w.grad = torch.addmm(w, zt, g, beta=2.0 * reg, alpha=1.0 / n)
            b.grad = g.sum(0).div_(n)
            return loss

        opt.step(closure)
        self.w, self.b = w, b
        return self

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        z = (x.double().cpu() - self.mean) / self.std
        return (z @ self.w + self.b).argmax(1)

    def as_linear(self) -> nn.Linear:
        """The probe as one float64 ``nn.Linear`` on raw pooled features (the standardisation folded in)."""
        w = self.w / self.std[:, None]
        linear = nn.Linear(w.shape[0], w.shape[1], dtype=torch.float64)
        with torch.no_grad():
            linear.weight.copy_(w.T)
            linear.bias.copy_(self.b - (self.mean / self.std) @ self.w)
        return linear


@dataclass
class SplitScores:
    """One configuration's per-sample results on one split, in the split's sample order (row r is data set
    sample ``index[r]``), so that two configurations' results pair sample by sample (:mod:`rba.stats`)."""

    split: str
    index: np.ndarray
    cosine: np.ndarray
    """cosine between the configuration's and the unmodified network's pooled representation, per sample"""
    prediction: np.ndarray | None
    """predicted class per sample (None without labels)"""
    label: np.ndarray | None
    tokens: np.ndarray | None = None
    """decoder LMs: the tokens scored per sample (those with a next token); None for other models"""
    nll: np.ndarray | None = None
    """decoder LMs, per sample: mean next-token NLL (nats) of its scored tokens (NaN for a sample without any)"""
    kl: np.ndarray | None = None
    """... mean KL(unmodified ‖ configuration) of its scored tokens' next-token distributions (nats)"""
    top1: np.ndarray | None = None
    """... share of its scored tokens whose predicted next token is the unmodified model's"""

    def token_mean(self, name: str) -> tuple[float, float]:
        """A next-token quality (``nll``, ``kl``, ``top1``) over every scored token of the split, and its standard
        error over samples (:func:`token_weighted`); NaN for other models."""
        values = getattr(self, name)
        if values is None:
            return float("nan"), float("nan")
        assert self.tokens is not None  # a decoder LM's scores come with their token counts
        return token_weighted(np.nan_to_num(values) * self.tokens, self.tokens)

    @property
    def perplexity(self) -> float:
        return float(np.exp(self.token_mean("nll")[0]))

    @property
    def perplexity_se(self) -> float:
        """by the delta method: perplexity × the standard error of the mean NLL"""
        mean, se = self.token_mean("nll")
        return float(np.exp(mean) * se)

    @property
    def kl_mean(self) -> float:
        return self.token_mean("kl")[0]

    @property
    def kl_se(self) -> float:
        return self.token_mean("kl")[1]

    @property
    def top1_mean(self) -> float:
        return self.token_mean("top1")[0]

    @property
    def top1_se(self) -> float:
        return self.token_mean("top1")[1]

    @property
    def correct(self) -> np.ndarray | None:
        return None if self.prediction is None else self.prediction == self.label

    @property
    def fidelity(self) -> float:
        return float(self.cosine.mean())

    @property
    def fidelity_se(self) -> float:
        from rba.stats import mean_se  # scipy loads when a standard error is first asked for

        return mean_se(self.cosine)

    @property
    def accuracy(self) -> float:
        return float("nan") if self.prediction is None else float(cast(np.ndarray, self.correct).mean())

    @property
    def accuracy_se(self) -> float:
        from rba.stats import binomial_se  # scipy loads when a standard error is first asked for

        return float("nan") if self.prediction is None else binomial_se(self.correct)


def token_weighted(sums: np.ndarray, counts: np.ndarray, population: int | None = None) -> tuple[float, float]:
    """Σ sums / Σ counts over samples (a mean over tokens) and its standard error over the m samples (the ratio
    estimator's: √(m/(m − 1) · Σ (sᵢ − R nᵢ)²) / Σ nᵢ, with the finite-population factor (1 − m/N) when the m are
    a subset of ``population`` samples); NaN without tokens."""
    sums, counts = np.asarray(sums, dtype=np.float64), np.asarray(counts, dtype=np.float64)
    total, m = counts.sum(), len(counts)
    if total <= 0:
        return math.nan, math.nan
    ratio = sums.sum() / total
    if m < 2:
        return float(ratio), math.nan
    fpc = 1.0 if population is None else max(0.0, 1.0 - m / population)
    se = np.sqrt(m / (m - 1) * np.sum((sums - ratio * counts) ** 2) * fpc) / total
    return float(ratio), float(se)


class Evaluator:
    """Evaluates configurations (spans + replacement modules) with prefix reuse and a prefix memo.

    The search scores on the eval split (with the probe split for the probe head); :meth:`per_sample` also scores
    a configuration on the held-out test split, whose cache is built on first use and never enters the memo."""

    def __init__(self, adapter: Adapter, splits, *, head: str = "probe", batch_size: int = 64,
                 probe_c: float = 1.0, need_labels: bool = True, starts: set[int] | None = None,
                 memo_bytes: int = 2 << 30, progress: bool = False):
        self.adapter = adapter
        self.head = head
        self.need_labels = need_labels
        L = adapter.num_blocks
        keep = set(range(L)) if starts is None else set(starts)
        use_probe = need_labels and head in ("probe", "fixed-probe")
        self.splits, self.keep, self.batch_size, self.progress = splits, keep, batch_size, progress
        self.held_out: dict[str, SplitCache] = {}
        """caches of splits no search sees (test), built by :meth:`split_cache` on first use"""
        self.parts: dict[str, SplitCache] = {}
        self.parts["eval"] = SplitCache.build(adapter, splits.eval.samples, splits.eval.labels, keep=keep,
                                              batch_size=batch_size, name="eval", progress=progress)
        if use_probe:
            self.parts["probe"] = SplitCache.build(adapter, splits.probe.samples, splits.probe.labels, keep=keep,
                                                   batch_size=batch_size, name="probe", progress=progress)
        self.probe_c = probe_c
        self.num_classes = 0
        if need_labels and self.parts["eval"].labels is not None:
            labs = [p.labels for p in self.parts.values() if p.labels is not None]
            self.num_classes = int(torch.cat(labs).max()) + 1
        self.fixed_probe = None
        if use_probe and head == "fixed-probe":
            # (labelled: the eval split's labels are checked above, and the probe split comes from the same data)
            self.fixed_probe = LinearProbe(probe_c).fit(self.parts["probe"].pooled, cast(torch.Tensor, self.parts["probe"].labels), self.num_classes)
        self._memo: OrderedDict[tuple, dict[str, list[torch.Tensor]]] = OrderedDict()
        self._memo_bytes = 0
        self.memo_budget = memo_bytes
        self._probes: OrderedDict[bytes, LinearProbe] = OrderedDict()
        """probes fitted lately, by the digest of the pooled probe rows they were fitted on (a configuration scored
        on eval and then on test refits nothing)"""

    # ------------------------------------------------------------------ forward with spans
    def pooled(self, spans: Sequence[Span], maps: Sequence[nn.Module], tag: str = "") -> dict[str, torch.Tensor]:
        """Pooled representation of every cached split under the configuration ``spans`` → ``maps``."""
        run = self.forward(spans, maps, tag)
        out = {name: run.pooled(name, range(len(part.contexts))) for name, part in self.parts.items()}
        run.finish()
        return out

    def forward(self, spans: Sequence[Span], maps: Sequence[nn.Module], tag: str = "") -> "SpanForward":
        """A configuration's forward over the cached splits that runs the batches it is asked for (a search trial
        stopped early runs part of the eval split only); see :class:`SpanForward`."""
        return SpanForward(self, list(spans), list(maps), tag)

    def eval_stages(self, strides: Sequence[int] = (4, 2, 1)) -> list[list[int]]:
        """The eval split's batches in growing, nested subsets: every ``strides[0]``-th batch, then the batches
        every ``strides[1]``-th adds, and so on (a stage that adds nothing is left out). Taking every k-th batch
        spreads each subset over the whole split, which is held in the order texts are batched by length, and
        otherwise in the data set's order (sorted indices, so possibly class by class)."""
        count = len(self.parts["eval"].contexts)
        stages, seen = [], set()
        for stride in strides:
            new = [b for b in range(count) if b % stride == 0 and b not in seen]
            if new:
                stages.append(new)
                seen.update(new)
        rest = [b for b in range(count) if b not in seen]
        if rest:
            stages.append(rest)
        return stages

    def clear_memo(self) -> None:
        """Forget the states memoised per configuration prefix (the split caches stay)."""
        self._memo.clear()
        self._memo_bytes = 0
        self._probes.clear()

    def _remember(self, key: tuple, states: dict[str, list[torch.Tensor]]) -> None:
        size = sum(t.numel() * t.element_size() for v in states.values() for t in v)
        if size > self.memo_budget:
            return
        self._memo[key] = states
        self._memo_bytes += size
        while self._memo_bytes > self.memo_budget:
            _, old = self._memo.popitem(last=False)
            self._memo_bytes -= sum(t.numel() * t.element_size() for v in old.values() for t in v)

    # ------------------------------------------------------------------ scores
    def score(self, spans: Sequence[Span], maps: Sequence[nn.Module], tag: str = "") -> dict[str, Any]:
        return self.score_pooled(self.pooled(spans, maps, tag))

    @property
    def lm(self) -> bool:
        """Whether the model is a decoder LM (pooled rows are tokens, scored by the next-token objectives)."""
        return self.parts["eval"].reference is not None

    def score_pooled(self, pooled: dict[str, torch.Tensor], probe: LinearProbe | None = None) -> dict[str, Any]:
        """Accuracy, fidelity and (decoder LMs) perplexity, kl and top1 from pooled representations of the cached
        splits (``{"eval": …, "probe": …}``); ``probe``: the head's probe already fitted on ``pooled["probe"]``
        (else it is fitted here)."""
        ev = self.parts["eval"]
        per = self._per_sample(ev, pooled["eval"], torch.arange(len(ev.pooled)))
        summary = _summary(per)
        accuracy = self._accuracy(pooled, probe) if self.need_labels else float("nan")
        return {"accuracy": accuracy} | {k: v for k, v in summary.items() if not k.endswith("_se")}

    def subset_scores(self, pooled_rows: torch.Tensor, rows: torch.Tensor, probe: LinearProbe | None = None,
                      pooled_probe: torch.Tensor | None = None) -> dict[str, float]:
        """Accuracy and fidelity on the eval rows ``rows`` (pooled representations ``pooled_rows``), each with the
        standard error of that estimate of the whole eval split's value: a simple random sample of m of the n
        eval samples, so SE = √(s²/m · (1 − m/n)), s² being the sample variance of what the score averages
        (fidelity: the per-sample cosines, ddof 1; accuracy: the proportion p correct, s² = p(1 − p)).
        ``probe`` / ``pooled_probe``: as for :meth:`score_pooled`. Decoder LMs: ``rows`` are token rows of whole
        samples, and perplexity, kl and top1 get their standard errors over samples (:func:`token_weighted`)."""
        ev = self.parts["eval"]
        per = self._per_sample(ev, pooled_rows, rows)
        n, m = ev.samples, len(per["samples"])
        out = _summary(per, population=n) | {"accuracy": float("nan"), "accuracy_se": float("nan"),
                                             "eval_samples": m, "eval_fraction": m / n}
        fpc = max(0.0, 1.0 - m / n)
        if self.need_labels and ev.labels is not None:
            pred = self._predict(pooled_rows, probe, pooled_probe)
            p = float((pred == ev.labels[rows]).double().mean())
            out["accuracy"], out["accuracy_se"] = p, (p * (1 - p) / m * fpc) ** 0.5
        return out

    # ------------------------------------------------------------------ per sample, on a named split
    def split_cache(self, name: str) -> SplitCache:
        """The cache of split ``name``: eval (the search's), or test (built now, the first time)."""
        if name not in SCORED_SPLITS:
            raise ValueError(f"unknown split {name!r} to score on; known: {', '.join(SCORED_SPLITS)}")
        if name in self.parts:
            return self.parts[name]
        if name not in self.held_out:
            split = getattr(self.splits, name, None)
            if split is None:
                raise ConfigError(f"data.{name} = 0: there is no {name} split to score on; set data.{name} to at "
                                  "least 1 (the other splits stay the same)")
            self.held_out[name] = SplitCache.build(self.adapter, split.samples, split.labels, keep=self.keep,
                                                   batch_size=self.batch_size, name=name, progress=self.progress)
        return self.held_out[name]

    @torch.inference_mode()
    def per_sample(self, spans: Sequence[Span], maps: Sequence[nn.Module], split: str = "test",
                   tag: str = "") -> SplitScores:
        """The configuration ``spans`` → ``maps`` on split ``split``, sample by sample: cosines to the unmodified
        network and predicted classes (the head as for :meth:`score`: a probe fitted on this configuration's probe
        split, the fixed probe, or the native head)."""
        part = self.split_cache(split)
        spans, maps = list(spans), list(maps)
        # eval and probe through the memo, as a trial's, when the rows or the probe head need them
        needed = split == "eval" or (self.need_labels and self.head == "probe")
        on_parts = self.pooled(spans, maps, tag) if needed else {}
        probe = self.probe_for(on_parts) if self.need_labels else None
        rows = on_parts["eval"] if split == "eval" else self._pooled_unmemoised(part, spans, maps)
        per = self._per_sample(part, rows, torch.arange(len(part.pooled)))
        pred = None
        if self.need_labels and part.labels is not None:
            pred = self._predict(rows, probe, None).numpy()
        back = np.empty(len(part.order), dtype=np.int64)  # position p holds the split's sample order[p]
        back[part.order] = np.arange(len(part.order))
        lm = {}
        if "tokens" in per:
            tokens = per["tokens"]
            lm = {"tokens": tokens[back]} | {
                name: np.divide(per[name], tokens, out=np.full(len(tokens), np.nan), where=tokens > 0)[back]
                for name in ("nll", "kl", "top1")}
        return SplitScores(split=split, index=np.asarray(self.splits.indices[split]), cosine=per["cosine"][back],
                           prediction=None if pred is None else pred[back],
                           label=None if part.labels is None else part.labels.numpy()[back], **lm)

    def _per_sample(self, part: SplitCache, pooled_rows: torch.Tensor, rows: torch.Tensor) -> dict[str, np.ndarray]:
        """Per sample of the split's ``rows`` (whole samples; ``pooled_rows`` their pooled representations under a
        configuration): ``samples`` (their positions in ``part.order``, ascending), ``cosine`` (the mean over the
        sample's rows of the cosine to the unmodified model) and, for decoder LMs, ``tokens`` (scored tokens) with
        the sums over them of ``nll``, ``kl`` and ``top1`` (:func:`rba._next_token.token_scores`)."""
        cos = self._cosines(pooled_rows, part.pooled[rows]).numpy()
        if part.row_sample is None:
            return {"samples": np.asarray(rows), "cosine": cos}
        samples, inverse = np.unique(part.row_sample[np.asarray(rows)], return_inverse=True)
        count = len(samples)
        out = {"samples": samples, "cosine": np.bincount(inverse, weights=cos, minlength=count)
               / np.bincount(inverse, minlength=count)}
        rows = torch.as_tensor(rows).long()
        assert part.reference is not None  # SplitCache.build sets row_sample and reference together (decoder LMs)
        scores = token_scores(_logits_of(self.adapter), pooled_rows, rows, part.reference)
        owner = inverse[(part.reference.targets[rows] >= 0).numpy()]
        out["tokens"] = np.bincount(owner, minlength=count)
        for name in ("nll", "kl", "top1"):
            out[name] = np.bincount(owner, weights=scores[name], minlength=count)
        return out

    def _pooled_unmemoised(self, part: SplitCache, spans: list[Span], maps: list[nn.Module]) -> torch.Tensor:
        """Pooled representations of a held-out split under a configuration (prefix reuse, no memo)."""
        if not spans:
            return part.pooled
        replace, start, out = dict(zip(spans, maps)), spans[0][0], []
        for states, ctx in zip(part.states, part.contexts):
            h = self.adapter.last_boundary(states[start], ctx, start=start, replace=replace)
            out.append(self.adapter.pool(h, ctx).float())
        return torch.cat(out)

    @staticmethod
    def _cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return F.cosine_similarity(a.double(), b.double(), dim=1, eps=1e-12)

    def _accuracy(self, pooled: dict[str, torch.Tensor], probe: LinearProbe | None = None) -> float:
        ev = self.parts["eval"]
        if ev.labels is None:
            return float("nan")
        pred = self._predict(pooled["eval"], probe, pooled.get("probe"))
        return float((pred == ev.labels).double().mean())

    def _predict(self, pooled_eval: torch.Tensor, probe: LinearProbe | None, pooled_probe: torch.Tensor | None):
        """Predicted classes of eval rows: the native head's, else the probe's (fitted on ``pooled_probe`` unless
        given)."""
        if self.head == "native":
            logits = self.adapter.logits(pooled_eval.to(self.adapter.device, self.adapter.dtype))
            if logits is None:
                raise ModelError("evaluate.head = \"native\" but this model has no classification head: use \"probe\"")
            return logits.argmax(1).cpu()
        if probe is None:  # (head "probe" with labels: probe_for fits one on the probe split's pooled rows)
            probe = cast(LinearProbe, self.probe_for({"probe": cast(torch.Tensor, pooled_probe)}))
        return probe.predict(pooled_eval)

    def export_head(self, spans: Sequence[Span], maps: Sequence[nn.Module], tag: str = "", *,
                    class_names: Sequence[Any] | None = None) -> tuple[nn.Linear | None, dict[str, Any] | None]:
        """(the head module an export saves, its recipe entry) for this configuration; (None, None) without
        labels. A probe head is the probe fitted on the configuration's pooled representation (or the fixed probe),
        its classes named by ``class_names`` (the data set's, when they match the probe's outputs; else 0, 1, ...);
        the native head is the model's own (already in its weights), recorded by its sizes only."""
        if not self.need_labels:
            return None, None
        if self.head == "native":
            with torch.inference_mode():
                pooled = self.parts["eval"].pooled[:1].to(self.adapter.device, self.adapter.dtype)
                logits = self.adapter.logits(pooled)
            if logits is None:
                return None, None
            return None, {"kind": "native", "features": int(pooled.shape[1]), "classes": int(logits.shape[1])}
        probe = self.probe_for(self.pooled(spans, maps, tag))
        if probe is None:
            return None, None
        head = probe.as_linear()
        names = class_names if class_names is not None and len(class_names) == head.out_features else None
        return head, {"kind": self.head, "features": head.in_features, "classes": head.out_features,
                      "class_names": [str(c) for c in (names if names is not None else range(head.out_features))]}

    def probe_for(self, pooled: dict[str, torch.Tensor]) -> LinearProbe | None:
        """The linear probe that scores these pooled representations: the fixed one, or one fitted on
        ``pooled["probe"]`` (head "probe"); None for the native head or without labels."""
        if self.head == "fixed-probe":
            return self.fixed_probe
        if self.head == "probe" and "probe" in self.parts and self.parts["probe"].labels is not None:
            rows = pooled["probe"].detach().cpu().contiguous()
            key = hashlib.blake2b(rows.numpy().tobytes(), digest_size=16).digest()
            probe = self._probes.get(key)
            if probe is None:
                probe = LinearProbe(self.probe_c).fit(rows, self.parts["probe"].labels, self.num_classes)
                self._probes[key] = probe
                if len(self._probes) > 4:
                    self._probes.popitem(last=False)
            return probe
        return None


class SpanForward:
    """One configuration's forward over the cached splits, batch by batch (prefix reuse and prefix memo).

    :meth:`pooled` runs the batches it is given, starting from the longest memoised prefix of the configuration
    (else from the cached original state at its first start). The states after each span are memoised by
    :meth:`finish`, and only when every batch of every split has run, so the memo never holds part of a split."""

    def __init__(self, evaluator: Evaluator, spans: list[Span], maps: list[nn.Module], tag: str):
        self.ev = evaluator
        self.spans = spans
        self.replace = dict(zip(spans, maps))
        self.tag = tag
        self.start_s, self.boundary, self.states = 0, (spans[0][0] if spans else 0), None
        for s in range(len(spans), 0, -1):
            key = (tag, tuple(spans[:s]))
            if key in evaluator._memo:
                evaluator._memo.move_to_end(key)
                self.states, self.start_s, self.boundary = evaluator._memo[key], s, spans[s - 1][1]
                break
        self._span_ends = {j: idx for idx, (_, j) in enumerate(spans)}
        self._new_memo: dict[tuple, dict[str, dict[int, torch.Tensor]]] = {}
        self._done: dict[str, set[int]] = {name: set() for name in evaluator.parts}

    @torch.inference_mode()
    def pooled(self, name: str, batches: Sequence[int]) -> torch.Tensor:
        """Pooled representations of split ``name``'s ``batches`` (rows in that order: ``part.rows(batches)``)."""
        part = self.ev.parts[name]
        batches = list(batches)
        if not self.spans:
            return part.pooled[part.rows(batches)] if batches else part.pooled[:0]
        out = []
        for b in batches:
            h = self.states[name][b] if self.states is not None else part.states[b][self.boundary]
            ctx = part.contexts[b]
            state = h
            for k, state in self.ev.adapter.boundaries(h, ctx, start=self.boundary, replace=self.replace):
                idx = self._span_ends.get(k)
                if idx is not None and idx + 1 > self.start_s:  # the state after span idx: memo of that prefix
                    self._new_memo.setdefault((self.tag, tuple(self.spans[: idx + 1])), {}).setdefault(name, {})[b] = state
            out.append(self.ev.adapter.pool(state, ctx).float())
            self._done[name].add(b)
        return torch.cat(out) if out else part.pooled[:0]

    def finish(self) -> None:
        """Memoise the states after each span, if every batch of every split ran."""
        if any(len(done) < len(self.ev.parts[name].contexts) for name, done in self._done.items()):
            return
        for key, val in self._new_memo.items():
            self.ev._remember(key, {name: [by_batch[b] for b in sorted(by_batch)] for name, by_batch in val.items()})


def _logits_of(adapter: Adapter):
    """The adapter's head on pooled rows, as the next-token objectives call it: on the model's device and dtype."""
    return lambda rows: adapter.logits(rows.to(adapter.device, adapter.dtype))


def _summary(per: dict[str, np.ndarray], population: int | None = None) -> dict[str, float]:
    """Fidelity and the next-token objectives (NaN for models that have none) with their standard errors, from
    :meth:`Evaluator._per_sample`'s per-sample values; ``population``: the split's number of samples when these
    are a subset of them (the finite-population factor)."""
    cos = torch.as_tensor(per["cosine"], dtype=torch.float64)
    m = len(cos)
    fpc = 1.0 if population is None else max(0.0, 1.0 - m / population)
    var = float(cos.var(correction=1)) if m > 1 else 0.0
    out = {"fidelity": float(cos.mean()), "fidelity_se": (var / m * fpc) ** 0.5}
    nan = math.nan  # one object: result dicts with NaN compare equal (dict equality tries identity first)
    out |= {"perplexity": nan, "perplexity_se": nan, "kl": nan, "kl_se": nan, "top1": nan, "top1_se": nan}
    if "tokens" in per:
        nll, nll_se = token_weighted(per["nll"], per["tokens"], population)
        out |= {"perplexity": float(np.exp(nll)), "perplexity_se": float(np.exp(nll) * nll_se)}
        for name in ("kl", "top1"):
            out[name], out[f"{name}_se"] = token_weighted(per[name], per["tokens"], population)
    return out
