"""Per-trial time vs number of blocks and width (random-weight ViTs, measured), plotted to
``benchmarks/out/scaling.png``, and an extrapolation to ViT-B/16 and ViT-L/16 at 224 px computed from the FLOP
rates measured here (a calculation, not a measurement).

Per model: statistics captured once; then for random configurations the rba trial (fits from statistics +
evaluation with prefix reuse, no memo: cold) and the full forward pass over the probe and eval splits (what
the naive method pays per trial before its lstsq fits). The FLOP rate is the cost model's FLOPs / the measured
full-forward time.

    python benchmarks/scaling.py            # depth 4/8/12 at width 384; width 192/384/768 at depth 12
    python benchmarks/scaling.py --quick    # tiny models
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C
import numpy as np
import torch


def measure(depth: int, width: int, *, cache, n: int, image_size: int, patch: int, configs: int) -> dict:
    from rba.capture import iter_batches
    from rba.session import Session

    cfg = C.vit_config(cache, depth=depth, width=width, heads=max(1, width // 64), image_size=image_size,
                       patch=patch, calibration=n, probe=n, eval=n)
    s = Session(cfg, need_labels=True, progress=False, measure_latency=False)
    t_capture, _ = C.timed(lambda: s.stats)
    _ = s.evaluator, s.cost_model  # built once, outside the timed trials
    adapter = s.adapter

    @torch.inference_mode()
    def full_forward():
        for split in (s.splits.probe, s.splits.eval):
            for _, chunk in iter_batches(split.samples, cfg.evaluate.batch_size):
                h, ctx = adapter.embed(adapter.collate(chunk))
                adapter.pool(adapter.last_boundary(h, ctx), ctx)

    t_full = C.median(C.repeat(full_forward, repeats=2, warmup=1))
    rng = np.random.default_rng(0)
    counts = C.count_configurations(adapter.num_blocks, s.pairs)
    trials, naive_fwd, probe_fit = [], [], []
    naive = C.Naive(adapter, s.splits, batch_size=cfg.evaluate.batch_size)
    for _ in range(configs):
        spans = C.sample_configuration(adapter.num_blocks, s.pairs, rng, counts) or [s.pairs[0]]
        s.clear_caches()
        trials.append(C.timed(lambda: C.rba_trial(s, spans))[0])
        # the naive trial's forward part with the same maps: from the input, probe and eval (its lstsq excluded)
        maps = s.maps(spans)
        naive_fwd.append(C.timed(lambda: [naive.pooled(sp.samples, spans, maps) for sp in (s.splits.probe,
                                                                                           s.splits.eval)])[0])
    # the probe classifier alone (a floor under every trial, whatever the model)
    pooled = s.evaluator.parts["probe"].pooled
    from rba.evaluate import LinearProbe

    probe_fit.append(C.timed(lambda: LinearProbe(cfg.evaluate.probe_c).fit(pooled, s.evaluator.parts["probe"].labels,
                                                                           s.evaluator.num_classes))[0])
    flops = s.cost_model.total_flops * 2 * n
    return {"depth": depth, "width": width, "tokens": (image_size // patch) ** 2 + 1, "samples": n,
            "capture_s": t_capture, "full_forward_s": t_full, "naive_forward_s": C.median(naive_fwd),
            "rba_trial_s": C.median(trials), "probe_fit_s": C.median(probe_fit), "gflops_per_s": flops / t_full / 1e9,
            "ratio": (C.median(naive_fwd) + C.median(probe_fit)) / C.median(trials)}


def expected_work(num_blocks: int, samples: int = 20000, seed: int = 0) -> dict:
    """Over uniformly random configurations of an all-spans-valid model: the fraction of block work the naive
    trial runs (unreplaced blocks) and the fraction rba runs (unreplaced blocks after the first span's start),
    and the mean number of spans."""
    pairs = [(i, j) for i in range(num_blocks) for j in range(i + 1, num_blocks + 1)]
    counts = C.count_configurations(num_blocks, pairs)
    rng = np.random.default_rng(seed)
    naive = rba = nspans = 0.0
    for _ in range(samples):
        spans = C.sample_configuration(num_blocks, pairs, rng, counts)
        replaced = sum(j - i for i, j in spans)
        start = spans[0][0] if spans else num_blocks
        naive += (num_blocks - replaced) / num_blocks
        rba += (num_blocks - start - replaced) / num_blocks
        nspans += len(spans)
    return {"naive_frac": naive / samples, "rba_frac": rba / samples, "spans": nspans / samples}


def lstsq_rate(m: int = 20000, n: int = 385) -> float:
    """Seconds per (m · n²) of the naive method's solver on this machine (the paper's code's
    ``torch.linalg.lstsq`` in float32, default driver), from one m × n system with n - 1 targets."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(m, n, generator=g), torch.randn(m, n - 1, generator=g)
    t = C.median(C.repeat(lambda: torch.linalg.lstsq(a, b), repeats=2, warmup=1))
    return t / (m * n * n)


