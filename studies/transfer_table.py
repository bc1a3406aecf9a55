"""Cross-dataset transfer table (the paper's Table 3): the same configurations evaluated with fits from the eval
data set's own calibration data and from a transfer study's calibration data (``data.calibration_path``), on the
same probe and held-out test splits, with standard errors and paired tests.

    python studies/transfer_table.py transfer_digits_to_fashion --out studies/reports/transfer/digits_to_fashion.md

The baseline ("own") is the transfer config less ``calibration_path`` (or ``--baseline``, a study with the same
splits). Run it from the folder holding the studies' data/ and weights/. The configurations are ``none``, the span
of each length 1-4 with the lowest ``ls_residual`` in the baseline's scores (statistics only: no split is used to
choose them), and ``--spans`` (default ``1-L``: every block but the first). Every number is on the test split
(``data.test``, or ``--test``), ± one standard error (binomial for accuracy, of the mean for fidelity); transfer − own is paired sample by sample
(fidelity: paired bootstrap; accuracy: McNemar's exact test, with a paired bootstrap interval), Holm-adjusted
across the table's comparisons. The first table holds plain numbers (``studies/transfer_plot.py`` reads it).
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parents[1]
if (_CHECKOUT / "rba" / "__init__.py").is_file():  # run from a source checkout: use its rba
    sys.path.insert(0, str(_CHECKOUT))

import numpy as np  # noqa: E402  (after the checkout is put first on sys.path, so its rba is the one imported)


def _baseline(transfer: str, name: str | None):
    """The own-data study: ``name``, else the transfer config less ``calibration_path`` (the same splits)."""
    from rba.config import load_study

    base = load_study(name or transfer)
    if name is None:
        base.data.calibration_path = None
    return base


def _scores(per, quality: str) -> np.ndarray:
    return (per.prediction == per.label).astype(float) if quality == "accuracy" else per.cosine


def rows(base, xfer, picks: list[str], qualities: list[str]) -> tuple[list[dict], list[dict]]:
    """(one row of test values per configuration, one paired comparison per configuration and quality)."""
    from rba.stats import binomial_se, holm, mcnemar, mean_difference, mean_se

    values, tests = [], []
    for spans in picks:
        a, b = base.evaluate_split(spans, "test"), xfer.evaluate_split(spans, "test")
        row = {"spans": spans, "FLOPs": base.cost_model.cost(base.parse(spans), base.cfg.fit.kind)["flops_frac"]}
        for q in qualities:
            sa, sb = _scores(a, q), _scores(b, q)
            se = binomial_se if q == "accuracy" else mean_se
            row |= {f"{q}, own": sa.mean(), f"{q}, transfer": sb.mean(),
                    f"{q} se, own": se(sa), f"{q} se, transfer": se(sb)}
            if spans == "none":
                continue  # the same unmodified model on both sides
            interval = mean_difference(sa, sb, seed=0)
            p = mcnemar(sa.astype(bool), sb.astype(bool)).p_exact if q == "accuracy" else interval.p
            tests.append({"spans": spans, "quality": q, "difference": interval.estimate, "low": interval.low,
                          "high": interval.high, "test": "McNemar exact" if q == "accuracy" else "paired bootstrap",
                          "p": p})
        values.append(row)
    for t, adjusted in zip(tests, holm([t["p"] for t in tests]), strict=True):
        t["p (Holm)"] = adjusted
    return values, tests


def markdown(args, base, xfer, values: list[dict], tests: list[dict], qualities: list[str], load: tuple,
             wall_s: float) -> str:
    names = (base.cfg.data.path, xfer.cfg.data.calibration_path)
    L = base.adapter.num_blocks
    n = len(base.splits.indices["test"])
    head = ["spans", "FLOPs"] + [f"{q}, {label}" for q in qualities for label in ("own", "transfer")]
    lines = [f"# Cross-dataset transfer (the paper's Table 3): {xfer.cfg.name}", "",
             f"Statistics and fits from the eval data set itself (`{names[0]}`, column *own*) against fits from "
             f"`{names[1]}` (`data.calibration_path`, column *transfer*), on the same model; the probe and the "
             f"held-out test split ({n} samples) are the same for both columns, and the probe is refitted on the "
             "replaced model in both. The configurations: the unmodified model, the span of each length 1-4 with "
             "the lowest ls_residual in the own data's statistics, and " + ", ".join(args.spans or [f"1-{L}"])
             + " (chosen before any split is scored). Made with "
             f"`python3 studies/transfer_table.py {' '.join(args.argv)}` on {datetime.date.today().isoformat()}, "
             f"{os.cpu_count()} CPUs, load average {load[0]:.1f} → {os.getloadavg()[0]:.1f}, {wall_s / 60:.1f} min "
             "wall time.", "",
             "Test values (plain numbers; `studies/transfer_plot.py` draws them):", "",
             "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for r in values:
        lines.append(f"| {r['spans']} | {r['FLOPs']:.3f} | " + " | ".join(f"{r[c]:.4f}" for c in head[2:]) + " |")
    lines += ["", "The same values ± one standard error, and transfer − own paired on the test samples (95 % "
              "interval; Holm-adjusted over the table's comparisons):", "",
              "| spans | quality | own | transfer | transfer − own | low | high | test | p | p (Holm) |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    by_key = {(t["spans"], t["quality"]): t for t in tests}
    for r in values:
        for q in qualities:
            t = by_key.get((r["spans"], q))
            cells = [f"{t['difference']:+.4f}", f"{t['low']:+.4f}", f"{t['high']:+.4f}", t["test"],
                     f"{t['p']:.3g}", f"{t['p (Holm)']:.3g}"] if t else [""] * 6
            lines.append(f"| {r['spans']} | {q} | {r[f'{q}, own']:.4f} ± {r[f'{q} se, own']:.4f} | "
                         f"{r[f'{q}, transfer']:.4f} ± {r[f'{q} se, transfer']:.4f} | " + " | ".join(cells) + " |")
    lines += ["", "![all transfer pairs: fidelity and accuracy against FLOPs, fits from the eval data set (solid) "
              "and from the other data set (dashed)](transfer.png)", "",
              "The figure (every pair in this folder) is drawn from the first table of each file by "
              "`python3 studies/transfer_plot.py`.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("transfer", help="a study (name or TOML) with data.calibration_path")
    parser.add_argument("--baseline", default=None, help="the own-data study (default: the transfer config less "
                                                         "calibration_path)")
    parser.add_argument("--spans", action="append", default=None,
                        help="more configurations (default: 1-L, every block but the first)")
    parser.add_argument("--test", type=int, default=None, help="test split size (default: the config's data.test)")
    parser.add_argument("--out", type=Path, default=None, help="markdown file to write (default: print it)")
    args = parser.parse_args(argv)
    args.argv = argv

    from rba.config import load_study
    from rba.errors import RBAError
    from rba.files import atomic_write_text
    from rba.session import Session

    load, started = os.getloadavg(), time.perf_counter()
    try:
        xfer_cfg = load_study(args.transfer)
        if xfer_cfg.data.calibration_path is None:
            raise SystemExit(f"transfer_table: error: {args.transfer} has no data.calibration_path: give the "
                             "transfer study (its baseline is the same config without it)")
        base_cfg = _baseline(args.transfer, args.baseline)
        for cfg in (xfer_cfg, base_cfg):
            if args.test is not None:
                cfg.data.test = args.test
            if not cfg.data.test:
                raise SystemExit("transfer_table: error: data.test = 0: every number is scored on the held-out "
                                 "test split; pass --test N or set [data] test")
        base = Session(base_cfg.validate(), progress=False, measure_latency=False)
        xfer = Session(xfer_cfg.validate(), progress=False, measure_latency=False)
        for name in ("probe", "eval", "test"):
            if list(base.splits.indices[name]) != list(xfer.splits.indices[name]):
                raise SystemExit(f"transfer_table: error: the {name} splits differ: compare a study with the same "
                                 "config less calibration_path")
        table = base.scores()
        picks = ["none"]
        for length in (1, 2, 3, 4):
            candidates = table[(table.end - table.start) == length]
            if len(candidates):
                best = candidates.loc[candidates.ls_residual.idxmin()]
                picks.append(f"{int(best.start)}-{int(best.end)}")
        picks = list(dict.fromkeys(picks + (args.spans or [f"1-{base.adapter.num_blocks}"])))
        reference = base.evaluate_split("none", "test")
        qualities = (["accuracy"] if reference.prediction is not None else []) + ["fidelity"]
        values, tests = rows(base, xfer, picks, qualities)
    except RBAError as exc:
        print(f"transfer_table: error: {exc}", file=sys.stderr)
        return 2
    text = markdown(args, base, xfer, values, tests, qualities, load, time.perf_counter() - started)
    if args.out is None:
        print(text)
    else:
        atomic_write_text(args.out, text)
        print(f"transfer_table: wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
