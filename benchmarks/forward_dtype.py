"""Fit error of a bfloat16 (or float16) forward against a float32 forward, on one config.

Two sessions of the same config, one per ``[model] forward_dtype``; statistics are accumulated in float64 in
both. Per span it prints:

- ``ls_res_f32``, ``ls_res_low``: the relative fit residual (ls_residual) from each forward's statistics, and
  their relative difference;
- ``fid_f32fit``, ``fid_lowfit``: fidelity in the **float32** forward with the maps fitted from the float32 and
  from the low-precision statistics (what fitting on the cheaper forward costs a float32 deployment);
- ``fid_lowrun``: fidelity of the low-precision forward with its own maps against its own unmodified model (what
  ``rba evaluate --forward-dtype bfloat16`` reports).

It also prints the cosine between the two forwards' unmodified pooled outputs and both capture times.

    python3 benchmarks/forward_dtype.py minilm_reviews --spans 0-1,2-3,3-4,0-3,0-6 --eval 500 --threads 2
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch
import torch.nn.functional as F


def main(argv=None) -> int:
    from rba.apply import span_module
    from rba.config import load_study
    from rba.metrics import score_table
    from rba.session import Session
    from rba.spans import parse_spans

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config", help="config file or shipped study name")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    p.add_argument("--spans", default="0-1,2-3,3-4,0-3,0-6", help="configurations of one span each, comma-separated")
    p.add_argument("--calibration", type=int, default=None)
    p.add_argument("--eval", type=int, default=500)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--cache-dir", default=None, help="statistics cache (default: the config's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sessions, capture_s = {}, {}
    for dtype in ("float32", args.dtype):
        cfg = load_study(args.config)
        over = {"model.forward_dtype": dtype, "data.eval": args.eval, "data.probe": 0}
        if args.calibration:
            over["data.calibration"] = args.calibration
        if args.cache_dir:
            over["capture.cache_dir"] = args.cache_dir
        cfg.override(over)
        s = Session(cfg, need_labels=False, progress=False, measure_latency=False)
        t0 = time.perf_counter()
        s.stats  # noqa: B018  (captured, or loaded from the cache)
        capture_s[dtype] = time.perf_counter() - t0
        sessions[dtype] = s
    f32, low = sessions["float32"], sessions[args.dtype]
    tables = {d: score_table(s.stats, s.cfg.fit.ridge).set_index(["start", "end"]) for d, s in sessions.items()}
    ref32 = f32.evaluator.parts["eval"].pooled.double()
    reflow = low.evaluator.parts["eval"].pooled.double()
    cos = F.cosine_similarity(ref32, reflow, dim=1).mean().item()
    print(f"model {f32.adapter.describe()}, {f32.stats.n} calibration vectors, {len(f32.splits.eval)} eval samples, "
          f"{torch.get_num_threads()} threads")
    print(f"capture (or cache load) s: float32 {capture_s['float32']:.1f}, {args.dtype} {capture_s[args.dtype]:.1f}")
    print(f"unmodified pooled output, cosine {args.dtype} vs float32 forward: {cos:.6f}")
    print(f"{'span':>6} {'ls_res_f32':>11} {'ls_res_low':>11} {'rel_diff':>9} {'fid_f32fit':>11} {'fid_lowfit':>11} "
          f"{'Δfid':>9} {'fid_lowrun':>11}")
    layout = f32.adapter.layout
    for text in args.spans.split(","):
        spans = parse_spans(text)
        (span,) = spans
        r32 = float(tables["float32"].loc[span, "ls_residual"])
        rlow = float(tables[args.dtype].loc[span, "ls_residual"])
        fid32 = f32.evaluator.score(spans, f32.maps(spans), tag="f32")["fidelity"]
        lowfit = [span_module(low.fit(span), layout, torch.float32)]
        fidlow = f32.evaluator.score(spans, lowfit, tag="lowfit")["fidelity"]
        fidrun = low.evaluate(spans)["fidelity"]
        print(f"{text:>6} {r32:>11.5f} {rlow:>11.5f} {abs(rlow - r32) / r32:>9.2e} {fid32:>11.5f} {fidlow:>11.5f} "
              f"{fidlow - fid32:>9.1e} {fidrun:>11.5f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
