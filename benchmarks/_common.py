"""Shared helpers of the benchmark scripts: timing, peak RSS, result tables, config builders for the real and
tiny models, random configurations, and the *naive* method (the paper's published code path).

Nothing here asserts a timing: the scripts print absolute times and ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _early_threads() -> str | None:
    """Thread count for the BLAS libraries, which read it only when numpy / torch load: ``--threads N`` applies
    to torch (the naive method's lstsq included) and numpy (the float64 extra column) alike; ``--quick`` means one thread (smoke tests run next to other
    work, and two threads on a busy 2-core machine stall on every small op)."""
    argv = sys.argv[1:]
    for k, a in enumerate(argv):
        if a == "--threads" and k + 1 < len(argv):
            return argv[k + 1]
        if a.startswith("--threads="):
            return a.split("=", 1)[1]
    return "1" if "--quick" in argv else None


if _early_threads():
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, _early_threads())

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np
import torch

OUT_DIR = ROOT / "benchmarks" / "out"
DATA_DIR = ROOT / "data"

Span = tuple[int, int]


# ---------------------------------------------------------------------------------------------- CLI
def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true",
                   help="tiny random models and synthetic data: a smoke test of a few seconds (numbers meaningless)")
    p.add_argument("--json", type=Path, default=None, help="also write every measured number to this JSON file")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    return p


def setup(args) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    elif args.quick:
        torch.set_num_threads(1)
    warnings.filterwarnings("ignore")  # rank-deficient boundaries (post-LN) are expected; the ridge handles them
    print(f"# machine: {machine()}", flush=True)
    print(f"# load average at start: {load()}", flush=True)
    import atexit

    atexit.register(lambda: print(f"# load average at end: {load()}", flush=True))


def load() -> str:
    """The 1/5/15-minute load averages (other work on this machine inflates wall-clock times)."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def machine() -> str:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"python {platform.python_version()}")


def write_json(path: Path | None, payload: dict[str, Any]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=_jsonable))


def load_npz(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays of a saved ``.npz`` (no pickles), or None when it is missing or unreadable (a resumed run then
    makes it again)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError):
        return None


def save_npz(path: Path, data: dict[str, Any], compressed: bool = False) -> None:
    """Write ``data`` to ``path`` atomically (a run stopped mid-write leaves the old file or none, never a torn one)."""
    from rba._io import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            (np.savez_compressed if compressed else np.savez)(fh, **data)


def _jsonable(v):
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, tuple):
        return list(v)
    return str(v)


# ---------------------------------------------------------------------------------------------- timing
class Timer:
    """``with Timer() as t: ...`` then ``t.s`` (seconds, wall clock)."""

    def __enter__(self) -> "Timer":
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.s = time.perf_counter() - self.t0


def sync() -> None:
    """Wait for the GPU's queued work (a no-op until CUDA is in use): every timed region starts and ends here, so
    asynchronous kernels count where they were launched."""
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - t0, out


def repeat(fn: Callable[[], Any], repeats: int = 5, warmup: int = 1) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t0)
    return out


def median(xs: Iterable[float]) -> float:
    xs = list(xs)
    return statistics.median(xs) if xs else float("nan")


def fmt_s(s: float) -> str:
    if s != s:  # nan
        return "n/a"
    if s >= 100:
        return f"{s:.0f} s"
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.1f} µs"


# ---------------------------------------------------------------------------------------------- memory
def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (MiB; Linux reports ru_maxrss in KiB)."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


def available_mb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def run_fresh(args: Sequence[str], timeout: float = 900) -> dict[str, Any]:
    """Run ``python <args>`` in a fresh interpreter whose last stdout line is a JSON object; return it
    (``{"error": ...}`` when it fails, e.g. killed for memory)."""
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-2:]
        return {"error": f"exit {proc.returncode}: {' | '.join(tail)}"}
    return json.loads(lines[-1])


# ---------------------------------------------------------------------------------------------- printing
def table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, title: str = "") -> str:
    """A markdown table (also readable in a terminal); prints it and returns the text."""
    if not rows:
        return ""
    columns = list(columns or rows[0].keys())
    cells = [[_cell(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[k]) for row in cells)) for k, c in enumerate(columns)]
    lines = []
    if title:
        lines.append(f"\n## {title}")
    lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |")
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        lines.append("| " + " | ".join(v.ljust(w) for v, w in zip(row, widths)) + " |")
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def _cell(v: Any) -> str:
    if isinstance(v, float):
        if v != v:
            return "n/a"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.4g}"
    return str(v)


