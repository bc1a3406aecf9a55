"""Peak memory (RSS) of rba's streamed statistics vs the naive keep-every-hidden-state approach, as the
calibration set grows.

Each measurement runs in a fresh interpreter (``--worker``) and reads its own ``ru_maxrss``: the model is
built, then the calibration images are generated batch by batch (so data never dominates), then either

* **rba**: ``capture_statistics`` with every span, then every span's fit from the statistics, or
* **naive**: every boundary's vectors kept in memory (float32), then the paper's code's fit for one span:
  ``torch.linalg.lstsq`` in float32 on the materialised states (a ones column appended, no ridge).

Model: a random-weight ViT with ViT-Tiny widths (12 blocks, width 192, 3 heads), 32 px images, patch 8 →
17 tokens per image. A naive run whose predicted peak exceeds the memory budget is not started; the report
says where naive stops fitting (measured, then extrapolated linearly from the measured peaks).

    python benchmarks/memory.py             # n = 1k, 4k, 16k
    python benchmarks/memory.py --quick     # n = 64, 256 on a tiny ViT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C
import numpy as np

SCRIPT = str(Path(__file__).resolve())


class LazyImages:
    """A deterministic sequence of N random uint8 images generated per slice: O(batch) memory."""

    def __init__(self, n: int, size: int, seed: int = 0):
        self.n, self.size, self.seed = n, size, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index):
        if isinstance(index, slice):
            start, stop, _ = index.indices(self.n)
            rng = np.random.default_rng((self.seed, start))
            return rng.integers(0, 256, size=(stop - start, 3, self.size, self.size), dtype=np.uint8)
        return self[index : index + 1][0]


def model_config(quick: bool):
    if quick:
        return dict(depth=4, width=32, heads=2, image_size=32, patch=8)
    return dict(depth=12, width=192, heads=3, image_size=32, patch=8)


def worker(method: str, n: int, quick: bool, batch: int) -> dict:
    import time

    import torch

    from rba.adapters import create_adapter
    from rba.capture import capture_statistics
    from rba.fit import fit_span

    # one thread: peak memory does not depend on it, and on a shared 2-core machine two threads stall on
    # every small op (see benchmarks/RESULTS.md)
    torch.set_num_threads(1)
    spec = model_config(quick)
    with C.temp_cache() as cache:
        cfg = C.vit_config(cache, calibration=n, eval=0, **spec)
    adapter = create_adapter(cfg)
    adapter.boundary_shapes()
    images = LazyImages(n, spec["image_size"])
    base = C.peak_rss_mb()
    t0 = time.perf_counter()
    pairs = adapter.valid_spans()
    out: dict = {"method": method, "n": n, "baseline_mb": base}
    if method == "rba":
        stats = capture_statistics(adapter, images, pairs=pairs, batch_size=batch, progress=False)
        for s in pairs:
            fit_span(stats, s, "affine", 1e-6)
        out["held_mb"] = (sum(g.numel() for g in stats.gram) + sum(c.numel() for c in stats.cross.values())) * 8 / 2**20
        out["vectors"] = stats.n
    else:
        naive = C.Naive(adapter, None, batch_size=batch)
        naive.materialise(images, batch_size=batch)
        out["held_mb"] = naive.nbytes() / 2**20
        out["vectors"] = int(naive.states[0].shape[0])
        naive.fit((0, adapter.num_blocks))
    out["time_s"] = time.perf_counter() - t0
    out["peak_mb"] = C.peak_rss_mb()
    return out


def predicted_naive_mb(n: int, quick: bool) -> float:
    """States (float32, every boundary) + what the float32 lstsq builds on top (the input with its ones column,
    LAPACK's copies of input and targets, the solution's work arrays): estimated (not measured) as 6 float32
    copies of one boundary's vectors; only used to skip a run that would not fit the memory budget."""
    spec = model_config(quick)
    tokens = (spec["image_size"] // spec["patch"]) ** 2 + 1
    per_boundary = n * tokens * spec["width"] * 4
    return (per_boundary * (spec["depth"] + 1) + per_boundary * 6) / 2**20


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--worker", choices=["rba", "naive"], help=argparse_hidden())
    p.add_argument("--n", type=int, nargs="*", default=None, help="calibration sizes (default 1000 4000 16000)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--budget-mb", type=float, default=None,
                   help="do not start a naive run predicted to exceed this (default: 60%% of MemAvailable)")
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.n[0], args.quick, args.batch)), flush=True)
        return
    C.setup(args)
    sizes = args.n or ([64, 256] if args.quick else [1000, 4000, 16000])
    budget = args.budget_mb or 0.6 * C.available_mb()
    spec = model_config(args.quick)
    print(f"model: random ViT, depth {spec['depth']}, width {spec['width']}, {spec['image_size']} px, patch "
          f"{spec['patch']}; memory budget for naive runs {budget:,.0f} MiB", flush=True)
    jobs, rows = [], []
    for n in sizes:
        for method in ("rba", "naive"):
            if method == "naive" and predicted_naive_mb(n, args.quick) > budget:
                rows.append({"method": method, "n": n, "error": f"skipped: predicted {predicted_naive_mb(n, args.quick):,.0f} "
                                                                   f"MiB > budget {budget:,.0f} MiB"})
                continue
            jobs.append((method, n))

    def one(job):
        method, n = job
        extra = ["--quick"] if args.quick else []
        r = C.run_fresh([SCRIPT, "--worker", method, "--n", str(n), "--batch", str(args.batch), *extra])
        r.setdefault("method", method)
        r.setdefault("n", n)
        print(f"  {method} n={n}: {r}", flush=True)
        return r

    # quick mode: the tiny workers run side by side (their RSS does not depend on it); full runs one at a time
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=len(jobs) if args.quick else 1) as pool:
        rows += list(pool.map(one, jobs))
    rows.sort(key=lambda r: (r["n"], r["method"] != "rba"))
    for r in rows:
        if "peak_mb" in r:
            r["increase_mb"] = r["peak_mb"] - r["baseline_mb"]
    C.table(rows, ["method", "n", "vectors", "baseline_mb", "peak_mb", "increase_mb", "held_mb", "time_s", "error"],
            title="peak RSS (fresh process per row)")
    rba = {r["n"]: r for r in rows if r["method"] == "rba" and "peak_mb" in r}
    naive = {r["n"]: r for r in rows if r["method"] == "naive" and "peak_mb" in r}
    common = sorted(set(rba) & set(naive))
    for n in common:
        C.ratio_line(f"peak RSS naive / rba [n={n}]", naive[n]["peak_mb"] / rba[n]["peak_mb"],
                     detail=f"{naive[n]['peak_mb']:,.0f} MiB vs {rba[n]['peak_mb']:,.0f} MiB; increase over the loaded "
                            f"model {naive[n]['increase_mb']:,.0f} vs {rba[n]['increase_mb']:,.0f} MiB")
    if len(rba) >= 2:
        lo, hi = min(rba), max(rba)
        C.ratio_line(f"rba peak RSS growth n={lo}→{hi}", rba[hi]["peak_mb"] / rba[lo]["peak_mb"],
                     target="flat (~1x)", met=rba[hi]["peak_mb"] / rba[lo]["peak_mb"] < 1.2,
                     detail=f"{rba[lo]['peak_mb']:,.0f} → {rba[hi]['peak_mb']:,.0f} MiB for {hi // lo}x the samples")
    if len(naive) >= 2:
        ns = np.array(sorted(naive), dtype=float)
        peaks = np.array([naive[int(n)]["peak_mb"] for n in ns])
        slope, icpt = np.polyfit(ns, peaks, 1)
        avail = C.available_mb()
        fits_up_to = (avail - icpt) / slope if slope > 0 else float("inf")
        print(f"naive peak ≈ {icpt:,.0f} MiB + {slope * 1000:,.1f} MiB per 1000 samples (linear fit); this machine's "
              f"MemAvailable now is {avail:,.0f} MiB, so naive stops fitting at n ≈ {fits_up_to:,.0f} samples "
              f"({fits_up_to * ((spec['image_size'] // spec['patch']) ** 2 + 1):,.0f} vectors) of this model", flush=True)
        C.ratio_line(f"naive peak RSS growth n={int(ns[0])}→{int(ns[-1])}", peaks[-1] / peaks[0],
                     detail=f"{peaks[0]:,.0f} → {peaks[-1]:,.0f} MiB")
    C.write_json(args.json, {"rows": rows})


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
