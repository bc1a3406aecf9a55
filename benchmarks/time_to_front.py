"""Time to front: how long rba's search takes to reach the hypervolume a naive Optuna search reaches in N trials.

Naive: ``optuna`` with the sampler rba's search uses (``search.samplers.make_sampler``: TPE, multivariate, the
seed), the same encoding and repair, and the paper's per-trial code path (``_common.Naive``: float32 lstsq fits
on the materialised calibration states, full forward over the eval split). rba: ``search.run_search`` as a user
runs it (defaults: priors on, i.e. the proxy front first, then TPE; fits from statistics, prefix reuse and
memo) plus ``[search] early_stop = true`` (a trial dominated on a quarter or half of the eval split stops there;
``--no-early-stop`` runs every trial in full), same sampler and seed. Objectives fidelity ↑ and flops_frac ↓ (label-free: both methods run the eval
split only); hypervolume with the fixed reference point (REF_FIDELITY, REF_FLOPS).

Per seed, the naive time is the earliest trial at which its hypervolume reached its N-trial value; rba's is the
time from calling ``run_search`` to the end of the first evaluation after which its trials' hypervolume is at
least that value (everything a user's run does up to that point: study set-up, span scores, priors, sampler,
storage). The benchmark then stops rba's run (a user's run would go on to ``trials``); it is allowed up to
``--max-factor`` × N trials.

Equal load: the two sides alternate in one time window (naive seed 0, rba seed 0, naive seed 1, ...); the
1/5/15-minute load is printed and recorded at the start and end of each side. One-time set-up (capture and
eval cache for rba; materialised states and the reference for naive) is reported separately.

    python benchmarks/time_to_front.py --threads 1 --json benchmarks/out/time_to_front.json   # MiniLM, seeds 0 1 2
    python benchmarks/time_to_front.py --quick                                              # tiny random ViT
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C

from rba.errors import RBAError

#: fixed hypervolume reference point (fidelity ↑, flops_frac ↓)
REF_FIDELITY, REF_FLOPS = 0.5, 1.0


def full_hypervolume(points) -> float:
    """Hypervolume of the points (seconds, fidelity, flops_frac, stopped early) evaluated in full."""
    return C.hypervolume([(f, c) for _, f, c, stopped in points if not stopped], (REF_FIDELITY, REF_FLOPS))


class _Reached(RBAError):
    """Raised by the timed objective once rba's trials reach the target hypervolume (ends the benchmark's run)."""


def timed_objective(session, target: float, t0: list[float]):
    """An :class:`search.objective.Objective` that records (seconds since ``t0[0]``, fidelity, flops_frac, stopped
    early) after every evaluation and stops the run once the hypervolume of the points evaluated in full reaches
    ``target`` (a trial stopped early holds only a subset's estimates and never counts towards it)."""
    from search.objective import Objective

    class Timed(Objective):
        points: list[tuple[float, float, float, bool]] = []

        def __call__(self, spans, front=None):
            result = super().__call__(spans, front)
            t = time.perf_counter() - t0[0]
            self.points.append((t, float(result["fidelity"]), float(result["flops_frac"]),
                                bool(result.get("stopped_early"))))
            if full_hypervolume(self.points) >= target - 1e-12:
                raise _Reached(f"target reached after {len(self.points)} evaluations")
            return result

    obj = Timed(session)
    obj.points = []
    return obj


def time_to_front(session, naive, setup: dict, *, trials: int, seeds, out: Path, max_factor: int = 3,
                  screening: bool = False, priors: bool = True, early_stop: bool = True) -> dict:
    import copy
    import shutil

    import optuna

    from search import run_search
    from search.samplers import make_sampler
    from search.space import SpanSpace

    base = session.cfg
    space = SpanSpace(session.adapter.num_blocks, session.pairs)
    cost = session.cost_model
    ref = (REF_FIDELITY, REF_FLOPS)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warm = optuna.create_study(directions=["maximize", "minimize"])  # imports and first-study set-up, untimed
    warm.tell(warm.ask(space.distributions()), [1.0, 1.0])
    import search.optuna_backend  # noqa: F401  (rba's side: its imports and a first SQLite storage, untimed)
    from search._storage import open_storage

    out.mkdir(parents=True, exist_ok=True)
    open_storage(f"sqlite:///{(out / 'warm-up.db').resolve()}", heartbeats=True)

    def search_cfg(seed: int, n: int, folder: Path):
        c = copy.deepcopy(base)
        c.search.method, c.search.sampler, c.search.backend = "optuna", "tpe", "optuna"
        c.search.seed, c.search.trials, c.search.priors, c.search.screening = seed, n, priors, screening
        c.search.early_stop = early_stop
        c.output.dir = str(folder)
        return c.validate()

    def naive_search(seed: int) -> list[tuple[float, float, float]]:
        sampler = make_sampler(search_cfg(seed, trials, Path(".")), "optuna")
        study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
        points, t0 = [], time.perf_counter()
        for _ in range(trials):
            trial = study.ask(space.distributions())
            spans = space.repair(trial.params)
            fid = naive.trial(spans, labels=False)["fidelity"] if spans else 1.0
            flops = cost.cost(spans)["flops_frac"]
            study.tell(trial, [fid, flops])
            points.append((time.perf_counter() - t0, fid, flops))
        return points

    def rba_search(seed: int, target: float, folder: Path) -> list[tuple[float, float, float]]:
        if folder.exists():
            shutil.rmtree(folder)
        c = search_cfg(seed, min(max_factor * trials, space.count()), folder)
        session.cfg = c
        t0 = [0.0]
        obj = timed_objective(session, target, t0)
        t0[0] = time.perf_counter()
        try:
            run_search(c, progress=False, session=session, objective=obj)
        except _Reached:
            pass
        finally:
            session.cfg = base
        return obj.points

    rows = []
    for seed in seeds:
        session.clear_caches()
        load = {"naive_load_start": C.load()}
        print(f"  seed {seed}: naive search, load at start {load['naive_load_start']}", flush=True)
        nv = naive_search(seed)
        load["naive_load_end"] = C.load()
        print(f"  seed {seed}: naive search, load at end {load['naive_load_end']}", flush=True)
        hv_n = [C.hypervolume([(f, c) for _, f, c in nv[: k + 1]], ref) for k in range(len(nv))]
        target = hv_n[-1]
        k_n = next(k for k, h in enumerate(hv_n) if h >= target - 1e-12)
        session.clear_caches()
        load["rba_load_start"] = C.load()
        print(f"  seed {seed}: rba search, load at start {load['rba_load_start']}", flush=True)
        rb = rba_search(seed, target, out / f"rba-s{seed}")
        load["rba_load_end"] = C.load()
        print(f"  seed {seed}: rba search, load at end {load['rba_load_end']}", flush=True)
        hv_r = [full_hypervolume(rb[: k + 1]) for k in range(len(rb))]
        k_r = next((k for k, h in enumerate(hv_r) if h >= target - 1e-12), None)
        row = {"seed": seed, "naive_hv": target, "naive_trials": k_n + 1, "naive_s": nv[k_n][0],
               "naive_all_s": nv[-1][0], "rba_hv": hv_r[-1] if hv_r else 0.0,
               "rba_trials": None if k_r is None else k_r + 1, "rba_s": None if k_r is None else rb[k_r][0],
               "rba_stopped_early": sum(p[3] for p in rb[: len(rb) if k_r is None else k_r + 1])}
        row["ratio"] = row["naive_s"] / row["rba_s"] if row["rba_s"] else float("nan")
        setup_n = setup["naive_materialise_s"] + setup["naive_reference_s"]
        setup_r = setup["rba_capture_s"] + setup["rba_cache_eval_s"]
        row["ratio_with_setup"] = ((row["naive_s"] + setup_n) / (row["rba_s"] + setup_r) if row["rba_s"]
                                   else float("nan"))
        row |= load
        rows.append(row)
        print(f"  seed {seed}: naive HV {target:.4f} after {trials} trials, reached at trial {k_n + 1} "
              f"({C.fmt_s(row['naive_s'])}); rba " + (f"reached it at trial {k_r + 1} ({C.fmt_s(row['rba_s'])})"
              if k_r is not None else f"did not reach it in {len(rb)} trials (HV {row['rba_hv']:.4f})")
              + f", {row['rba_stopped_early']} of them stopped early (load {C.load()})", flush=True)
    ok = [r["ratio"] for r in rows if r["rba_s"]]
    return {"trials": trials, "seeds": list(seeds), "screening": screening, "priors": priors, "early_stop": early_stop,
            "reference": {"fidelity": REF_FIDELITY, "flops_frac": REF_FLOPS}, "setup": setup, "rows": rows,
            "ratio_median": C.median(ok) if ok else float("nan"),
            "ratio_min": min(ok) if ok and len(ok) == len(rows) else float("nan"),
            "ratio_with_setup_median": (C.median([r["ratio_with_setup"] for r in rows if r["rba_s"]]) if ok
                                        else float("nan"))}


def prepare(cfg) -> tuple:
    """The label-free session (capture and eval cache built) and the naive method (states materialised, the
    reference computed), with their one-time set-up times."""
    from rba.session import Session

    cfg.search.objectives = ["fidelity", "flops"]
    session = Session(cfg.validate(), need_labels=False, progress=False, measure_latency=False)
    setup = {}
    setup["load_model_s"], _ = C.timed(lambda: session.adapter)
    setup["rba_capture_s"], stats = C.timed(lambda: session.stats)
    setup["rba_cache_eval_s"], _ = C.timed(lambda: session.evaluator)
    session.cost_model  # FLOP counting, once  # noqa: B018
    naive = C.Naive(session.adapter, session.splits, ridge=cfg.fit.ridge, batch_size=cfg.capture.batch_size)
    setup["naive_materialise_s"], _ = C.timed(naive.materialise)
    naive.batch_size = cfg.evaluate.batch_size
    setup["naive_reference_s"], _ = C.timed(naive.prepare_reference)
    setup["vectors"], setup["spans"] = stats.n, len(session.pairs)
    return session, naive, setup


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=50, help="naive Optuna trials (its hypervolume after them is the target)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="sampler seeds, one naive + one rba search each")
    p.add_argument("--max-factor", type=int, default=3, help="rba's run is allowed up to this many × --trials trials")
    p.add_argument("--minilm-calibration", type=int, default=3000, help="MiniLM calibration documents (3000 ≈ 80k tokens)")
    p.add_argument("--screening", action="store_true", help="rba's search with [search] screening on")
    p.add_argument("--no-priors", action="store_true", help="rba's search with [search] priors off (TPE alone)")
    p.add_argument("--no-early-stop", action="store_true",
                   help="rba's search with [search] early_stop off (every trial on the whole eval split)")
    args = p.parse_args()
    C.setup(args)
    with C.temp_cache() as cache:
        if args.quick:
            label = "tiny ViT (random, synthetic images)"
            cfg = C.vit_config(cache, depth=4, width=32, heads=2, image_size=32, patch=8, calibration=32, probe=32,
                               eval=32)
            trials, seeds = min(args.trials, 6), args.seeds[:1]
        else:
            label = f"all-MiniLM-L6-v2, reviews (cal {args.minilm_calibration} / eval 1000)"
            cfg = C.minilm_config(cache, calibration=args.minilm_calibration)
            trials, seeds = args.trials, args.seeds
        print(f"\n# {label}", flush=True)
        session, naive, setup = prepare(cfg)
        C.table([{k: (C.fmt_s(v) if k.endswith("_s") else v) for k, v in setup.items()}], title=f"{label}: one-time setup")
        tf = time_to_front(session, naive, setup, trials=trials, seeds=seeds, out=Path(cache) / "time_to_front",
                           max_factor=args.max_factor, screening=args.screening, priors=not args.no_priors,
                           early_stop=not args.no_early_stop)
    name = label.split(" (")[0].split(",")[0]
    C.table([{k: (C.fmt_s(v) if k.endswith("_s") and v is not None else v) for k, v in row.items()}
             for row in tf["rows"]], title=f"{name}: time to front (naive Optuna, {tf['trials']} trials)")
    C.write_json(args.json, {"label": label, "time_to_front": tf})
    C.ratio_line(f"time to front, naive / rba, worst seed [{name}]", tf["ratio_min"], target=">= 20x on every seed",
                 met=tf["ratio_min"] >= 20,
                 detail=f"seeds {tf['seeds']}: " + ", ".join(f"{r['ratio']:.1f}x" for r in tf["rows"])
                        + f"; median {tf['ratio_median']:.1f}x; with one-time setup {tf['ratio_with_setup_median']:.1f}x; "
                        f"reference point fidelity {REF_FIDELITY}, flops_frac {REF_FLOPS}; priors {tf['priors']}, "
                        f"screening {tf['screening']}, early_stop {tf['early_stop']}")


if __name__ == "__main__":
    main()
