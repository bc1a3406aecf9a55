"""Per-trial cost of rba against the naive method (the paper's published code path).

Naive: keep every hidden state of the calibration split in memory, fit each span with the authors' solver
(``torch.linalg.lstsq`` in float32 on the materialised states, default driver, no ridge; a ones column for the
affine map), full forward pass over the probe and eval splits for each trial, same probe classifier. rba: span
fits in closed form from the streamed statistics, evaluation with prefix reuse (cached boundary states of the
probe/eval splits) and the prefix memo.

Both methods score the same random configurations, alternating per configuration (equal load); their accuracies,
fidelities and pooled features are compared after the timed calls, to stated tolerances (TOL_*). Printed:
one-time setup costs, span fits from statistics (cold = first fit on freshly loaded statistics, the headline;
warm = cache hit) vs the authors' lstsq over all spans, and per-trial time (median over the configurations),
each with its ratio. Time to front (an Optuna study on the naive objective vs rba's search) is
``time_to_front.py``.

    python benchmarks/per_trial.py            # all-MiniLM-L6-v2 + EfficientNet-Lite0, 10 configurations each
    python benchmarks/per_trial.py --quick    # tiny random models (smoke test)
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C
import numpy as np
import torch

#: equality of the two methods' results. The naive fit is the authors' (float32 lstsq, default driver and
#: rcond = float32 eps · max(m, n), no ridge); rba's is a ridge fit (λ = 1e-6 · mean diagonal) from float64
#: statistics. The authors' solver truncates singular values below that rcond (≈ 1e-2 of the largest at 80k
#: MiniLM tokens, ≈ 0.2 at Lite0's 2M pixels), so the two maps differ in the weak directions and results agree
#: to that, not to rounding. Derived from the measured run (`--models minilm,lite0 --threads 1
#: --minilm-calibration 3000`, 10 configurations each, benchmarks/RESULTS.md §1): max |Δfidelity| 8.1e-4 /
#: 9.3e-4, max |Δaccuracy| 0.005 / 0.007, max relative Δpooled eval features 0.029 / 0.066 (MiniLM / Lite0);
#: each tolerance is about twice the larger of the two.
TOL_FIDELITY = 2e-3
TOL_ACCURACY = 0.015
TOL_POOLED = 0.15


def fits(session, naive, pairs, *, lstsq_spans: int | None, f64: bool = False) -> dict:
    """All span fits from the statistics vs the authors' lstsq, interleaved (equal load).

    Cold (the headline) = the first fit of every span on freshly loaded statistics: the per-boundary caches
    (factorisation, conditioning check) emptied first, so each boundary's Cholesky and eigen-analysis are paid.
    One cold pass over all spans runs before each timed lstsq span and one after the last, so the two sides
    alternate within one time window; the cold figure is the median of those passes. Warm = the same fits with
    those caches kept (a cache hit, as in a search that fits a span whose start boundary it has seen).
    Equality checks run after the timed calls."""
    from rba.fit import fit_span

    stats, ridge = session.stats, session.cfg.fit.ridge

    def all_cold() -> float:
        stats.scratch.clear()
        return sum(C.timed(lambda: fit_span(stats, s, "affine", ridge))[0] for s in pairs)

    chosen = list(pairs) if lstsq_spans is None else list(pairs)[:: max(1, len(pairs) // lstsq_spans)][:lstsq_spans]
    passes, lst, lst64, sol = [], {}, {}, {}
    for s in chosen:  # timed: a cold pass of rba, then the authors' fit of one span alone
        passes.append(all_cold())
        lst[s], sol[s] = C.timed(lambda: naive.fit(s))
        if f64:
            lst64[s], _ = C.timed(lambda: naive.fit_f64(s))
    passes.append(all_cold())
    cold_total = C.median(passes)
    warm = {s: C.median(C.repeat(lambda: fit_span(stats, s, "affine", ridge), repeats=3, warmup=0)) for s in pairs}
    err_pred, err_sse = 0.0, 0.0
    for s in chosen:  # untimed: same problem, same predictions (to the ridge / float32 precision)
        w, b = sol[s]
        f = fit_span(stats, s, "affine", ridge)
        x = torch.as_tensor(naive.states[s[0]]).double()  # numpy on the CPU, a tensor where the model runs
        f = dataclasses.replace(f, tensors={k: t.to(x.device) for k, t in f.tensors.items()})
        ref, got = x @ w.double() + b.double(), f.predict(x)
        err_pred = max(err_pred, float((got - ref).norm() / ref.norm()))
        sse = naive.sse(s, w, b)
        err_sse = max(err_sse, abs(f.sse - sse) / max(sse, 1e-30))
    n_all = len(pairs)
    lstsq_total = sum(lst.values()) / len(lst) * n_all  # per-span mean × all spans when sampled
    out = {
        "spans": n_all,
        "lstsq_spans_timed": len(lst),
        "cold_rounds": len(passes),
        "stats_fit_total_s": cold_total,
        "stats_fit_cold_passes_s": passes,
        "stats_fit_warm_total_s": sum(warm.values()),
        "stats_fit_per_span_s": cold_total / n_all,
        "lstsq_total_s": lstsq_total,
        "lstsq_per_span_s": sum(lst.values()) / len(lst),
        "lstsq_span_s": {f"{i}-{j}": t for (i, j), t in lst.items()},
        "ratio": lstsq_total / cold_total,
        "ratio_warm": lstsq_total / sum(warm.values()),
        "max_rel_prediction_diff": err_pred,
        "max_rel_sse_diff": err_sse,
        "vectors": stats.n,
    }
    if f64:
        out["lstsq_f64_total_s"] = sum(lst64.values()) / len(lst64) * n_all
        out["ratio_f64"] = out["lstsq_f64_total_s"] / cold_total
    out["cold_breakdown_s"] = cold_breakdown(stats, pairs, ridge)
    return out


def cold_breakdown(stats, pairs, ridge: float, passes: int = 15) -> dict[str, float]:
    """Where a cold pass goes (untimed by the ratio; after it): the same work as ``fit_span`` over every span,
    split into its three phases in the order a fit meets them, median over ``passes``: the ridged factorisation and
    inverse of each start boundary, the conditioning check of each start boundary (which may reuse that inverse),
    then the per-span products (every per-boundary result cached by then). ``gemm_s``: the W = (A + λM)⁻¹B
    products alone, timed on the cached inverses."""
    from rba.fit import _inverse, fit_span, rank_deficient

    starts = sorted({i for i, _ in pairs})
    phases = {"certificate_s": [], "inverse_s": [], "solves_s": [], "gemm_s": []}
    for _ in range(passes):
        stats.scratch.clear()
        phases["inverse_s"].append(C.timed(lambda: [_inverse(stats, i, ridge, (i, i + 1), with_bias=True)
                                                    for i in starts])[0])
        phases["certificate_s"].append(C.timed(lambda: [rank_deficient(stats, i) for i in starts])[0])
        phases["solves_s"].append(C.timed(lambda: [fit_span(stats, s, "affine", ridge) for s in pairs])[0])
        inv = {i: _inverse(stats, i, ridge, (i, i + 1), with_bias=True)[0] for i in starts}
        phases["gemm_s"].append(C.timed(lambda: [inv[i] @ stats.centred_cross[(i, j)] for i, j in pairs])[0])
    stats.scratch.clear()
    return {k: C.median(v) for k, v in phases.items()}


def bench_model(label: str, cfg, *, n_configs: int, lstsq_spans: int | None, seed: int = 0,
                profile: bool = False, f64: bool = False) -> dict:
    from rba.session import Session

    print(f"\n# {label}", flush=True)
    session = Session(cfg, need_labels=True, progress=False, measure_latency=False)
    setup = {}
    setup["load_model_s"], adapter = C.timed(lambda: session.adapter)
    splits = session.splits
    setup["rba_capture_s"], stats = C.timed(lambda: session.stats)
    if n_configs:
        setup["rba_cache_probe_eval_s"], _ = C.timed(lambda: session.evaluator)
        _ = session.cost_model  # FLOP counting, once (not part of a trial)
    naive = C.Naive(adapter, splits, ridge=cfg.fit.ridge, batch_size=cfg.capture.batch_size)
    setup["naive_materialise_s"], _ = C.timed(naive.materialise)
    setup["naive_states_mb"] = naive.nbytes() / 2**20
    naive.batch_size = cfg.evaluate.batch_size
    if n_configs:
        setup["naive_reference_s"], _ = C.timed(naive.prepare_reference)
    setup["vectors"] = stats.n
    setup["spans"] = len(session.pairs)
    C.table([{k: (C.fmt_s(v) if k.endswith("_s") else v) for k, v in setup.items()}], title=f"{label}: one-time setup")

    print(f"# span fits: load at start {C.load()}", flush=True)
    fit = fits(session, naive, session.pairs, lstsq_spans=lstsq_spans, f64=f64)
    print(f"# span fits: load at end {C.load()}", flush=True)
    row = {
        "spans": fit["spans"], "vectors": fit["vectors"],
        "stats fit (all, cold)": C.fmt_s(fit["stats_fit_total_s"]),
        "stats fit (all, warm = cache hit)": C.fmt_s(fit["stats_fit_warm_total_s"]),
        "authors' lstsq f32 (all)": C.fmt_s(fit["lstsq_total_s"]),
        "lstsq per span": C.fmt_s(fit["lstsq_per_span_s"]),
    }
    if f64:
        row["extra: numpy f64 ridge lstsq (all)"] = C.fmt_s(fit["lstsq_f64_total_s"])
    row |= {"max rel Δprediction": f"{fit['max_rel_prediction_diff']:.1e}",
            "max rel ΔSSE": f"{fit['max_rel_sse_diff']:.1e}"}
    C.table([row], title=f"{label}: span fits (lstsq timed on {fit['lstsq_spans_timed']} of {fit['spans']} spans; "
                         f"cold = median of {fit['cold_rounds']} passes interleaved with them)")
    b = fit["cold_breakdown_s"]
    print(f"# cold pass by phase (median of 15, after the timed passes): factorisations and inverses "
          f"{C.fmt_s(b['inverse_s'])}, conditioning checks {C.fmt_s(b['certificate_s'])}, per-span solves {C.fmt_s(b['solves_s'])} "
          f"(of which the W = (A + λM)⁻¹B products {C.fmt_s(b['gemm_s'])})", flush=True)

    if n_configs == 0:
        return {"label": label, "setup": setup, "fits": fit, "trials": [], "trial": None, "session": session,
                "naive": naive}
    configs = C.random_configurations(adapter.num_blocks, session.pairs, n_configs, seed=seed)
    rows = []
    # rba's caches batch texts by length: row r of its pooled eval representation is eval sample order[r]
    order = getattr(session.evaluator.parts["eval"], "order", None)
    order = torch.as_tensor(np.arange(len(splits.eval)) if order is None else np.asarray(order))
    text = bool(len(splits.eval.samples)) and isinstance(splits.eval.samples[0], str)
    # cold rba trials (fits and memo forgotten before each) next to the naive trial: the two sides alternate per
    # configuration, so both see the same machine load; results compared after the timed calls
    print(f"# trials (interleaved): load at start {C.load()}", flush=True)
    for spans in configs:
        session.clear_caches()
        t_rba, r = C.timed(lambda: C.rba_trial(session, spans))
        t_naive, n = C.timed(lambda: naive.trial(spans))
        ref = n["pooled_eval"][order]
        d_pool = float((r["pooled_eval"] - ref).norm() / ref.norm())
        row = {"spans": C.spans_text(spans), "naive_s": t_naive, "rba_cold_s": t_rba,
               "acc_naive": n["accuracy"], "acc_rba": r["accuracy"],
               "fid_naive": n["fidelity"], "fid_rba": r["fidelity"], "rel_dpooled": d_pool}
        if text:  # the naive method given rba's batching by length (isolates what statistics + prefix reuse buy)
            row["naive_by_length_s"], _ = C.timed(lambda: naive.trial(spans, by_length=True))
        rows.append(row)
        print(f"  {C.spans_text(spans)}: naive {C.fmt_s(t_naive)}, rba cold {C.fmt_s(t_rba)}"
              + (f", naive batched by length {C.fmt_s(row['naive_by_length_s'])}" if text else "")
              + f" (load {C.load()})", flush=True)
    print(f"# trials (interleaved): load at end {C.load()}", flush=True)
    # cold again, back to back (no naive trial in between: separates the memo's effect from the allocator and
    # cache effects of alternating with the naive method's large arrays)
    for row, spans in zip(rows, configs):
        session.clear_caches()
        row["rba_cold_b2b_s"], _ = C.timed(lambda: C.rba_trial(session, spans))
    # the same configurations as a search runs them: fits and prefix memo kept across trials
    session.clear_caches()
    for row, spans in zip(rows, configs):
        row["rba_search_s"], _ = C.timed(lambda: C.rba_trial(session, spans))
    for row in rows:
        row["ratio_cold"] = row["naive_s"] / row["rba_cold_s"]
        row["ratio_cold_b2b"] = row["naive_s"] / row["rba_cold_b2b_s"]
        row["ratio_search"] = row["naive_s"] / row["rba_search_s"]
        if text:
            row["ratio_search_by_length"] = row["naive_by_length_s"] / row["rba_search_s"]
    C.table(rows, ["spans", "naive_s"] + (["naive_by_length_s"] if text else []) +
            ["rba_cold_s", "rba_cold_b2b_s", "rba_search_s", "ratio_cold", "ratio_cold_b2b", "ratio_search"] +
            (["ratio_search_by_length"] if text else []) + ["acc_naive",
                   "acc_rba", "fid_naive", "fid_rba", "rel_dpooled"], title=f"{label}: trials")
    d_acc = max(abs(r["acc_naive"] - r["acc_rba"]) for r in rows)
    d_fid = max(abs(r["fid_naive"] - r["fid_rba"]) for r in rows)
    d_pool = max(r["rel_dpooled"] for r in rows)
    print(f"equal results: max |Δaccuracy| = {d_acc:.4f} (tol {TOL_ACCURACY}), max |Δfidelity| = {d_fid:.2e} "
          f"(tol {TOL_FIDELITY}), max relative Δpooled = {d_pool:.2e} (tol {TOL_POOLED})", flush=True)
    # checked after every number is printed and written (main): a difference fails the run, never loses it
    unequal = [f"{label}: {what} differ by {d:.3g} > {tol}" for what, d, tol in
               (("accuracies", d_acc, TOL_ACCURACY), ("fidelities", d_fid, TOL_FIDELITY),
                ("pooled features (relative)", d_pool, TOL_POOLED)) if d > tol]
    if profile:
        worst = max(zip(rows, configs), key=lambda rc: rc[0]["rba_cold_s"])[1]
        session.clear_caches()
        C.profile_top(lambda: C.rba_trial(session, worst), n=15, title=f"rba cold trial {C.spans_text(worst)}, {label}")
        C.profile_top(lambda: naive.trial(worst), n=10, title=f"naive trial {C.spans_text(worst)}, {label}")
        from rba.fit import fit_span

        session.stats.scratch.clear()
        C.profile_top(lambda: [fit_span(session.stats, s, "affine", cfg.fit.ridge) for s in session.pairs], n=8,
                      title=f"all {len(session.pairs)} span fits from statistics, {label}")
    trial = {
        "naive_median_s": C.median(r["naive_s"] for r in rows),
        "rba_cold_median_s": C.median(r["rba_cold_s"] for r in rows),
        "rba_search_median_s": C.median(r["rba_search_s"] for r in rows),
        "rba_cold_b2b_median_s": C.median(r["rba_cold_b2b_s"] for r in rows),
        "ratio_cold_b2b_median": C.median(r["ratio_cold_b2b"] for r in rows),
        "naive_by_length_median_s": C.median(r["naive_by_length_s"] for r in rows) if text else None,
        "ratio_search_by_length_median": C.median(r["ratio_search_by_length"] for r in rows) if text else None,
        "ratio_cold_median": C.median(r["ratio_cold"] for r in rows),
        "ratio_search_median": C.median(r["ratio_search"] for r in rows),
        "ratio_search_min": min(r["ratio_search"] for r in rows),
        "max_abs_d_accuracy": d_acc, "max_abs_d_fidelity": d_fid, "max_rel_d_pooled": d_pool,
    }
    return {"label": label, "setup": setup, "fits": fit, "trials": rows, "trial": trial, "session": session,
            "naive": naive, "unequal": unequal}


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--configs", type=int, default=10, help="random configurations per model")
    p.add_argument("--models", default="minilm,lite0", help="comma-separated: minilm, lite0 (quick mode: tiny-bert adds a tiny text model)")
    p.add_argument("--minilm-calibration", type=int, default=600,
                   help="MiniLM calibration documents (600 as studies/minilm_reviews.toml ≈ 16k tokens; 3000, the "
                        "paper's calibration size, ≈ 79k tokens)")
    p.add_argument("--lstsq-spans", type=int, default=None,
                   help="MiniLM: time lstsq on this many spans only (default all) and extrapolate per span (its "
                        "spans all solve the same n × 385 system); EfficientNet-Lite0's differ, all are timed")
    p.add_argument("--profile", action="store_true", help="cProfile the slowest rba trial, a naive trial and the fits")
    p.add_argument("--naive-f64", action="store_true",
                   help="also time the earlier float64 baseline (numpy lstsq on a ridge-augmented copy) as an extra, "
                        "labelled column of the span-fit table (never a headline)")
    args = p.parse_args()
    C.setup(args)
    results = []
    with C.temp_cache() as cache:
        if args.quick:
            cfgs = [("tiny ViT (random, synthetic images)", C.vit_config(cache, depth=4, width=32, heads=2,
                     image_size=32, patch=8, calibration=32, probe=32, eval=32))]
            if "tiny-bert" in args.models:
                cfgs.append(("tiny-bert (random, synthetic text)", C.tiny_bert_config(cache)))
            n_configs, lstsq = 3, None
        else:
            cfgs = []
            if "minilm" in args.models:
                n_cal = args.minilm_calibration
                cfgs.append((f"all-MiniLM-L6-v2, reviews (cal {n_cal} / probe 1000 / eval 1000)",
                             C.minilm_config(cache, calibration=n_cal)))
            if "lite0" in args.models:
                cfgs.append(("EfficientNet-Lite0, Fashion-MNIST 64 px (cal 2000 / probe 1000 / eval 1000)",
                             C.lite0_config(cache)))
            n_configs, lstsq = args.configs, args.lstsq_spans
        for label, cfg in cfgs:
            res = bench_model(label, cfg, n_configs=n_configs, lstsq_spans=lstsq if "MiniLM" in label else None,
                              profile=args.profile, f64=args.naive_f64)
            results.append(res)
            C.free()

    summary = []
    for r in results:
        f, t = r["fits"], r["trial"] or {k: float("nan") for k in ("naive_median_s", "rba_cold_median_s",
                                                                    "rba_search_median_s")}
        summary.append({"model": r["label"].split(" (")[0].split(",")[0],
                        "authors' lstsq f32 (all spans)": C.fmt_s(f["lstsq_total_s"]),
                        "stats fits, cold (all spans)": C.fmt_s(f["stats_fit_total_s"]),
                        "naive trial (median)": C.fmt_s(t["naive_median_s"]),
                        "rba trial cold (median)": C.fmt_s(t["rba_cold_median_s"]),
                        "rba trial in search (median)": C.fmt_s(t["rba_search_median_s"])})
    C.table(summary, title="summary (absolute times)")
    for r in results:
        name = r["label"].split(" (")[0].split(",")[0]
        f, t = r["fits"], r["trial"]
        C.ratio_line(f"span fit, lstsq / statistics, cold [{name}]", f["ratio"], target=">= 1000x",
                     met=f["ratio"] >= 1000,
                     detail=f"authors' float32 torch lstsq {C.fmt_s(f['lstsq_total_s'])} vs cold fits from statistics "
                            f"{C.fmt_s(f['stats_fit_total_s'])} for {f['spans']} spans; {f['vectors']:,} calibration "
                            f"vectors")
        C.ratio_line(f"span fit, lstsq / statistics, warm (cache hit) [{name}]", f["ratio_warm"],
                     detail=f"{C.fmt_s(f['stats_fit_warm_total_s'])}: per-boundary factorisation kept")
        if "ratio_f64" in f:
            C.ratio_line(f"span fit, extra column: numpy float64 ridge lstsq / statistics, cold [{name}]", f["ratio_f64"],
                         detail=f"{C.fmt_s(f['lstsq_f64_total_s'])}; the earlier, slower baseline, not the authors' fit")
        if t is None:
            continue
        C.ratio_line(f"trial, naive / rba cold [{name}]", t["ratio_cold_median"], target=">= 5x",
                     met=t["ratio_cold_median"] >= 5,
                     detail=f"median of {len(r['trials'])}, interleaved per configuration (equal load): "
                            f"{C.fmt_s(t['naive_median_s'])} vs {C.fmt_s(t['rba_cold_median_s'])}")
        C.ratio_line(f"trial, naive / rba cold back-to-back [{name}]", t["ratio_cold_b2b_median"],
                     detail=f"median of {len(r['trials'])}: {C.fmt_s(t['naive_median_s'])} vs "
                            f"{C.fmt_s(t['rba_cold_b2b_median_s'])}; rba side timed after the naive pass")
        C.ratio_line(f"trial, naive / rba in search [{name}]", t["ratio_search_median"],
                     detail=f"median of {len(r['trials'])}: {C.fmt_s(t['naive_median_s'])} vs "
                            f"{C.fmt_s(t['rba_search_median_s'])}; worst {t['ratio_search_min']:.2f}x; fits and memo "
                            f"kept; rba side timed after the naive pass")
        if t["ratio_search_by_length_median"] is not None:
            C.ratio_line(f"trial, naive batched by length / rba in search [{name}]", t["ratio_search_by_length_median"],
                         detail=f"median of {len(r['trials'])}: {C.fmt_s(t['naive_by_length_median_s'])} vs "
                                f"{C.fmt_s(t['rba_search_median_s'])}; the naive method given rba's length batching")
    C.write_json(args.json, {"results": [{k: v for k, v in r.items() if k not in ("session", "naive")} for r in results]})
    unequal = [u for r in results for u in r.get("unequal", [])]
    if unequal:  # after every number is out: the run fails, its results stay
        raise SystemExit("results differ beyond tolerance: " + "; ".join(unequal))


if __name__ == "__main__":
    main()
