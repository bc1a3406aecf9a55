"""Exhaustive proxy sweep: every configuration of a 12-block model (75,025 of them) scored from the statistics
alone, and how well the proxy ranks configurations against full evaluations.

Proxies (statistics only, lower = predicted better, summed over the configuration's spans):
``ls_residual`` (the one search's screening uses: ``search.objective.Objective.proxy``), ``-br`` (the paper's
metric), ``1-cosine`` and ``1-cka``. The sweep is a dynamic programme over boundaries that builds every
configuration's span membership and proxy sums as arrays (no Python loop over configurations), plus its FLOPs
fraction from the cost model, and the proxy/FLOPs Pareto front.

Fidelity of the proxy: Spearman rank correlation between each proxy and the full evaluation (fidelity, and
accuracy where labels exist) on a random sample of configurations: all-MiniLM-L6-v2 (real, 6 blocks) and the
12-block model (random weights: a check of the statistics/evaluation agreement, not of a trained model).

    python benchmarks/proxy_sweep.py            # ViT-B-size 12-block model + MiniLM
    python benchmarks/proxy_sweep.py --quick    # tiny 12-block ViT
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C
import numpy as np

PROXIES = ["ls_residual", "-br", "1-cosine", "1-cka"]


def span_proxies(stats, pairs, ridge: float) -> np.ndarray:
    """(P, 4) array: each proxy's value for every span, from the statistics."""
    from rba.metrics import BlockRedundancy, Cosine, LinearCKA, LSResidual

    ls, br, cos, cka = LSResidual(ridge), BlockRedundancy(), Cosine(), LinearCKA()
    return np.array([[ls(stats, s), -br(stats, s), 1 - cos(stats, s), 1 - cka(stats, s)] for s in pairs])