def extrapolate(rows: list[dict], *, n_eval: int = 1000, n_probe: int = 1000, n_cal: int = 3000,
                quick: bool = False) -> list[dict]:
    """ViT-B/16 and ViT-L/16 at 224 px: per-trial time from measured FLOP rates (calculation)."""
    ref = max(rows, key=lambda r: (r["width"], r["depth"]))
    rate = ref["gflops_per_s"] * 1e9
    probe_s = ref["probe_fit_s"] * (n_probe / ref["samples"])  # L-BFGS cost ~ linear in samples
    sec_per = lstsq_rate(2000, 65) if quick else lstsq_rate()
    out = []
    for name, depth, width in (("ViT-B/16", 12, 768), ("ViT-L/16", 24, 1024)):
        T = 197
        block = 2 * T * 12 * width * width + 2 * 2 * T * T * width  # 2·MACs: projections + MLP, attention
        fwd = depth * block * (n_eval + n_probe)
        w = expected_work(depth, samples=500 if quick else 20000)
        fit_lstsq = w["spans"] * sec_per * (n_cal * T) * (width + 1) ** 2
        naive = w["naive_frac"] * fwd / rate + fit_lstsq + probe_s
        rba = w["rba_frac"] * fwd / rate + probe_s
        out.append({"model": name, "GFLOPs/sample (blocks)": depth * block / 1e9, "rate GFLOP/s": rate / 1e9,
                    "naive forward frac": w["naive_frac"], "rba forward frac": w["rba_frac"],
                    "spans/config": w["spans"], "naive lstsq s": fit_lstsq, "naive trial s": naive,
                    "rba trial s": rba, "ratio": naive / rba,
                    "naive states GB": n_cal * T * width * (depth + 1) * 4 / 1e9,
                    "rba stats GB (all spans)": 8 * ((depth + 1) * (width + 1) ** 2
                                                     + depth * (depth + 1) / 2 * (width + 1) * width) / 1e9})
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for ax, key, fixed in ((axes[0], "depth", "width"), (axes[1], "width", "depth")):
        sel = [r for r in rows if r.get("axis") == key]
        sel.sort(key=lambda r: r[key])
        x = [r[key] for r in sel]
        ax.plot(x, [r["full_forward_s"] for r in sel], "o:", label="unmodified forward of probe+eval")
        ax.plot(x, [r["naive_forward_s"] + r["probe_fit_s"] for r in sel], "o-",
                label="naive trial without its lstsq fits (forward + probe)")
        ax.plot(x, [r["rba_trial_s"] for r in sel], "s-", label="rba trial (cold, median)")
        ax.plot(x, [r["probe_fit_s"] for r in sel], "^--", label="probe classifier fit alone")
        ax.set_xlabel(key)
        ax.set_ylabel("seconds")
        ax.set_yscale("log")
        if sel:
            ax.set_title(f"per-trial time vs {key} ({fixed} {sel[0][fixed]}, {sel[0]['samples']}+{sel[0]['samples']} "
                         f"samples, {sel[0]['tokens']} tokens)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=None, help="probe = eval = calibration samples per model")
    p.add_argument("--configs", type=int, default=None, help="random configurations per model")
    p.add_argument("--replot", type=Path, default=None, metavar="JSON",
                   help="only redraw the plot from a --json file of an earlier run")
    p.add_argument("--plot", type=Path, default=None,
                   help="plot file (default benchmarks/out/scaling.png; scaling_quick.png with --quick)")
    args = p.parse_args()
    C.setup(args)
    args.plot = args.plot or C.OUT_DIR / ("scaling_quick.png" if args.quick else "scaling.png")
    if args.replot:
        import json

        plot(json.loads(args.replot.read_text())["rows"], args.plot)
        print(f"plot: {args.plot}")
        return
    if args.quick:
        depths, depth_width, widths, width_depth = [2, 4], 32, [16, 32], 4
        n, size, patch, configs = args.samples or 32, 32, 8, args.configs or 2
    else:
        depths, depth_width, widths, width_depth = [4, 8, 12], 384, [192, 384, 768], 12
        n, size, patch, configs = args.samples or 256, 64, 16, args.configs or 5
    rows, done = [], {}
    with C.temp_cache() as cache:
        for axis, points in (("depth", [(d, depth_width) for d in depths]), ("width", [(width_depth, w) for w in widths])):
            for d, w in points:
                if (d, w) not in done:  # a model on both axes is measured once
                    done[(d, w)] = measure(d, w, cache=cache, n=n, image_size=size, patch=patch, configs=configs)
                    print(f"  depth {d} width {w}: {done[(d, w)]}", flush=True)
                rows.append(done[(d, w)] | {"axis": axis})
    C.table(rows, ["axis", "depth", "width", "tokens", "samples", "capture_s", "full_forward_s", "naive_forward_s",
                   "rba_trial_s", "probe_fit_s", "gflops_per_s", "ratio"],
            title="per-trial time (measured; ratio = (naive forward + probe fit) / rba trial: naive without its lstsq)")
    plot(rows, args.plot)
    print(f"plot: {args.plot}", flush=True)
    ext = extrapolate(rows, quick=args.quick)
    C.table(ext, title="extrapolation to 224 px, probe 1000 + eval 1000, calibration 3000 "
                       "(calculation from the measured rates, not a measurement)")
    for r in rows:
        C.ratio_line(f"naive trial without lstsq / rba trial [depth {r['depth']}, width {r['width']}]", r["ratio"],
                     detail=f"{C.fmt_s(r['naive_forward_s'] + r['probe_fit_s'])} vs {C.fmt_s(r['rba_trial_s'])}; "
                            f"unmodified forward {C.fmt_s(r['full_forward_s'])} at {r['gflops_per_s']:.0f} GFLOP/s")
    for e in ext:
        C.ratio_line(f"extrapolated naive / rba trial [{e['model']}, 224 px]", e["ratio"],
                     detail=f"{e['naive trial s']:.0f} s vs {e['rba trial s']:.0f} s per trial (calculation)")
    C.write_json(args.json, {"rows": rows, "extrapolation": ext})


if __name__ == "__main__":
    main()
