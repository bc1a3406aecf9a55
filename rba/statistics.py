"""The sufficient statistics of every boundary and span (:class:`Statistics`), their accumulation from batches of
boundary vectors (:class:`StatisticsCollector`) and their cache files; :mod:`rba.capture` runs the pass that
feeds them.

Every boundary k has a centre c_k: the mean of its vectors in the first batch, rounded to the capture dtype.
With u = [x − c_k, 1] and v = x − c_k, the collector accumulates ``gram[k] = Σ u uᵀ`` and ``sq[k] = Σ ‖v‖²``;
for every tracked span (i, j): ``cross[i, j] = Σ u_i v_jᵀ`` and ``cos_sum[i, j] = Σ cos(x_i, x_j)``; plus the
vector count n. Memory is O(L²·D²) whatever n is. Each batch's products are computed in the capture dtype
(float32 by default) on the centred vectors and added into float64 totals; ``sq`` is summed in float64.

Why centred: a float32 product rounds relative to its operands, so products of raw vectors carry errors of the
size of the vectors' mean (large in residual streams and LayerNorm outputs), while the scores and fits need
differences of sums at the size of the spread around it. Everything is exact in the original coordinates: a
shift is an affine change of variables, and :class:`Statistics` recovers the plain totals Σ x̃ x̃ᵀ, Σ x̃_i x_jᵀ
(x̃ = [x, 1]) in float64 where a reader needs them. Everything about scores and fits follows from these without
touching data again.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from collections.abc import Sequence as SequenceABC
from pathlib import Path
from typing import Any, Iterator, Sequence, cast

import torch
from safetensors.torch import load_file, save_file

from rba._io import atomic_path, atomic_write_json, file_sha256
from rba.errors import CacheError
from rba.names import config_hash
from rba.spans import Span

__all__ = ["Statistics", "StatisticsCollector", "statistics_nbytes", "add_products", "add_augmented_products", "centred",
           "plain_cross_from",
           "STATS_FORMAT"]

#: version of the statistics' content and file layout; a cache of another format is rebuilt.
#: 1: plain totals of float32 products. 2: totals about a per-boundary centre, Σ‖x − c‖² in float64.
STATS_FORMAT = 2


class Statistics:
    """Streamed statistics of every boundary and every tracked span.

    Stored about a centre c_k per boundary (``center``; zeros when built from plain totals): with
    u = [x − c_k, 1] and v = x − c_k, ``centred_gram[k] = Σ u uᵀ``, ``centred_cross[(i, j)] = Σ u_i v_jᵀ``,
    ``centred_sq[k] = Σ ‖v‖²``. ``gram`` and ``cross`` give the plain totals Σ x̃ x̃ᵀ and Σ x̃_i x_jᵀ
    (x̃ = [x, 1]), recovered in float64 on access.

    Build it either from plain totals (``gram``, ``cross``: the centre is zero) or from centred ones
    (``center``, ``centred_gram``, ``centred_cross``, ``centred_sq``), as the capture does.
    """

    def __init__(self, dims: Sequence[int], pairs: Sequence[Span], n: int,
                 gram: Sequence[torch.Tensor] | None = None, cross: Mapping[Span, torch.Tensor] | None = None,
                 cos_sum: Mapping[Span, float] | None = None, meta: dict[str, Any] | None = None, key: str = "", *,
                 center: Sequence[torch.Tensor] | None = None, centred_gram: Sequence[torch.Tensor] | None = None,
                 centred_cross: Mapping[Span, torch.Tensor] | None = None,
                 centred_sq: Sequence[float] | None = None, mlp: "Statistics | None" = None,
                 mlp_cross: Mapping[tuple[int, int], torch.Tensor] | None = None):
        plain = gram is not None or cross is not None
        centred = centred_gram is not None or centred_cross is not None or center is not None
        if plain == centred:
            raise TypeError("Statistics takes either plain totals (gram, cross) or centred ones (center, "
                            "centred_gram, centred_cross, centred_sq)")
        #: vector size D at every boundary 0..L
        self.dims = [int(d) for d in dims]
        #: the spans whose cross statistics were collected
        self.pairs = list(pairs)
        #: number of vectors at boundary 0 (see :meth:`count` for the others)
        self.n = int(n)
        if plain:
            if gram is None or cross is None:
                raise TypeError("plain totals need both gram and cross")
            centred_gram, centred_cross = list(gram), dict(cross)
            center = [torch.zeros(d, dtype=torch.float64) for d in self.dims]
            centred_sq = [float(torch.diagonal(g)[:-1].sum()) for g in centred_gram]
        elif centred_gram is None or centred_cross is None or center is None or centred_sq is None:
            raise TypeError("centred statistics need center, centred_gram, centred_cross and centred_sq")
        #: c_k per boundary (float64 holding values of the capture dtype)
        self.center = [c.to(torch.float64) for c in center]
        #: (D_k+1)×(D_k+1) float64 per boundary: Σ u uᵀ, u = [x − c_k, 1]
        self.centred_gram = list(centred_gram)
        #: (D_i+1)×D_j float64 per span: Σ u_i (x_j − c_j)ᵀ
        self.centred_cross = dict(centred_cross)
        #: Σ ‖x − c_k‖² per boundary, summed in float64
        self.centred_sq = [float(s) for s in centred_sq]
        #: Σ cos(x_i, x_j) per span
        self.cos_sum = dict(cos_sum or {})
        self.meta = meta or {}
        self.key = key
        #: the MLP outputs of blocks 0..E-1 (what a block adds to the residual stream through its MLP), captured
        #: only for a fit kind that folds (``[fit] kind = "fold"``): their own statistics, "boundary" e being block
        #: e's MLP output (no spans; ``meta["bias"]``: whether each down projection has a bias); else None
        self.mlp = mlp
        #: (D_m+1)×D_k float64 per (block e, boundary k): Σ [m_e − c_e, 1](x_k − c_k)ᵀ
        self.mlp_cross = dict(mlp_cross or {})
        #: derived values computed on demand (conditioning, warnings issued); never saved
        self.scratch: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"Statistics(dims={self.dims}, pairs={len(self.pairs)} spans, n={self.n}, key={self.key!r})"

    @property
    def num_blocks(self) -> int:
        return len(self.dims) - 1

    def count(self, k: int) -> int:
        """Number of vectors at boundary k (Σ 1·1, the bias corner of its Gram matrix)."""
        return int(round(float(self.centred_gram[k][-1, -1])))

    def centred_sum(self, k: int) -> torch.Tensor:
        """Σ (x − c_k) over vectors at boundary k."""
        return self.centred_gram[k][-1, :-1]

    def sum_x(self, k: int) -> torch.Tensor:
        """Σ x over vectors at boundary k."""
        return self.centred_sum(k) + self.count(k) * self.center[k]

    def sum_sq(self, k: int) -> float:
        """Σ ‖x‖² over vectors at boundary k."""
        c = self.center[k]
        return self.centred_sq[k] + 2 * float(c @ self.centred_sum(k)) + self.count(k) * float(c @ c)

    def total_variation(self, k: int) -> float:
        """Σ ‖x − x̄‖² at boundary k (centre-free, so no large sums cancel)."""
        s = self.centred_sum(k)
        return self.centred_sq[k] - float(s @ s) / self.count(k)

    def covariance(self, k: int) -> torch.Tensor:
        """Σ (x − x̄)(x − x̄)ᵀ at boundary k."""
        s = self.centred_sum(k)
        return self.centred_gram[k][:-1, :-1] - torch.outer(s, s) / self.count(k)

    def cross_covariance(self, span: Span) -> torch.Tensor:
        """Σ (x_i − x̄_i)(x_j − x̄_j)ᵀ for span (i, j)."""
        i, _ = span
        b = self.centred_cross[span]
        return b[:-1] - torch.outer(self.centred_sum(i), b[-1]) / self.count(i)

    def squared_distance(self, span: Span) -> float:
        """Σ ‖x_i − x_j‖² for span (i, j) of equal sizes: Σ‖u_i − v_j + d‖² with d = c_i − c_j."""
        i, j = span
        b = self.centred_cross[span]
        d = self.center[i] - self.center[j]
        uv = float(torch.diagonal(b[:-1]).sum())
        shift = 2 * float(d @ (self.centred_sum(i) - b[-1])) + self.count(i) * float(d @ d)
        return max(self.centred_sq[i] - 2 * uv + self.centred_sq[j] + shift, 0.0)

    def plain_gram(self, k: int) -> torch.Tensor:
        """Σ x̃ x̃ᵀ with x̃ = [x, 1], recovered in float64: Tᵀ (Σ u uᵀ) T with T = [[I, 0], [cᵀ, 1]]."""
        g, c = self.centred_gram[k], self.center[k]
        if not c.any():
            return g
        s, n = g[-1, :-1], float(g[-1, -1])
        out = g.clone()
        out[:-1, :-1].addr_(c, s).addr_(s, c).addr_(c, c, alpha=n)  # in place: no temporaries of the Gram's size
        out[-1, :-1] += n * c
        out[:-1, -1] += n * c
        return out

    def plain_cross(self, span: Span) -> torch.Tensor:
        """Σ x̃_i x_jᵀ, recovered in float64 from Σ u_i v_jᵀ: Tᵀ (Σ u_i v_jᵀ + (Σ u_i) c_jᵀ)."""
        i, j = span
        return plain_cross_from(self.centred_cross[span], self.centred_gram[i][-1], self.center[i], self.center[j])

    @property
    def gram(self) -> Sequence[torch.Tensor]:
        """Σ x̃ x̃ᵀ per boundary (plain totals, recovered on access)."""
        return _Lazy(len(self.dims), self.plain_gram)

    @property
    def cross(self) -> Mapping[Span, torch.Tensor]:
        """Σ x̃_i x_jᵀ per span (plain totals, recovered on access)."""
        return _LazyMap(self.pairs, self.plain_cross)

    def require(self, span: Span) -> None:
        if span not in self.centred_cross:
            raise KeyError(f"span {span[0]}-{span[1]} was not captured (max_span too small, or not a valid span)")

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> None:
        """Write ``path`` (safetensors) and ``path.json`` (checksum, layout, meta), each atomically."""
        path = Path(path)
        tensors = {f"gram.{k}": g.contiguous() for k, g in enumerate(self.centred_gram)}
        tensors |= {f"center.{k}": c.contiguous() for k, c in enumerate(self.center)}
        tensors |= {f"cross.{i}.{j}": c.contiguous() for (i, j), c in self.centred_cross.items()}
        tensors["sq"] = torch.tensor(self.centred_sq, dtype=torch.float64)
        tensors["cos_sum"] = torch.tensor([self.cos_sum[p] for p in self.pairs], dtype=torch.float64)
        extra: dict[str, Any] = {}
        if self.mlp is not None:  # only then: statistics without MLP outputs keep their bytes and sidecar
            m = self.mlp
            tensors |= {f"mlp.gram.{e}": g.contiguous() for e, g in enumerate(m.centred_gram)}
            tensors |= {f"mlp.center.{e}": c.contiguous() for e, c in enumerate(m.center)}
            tensors |= {f"mlp.cross.{e}.{k}": c.contiguous() for (e, k), c in self.mlp_cross.items()}
            tensors["mlp.sq"] = torch.tensor(m.centred_sq, dtype=torch.float64)
            extra["mlp"] = {"dims": m.dims, "pairs": [list(p) for p in self.mlp_cross], "meta": m.meta}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp))
        atomic_write_json(
            path.with_suffix(path.suffix + ".json"),
            {
                "format": STATS_FORMAT,
                "sha256": file_sha256(path),
                "dims": self.dims,
                "pairs": [list(p) for p in self.pairs],
                "n": self.n,
                "key": self.key,
                "meta": self.meta,
            } | extra,
        )

    @classmethod
    def load(cls, path: str | Path, *, request: dict[str, Any] | None = None) -> "Statistics":
        """Read and verify a cache written by :meth:`save`; raise :class:`CacheError` if anything is off.

        ``request``: what the caller needs the statistics of (model identity and weights digest, calibration
        fingerprint, preprocessing, capture settings; its hash is the cache key). A cache whose key is another
        one -- a file copied or renamed into place -- is refused, naming the parts that differ."""
        path = Path(path)
        side = path.with_suffix(path.suffix + ".json")
        if not path.exists() or not side.exists():
            raise CacheError(f"statistics cache {path} is incomplete (data or checksum file missing)")
        try:
            info = json.loads(side.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CacheError(f"statistics cache {side} is unreadable: {exc}") from None
        if info.get("format") != STATS_FORMAT:
            raise CacheError(f"statistics cache {path} has format {info.get('format')}, expected {STATS_FORMAT}")
        if request is not None:
            _check_request(path, info, request)
        if file_sha256(path) != info.get("sha256"):
            raise CacheError(f"statistics cache {path} fails its checksum (truncated or corrupted)")
        try:
            tensors = load_file(str(path))
        except Exception as exc:
            raise CacheError(f"statistics cache {path} is unreadable: {exc}") from None
        try:
            dims = [int(d) for d in info["dims"]]
            pairs: list[Span] = [(int(i), int(j)) for i, j in info["pairs"]]
            cos = tensors["cos_sum"].tolist()
            mlp, mlp_cross = None, None
            if "mlp" in info:
                m = info["mlp"]
                count = len(m["dims"])
                mlp = cls(dims=m["dims"], pairs=[], n=int(info["n"]),
                          center=[tensors[f"mlp.center.{e}"] for e in range(count)],
                          centred_gram=[tensors[f"mlp.gram.{e}"] for e in range(count)], centred_cross={},
                          centred_sq=tensors["mlp.sq"].tolist(), meta=m.get("meta", {}))
                mlp_cross = {(int(e), int(k)): tensors[f"mlp.cross.{int(e)}.{int(k)}"] for e, k in m["pairs"]}
            return cls(
                dims=dims,
                pairs=pairs,
                n=int(info["n"]),
                center=[tensors[f"center.{k}"] for k in range(len(dims))],
                centred_gram=[tensors[f"gram.{k}"] for k in range(len(dims))],
                centred_cross={(i, j): tensors[f"cross.{i}.{j}"] for i, j in pairs},
                centred_sq=tensors["sq"].tolist(),
                cos_sum=dict(zip(pairs, cos)),
                meta=info.get("meta", {}),
                key=info.get("key", ""),
                mlp=mlp,
                mlp_cross=mlp_cross,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CacheError(f"statistics cache {path} is inconsistent with its {side.name} ({type(exc).__name__}: {exc})") from None


def plain_cross_from(b: torch.Tensor, su: torch.Tensor, ci: torch.Tensor, cj: torch.Tensor) -> torch.Tensor:
    """Σ x̃ yᵀ from the centred Σ u (y − c_j)ᵀ (``b``), Σ u (``su``, its last entry n) and the centres c_i, c_j:
    Tᵀ (b + (Σ u) c_jᵀ) with T = [[I, 0], [c_iᵀ, 1]]."""
    if not ci.any() and not cj.any():
        return b
    out = b + torch.outer(su, cj)
    out[:-1] += torch.outer(ci, out[-1])
    return out


class _Lazy(SequenceABC):
    """A read-only sequence whose items are computed on access."""

    def __init__(self, size: int, item):
        self._size, self._item = size, item

    def __len__(self) -> int:
        return self._size

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self._item(i) for i in range(*k.indices(self._size))]
        if not -self._size <= k < self._size:
            raise IndexError(k)
        return self._item(k % self._size)


class _LazyMap(Mapping):
    """A read-only mapping over ``keys`` whose values are computed on access."""

    def __init__(self, keys: Sequence[Span], item):
        self._keys, self._set, self._item = list(keys), set(keys), item

    def __getitem__(self, key):
        if key not in self._set:
            raise KeyError(key)
        return self._item(key)

    def __iter__(self) -> Iterator[Span]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def _check_request(path: Path, info: dict[str, Any], request: dict[str, Any]) -> None:
    want, found = config_hash(request), info.get("key")
    if found == want:
        return
    built_for = info.get("meta", {}).get("request")
    if isinstance(built_for, dict):
        asked = json.loads(json.dumps(request, default=str))  # as the sidecar holds it: tuples become lists
        differ = sorted(k for k in asked.keys() | built_for.keys() if asked.get(k) != built_for.get(k))
        what = (f"its {', '.join(differ)} {'differs' if len(differ) == 1 else 'differ'}" if differ
                else "its key differs")
    else:
        what = "it records no request"
    raise CacheError(f"statistics cache {path} was built for another request ({what}: key {found!r}, "
                     f"expected {want!r})")


def statistics_nbytes(dims: Sequence[int], pairs: Sequence[Span], mlp_dims: Sequence[int] = (),
                      mlp_pairs: Sequence[tuple[int, int]] = ()) -> int:
    """Bytes of the float64 totals for these boundaries and spans (and MLP outputs with their boundary pairs)."""
    grams = sum((d + 1) ** 2 + d + 1 for d in [*dims, *mlp_dims])  # Gram, centre and Σ‖x − c‖²
    crosses = sum((dims[i] + 1) * dims[j] for i, j in pairs) + sum((mlp_dims[e] + 1) * dims[k] for e, k in mlp_pairs)
    return 8 * (grams + crosses + len(pairs))


def add_products(gram: torch.Tensor, x: torch.Tensor, crosses: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """``gram += x̃ᵀx̃`` and ``total += x̃ᵀy`` for each ``(total, y)`` of ``crosses``, with x̃ = [x | 1].

    Callers pass vectors shifted by their boundary's centre (:func:`centred`)."""
    xt = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)], dim=1)
    add_augmented_products(gram, xt, crosses)