def ratio_line(name: str, ratio: float, *, target: str | None = None, met: bool | None = None, detail: str = "",
               unit: str = "x") -> str:
    """``RATIO <name>: <ratio>x [target …: MET|MISSED] (detail)`` -- the lines tests look for (``unit`` replaces
    the ``x`` for figures that are not ratios: rates, correlations)."""
    value = f"{ratio:,.0f}" if abs(ratio) >= 1e4 else f"{ratio:.3g}"
    parts = [f"RATIO {name}: {value}{unit}"]
    if target:
        status = "" if met is None else (" MET" if met else " MISSED")
        parts.append(f"[target {target}:{status.strip() and status}]".replace(": ]", "]"))
    if detail:
        parts.append(f"({detail})")
    line = " ".join(parts)
    print(line, flush=True)
    return line


# ---------------------------------------------------------------------------------------------- data
def reviews_csv() -> Path:
    from rba.datasets import prepare_reviews

    return prepare_reviews(DATA_DIR / "reviews.csv")


def fashion_npz() -> Path:
    from rba.datasets import prepare_fashion_mnist

    return prepare_fashion_mnist(DATA_DIR / "fashion-mnist.npz")


# ---------------------------------------------------------------------------------------------- configs
def make_config(model: dict[str, Any], data: dict[str, Any], *, cache_dir: str | Path, capture_batch: int = 64,
                eval_batch: int = 64, max_span: int | None = None, **sections: dict[str, Any]):
    from rba.config import Config

    raw: dict[str, Any] = {
        "model": model,
        "data": data,
        "capture": {"cache_dir": str(cache_dir), "batch_size": capture_batch},
        "evaluate": {"batch_size": eval_batch, "latency_repeats": 3},
        "search": {"max_span": max_span},
    }
    if max_span is None:
        raw["search"].pop("max_span")
    for key, value in sections.items():
        raw.setdefault(key, {}).update(value)
    return Config.from_dict(raw, name="bench", base_dir=str(ROOT))


def minilm_config(cache_dir, *, calibration=600, probe=1000, eval=1000, **kw):
    """all-MiniLM-L6-v2 on the Rotten Tomatoes reviews, as studies/minilm_reviews.toml."""
    data = {"kind": "text-csv", "path": str(reviews_csv()), "text": "text", "label": "label",
            "calibration": calibration, "probe": probe, "eval": eval, "seed": 0, "max_length": 128}
    return make_config({"kind": "sentence-transformers", "name": "all-MiniLM-L6-v2"}, data, cache_dir=cache_dir, **kw)


def lite0_config(cache_dir, *, calibration=2000, probe=1000, eval=1000, image_size=64, **kw):
    """Pretrained EfficientNet-Lite0 on Fashion-MNIST."""
    data = {"kind": "npz", "path": str(fashion_npz()), "calibration": calibration, "probe": probe, "eval": eval,
            "seed": 0, "image_size": image_size}
    return make_config({"kind": "efficientnet-lite", "name": "efficientnet-lite0", "pretrained": True}, data,
                       cache_dir=cache_dir, **kw)


