"""The next-token objectives of decoder LMs (perplexity, kl, top1), per token, from pooled rows (the final norm's
output on every real token, :class:`rba.adapters._causal_lm.CausalLM`) and what the unmodified model left.

Only the tokens the text itself predicts count: every real token but the last of its text (padding is never a
row). For such a token with next token y, unmodified next-token distribution p and the configuration's q:

* NLL = −log q(y); perplexity = exp of the mean NLL over the tokens (the model's own loss-based perplexity);
* KL(p ‖ q) = Σ_v p_v (log p_v − log q_v) in nats, over the whole vocabulary;
* top1 = 1 where argmax q = argmax p.

**How p is kept.** top1 needs only argmax p, kept per token. KL needs all of p, and a float32 vocabulary per
token does not fit for long (Gemma 3: 262,144 entries, 1 MB per token, 8 GB for 8,000 tokens). So a split keeps
p's log-probabilities as float16 (2 bytes per entry) when the whole table fits in :data:`STORE_BYTES`
(SmolLM2's 49,152 entries: 98 kB per token, 8,000 tokens in 0.8 GB), and otherwise recomputes p when it scores,
from the unmodified model's pooled rows the split cache holds anyway (one more LM-head product per scored chunk,
exact; no memory). The float16 table p̃ is renormalised when read (log p̃ − logsumexp log p̃), and each token also
keeps c = KL(p̃ ‖ p), computed when the table is written (while the exact p is at hand); KL is then scored as

    KL(p̃ ‖ q) − c = Σ_v p̃_v (log p_v − log q_v),

which is exactly 0 when q = p (nothing replaced) and differs from the exact KL(p ‖ q) by
Σ_v (p̃_v − p_v)(log p_v − log q_v): first order in the rounding (at most 2⁻¹¹ of |log p_v|, about 4e-3 for
log-probabilities near −10), so within about 1e-3 relative of the exact KL. Without the correction, the rounding
alone would leave a floor of c ≈ 2.5e-6 nats (a near-uniform 30,522-token distribution) on every configuration.
tests/test_lm_objectives.py checks 2e-3 relative against a float64 KL from the model's own forward, and exact
equality for the recomputed p. Everything else is float32 logits and log-softmax, KL summed in float64 and
clamped at 0.

Logits are computed in chunks of rows so that a chunk's (rows × vocabulary) float32 logits stay near
:data:`CHUNK_ELEMENTS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

__all__ = ["STORE_BYTES", "NextTokenReference", "token_scores"]

#: the largest float16 table of a split's reference log-probabilities kept in memory; beyond it p is recomputed
STORE_BYTES = 1 << 30
#: logits elements (rows × vocabulary) computed at once
CHUNK_ELEMENTS = 1 << 24

Logits = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class NextTokenReference:
    """What the unmodified model's next-token distributions leave for kl and top1, for the rows of one split."""

    targets: torch.Tensor
    """(n,) the next token's id per row, −1 on the last token of a text (no next token: not scored)"""
    position: torch.Tensor
    """(n,) a scored row's index into ``argmax`` / ``table`` (−1 for the others)"""
    argmax: torch.Tensor
    """(m,) p's most likely next token, per scored row"""
    pooled: torch.Tensor
    """(n, D) the unmodified model's pooled rows (the split cache's own tensor), to recompute p from"""
    table: torch.Tensor | None = None
    """(m, V) float16 log p per scored row, or None: p is recomputed from ``pooled``"""
    floor: torch.Tensor | None = None
    """(m,) float64 KL(p̃ ‖ p) of the table's rounded p̃ from the exact p, per scored row (None without a table)"""

    @classmethod
    @torch.inference_mode()
    def build(cls, logits: Logits, pooled: torch.Tensor, targets: torch.Tensor,
              store_bytes: int = STORE_BYTES) -> "NextTokenReference":
        targets = targets.long().cpu()
        scored = targets >= 0
        position = torch.full_like(targets, -1)
        position[scored] = torch.arange(int(scored.sum()))
        rows = pooled[scored]
        vocabulary = logits(pooled[:1]).shape[1] if len(pooled) else 0
        keep = len(rows) * vocabulary * 2 <= store_bytes
        argmax, table, floor = [], [], []
        for logp in _log_probs(logits, rows):
            argmax.append(logp.argmax(1).cpu())
            if keep:
                rounded = logp.half()
                table.append(rounded.cpu())
                floor.append(_kl(_renormalised(rounded), logp).cpu())
        reference = cls(targets=targets, position=position, argmax=torch.cat(argmax) if argmax else
                        torch.zeros(0).long(), pooled=pooled)
        if keep:
            reference.table = torch.cat(table) if table else torch.zeros(0, vocabulary).half()
            reference.floor = torch.cat(floor) if floor else torch.zeros(0).double()
        return reference

    def log_probs(self, logits: Logits, rows: torch.Tensor) -> Iterator[torch.Tensor]:
        """float32 log p of the scored split rows ``rows``, chunk by chunk (as :func:`_log_probs` chunks them)."""
        if self.table is None:
            yield from _log_probs(logits, self.pooled[rows])
            return
        positions = self.position[rows]
        for chunk in _chunks(len(positions), self.table.shape[1]):
            yield _renormalised(self.table[positions[chunk]])

    @property
    def nbytes(self) -> int:
        held = [self.targets, self.position, self.argmax]
        if self.table is not None:
            assert self.floor is not None  # build sets the table and its floor together
            held += [self.table, self.floor]
        return sum(t.numel() * t.element_size() for t in held)