def add_augmented_products(gram: torch.Tensor, xt: torch.Tensor,
                           crosses: Sequence[tuple[torch.Tensor, torch.Tensor]],
                           row_blocks: Sequence[tuple[int, int]] | None = None) -> None:
    """:func:`add_products` for an x̃ = [x | 1] already built. Separate products added straight into the
    float64 totals: no concatenated copy of the targets and no float64 temporaries (one capture update 20 %
    faster at MiniLM's sizes, 2× at CNN pixel counts). With ``row_blocks`` ([(r0, r1)], :func:`_row_blocks`)
    only the Gram's upper block triangle is accumulated; the caller mirrors the lower blocks."""
    xtT = xt.T
    if row_blocks is None:
        gram.add_(xtT @ xt)
    else:
        for r0, r1 in row_blocks:
            gram[r0:r1, r0:].add_(xt[:, r0:r1].T @ xt[:, r0:])
    for total, y in crosses:
        total.add_(xtT @ y)


def _sum_sq(v: torch.Tensor) -> torch.Tensor:
    """Σ‖v‖² summed in float64 over rows (each row's ‖v‖² in v's dtype: one pass, no float64 copy of v)."""
    return torch.linalg.vecdot(v, v).sum(dtype=torch.float64)


def centred(x: torch.Tensor, center: torch.Tensor, sq: torch.Tensor | None = None) -> torch.Tensor:
    """``x − center`` in x's dtype, adding Σ‖x − center‖² (summed in float64) to the scalar ``sq`` if given."""
    v = x - center
    if sq is not None:
        sq += _sum_sq(v)
    return v