def vit_config(cache_dir, *, depth=12, width=768, heads=None, image_size=64, patch=16, mlp_ratio=4.0,
               calibration=256, probe=0, eval=256, classes=4, labels=True, **kw):
    """A random-weight timm ViT (``vit_base_patch16_224`` architecture with depth/width overridden) on
    synthetic images: for cost measurements only (its accuracies mean nothing)."""
    heads = heads or max(1, width // 64)
    model = {"kind": "timm", "name": "vit_base_patch16_224", "pretrained": False,
             "options": {"depth": depth, "embed_dim": width, "num_heads": heads, "patch_size": patch,
                         "mlp_ratio": mlp_ratio, "num_classes": 0}}
    n = calibration + probe + eval
    data = {"kind": "synthetic", "image_size": image_size, "calibration": calibration, "probe": probe, "eval": eval,
            "options": {"modality": "image", "classes": classes, "n": n, "shape": [3, image_size, image_size]}}
    return make_config(model, data, cache_dir=cache_dir, **kw)


def tiny_bert_config(cache_dir, *, calibration=48, probe=48, eval=48, **kw):
    """A 4-layer width-32 random BERT on synthetic texts (quick mode; real tokenizer, real padding masks)."""
    data = {"kind": "synthetic", "calibration": calibration, "probe": probe, "eval": eval,
            "options": {"modality": "text", "classes": 4}}
    return make_config({"kind": "huggingface", "name": "tiny-bert", "pretrained": False}, data,
                       cache_dir=cache_dir, **kw)


@contextmanager
def temp_cache():
    """A fresh statistics cache folder, so that every capture is really measured."""
    with tempfile.TemporaryDirectory(prefix="rba-bench-") as d:
        yield Path(d)


# ---------------------------------------------------------------------------------------------- configurations
def all_configurations(num_blocks: int, pairs: Sequence[Span]) -> list[list[Span]]:
    """Every set of non-overlapping spans from ``pairs`` (the empty one included), in DFS order."""
    by_start: dict[int, list[int]] = {}
    for i, j in sorted(pairs):
        by_start.setdefault(i, []).append(j)
    out: list[list[Span]] = []

    def rec(k: int, acc: list[Span]) -> None:
        if k >= num_blocks:
            out.append(list(acc))
            return
        rec(k + 1, acc)
        for j in by_start.get(k, []):
            acc.append((k, j))
            rec(j, acc)
            acc.pop()

    rec(0, [])
    return out


def random_configurations(num_blocks: int, pairs: Sequence[Span], count: int, seed: int = 0) -> list[list[Span]]:
    """``count`` distinct configurations drawn uniformly from all non-empty ones."""
    configs = [c for c in all_configurations(num_blocks, pairs) if c]
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(configs), size=min(count, len(configs)), replace=False)
    return [configs[i] for i in idx]


def spans_text(spans: Sequence[Span]) -> str:
    from rba.spans import format_spans

    return format_spans(spans)


# ---------------------------------------------------------------------------------------------- the method's trial
def rba_trial(session, spans: Sequence[Span], *, tag: str = "affine") -> dict[str, Any]:
    """One trial as rba runs it: fit every span from the statistics, price it, evaluate with prefix reuse and
    the prefix memo (what ``Session.evaluate`` does)."""
    spans = sorted(spans)
    maps = session.maps(spans)
    pooled = session.evaluator.pooled(spans, maps, tag=tag)
    scores = session.evaluator.score_pooled(pooled)
    session.cost_model.cost(spans, tag)
    return scores | {"pooled_eval": pooled["eval"]}


