"""Exported models: measured latency vs the latency table's prediction, and speed-up over the unmodified model.

For a few configurations (the lowest-ls_residual span, the longest valid span, and random ones) the model is
exported (``rba.export.export_model``), reloaded (``load_export``) and timed end to end at the evaluation
batch size on the same input the latency table was measured on (the reference sample repeated), alternating
with the unmodified model, median of repeats. Printed per configuration: predicted ms/sample (the session's
per-block latency table), measured ms/sample, relative error, measured and predicted speed-up.

    python benchmarks/latency.py            # all-MiniLM-L6-v2 and EfficientNet-Lite0
    python benchmarks/latency.py --quick    # tiny random ViT
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C
import numpy as np
import torch


def reference_batch(session):
    """The input the latency table uses: the sample closest to the mean length, repeated batch_size times."""
    adapter, cm = session.adapter, session.cost_model
    samples = session.splits.eval.samples[:256]
    bs = session.cfg.evaluate.batch_size
    lengths = []
    for start in range(0, len(samples), 64):
        _, ctx = adapter.embed(adapter.collate(samples[start : start + 64]))
        if ctx.mask is not None:
            lengths.extend(ctx.mask.sum(1).tolist())
    ref = int(np.argmin(np.abs(np.array(lengths) - cm.reference_length))) if lengths else 0
    one = samples[ref : ref + 1]
    if isinstance(one, list):
        return adapter.collate(list(one) * bs), bs
    return adapter.collate(np.repeat(np.asarray(one), bs, axis=0)), bs


def bench(label: str, cfg, *, random_configs: int, repeats: int) -> list[dict]:
    from rba.export import export_model, load_export
    from rba.metrics import score_table
    from rba.session import Session

    print(f"\n# {label}", flush=True)
    session = Session(cfg, need_labels=False, progress=False, measure_latency=True)
    adapter, cm = session.adapter, session.cost_model
    table = score_table(session.stats, cfg.fit.ridge)
    best = table.loc[table["ls_residual"].idxmin()]
    longest = max(session.pairs, key=lambda s: (s[1] - s[0], -s[0]))
    configs = [[(int(best.start), int(best.end))], [longest]]
    configs += C.random_configurations(adapter.num_blocks, session.pairs, random_configs, seed=1)
    batch, bs = reference_batch(session)
    base_pred = cm.cost([])["latency_ms"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="rba-latency-") as tmp, torch.inference_mode():
        for k, spans in enumerate(configs):
            folder = export_model(session, spans, Path(tmp) / f"c{k}")
            exported = load_export(folder)
            t_base, t_exp = [], []
            adapter.forward(batch), exported.forward(batch)  # warm-up
            for _ in range(repeats):
                t_base.append(C.timed(lambda: adapter.forward(batch))[0])
                t_exp.append(C.timed(lambda exported=exported: exported.forward(batch))[0])
            base_ms = C.median(t_base) * 1000 / bs
            exp_ms = C.median(t_exp) * 1000 / bs
            pred = cm.cost(spans)["latency_ms"]
            rows.append({"model": label, "spans": C.spans_text(spans), "flops_frac": cm.cost(spans)["flops_frac"],
                         "predicted_ms": pred, "measured_ms": exp_ms, "rel_error": (pred - exp_ms) / exp_ms,
                         "unmodified_pred_ms": base_pred, "unmodified_ms": base_ms,
                         "speedup_measured": base_ms / exp_ms, "speedup_predicted": base_pred / pred})
            del exported
    C.table(rows, ["spans", "flops_frac", "predicted_ms", "measured_ms", "rel_error", "unmodified_pred_ms",
                   "unmodified_ms", "speedup_measured", "speedup_predicted"],
            title=f"{label}: ms per sample at batch {bs}")
    return rows


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--random", type=int, default=2, help="random configurations per model")
    p.add_argument("--repeats", type=int, default=10)
    args = p.parse_args()
    C.setup(args)
    rows = []
    with C.temp_cache() as cache:
        if args.quick:
            cfg = C.vit_config(cache, depth=4, width=32, heads=2, image_size=32, patch=8, calibration=64, eval=32,
                               eval_batch=16)
            rows += bench("tiny ViT", cfg, random_configs=1, repeats=3)
        else:
            table = {"latency_repeats": args.repeats}  # the latency table gets as many repeats as the exports
            rows += bench("all-MiniLM-L6-v2", C.minilm_config(cache, probe=0, eval=256, evaluate=table),
                          random_configs=args.random, repeats=args.repeats)
            rows += bench("EfficientNet-Lite0 (64 px)", C.lite0_config(cache, calibration=1000, probe=0, eval=256,
                                                                      evaluate=table),
                          random_configs=args.random, repeats=args.repeats)
    for r in rows:
        C.ratio_line(f"latency measured / predicted [{r['model']}, {r['spans']}]", r["measured_ms"] / r["predicted_ms"],
                     detail=f"{r['measured_ms']:.3f} vs {r['predicted_ms']:.3f} ms/sample, "
                            f"relative error {r['rel_error']:+.1%}")
        C.ratio_line(f"speed-up over unmodified [{r['model']}, {r['spans']}]", r["speedup_measured"],
                     detail=f"predicted {r['speedup_predicted']:.2f}x, FLOPs {r['flops_frac']:.2f} of the unmodified")
    errs = [abs(r["rel_error"]) for r in rows]
    C.ratio_line("median |relative error| of the latency table", 100 * float(np.median(errs)), unit="%",
                 detail=f"max {max(errs):.1%} over {len(rows)} exports")
    C.write_json(args.json, {"rows": rows})


if __name__ == "__main__":
    main()