def _centred_augmented(x: torch.Tensor, center: torch.Tensor, sq: torch.Tensor) -> torch.Tensor:
    """[x − center | 1] in one buffer (the shift written straight into it), adding Σ‖x − center‖² to ``sq``."""
    xt = torch.empty(x.shape[0], x.shape[1] + 1, dtype=x.dtype, device=x.device)
    torch.sub(x, center, out=xt[:, :-1])
    xt[:, -1] = 1
    sq += _sum_sq(xt[:, :-1])
    return xt


#: row blocks a Gram matrix is split into so that only its upper block triangle is multiplied (s blocks skip
#: (s − 1)/(2s) of its products; the lower blocks are mirrored from the upper ones in :meth:`StatisticsCollector.result`).
#: More blocks mean narrower GEMMs, which run slower per multiply-add: on this CPU (one thread, D = 384, 2000
#: vectors) 4 blocks lost what they saved.
GRAM_BLOCKS = 2

#: fewest vectors per product: smaller batches (short texts at a small batch size) are held until this many rows
#: have arrived, since every product is added into a float64 total of its own size: at D = 384 on one thread a
#: 430-row product takes 0.65 ms and its add 0.11 ms, a 2048-row one 3.2 ms and 0.09 ms. Batches as large are
#: multiplied at once.
MIN_PRODUCT_ROWS = 2048


