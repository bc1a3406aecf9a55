"""Search quality and cost: how close does an Optuna (TPE) search get to the true front, and how long does it take?

1. **Exhaustive** (``--method exhaustive``, priors off): every configuration evaluated → the true front and its
   hypervolume (objectives fidelity ↑ and flops_frac ↓; reference point: flops_frac 1.0 and the lowest
   fidelity of the exhaustive run; ``search.analysis.hypervolume``).
2. **TPE, ``--trials`` trials**, for every seed, with and without the BR priors: hypervolume of its front as a
   fraction of the true one. These runs *replay* the exhaustive run's evaluations (the objective is
   deterministic: same fits, same forward), so the sampler sees exactly the numbers a fresh run would see and
   all seeds cost minutes, not hours; their wall time is sampler + storage only. The script checks the replay
   claim on the fresh runs below (largest difference between a fresh evaluation and the exhaustive one).
   Per run: distinct configurations among the trials written to trials.csv (a repeated proposal costs no
   evaluation and is left out, so ``repeats_evaluated`` is 0), priors enqueued over a budget
   (``infeasible_priors``, 0: their exact cost is known before any evaluation), and the hypervolume share after
   the first ``--trials // 2`` and all ``--trials`` evaluated configurations. ``--budget-flops`` puts every
   run, the exhaustive one included, under a FLOPs budget (the hypervolume counts feasible trials only).
   Before/after comparisons run this script on two commits.
3. **Fresh wall times** (new session and objective, statistics loaded from the cache): one ``--trials`` run
   with priors and one without (seed 0), and one ``--big``-trial run.

    python benchmarks/search_quality.py                   # all-MiniLM-L6-v2 + movie reviews (studies/minilm_reviews.toml)
    python benchmarks/search_quality.py --quick           # tiny random ViT, seconds; numbers meaningless
    python benchmarks/search_quality.py --threads 1 --json benchmarks/out/search_quality.json

Output folders (trials.csv, pareto.csv, pareto.png per run) go under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import pandas as pd
import torch


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="minilm_reviews", help="config file, or shipped study name (paths from the checkout)")
    p.add_argument("--quick", action="store_true", help="tiny random ViT on synthetic images (smoke test)")
    p.add_argument("--trials", type=int, default=60)
    p.add_argument("--big", type=int, default=100, help="trials of the wall-time run (0: skip)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "search_quality")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--no-fresh", action="store_true", help="skip the fresh wall-time runs")
    p.add_argument("--budget-flops", type=float, default=None, help="FLOPs budget of every run (default: none)")
    p.add_argument("--uniform-refill", action="store_true",
                   help="after a repeated proposal enqueue a uniform draw at once, without asking the sampler again "
                        "(the behaviour before; for before/after comparisons, RESULTS.md §7)")
    return p.parse_args()


def _quick_config(tmp: Path):
    from rba.config import Config

    raw = {
        "model": {"kind": "timm", "name": "test_vit", "pretrained": False, "options": {"depth": 4}},
        "data": {"kind": "synthetic", "image_size": 32, "calibration": 48, "probe": 48, "eval": 48,
                 "options": {"modality": "image", "classes": 4}},
        "capture": {"cache_dir": str(tmp / "cache"), "batch_size": 16},
        "evaluate": {"latency_repeats": 1},
    }
    return Config.from_dict(raw, name="quick", base_dir=str(tmp))


def _with(cfg, out: Path, budget_flops: float | None = None, **search):
    """A copy of ``cfg`` with search settings and output folder replaced (objectives fidelity, flops)."""
    import copy

    c = copy.deepcopy(cfg)
    c.search.objectives = ["fidelity", "flops"]
    c.search.budget_flops = budget_flops
    for k, v in search.items():
        setattr(c.search, k, v)
    c.output.dir = str(out)
    if out.exists():
        shutil.rmtree(out)
    return c.validate()


def hypervolume(trials: pd.DataFrame, ref_fidelity: float, ref_flops: float = 1.0) -> float:
    import _common as C

    done = trials[(trials["state"] == "COMPLETE") & trials["feasible"].fillna(True).astype(bool)]
    return C.hypervolume(list(zip(done["fidelity"].to_numpy(float), done["flops_frac"].to_numpy(float))),
                         (ref_fidelity, ref_flops))


def waste(res) -> dict:
    """Trials written to trials.csv that repeat an earlier configuration, and priors enqueued over a budget."""
    import optuna

    done = res.trials[res.trials["state"] == "COMPLETE"]
    study = optuna.load_study(study_name=res.study_name, storage=res.storage)
    priors = [t for t in study.get_trials(deepcopy=False) if str(t.user_attrs.get("source", "")).startswith("prior")]
    return {"repeats_evaluated": int(len(done) - done["spans"].nunique()),
            "repeats_proposed": sum("duplicate_of" in t.user_attrs for t in study.get_trials(deepcopy=False)),
            "infeasible_priors": sum(not (t.user_attrs.get("result") or {}).get("feasible", True) for t in priors)}


def main() -> int:
    args = _args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    from rba.config import load_config
    from rba.session import Session
    from search import run_search
    from search.objective import Objective
    from search.recording import needs_labels

    if args.uniform_refill:
        import search.recording

        search.recording.resample = lambda *a, **k: None

    tmp = Path(tempfile.mkdtemp(prefix="rba-search-quality-"))
    if args.quick:
        cfg = _quick_config(tmp)
        args.trials, args.big, args.seeds = min(args.trials, 12), min(args.big, 16), args.seeds[:1]
        args.out = tmp / "out"
    else:
        # a shipped study by name reads ROOT/data/reviews.csv (where _common.reviews_csv puts it), whatever the cwd
        cfg = load_config(args.config) if Path(args.config).exists() else load_config(
            ROOT / "studies" / f"{args.config}.toml", base_dir=ROOT)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"config": str(args.config) if not args.quick else "quick", "threads": torch.get_num_threads(),
                    "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                                "load_avg_start": os.getloadavg()},
                    "trials": args.trials, "seeds": args.seeds}

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    # ------------------------------------------------------------------ 1. exhaustive: the true front
    exh_cfg = _with(cfg, out / "exhaustive", args.budget_flops, method="exhaustive", priors=False)
    t0 = time.time()
    session = Session(exh_cfg, need_labels=needs_labels(exh_cfg), progress=False)
    session.stats, session.cost_model, session.evaluator  # noqa: B018 (build them: setup, timed apart)
    setup_s = time.time() - t0
    shared = Objective(session)
    t0 = time.time()
    exh = run_search(exh_cfg, progress=False, session=session, objective=shared)
    exh_s = time.time() - t0
    ref_fid = float(exh.trials["fidelity"].min())
    hv_true = hypervolume(exh.trials, ref_fid)
    n_conf = len(exh.trials)
    report["exhaustive"] = {"configurations": n_conf, "wall_s": exh_s, "setup_s": setup_s,
                            "per_configuration_s": exh_s / n_conf, "front": list(exh.front["spans"]),
                            "hypervolume": hv_true, "reference": {"fidelity": ref_fid, "flops_frac": 1.0}}
    log(f"exhaustive: {n_conf} configurations in {exh_s:.0f} s ({exh_s / n_conf:.2f} s each, setup {setup_s:.0f} s); "
        f"front {len(exh.front)}; HV {hv_true:.5f}")

    # ------------------------------------------------------------------ 2. TPE replays over seeds, ± priors
    rows = []
    for priors in (True, False):
        for seed in args.seeds:
            c = _with(cfg, out / f"tpe-{'priors' if priors else 'nopriors'}-s{seed}", args.budget_flops,
                      method="optuna", sampler="tpe", trials=args.trials, seed=seed, priors=priors)
            t0 = time.time()
            res = run_search(c, progress=False, session=session, objective=shared)
            wall = time.time() - t0
            hv = hypervolume(res.trials, ref_fid)
            half = hypervolume(res.trials.sort_values("number").head(args.trials // 2), ref_fid)
            done = res.trials[res.trials["state"] == "COMPLETE"]
            rows.append({"priors": priors, "seed": seed, "hv_fraction": hv / hv_true if hv_true else float("nan"),
                         f"hv_fraction_at_{args.trials // 2}": half / hv_true if hv_true else float("nan"),
                         "distinct_configurations": int(done["spans"].nunique()), **waste(res),
                         "front": len(res.front), "replay_wall_s": wall})
            log(f"tpe priors={priors} seed={seed}: HV {hv / hv_true:.4f} of the true front; "
                f"{done['spans'].nunique()} distinct configurations in {args.trials} trials")
    table = pd.DataFrame(rows)
    report["tpe"] = rows
    summary = table.groupby("priors")[["hv_fraction", f"hv_fraction_at_{args.trials // 2}",
                                        "distinct_configurations"]].agg(["mean", "min", "max"])
    summary.columns = [f"{a} {b}" for a, b in summary.columns]
    summary = summary.reset_index()
    report["tpe_summary"] = summary.to_dict(orient="records")

    # ------------------------------------------------------------------ 3. fresh wall times
    exh_values = exh.trials.set_index("spans")["fidelity"]

    def fresh(name: str, trials: int, priors: bool) -> dict:
        c = _with(cfg, out / name, args.budget_flops, method="optuna", sampler="tpe", trials=trials, seed=0,
                  priors=priors)
        t0 = time.time()
        s = Session(c, need_labels=needs_labels(c), progress=False)
        res = run_search(c, progress=False, session=s)
        wall = time.time() - t0
        done = res.trials[res.trials["state"] == "COMPLETE"]
        diff = float((done.set_index("spans")["fidelity"] - exh_values.reindex(done["spans"]).to_numpy()).abs().max())
        out_row = {"trials": trials, "priors": priors, "wall_s": wall,
                   "distinct_configurations": int(done["spans"].nunique()),
                   "evaluations": res.context.objective.evaluations,
                   "hv_fraction": hypervolume(res.trials, ref_fid) / hv_true,
                   "max_abs_fidelity_diff_vs_exhaustive": diff, **waste(res)}
        log(f"fresh {name}: {trials} trials in {wall:.0f} s ({out_row['evaluations']} evaluations); "
            f"HV {out_row['hv_fraction']:.4f}; replay check: max |Δ fidelity| {diff:.2e}")
        return out_row

    if not args.no_fresh:
        report["fresh"] = [fresh(f"fresh-{args.trials}-priors", args.trials, True),
                           fresh(f"fresh-{args.trials}-nopriors", args.trials, False)]
        if args.big:
            report["fresh"].append(fresh(f"fresh-{args.big}-priors", args.big, True))
    report["machine"]["load_avg_end"] = os.getloadavg()

    print(f"\nexhaustive: {n_conf} configurations, {exh_s:.0f} s; true front: {', '.join(exh.front['spans'])}")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(summary.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    for r in report.get("fresh", []):
        print(f"fresh TPE {r['trials']} trials, priors={r['priors']}: {r['wall_s']:.0f} s, HV {r['hv_fraction']:.4f}, "
              f"{r['evaluations']} evaluations, replay |Δ fidelity| ≤ {r['max_abs_fidelity_diff_vs_exhaustive']:.1e}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str))
        print(f"wrote {args.json}", file=sys.stderr)
    if args.quick:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
