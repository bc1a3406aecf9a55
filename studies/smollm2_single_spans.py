"""The best single span at the budget of studies/smollm2_plots.toml, next to the search's pick there.

The study's search evaluated only two single spans, and the single-span baselines at its budget (ReplaceMe, Gromov
et al.) pick the span 11-19, which holds layer 11, where the first token's massive activation is made. This
script evaluates every single fold span of 8 layers (the budget: 25% of the 30 layers) on the eval split, takes the
best on eval, and compares it on the test split with the search's pick at that budget (paired bootstrap over texts
of the difference in mean KL and perplexity, as the report's paired tests).

    cd <folder holding data/plots.csv and runs/smollm2_plots>; python3 studies/smollm2_single_spans.py
"""

from __future__ import annotations

import json
import math
import os
import sys

from rba.config import load_study
from rba.session import Session
from rba.stats import mean_difference

SEARCH_PICK = "12-18,19-22"  # the report's best kl at flops_frac ≤ 0.8, selected on eval


def token_mean(s, name):
    return float((getattr(s, name) * s.tokens).sum() / s.tokens.sum())


def main() -> int:
    session = Session(load_study("smollm2_plots"), progress=False, measure_latency=False)
    n = 8
    spans = [(i, i + n) for i in range(1, session.adapter.num_blocks - n + 1)]
    eval_kl = {f"{i}-{j}": session.evaluate([(i, j)], kind="fold")["kl"] for i, j in spans}
    best = min(eval_kl, key=eval_kl.get)
    a, b = (session.evaluate_split(s, "test", kind="fold") for s in (best, SEARCH_PICK))
    out = {"eval_kl": eval_kl, "best_single": best, "search_pick": SEARCH_PICK, "load": os.getloadavg()[0]}
    for name in ("kl", "nll"):
        wa, wb = a.tokens, b.tokens
        diff = mean_difference(getattr(a, name) * wa / wa.mean(), getattr(b, name) * wb / wb.mean(), seed=0)  # B − A
        out[name] = {"single": token_mean(a, name), "search": token_mean(b, name), "difference": diff.estimate,
                     "low": diff.low, "high": diff.high, "p": diff.p}
    out["perplexity"] = {"single": math.exp(out["nll"]["single"]), "search": math.exp(out["nll"]["search"])}
    json.dump(out, sys.stdout, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