# ---------------------------------------------------------------------------------------------- the naive method
class Naive:
    """What the paper's published code does (TOAST, whose linear translator calls latentis'
    ``lstsq_align_state``): keep every hidden state of the calibration split in memory, fit each span with
    ``torch.linalg.lstsq(x, y)`` in **float32** on the materialised states (the default driver, one map over all
    vectors, no ridge), and run the full forward pass over the probe and eval splits for every trial; then the
    same probe classifier. When rba fits affine maps (``affine=True``) the inputs get a ones column, so both
    methods solve the same least-squares problem (rba adds its tiny ridge; on rank-deficient post-LN inputs the
    two solutions differ in the null directions, their predictions slightly: see TOL_* in ``per_trial.py``).
    The states stay where the model runs: numpy arrays on the CPU, float32 tensors on a GPU (where lstsq then
    runs, CUDA's one driver 'gels').

    ``fit_f64`` is the earlier, slower baseline (``numpy.linalg.lstsq`` in float64 on a ridge-augmented copy):
    an extra, labelled column only, never a headline.
    """

    def __init__(self, adapter, splits, *, ridge: float = 1e-6, batch_size: int = 64, probe_c: float = 1.0,
                 dtype=torch.float32, affine: bool = True):
        self.adapter = adapter
        self.splits = splits
        self.ridge = ridge  # fit_f64 only: the authors' fit has none
        self.batch_size = batch_size
        self.probe_c = probe_c
        self.dtype = dtype
        self.affine = affine
        self.states: list[np.ndarray] | None = None
        self.reference: torch.Tensor | None = None

    # ---------------------------------------------------------------- one-time setup
    @torch.inference_mode()
    def materialise(self, samples=None, batch_size: int | None = None) -> list[np.ndarray]:
        """Every boundary's vectors of the calibration split, kept in memory (float32, as hooks give them; on the
        model's device)."""
        from rba.capture import iter_batches

        a = self.adapter
        samples = self.splits.calibration.samples if samples is None else samples
        parts: list[list[np.ndarray]] = [[] for _ in range(a.num_blocks + 1)]
        for _, chunk in iter_batches(samples, batch_size or self.batch_size):
            h, ctx = a.embed(a.collate(chunk))
            for k, state in a.boundaries(h, ctx):
                v = a.vectors(state, ctx).to(self.dtype)
                parts[k].append(v.numpy().copy() if v.device.type == "cpu" else v.clone())
        self.states = []
        for k in range(len(parts)):
            self.states.append(np.concatenate(parts[k]) if isinstance(parts[k][0], np.ndarray) else torch.cat(parts[k]))
            parts[k] = []
        return self.states

    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.states or [])

    def prepare_reference(self) -> None:
        """The unmodified model's pooled eval representation (computed once: fidelity's reference)."""
        self.reference = self.pooled(self.splits.eval.samples, [], [])

    # ---------------------------------------------------------------- per trial
    def fit(self, span: Span) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The authors' fit: ``torch.linalg.lstsq(x, y)`` in float32 (default driver, no ridge), x with a ones
        column when affine; returns (W, b) (b None when not affine). Nothing else: no SSE, no checks."""
        i, j = span
        x = torch.as_tensor(self.states[i])
        y = torch.as_tensor(self.states[j])
        if self.affine:
            x = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)], dim=1)
        w = torch.linalg.lstsq(x, y).solution
        return (w[:-1], w[-1]) if self.affine else (w, None)

    def fit_f64(self, span: Span) -> tuple[torch.Tensor, torch.Tensor]:
        """The earlier baseline (extra column only): ``numpy.linalg.lstsq`` (float64, SVD driver) on
        ``[X̃; √λ I] W = [Y; 0]`` with rba's ridge λ = ridge · mean diagonal of X̃ᵀX̃; returns (W, b)."""
        i, j = span
        x = self.states[i].astype(np.float64)
        y = self.states[j].astype(np.float64)
        xt = np.hstack([x, np.ones((x.shape[0], 1))])
        del x
        lam = self.ridge * float(np.einsum("ij,ij->", xt, xt)) / xt.shape[1]
        xa = np.vstack([xt, np.sqrt(lam) * np.eye(xt.shape[1])])
        ya = np.vstack([y, np.zeros((xt.shape[1], y.shape[1]))])
        w, *_ = np.linalg.lstsq(xa, ya, rcond=None)
        w = torch.from_numpy(w)
        return w[:-1], w[-1]

    def sse(self, span: Span, w: torch.Tensor, b: torch.Tensor | None) -> float:
        """Σ‖x_i·W + b − x_j‖² over the calibration vectors, in float64 (for the equality checks, untimed)."""
        i, j = span
        x, y = torch.as_tensor(self.states[i]).double(), torch.as_tensor(self.states[j]).double()
        pred = x @ w.double().to(x.device) + (0 if b is None else b.double().to(x.device))
        return float(((pred - y) ** 2).sum())

    def maps(self, spans: Sequence[Span]):
        from rba.apply import SpanMap

        out = []
        for s in spans:
            w, b = self.fit(s)
            out.append(SpanMap.from_solution(w, b, layout=self.adapter.layout, span=s).float().to(w.device))
        return out

    @torch.inference_mode()
    def pooled(self, samples, spans: Sequence[Span], maps, *, by_length: bool = False) -> torch.Tensor:
        """Full forward from the input: embedding, every block (spans replaced by their maps), pooling; rows in
        the order of ``samples``. ``by_length``: batch texts of similar length together (less padding), as rba's
        caches do -- the paper's code does not."""
        from rba.capture import iter_batches, length_order

        a = self.adapter
        order = length_order(samples) if by_length else None
        if order is not None:
            pooled = self.pooled([samples[i] for i in order], spans, maps)
            out = torch.empty_like(pooled)
            out[torch.as_tensor(order)] = pooled
            return out
        replace = dict(zip(spans, maps))
        out = []
        for _, chunk in iter_batches(samples, self.batch_size):
            h, ctx = a.embed(a.collate(chunk))
            out.append(a.pool(a.last_boundary(h, ctx, replace=replace), ctx).float())
        return torch.cat(out)

    def trial(self, spans: Sequence[Span], *, labels: bool = True, by_length: bool = False) -> dict[str, Any]:
        import torch.nn.functional as F

        from rba.evaluate import LinearProbe

        spans = sorted(spans)
        maps = self.maps(spans)
        ev = self.pooled(self.splits.eval.samples, spans, maps, by_length=by_length)
        fidelity = float(F.cosine_similarity(ev.double(), self.reference.double(), dim=1, eps=1e-12).mean())
        accuracy = float("nan")
        if labels and self.splits.eval.labels is not None:
            pr = self.pooled(self.splits.probe.samples, spans, maps, by_length=by_length)
            y_pr = torch.as_tensor(np.asarray(self.splits.probe.labels), dtype=torch.long)
            y_ev = torch.as_tensor(np.asarray(self.splits.eval.labels), dtype=torch.long)
            classes = int(max(y_pr.max(), y_ev.max())) + 1
            probe = LinearProbe(self.probe_c).fit(pr, y_pr, classes)
            accuracy = float((probe.predict(ev) == y_ev).double().mean())
        return {"accuracy": accuracy, "fidelity": fidelity, "pooled_eval": ev}


