"""Cross-dataset transfer table (the paper's Table 3): the same configurations evaluated with fits from the
baseline study's own calibration data and from a transfer study's calibration data (``data.calibration_path``),
on the same probe and eval splits.

    python studies/transfer_table.py vit_fashion transfer_digits_to_fashion

Run it from the folder holding the studies' data/ and weights/. The configurations are ``none``, the span of each
length 1-4 with the lowest ``ls_residual`` in the baseline's scores, and ``--spans`` (default ``1-8``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parents[1]
if (_CHECKOUT / "rba" / "__init__.py").is_file():  # run from a source checkout: use its rba
    sys.path.insert(0, str(_CHECKOUT))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("baseline", help="a study (name or TOML) without calibration_path")
    parser.add_argument("transfer", help="the same study with calibration_path")
    parser.add_argument("--spans", action="append", default=None, help="more configurations (default: 1-8)")
    args = parser.parse_args(argv)

    from rba.config import load_study
    from rba.errors import RBAError
    from rba.session import Session

    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    try:
        base = Session(load_study(args.baseline), progress=False, measure_latency=False)
        xfer = Session(load_study(args.transfer), progress=False, measure_latency=False)
        for name in ("probe", "eval"):
            if list(base.splits.indices[name]) != list(xfer.splits.indices[name]):
                raise SystemExit(f"transfer_table: error: the {name} splits differ: compare a study with the same "
                                 "config less calibration_path")
        table = base.scores()
        picks = ["none"]
        for length in (1, 2, 3, 4):
            rows = table[(table.end - table.start) == length]
            if len(rows):
                best = rows.loc[rows.ls_residual.idxmin()]
                picks.append(f"{int(best.start)}-{int(best.end)}")
        picks += args.spans or ["1-8"]
        reference = base.evaluate("none")
        # an unlabelled eval split has no accuracy: leave the empty column out
        quality = [q for q in ("accuracy", "fidelity") if q in reference and reference[q] == reference[q]]
        print("| spans | FLOPs | " + " | ".join(f"{q}, {s}" for q in quality for s in (args.baseline, args.transfer))
              + " |")
        print("|---" * (2 + 2 * len(quality)) + "|")
        for spans in dict.fromkeys(picks):
            a, b = base.evaluate(spans), xfer.evaluate(spans)
            print(f"| {spans} | {a['flops_frac']:.3f} | "
                  + " | ".join(f"{r[q]:.4f}" for q in quality for r in (a, b)) + " |")
    except RBAError as exc:
        print(f"transfer_table: error: {exc}", file=sys.stderr)
        return 2
    print(f"load average {load} → {' '.join(f'{x:.2f}' for x in os.getloadavg())}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
