"""Configurations: sets of non-overlapping spans, written ``"2-5,7-9"`` (``"none"`` for the unmodified model)."""

from __future__ import annotations

import numbers
import re
from typing import Sequence

from rba.errors import SpanError

__all__ = ["Span", "parse_spans", "format_spans", "check_spans"]

#: a span (i, j): blocks i..j-1 replaced by one map from boundary i to boundary j
Span = tuple[int, int]

# at most 18 digits per boundary: any real model fits, and longer numbers would hit int()'s 4300-digit guard
_SPAN = re.compile(r"^\s*(\d{1,18})\s*-\s*(\d{1,18})\s*$")


def format_spans(spans: Sequence[Span]) -> str:
    return ",".join(f"{i}-{j}" for i, j in sorted(spans)) if spans else "none"


def parse_spans(text: str) -> list[Span]:
    """Parse ``"2-5,7-9"`` / ``"none"`` into sorted (i, j) tuples; syntax only (see :func:`check_spans`)."""
    if text is None or not str(text).strip():
        raise SpanError('empty span list: write spans as "2-5,7-9" (boundary indices), or "none" for the unmodified model')
    text = str(text).strip()
    if text.lower() == "none":
        return []
    spans = []
    for part in text.split(","):
        m = _SPAN.match(part)
        if not m:
            raise SpanError(f"malformed span {part.strip()!r} in {text!r}: write each span as START-END, e.g. \"2-5,7-9\"")
        i, j = int(m.group(1)), int(m.group(2))
        if j <= i:
            raise SpanError(f"span {i}-{j}: END must be greater than START (span i-j replaces blocks i..j-1)")
        spans.append((i, j))
    return sorted(spans)


def check_spans(spans: Sequence[Span], *, num_blocks: int, shapes: Sequence[tuple] | None = None,
                max_span: int | None = None) -> list[Span]:
    """Validate spans against a model with ``num_blocks`` blocks and its boundary ``shapes``; returns them sorted,
    as (int, int) tuples. Spans given as Python objects (the API) are checked for their form as the text is."""
    if isinstance(spans, (str, bytes)) or not isinstance(spans, Sequence):
        raise SpanError(f"spans must be a list of (start, end) pairs, or text such as \"2-5,7-9\", got {spans!r}")
    spans = sorted(_pair(s) for s in spans)
    for i, j in spans:
        if i < 0 or j > num_blocks:
            raise SpanError(f"span {i}-{j} is out of range: boundaries run from 0 to {num_blocks} for this {num_blocks}-block model")
        if max_span is not None and j - i > max_span:
            raise SpanError(f"span {i}-{j} covers {j - i} blocks, more than search.max_span = {max_span}: raise max_span or shorten the span")
        if shapes is not None and tuple(shapes[i]) != tuple(shapes[j]):
            raise SpanError(
                f"span {i}-{j} is invalid: boundary {i} has shape {_shape(shapes[i])} and boundary {j} has shape "
                f"{_shape(shapes[j])}; a span must join boundaries of the same layout"
            )
    for (a, b), (c, d) in zip(spans, spans[1:]):
        if c < b:
            raise SpanError(f"spans {a}-{b} and {c}-{d} overlap: a configuration holds non-overlapping spans")
    return spans


def _pair(span) -> Span:
    """``span`` as an (int, int) tuple with end > start, or a SpanError naming it."""
    ok = (isinstance(span, Sequence) and not isinstance(span, (str, bytes)) and len(span) == 2
          and all(isinstance(k, numbers.Integral) and not isinstance(k, bool) for k in span))
    if not ok:
        raise SpanError(f"span {span!r} is not a (start, end) pair of boundary indices, e.g. (2, 5)")
    i, j = int(span[0]), int(span[1])
    if j <= i:
        raise SpanError(f"span {i}-{j}: END must be greater than START (span i-j replaces blocks i..j-1)")
    return i, j


def _shape(s: Sequence[int]) -> str:
    return "(" + ", ".join("T" if v == -1 else str(v) for v in s) + ")"