def free() -> None:
    gc.collect()


# ---------------------------------------------------------------------------------------------- profiling
def profile_top(fn: Callable[[], Any], n: int = 12, sort: str = "tottime", title: str = "") -> str:
    """Run ``fn`` under cProfile and print its top ``n`` entries (where a missed target's time goes)."""
    import cProfile
    import io
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    try:
        fn()
    finally:
        prof.disable()
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf).sort_stats(sort)
    stats.print_stats(n)
    lines = [ln for ln in buf.getvalue().splitlines() if ln.strip()]
    start = next((k for k, ln in enumerate(lines) if ln.lstrip().startswith("ncalls")), 0)
    text = "\n".join(lines[max(0, start - 1):])
    print(f"\n## profile{': ' + title if title else ''} (cProfile, sorted by {sort})\n```\n{text}\n```", flush=True)
    return text


# ---------------------------------------------------------------------------------------------- uniform sampling
def hypervolume(points: Sequence[tuple[float, float]], reference: tuple[float, float]) -> float:
    """Hypervolume of (fidelity ↑, flops_frac ↓) points against ``reference`` (:func:`search.analysis.hypervolume`,
    Optuna's own computation); points not better than the reference in both count nothing."""
    from search.analysis import hypervolume as area

    return area([f for f, _ in points], [c for _, c in points], reference[0], reference[1])


def count_configurations(num_blocks: int, pairs: Sequence[Span]) -> list[int]:
    """``N[k]``: number of configurations of blocks k..L-1 (``N[0]`` is the total, the empty one included)."""
    by_start: dict[int, list[int]] = {}
    for i, j in pairs:
        by_start.setdefault(i, []).append(j)
    counts = [0] * (num_blocks + 1)
    counts[num_blocks] = 1
    for k in range(num_blocks - 1, -1, -1):
        counts[k] = counts[k + 1] + sum(counts[j] for j in by_start.get(k, []))
    return counts


def sample_configuration(num_blocks: int, pairs: Sequence[Span], rng: np.random.Generator,
                         counts: list[int] | None = None) -> list[Span]:
    """One configuration drawn uniformly from all of them (counting DP; works for any number of blocks)."""
    counts = counts or count_configurations(num_blocks, pairs)
    by_start: dict[int, list[int]] = {}
    for i, j in pairs:
        by_start.setdefault(i, []).append(j)
    spans, k = [], 0
    while k < num_blocks:
        options = [(k + 1, None)] + [(j, (k, j)) for j in by_start.get(k, [])]
        weights = np.array([counts[nxt] for nxt, _ in options], dtype=float)
        nxt, span = options[int(rng.choice(len(options), p=weights / weights.sum()))]
        if span is not None:
            spans.append(span)
        k = nxt
    return spans