@torch.inference_mode()
def token_scores(logits: Logits, pooled: torch.Tensor, rows: torch.Tensor,
                 reference: NextTokenReference) -> dict[str, np.ndarray]:
    """``nll``, ``kl`` and ``top1`` (0 / 1), float64, of a configuration whose pooled rows of the split's rows ``rows``
    are ``pooled``, for each scored one of ``rows`` (those with a next token), in their order."""
    rows = torch.as_tensor(rows).long()
    scored = reference.targets[rows] >= 0
    mine, theirs = pooled[scored.to(pooled.device)], rows[scored]
    targets, argmax = reference.targets[theirs], reference.argmax[reference.position[theirs]]
    floor = None if reference.floor is None else reference.floor[reference.position[theirs]]
    out: dict[str, list[np.ndarray]] = {"nll": [], "kl": [], "top1": []}
    start = 0
    for logq, logp in zip(_log_probs(logits, mine), reference.log_probs(logits, theirs), strict=True):
        end = start + len(logq)
        logp = logp.to(logq.device)
        y = targets[start:end].to(logq.device)
        out["nll"].append((-logq.gather(1, y[:, None])[:, 0]).double().cpu().numpy())
        kl = _kl(logp, logq).cpu()
        if floor is not None:
            kl = kl - floor[start:end]
        out["kl"].append(kl.clamp_min(0.0).numpy())  # ≥ 0 in exact arithmetic
        out["top1"].append((logq.argmax(1).cpu() == argmax[start:end]).double().numpy())
        start = end
    return {key: np.concatenate(v) if v else np.zeros(0) for key, v in out.items()}


def _kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) per row from log-probabilities, summed in float64."""
    return (logp.exp() * (logp - logq)).sum(1, dtype=torch.float64)


def _renormalised(table: torch.Tensor) -> torch.Tensor:
    """float32 log-probabilities from stored (float16) ones, renormalised to sum to 1."""
    stored = table.float()
    return stored - torch.logsumexp(stored, dim=1, keepdim=True)


def _chunks(rows: int, vocabulary: int) -> Iterator[slice]:
    step = max(1, CHUNK_ELEMENTS // max(1, vocabulary))
    for start in range(0, rows, step):
        yield slice(start, min(rows, start + step))


def _log_probs(logits: Logits, rows: torch.Tensor) -> Iterator[torch.Tensor]:
    """float32 log-softmax of the logits of ``rows``, chunk by chunk."""
    if not len(rows):
        return
    vocabulary = logits(rows[:1]).shape[1]
    for chunk in _chunks(len(rows), vocabulary):
        yield torch.log_softmax(logits(rows[chunk]).float(), dim=1)
