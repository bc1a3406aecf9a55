"""Trained translators to convergence, next to the paper's 300-step budget (``rba compare-fits`` run several times,
and one table that puts the runs side by side).

    python studies/translators.py vit_fashion --seeds 0,1,2 --spans "0-1,1-2,2-3,3-4,4-5,5-6,6-7,7-8,2-4,4-6,2-6,4-8" \\
        --out studies/reports/translators_vit
    python studies/translators.py minilm_reviews --seeds 0 --spans "2-3,1-4,0-6" --out studies/reports/translators_minilm

Run it from the folder holding the study's data/ and weights/. Into ``--out`` it writes:

* the paper's comparison, as ``rba compare-fits STUDY --spans … --out DIR`` writes it (kinds identity, affine, mlp,
  res-mlp; 300 Adam steps at lr 1e-3, the study's ``data.seed``): ``fits.csv``, ``fits.md``, ``fits.png``;
* per seed s, ``converged-seed<s>/``: the trained kinds (mlp, res-mlp, mlp-wide, identity-mlp, affine-mlp) trained to
  convergence (:data:`CONVERGED`: 10% of their vectors held out, scored every 100 steps, the best weights kept,
  stopped after 10 scores without improvement, at 5000 steps or after 20 min; cosine lr from 1e-3 after 100
  warm-up steps), ``fit.seed = s``;
* ``converged.md``: per span and kind, the paper's row, the converged rows (mean and spread over the seeds), the
  steps they ran and why they stopped, and the affine fit's row.

Every part resumes as ``rba compare-fits`` does: a rerun of the same command computes only what is missing.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parents[1]
if (_CHECKOUT / "rba" / "__init__.py").is_file():  # run from a source checkout: use its rba
    sys.path.insert(0, str(_CHECKOUT))

#: [fit] settings of the converged runs (docs/fits.md); fit.seed is added per run
CONVERGED = {"fit.steps": 5000, "fit.lr": 1e-3, "fit.schedule": "cosine", "fit.warmup_steps": 100,
             "fit.holdout": 0.1, "fit.eval_every": 100, "fit.patience": 10, "fit.max_seconds": 1200.0}
#: the trained kinds run to convergence
CONVERGED_KINDS = ("mlp", "res-mlp", "mlp-wide", "identity-mlp", "affine-mlp")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study", help="a study name (rba ls studies) or TOML file")
    parser.add_argument("--seeds", default="0", help="comma-separated fit.seed values of the converged runs")
    parser.add_argument("--spans", help='single spans, e.g. "0-1,2-4" (default: every valid span)')
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)

    from rba.compare import DEFAULT_KINDS, compare_fits
    from rba.config import load_study
    from rba.errors import RBAError
    from rba.session import Session
    from rba.spans import parse_spans

    if not args.quiet:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    out = Path(args.out)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    t0 = time.perf_counter()
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        runs: list[tuple[Path, dict, tuple[str, ...]]] = [(out, {}, tuple(DEFAULT_KINDS))]
        runs += [(out / f"converged-seed{s}", CONVERGED | {"fit.seed": s}, CONVERGED_KINDS) for s in seeds]
        for folder, overrides, kinds in runs:
            cfg = load_study(args.study).override(overrides)
            cfg.require_splits("compare-fits", accuracy=False)
            session = Session(cfg, progress=not args.quiet, measure_latency=False)
            spans = ([s for item in args.spans.split(",") if item.strip() for s in parse_spans(item)]
                     if args.spans else session.pairs)
            t = time.perf_counter()
            compare_fits(session, spans, kinds, out=folder, progress=not args.quiet)
            print(f"translators: {folder} done in {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
        path = write_summary(out, seeds)
    except (RBAError, ValueError) as exc:
        print(f"translators: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    print(f"translators: wrote {path} ({time.perf_counter() - t0:.0f} s; load average {load} → "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())})")
    return 0


def write_summary(out: Path, seeds: list[int]) -> Path:
    """``converged.md`` from the runs' ``fits.csv``: per span and kind, the paper's 300-step row beside the
    converged rows (mean ± standard deviation over the seeds)."""
    import pandas as pd

    paper = pd.read_csv(out / "fits.csv", dtype={"span": str})
    conv = pd.concat([pd.read_csv(out / f"converged-seed{s}" / "fits.csv", dtype={"span": str}).assign(seed=s)
                      for s in seeds])
    measures = ["heldout_mse", "fidelity", "accuracy"]
    rows = []
    for (span, kind), group in conv.groupby(["span", "kind"], sort=False):
        ref = paper[(paper.span == span) & (paper.kind == kind)]
        row = {"span": span, "kind": kind}
        for m in measures:
            row[f"{m}, 300 steps"] = ref[m].iloc[0] if len(ref) else ""
            row[f"{m}, converged"] = _mean_sd(group[m])
        row["steps"] = f"{group['steps'].mean():.0f}"
        row["stopped"] = ", ".join(f"{n}× {why}" for why, n in group["stopped"].value_counts().items())
        rows.append(row)
    for kind in ("affine", "identity"):  # the closed forms: the same in every run, taken from the paper's
        for _, ref in paper[paper.kind == kind].iterrows():
            rows.append({"span": ref.span, "kind": kind} | {f"{m}, 300 steps": ref[m] for m in measures}
                        | {f"{m}, converged": "" for m in measures} | {"steps": "", "stopped": ""})
    order = list(dict.fromkeys(paper.span))
    table = pd.DataFrame(rows)
    table["_order"] = table.span.map({s: n for n, s in enumerate(order)})
    table = table.sort_values(["_order"], kind="stable").drop(columns="_order")
    means = conv.groupby(["kind", "seed"], sort=False)[measures].mean().groupby(level=0, sort=False)
    paper_means = paper.groupby("kind", sort=False)[measures].mean()
    lines = ["# Trained translators: the paper's 300 steps against training to convergence", "",
             f"- 300 steps: fits.md (one training seed); converged: converged-seed{{{','.join(map(str, seeds))}}}"
             "/fits.md, settings in `studies/translators.py` (CONVERGED) and in each folder's config.resolved.toml",
             "- held-out MSE: eval-split vectors no fit saw; converged values are the mean ± standard deviation over "
             "the training seeds (one seed: no spread); steps: mean steps run; stopped: why each run stopped "
             f"(patience: early stopping, steps: the {CONVERGED['fit.steps']}-step cap, max_seconds: the wall-clock "
             "cap)", "",
             "## Mean over spans", "", "| kind | held-out MSE, 300 steps | held-out MSE, converged | fidelity, 300 "
             "steps | fidelity, converged | accuracy, 300 steps | accuracy, converged |", "|---" * 7 + "|"]
    for kind in paper_means.index:
        p = paper_means.loc[kind]
        if kind in means.groups:
            per_seed = means.get_group(kind)
            c = [_mean_sd(per_seed[m]) for m in measures]
        else:
            c = [""] * 3
        lines.append(f"| {kind} | " + " | ".join(f"{p[m]:.4g} | {c[k]}" for k, m in enumerate(measures)) + " |")
    for kind, per_seed in means:
        if kind not in paper_means.index:
            lines.append(f"| {kind} | " + " | ".join(f" | {_mean_sd(per_seed[m])}" for m in measures) + " |")
    lines += ["", "## Per span", "", "| " + " | ".join(table.columns) + " |", "|---" * len(table.columns) + "|"]
    lines += ["| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row) + " |"
              for row in table.itertuples(index=False)]
    lines.append("")
    path = out / "converged.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _mean_sd(values) -> str:
    """The mean, and ± the standard deviation when there are several values (rounding noise shown as 0)."""
    mean = f"{values.mean():.4g}"
    if len(values) < 2:
        return mean
    sd = float(values.std())
    return f"{mean} ± {sd:.2g}" if sd > 1e-9 * max(abs(float(values.mean())), 1e-300) else f"{mean} ± 0"


if __name__ == "__main__":
    sys.exit(main())