def sweep(num_blocks: int, pairs, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every configuration (DP over boundaries, last block first): its span membership (N, P) bool and the
    sums of ``values`` (P, M) over its spans (N, M)."""
    index = {p: k for k, p in enumerate(pairs)}
    by_start: dict[int, list[int]] = {}
    for i, j in pairs:
        by_start.setdefault(i, []).append(j)
    P, M = values.shape
    member: list = [None] * (num_blocks + 1)
    sums: list = [None] * (num_blocks + 1)
    member[num_blocks] = np.zeros((1, P), dtype=bool)
    sums[num_blocks] = np.zeros((1, M))
    for k in range(num_blocks - 1, -1, -1):
        ms, ss = [member[k + 1]], [sums[k + 1]]
        for j in by_start.get(k, []):
            m = member[j].copy()
            m[:, index[(k, j)]] = True
            ms.append(m)
            ss.append(sums[j] + values[index[(k, j)]])
        member[k], sums[k] = np.concatenate(ms), np.concatenate(ss)
    return member[0], sums[0]


def pareto_mask(proxy: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Non-dominated points minimising both (vectorised: sort by cost, keep strict running minima of proxy)."""
    order = np.lexsort((proxy, cost))
    p = proxy[order]
    best = np.minimum.accumulate(np.concatenate([[np.inf], p[:-1]]))
    keep = np.zeros(len(p), dtype=bool)
    keep[order] = p < best
    return keep


def spearman(a, b) -> float:
    import pandas as pd

    return float(pd.Series(np.asarray(a, float)).corr(pd.Series(np.asarray(b, float)), method="spearman"))


def run_sweep(label: str, session) -> dict:
    stats = session.stats
    pairs = list(session.pairs)
    L = session.adapter.num_blocks
    cost = session.cost_model
    base = cost.cost([])["flops"]
    t_scores, values = C.timed(lambda: span_proxies(stats, pairs, session.cfg.fit.ridge))
    dflops = np.array([[cost.cost([s])["flops"] - base] for s in pairs])
    t_sweep, (member, sums) = C.timed(lambda: sweep(L, pairs, np.hstack([values, dflops])))
    flops_frac = (base + sums[:, -1]) / base
    t_front, front = C.timed(lambda: pareto_mask(sums[:, 0], flops_frac))
    n = len(member)
    expected = C.count_configurations(L, pairs)[0]
    assert n == expected, f"sweep found {n} configurations, the count says {expected}"
    # spot check against direct sums
    rng = np.random.default_rng(0)
    for r in rng.choice(n, size=min(50, n), replace=False):
        spans = [pairs[k] for k in np.flatnonzero(member[r])]
        direct = sum(values[pairs.index(s), 0] for s in spans)
        assert abs(direct - sums[r, 0]) <= 1e-9 * max(1.0, abs(direct)), (spans, direct, sums[r, 0])
        assert abs(cost.cost(spans)["flops_frac"] - flops_frac[r]) < 1e-9
    total = t_scores + t_sweep + t_front
    best = [[pairs[k] for k in np.flatnonzero(member[r])] for r in np.flatnonzero(front)]
    out = {"label": label, "blocks": L, "spans": len(pairs), "configurations": n, "span_scores_s": t_scores,
           "sweep_s": t_sweep, "front_s": t_front, "total_s": total, "configs_per_s": n / total,
           "configs_per_s_sweep_only": n / t_sweep, "front_size": int(front.sum()),
           "front_examples": [C.spans_text(b) for b in best[:: max(1, len(best) // 6)]]}
    print(f"  {label}: {n:,} configurations; span scores {C.fmt_s(t_scores)}, sweep {C.fmt_s(t_sweep)}, "
          f"front {C.fmt_s(t_front)} ({out['front_size']} configurations on the proxy/FLOPs front)", flush=True)
    return out


def run_fidelity(label: str, session, count: int, seed: int = 0) -> dict:
    """Spearman of each proxy vs full evaluations of ``count`` random configurations."""
    pairs = list(session.pairs)
    values = span_proxies(session.stats, pairs, session.cfg.fit.ridge)
    configs = C.random_configurations(session.adapter.num_blocks, pairs, count, seed=seed)
    _ = session.evaluator  # cache build is one-time, not part of the trials
    rows, times = [], []
    for spans in configs:
        t, r = C.timed(lambda: C.rba_trial(session, spans))
        times.append(t)
        proxy = {name: sum(values[pairs.index(s), m] for s in spans) for m, name in enumerate(PROXIES)}
        rows.append({"spans": C.spans_text(spans), "fidelity": r["fidelity"], "accuracy": r["accuracy"]} | proxy)
    out = {"label": label, "configurations": len(rows), "trial_median_s": C.median(times), "rows": rows}
    for name in PROXIES:
        out[f"spearman_fidelity_{name}"] = spearman([-r[name] for r in rows], [r["fidelity"] for r in rows])
        if session.need_labels:
            out[f"spearman_accuracy_{name}"] = spearman([-r[name] for r in rows], [r["accuracy"] for r in rows])
    return out


def main() -> None:
    from rba.session import Session

    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--sample", type=int, default=30, help="configurations evaluated fully for the rank correlation")
    p.add_argument("--skip-minilm", action="store_true")
    args = p.parse_args()
    C.setup(args)
    sweeps, fids = [], []
    with C.temp_cache() as cache:
        if args.quick:
            cfg = C.vit_config(cache, depth=12, width=16, heads=2, image_size=32, patch=8, calibration=64, eval=32)
            s = Session(cfg, need_labels=False, progress=False, measure_latency=False)
            sweeps.append(run_sweep("tiny 12-block ViT", s))
            fids.append(run_fidelity("tiny 12-block ViT", s, count=8))
        else:
            cfg = C.vit_config(cache, depth=12, width=768, image_size=64, calibration=512, eval=256)
            s = Session(cfg, need_labels=False, progress=False, measure_latency=False)
            t_cap, _ = C.timed(lambda: s.stats)
            print(f"  ViT-B-size statistics captured in {C.fmt_s(t_cap)} (not part of the sweep)", flush=True)
            sweeps.append(run_sweep("ViT-B/16 arch, random weights (12 blocks, width 768)", s))
            fids.append(run_fidelity("ViT-B/16 arch, random weights", s, count=args.sample))
            del s
            C.free()
            if not args.skip_minilm:
                s = Session(C.minilm_config(cache), need_labels=True, progress=False, measure_latency=False)
                sweeps.append(run_sweep("all-MiniLM-L6-v2 (6 blocks)", s))
                fids.append(run_fidelity("all-MiniLM-L6-v2, reviews", s, count=args.sample))
    C.table([{k: v for k, v in s.items() if k != "front_examples"} for s in sweeps], title="exhaustive proxy sweep")
    for s in sweeps:
        print(f"  proxy/FLOPs front of {s['label']} (sample): {', '.join(s['front_examples'])}")
    rows = []
    for f in fids:
        for name in PROXIES:
            rows.append({"model": f["label"], "proxy": f"Σ {name}", "configs": f["configurations"],
                         "spearman vs fidelity": f[f"spearman_fidelity_{name}"],
                         "spearman vs accuracy": f.get(f"spearman_accuracy_{name}", float("nan"))})
    C.table(rows, title="rank correlation of the proxy (negated: higher = predicted better) with full evaluations")
    for s, f in zip(sweeps, fids):
        est = s["configurations"] * f["trial_median_s"]
        print(f"  full evaluation of all {s['configurations']:,} configurations of {s['label']} would take ≈ "
              f"{est / 3600:.1f} h at the measured {C.fmt_s(f['trial_median_s'])} per rba trial "
              f"(calculation, not measured)", flush=True)
    for s in sweeps:
        big = s["blocks"] >= 12
        C.ratio_line(f"proxy sweep configurations/s [{s['label']}]", s["configs_per_s"],
                     target="all 75,025 in < 10 s" if big else None, met=(s["total_s"] < 10) if big else None,
                     unit=" configurations/s",
                     detail=f"{s['configurations']:,} configurations in {C.fmt_s(s['total_s'])} "
                            f"(sweep alone {s['configs_per_s_sweep_only']:,.0f}/s)")
    for f in fids:
        C.ratio_line(f"spearman(-Σ ls_residual, fidelity) [{f['label']}]", f["spearman_fidelity_ls_residual"],
                     detail=f"{f['configurations']} random configurations; vs accuracy "
                            f"{f.get('spearman_accuracy_ls_residual', float('nan')):.2f}", unit="")
    C.write_json(args.json, {"sweeps": sweeps, "fidelity": fids})


if __name__ == "__main__":
    main()