class StatisticsCollector:
    """Running float64 totals about each boundary's centre (its first batch's mean), updated batch by batch
    with the vectors of every boundary.

    Per batch and boundary i, with u_i = [x_i − c_i | 1]: the Gram matrix's upper block triangle (row blocks of
    :data:`GRAM_BLOCKS`, each multiplied from the diagonal on; the lower blocks are the transposes of accumulated
    upper ones) and one product u_iᵀ v_j per tracked span, each a float32 GEMM added straight into its float64
    total; batches of fewer than ``min_rows`` vectors are held (as u_i) and multiplied together. Joining the
    products that share u_i into one wider GEMM (u_iᵀ [u_i | v_i+1 | …]) was measured and not kept: no faster at
    D = 384, slower at D = 768 (``benchmarks/RESULTS.md`` §2)."""

    def __init__(self, dims: Sequence[int], pairs: Sequence[Span], *, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu", gram_blocks: int = GRAM_BLOCKS,
                 min_rows: int = MIN_PRODUCT_ROWS, mlp_dims: Sequence[int] = (),
                 mlp_pairs: Sequence[tuple[int, int]] = ()):
        self.dims = list(dims)
        self.pairs = sorted(pairs)
        self.dtype = dtype
        self.n = 0
        #: MLP output streams (block e's, for a fit that folds) follow the boundaries: stream e is row len(dims) + e
        #: of every per-stream list below, and (e, k) crosses it with boundary k
        self.mlp_dims = list(mlp_dims)
        self.mlp_pairs = sorted(mlp_pairs)
        nb = len(self.dims)
        streams = self.dims + self.mlp_dims
        products = self.pairs + [(nb + e, k) for e, k in self.mlp_pairs]
        self.center: list[torch.Tensor | None] = [None] * len(streams)
        self.gram = [torch.zeros(d + 1, d + 1, dtype=torch.float64, device=device) for d in streams]
        self.sq = [torch.zeros((), dtype=torch.float64, device=device) for _ in streams]
        self.cross = {p: torch.zeros(streams[p[0]] + 1, streams[p[1]], dtype=torch.float64, device=device) for p in products}
        self.cos_sum = {p: torch.zeros((), dtype=torch.float64, device=device) for p in self.pairs}
        self._targets: dict[int, list[int]] = {}
        for i, j in products:
            self._targets.setdefault(i, []).append(j)
        #: per stream: the row ranges [(r0, r1)] of its Gram's upper block triangle
        self._row_blocks = [_row_blocks(d + 1, gram_blocks) for d in streams]
        self.min_rows = min_rows
        #: per stream: the held batches' [x − c | 1] (fresh tensors, not views of the model's states)
        self._held: list[list[torch.Tensor]] = [[] for _ in streams]
        self._held_rows = 0

    @torch.no_grad()
    def update(self, vectors: Sequence[torch.Tensor], mlp: Sequence[torch.Tensor] = ()) -> None:
        """``vectors[k]`` is the (n_k, D_k) matrix of this batch's vectors at boundary k; a tracked span (i, j)
        needs n_i == n_j (rows are the same token / pixel position). ``mlp[e]``: block e's MLP output vectors, when
        the collector tracks MLP outputs (the same rows as the boundaries')."""
        if len(mlp) != len(self.mlp_dims):
            raise ValueError(f"{len(mlp)} MLP output streams for a collector of {len(self.mlp_dims)}")
        xs = [v.to(self.dtype) for v in [*vectors, *mlp]]
        n_b = xs[0].shape[0]
        if n_b == 0:
            return
        for k, x in enumerate(xs):
            if self.center[k] is None and x.shape[0]:
                self.center[k] = x.mean(dim=0)  # in the capture dtype: x − c is what the products see
        # [x − c | 1] per boundary; the targets of cross products are its first D columns (a strided view)
        # (a boundary with vectors has its centre: set just above)
        xts = [_centred_augmented(x, cast(torch.Tensor, self.center[k]), self.sq[k]) if x.shape[0] else None
               for k, x in enumerate(xs)]
        # cosines from row dot products over the norms, one norm per boundary
        norms = {k: torch.linalg.vector_norm(xs[k], dim=1).clamp_min(1e-12) for k in {k for p in self.pairs for k in p}}
        for i, j in self.pairs:
            if xs[i].shape[0]:
                cos = torch.linalg.vecdot(xs[i], xs[j]) / (norms[i] * norms[j])
                self.cos_sum[(i, j)] += cos.sum(dtype=torch.float64)
        self.n += n_b
        if n_b >= self.min_rows and not self._held_rows:
            self._add_products(xts)
            return
        for held, xt in zip(self._held, xts):
            if xt is not None:
                held.append(xt)
        self._held_rows += n_b
        if self._held_rows >= self.min_rows:
            self.flush()

    def flush(self) -> None:
        """Multiply the held batches into the totals (:meth:`result` calls it)."""
        if not self._held_rows:
            return
        xts = [None if not held else held[0] if len(held) == 1 else torch.cat(held) for held in self._held]
        self._held = [[] for _ in self._held]
        self._held_rows = 0
        self._add_products(xts)

    def _add_products(self, xts: Sequence[torch.Tensor | None]) -> None:
        for i, xt in enumerate(xts):
            if xt is None:  # boundaries may hold different vector counts (CNN stages); spans join equal ones
                continue
            targets = self._targets.get(i, [])
            # a span's boundaries hold the same vector count, so xts[j] is there where xts[i] is
            add_augmented_products(self.gram[i], xt, [(self.cross[(i, j)], cast(torch.Tensor, xts[j])[:, :-1]) for j in targets],
                                   row_blocks=self._row_blocks[i])

    def _symmetrised_gram(self, k: int) -> torch.Tensor:
        """Boundary k's Gram total: its upper triangle, diagonal blocks included, mirrored below. Exactly
        symmetric on every CPU: a GEMM's diagonal blocks are not bit-symmetric with every BLAS (MKL on AMD)."""
        g = self.gram[k]
        return torch.triu(g) + torch.triu(g, diagonal=1).T

    def result(self, *, key: str = "", meta: dict[str, Any] | None = None,
               mlp_meta: dict[str, Any] | None = None) -> Statistics:
        self.flush()
        nb = len(self.dims)

        def centres(dims: Sequence[int], offset: int) -> list[torch.Tensor]:
            return [torch.zeros(d, dtype=torch.float64) if c is None else c.to(torch.float64).cpu()
                    for d, c in zip(dims, self.center[offset:offset + len(dims)], strict=True)]

        mlp = None
        if self.mlp_dims:
            mlp = Statistics(dims=self.mlp_dims, pairs=[], n=self.n, center=centres(self.mlp_dims, nb),
                             centred_gram=[self._symmetrised_gram(nb + e).cpu() for e in range(len(self.mlp_dims))],
                             centred_cross={}, centred_sq=[float(s) for s in self.sq[nb:]], meta=mlp_meta or {})
        return Statistics(
            dims=self.dims,
            pairs=self.pairs,
            n=self.n,
            center=centres(self.dims, 0),
            centred_gram=[self._symmetrised_gram(k).cpu() for k in range(nb)],
            centred_cross={p: self.cross[p].cpu() for p in self.pairs},
            centred_sq=[float(s) for s in self.sq[:nb]],
            cos_sum={p: float(c) for p, c in self.cos_sum.items()},
            meta=meta or {},
            key=key,
            mlp=mlp,
            mlp_cross={(e, k): self.cross[(nb + e, k)].cpu() for e, k in self.mlp_pairs},
        )


def _row_blocks(size: int, blocks: int) -> list[tuple[int, int]]:
    """``size`` rows split into up to ``blocks`` near-equal ranges [(r0, r1)]."""
    blocks = max(1, min(blocks, size))
    edges = [round(size * b / blocks) for b in range(blocks + 1)]
    return [(a, b) for a, b in zip(edges, edges[1:]) if b > a]
