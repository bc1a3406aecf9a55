"""Equal-evaluation comparisons against the truth: every search method replayed on an exhaustive table, its front
selected on the eval split and scored on the held-out test split, against the number of evaluations it made.

    python benchmarks/equal_evaluation.py /work/runs/exhaustive/minilm_reviews --sampler-seeds 0 1 2 3 4
    python benchmarks/equal_evaluation.py /work/runs/exhaustive/vit_fashion --sampler-seeds 0 1 2
    python benchmarks/equal_evaluation.py /tmp/exq --quick        # a table of `exhaustive.py --quick --out /tmp/exq`

The input is the folder ``benchmarks/exhaustive.py`` wrote (``run.json``, ``seed<S>/table.csv``,
``seed<S>/per_sample.npz``): every configuration of the study's space with the eval values a trial records and
its test values, sample by sample. Per data seed (a new session: its splits and statistics):

* **Replayed methods** (they only pick fitted-span configurations of the space): ``optuna`` with each
  ``search.priors`` (``all``: proxy fronts, best single spans, BR-greedy; ``proxy``: no BR-greedy configuration;
  ``none``), ``random``, ``proxy-front``, ``br-greedy``, ``shortgpt-affine`` and ``gromov-affine`` run through
  ``run_search`` itself (their planners, the sampler, the repeat handling) with an objective whose every result
  is looked up in the table (:class:`TableObjective`; a configuration missing from it stops the run). The
  objective is deterministic, so the methods see the numbers a fresh run would (``--verify`` re-evaluates a few
  configurations and records the largest difference). Seeded methods run once per ``--sampler-seeds``, the
  others once.
* **Identity-drop methods** (``shortgpt``, ``sleb``, ``gromov``, ``random-lesions``) pick configurations outside
  the fitted table: they run for real (``run_search`` with the session's objective, blocks dropped), and every
  configuration they pick is scored on the test split by ``Session.evaluate_split``.

**Evaluations.** One evaluation is one distinct configuration scored on the eval split; repeats are free. SLEB
also measures the end metric while it chooses its order (each step tries every remaining candidate block on a
quarter of the eval split): each such subset evaluation is charged as one evaluation, so its k-th configuration
becomes available after Σ_{s<k} c_s + k evaluations (c_s candidates at step s; :func:`sleb_charges`).

**Scores.** After n evaluations a method's front is the non-dominated set of its configurations by *eval* quality
and cost (``search._comparisons.front_2d``); its score is the hypervolume of those configurations' *test* values at
the reference point fixed in advance (``search._comparisons.fixed_reference``: 0.9 × the unmodified model's test
quality, the full cost), as a share of the hypervolume of every fitted configuration's test values (the true
front). Quality and cost are the export rule's (the study's first quality and cost objectives). Best-at-budget:
the configuration with the best eval quality within a FLOPs budget, scored on test (with its standard error).

**Intervals.** Per method and n: the mean over runs (data seed × sampler seed) with a 95 % t interval over runs;
"optuna priors=all minus each method": the difference of mean hypervolume shares per data seed with a 95 % paired
bootstrap interval that resamples the test samples (``rba.stats.paired_bootstrap``), the fronts held fixed.

Output (``--out``, default ``<table>/equal_evaluation``): ``equal_evaluation.csv`` (one row per method, data
seed, sampler seed and n), ``differences.csv``, ``equal_evaluation.md``, ``equal_evaluation.png`` and
``equal_evaluation.json`` (arguments, the exhaustive run's run.json, versions, load average, wall times). Each data
seed's results are saved as it finishes (``parts/seed<S>.json``): run the same command again after an
interruption and finished seeds are read back, not redone (a part made with other arguments is redone).

The curve at n < N is the first n evaluations of an N-evaluation run (the search plans its priors for N trials:
at most N/2 proxy-front members), not a run asked for n trials.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if str(ROOT / "benchmarks") not in sys.path:
    sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np
import pandas as pd

from search.objective import Objective

#: label → (registry method, search settings) of the methods replayed on the table; ``seeded``: one run per sampler seed
REPLAYED = {
    "optuna priors=all": ("optuna", {"priors": True}),
    "optuna priors=proxy": ("optuna", {"priors": "proxy"}),
    "optuna priors=none": ("optuna", {"priors": False}),
    "random": ("random", {}),
    "proxy-front": ("proxy-front", {}),
    "br-greedy": ("br-greedy", {}),
    "shortgpt-affine": ("shortgpt-affine", {}),
    "gromov-affine": ("gromov-affine", {}),
}
#: the identity-drop methods, run for real
IDENTITY = ("shortgpt", "sleb", "gromov", "random-lesions")
#: methods whose picks depend on search.seed
SEEDED = {"optuna priors=all", "optuna priors=proxy", "optuna priors=none", "random", "random-lesions"}
#: the method every other is compared with
REFERENCE_METHOD = "optuna priors=all"
#: every fitted configuration, selected on eval (what any replayed method reaches at most, with selection noise)
EVERYTHING = "every configuration"


def _args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("table", type=Path, help="folder of benchmarks/exhaustive.py (run.json, seed<S>/table.csv)")
    p.add_argument("--config", default=None, help="config file or study name (default: run.json's)")
    p.add_argument("--quick", action="store_true", help="the table is exhaustive.py --quick's (tiny random ViT)")
    p.add_argument("--data-seeds", type=int, nargs="+", default=None, help="default: every seed of run.json")
    p.add_argument("--sampler-seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--evaluations", type=int, default=60, help="evaluations per run, N (default: %(default)s)")
    p.add_argument("--at", type=int, nargs="+", default=[10, 20, 30, 60],
                   help="evaluation counts of the tables and the bootstrap (default: %(default)s)")
    p.add_argument("--budgets", type=float, nargs="+", default=[0.5, 0.75], help="FLOPs budgets of best-at-budget")
    p.add_argument("--methods", nargs="+", default=None,
                   help=f"default: all ({', '.join([*REPLAYED, *IDENTITY])})")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (default: %(default)s)")
    p.add_argument("--verify", type=int, default=3,
                   help="configurations per data seed re-evaluated against the table (default: %(default)s)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: <table>/equal_evaluation)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    args = p.parse_args(argv)
    known = [*REPLAYED, *IDENTITY]
    for m in args.methods or []:
        if m not in known:
            p.error(f"unknown method {m!r}; choose from {', '.join(known)}")
    args.methods = args.methods or known
    args.at = sorted({n for n in args.at if n <= args.evaluations} | {args.evaluations})
    return args


# ---------------------------------------------------------------------- the table
def load_table(folder: Path) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """One data seed's ``table.csv`` and ``per_sample.npz`` (rows in the same order)."""
    table = pd.read_csv(folder / "table.csv", keep_default_na=False, na_values=[""])
    with np.load(folder / "per_sample.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    if [str(s) for s in arrays["spans"]] != table["spans"].astype(str).tolist():
        raise SystemExit(f"error: {folder}: per_sample.npz and table.csv list different configurations; rerun "
                         "benchmarks/exhaustive.py on this folder to assemble them again")
    return table, arrays


def per_sample_quality(arrays: dict[str, np.ndarray], quality: str) -> np.ndarray:
    """(configurations × test samples) values whose mean is the test quality: correctness or cosine."""
    if quality == "accuracy":
        return (arrays["prediction"] == arrays["label"][None, :]).astype(np.float64)
    return arrays["cosine"].astype(np.float64)


class TableObjective(Objective):
    """The study's objective with every result taken from an exhaustive table: the eval quality a trial recorded
    there, the exact costs of the session's cost model (checked against the table's), budgets applied as usual.
    A configuration the table lacks stops the run (it was made for another space)."""

    def __init__(self, session, table: pd.DataFrame, **kwargs):
        from rba.names import RESULT_COLUMNS
        from rba.spans import parse_spans

        super().__init__(session, **kwargs)
        self.source = "table"
        for row in table.to_dict(orient="records"):
            key = str(row["spans"])
            cost = self.cost(parse_spans(key))
            if not math.isclose(cost["flops_frac"], float(row["flops_frac"]), rel_tol=1e-6, abs_tol=1e-9):
                raise SystemExit(f"error: configuration {key}: the table's flops_frac {row['flops_frac']} differs from "
                                 f"this session's {cost['flops_frac']}: the table was made for another model or config")
            result = {c: math.nan for c in RESULT_COLUMNS} | {"spans": key, "accuracy": float(row["accuracy"]),
                                                              "fidelity": float(row["fidelity"])} | cost
            constraints = self.constraints(cost)
            self._memo[key] = {c: result[c] for c in RESULT_COLUMNS} | {
                "feasible": all(v <= 0 for v in constraints.values()), "constraints": constraints}

    def __call__(self, spans, front=None):
        from rba.errors import ConfigError
        from rba.spans import format_spans

        key = format_spans(sorted((int(i), int(j)) for i, j in spans))
        if key not in self._memo:
            raise ConfigError(f"configuration {key} is not in the exhaustive table: it was made for another search "
                              "space (model, max_span); rerun benchmarks/exhaustive.py with this config")
        return super().__call__(spans)


# ---------------------------------------------------------------------- runs
@dataclass
class Run:
    """The configurations one method evaluated, in order, and the evaluation count at which each became
    available (``charges``, increasing)."""

    method: str
    data_seed: int
    sampler_seed: int | None
    kind: str
    picks: list[str]
    charges: list[int]
    wall_s: float = 0.0


def _distinct_picks(trials: pd.DataFrame) -> list[str]:
    """The distinct configurations of a study's completed trials, in trial order (repeats cost nothing)."""
    done = trials[trials["state"] == "COMPLETE"].sort_values("number")
    return list(dict.fromkeys(done["spans"].astype(str)))


def run_method(cfg, session, objective, method: str, settings: dict, seed: int, evaluations: int,
               workdir: Path) -> list[str]:
    """The configurations ``method`` evaluates in a real study on ``objective`` (``run_search``), in order, at
    most ``evaluations``."""
    from search_quality import _with

    from search import run_search

    c = _with(cfg, workdir, cfg.search.budget_flops, objectives=list(cfg.search.objectives), method=method,
              trials=evaluations, seed=seed, **({"priors": False} | settings if method == "optuna" else {}))
    try:
        res = run_search(c, progress=False, session=session, objective=objective)
        return _distinct_picks(res.trials)[:evaluations]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def sleb_charges(candidates: int, count: int, barriers: tuple[int, int] | None = None) -> list[int]:
    """Evaluations SLEB has made when its k-th configuration (k = 1..count) is evaluated: the subset evaluations
    of its first k steps (step s tries the ``candidates − s − barriers`` blocks not yet removed, barriers
    excepted: :func:`search.baselines.sleb_order`) and k full evaluations."""
    from search.baselines import SLEB_BARRIERS

    skip = sum(barriers or SLEB_BARRIERS)
    spent, out = 0, []
    for k in range(count):
        spent += candidates - k - skip
        out.append(spent + k + 1)
    return out


# ---------------------------------------------------------------------- one data seed
@dataclass
class Pool:
    """Every configuration one data seed's methods may select: eval quality and cost (``rows``, indexed by
    "kind:spans"), test quality per sample (``samples``, row ``pos[key]``), and the fitted table's keys."""

    quality: str
    cost: str
    kind: str
    rows: pd.DataFrame
    samples: np.ndarray
    pos: dict[str, int]
    fitted: list[str]
    reference: tuple[float, float] = (math.nan, math.nan)
    true_hv: float = math.nan
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_table(cls, table: pd.DataFrame, arrays: dict[str, np.ndarray], quality: str, cost: str, kind: str,
                   feasible: list[bool] | None = None) -> "Pool":
        from search._comparisons import fixed_reference
        from search.analysis import hypervolume

        samples = per_sample_quality(arrays, quality)
        keys = [f"{kind}:{s}" for s in table["spans"].astype(str)]
        rows = pd.DataFrame({"key": keys, "kind": kind, "spans": table["spans"].astype(str).to_numpy(),
                             quality: table[quality].to_numpy(float), cost: table[cost].to_numpy(float),
                             "feasible": True if feasible is None else feasible,
                             "test": samples.mean(axis=1)}, index=keys)
        if "flops_frac" not in rows:
            rows["flops_frac"] = table["flops_frac"].to_numpy(float)
        pool = cls(quality=quality, cost=cost, kind=kind, rows=rows, samples=samples, pos={k: i for i, k in enumerate(keys)},
                   fitted=keys, extra={"label": arrays.get("label")})
        if "none" not in set(table["spans"].astype(str)):
            raise SystemExit("error: the table has no row for the unmodified model ('none'): the reference point "
                             "needs it; rerun benchmarks/exhaustive.py without --limit")
        none = rows.loc[f"{kind}:none"]
        pool.reference = fixed_reference(none["test"], none[cost])
        fit = rows[rows["feasible"]]
        pool.true_hv = hypervolume(fit["test"], fit[cost], *pool.reference)
        return pool

    def add(self, kind: str, spans: str, eval_quality: float, costs: dict[str, float], values: np.ndarray) -> str:
        """One more configuration (an identity drop), scored on test per sample (``values``); returns its key."""
        key = f"{kind}:{spans}"
        if key not in self.pos:
            row = {"key": key, "kind": kind, "spans": spans, self.quality: eval_quality, "feasible": True,
                   "test": float(np.mean(values))} | costs
            self.rows = pd.concat([self.rows, pd.DataFrame([row], index=[key])])
            self.pos[key] = len(self.samples)
            self.samples = np.vstack([self.samples, values[None, :]])
        return key

    def test_se(self, key: str) -> float:
        from rba.stats import binomial_se, mean_se

        x = self.samples[self.pos[key]]
        return binomial_se(x) if self.quality == "accuracy" else mean_se(x)


def selected(pool: Pool, keys: list[str]) -> pd.DataFrame:
    """The configurations ``keys`` a method evaluated, reduced to its front on eval (``front_2d``)."""
    from search._comparisons import front_2d

    return front_2d(pool.rows.loc[keys], pool.quality, pool.cost)


def hv_share(pool: Pool, keys: list[str], test: np.ndarray | None = None) -> float:
    """Hypervolume of the eval front of ``keys`` scored on test (``test``: per-key test quality, default the
    observed), as a share of the true front's."""
    from search.analysis import hypervolume

    if not keys:
        return 0.0
    front = selected(pool, keys)
    q = front["test"].to_numpy(float) if test is None else test[[pool.pos[k] for k in front.index]]
    return hypervolume(q, front[pool.cost], *pool.reference) / pool.true_hv if pool.true_hv > 0 else math.nan


def best_at(pool: Pool, keys: list[str], budget: float) -> tuple[str | None, float, float]:
    """The configuration with the best eval quality within a FLOPs budget, its test quality and SE."""
    from search.analysis import best_quality_at

    rows = pool.rows.loc[keys]
    _, spans = best_quality_at(rows, pool.quality, budget)
    if not spans:
        return None, math.nan, math.nan
    key = rows.index[rows["spans"] == spans][0]
    return key, float(pool.rows.at[key, "test"]), pool.test_se(key)


def available(run: Run, n: int) -> list[str]:
    return [k for k, c in zip(run.picks, run.charges) if c <= n]


def curve_rows(pool: Pool, runs: list[Run], evaluations: int, budgets: list[float]) -> list[dict]:
    """One row per run and evaluation count 1..``evaluations``: HV share, front size, best-at-budget."""
    rows = []
    for run in runs:
        last = None
        for n in range(1, evaluations + 1):
            keys = available(run, n)
            row = {"method": run.method, "data_seed": run.data_seed, "sampler_seed": run.sampler_seed,
                   "kind": run.kind, "evaluations": n, "configurations": len(keys)}
            if last is not None and len(keys) == last["configurations"]:
                rows.append(last | {"evaluations": n})  # nothing new: the same front
                continue
            row["hv_share"] = hv_share(pool, keys)
            row["front"] = len(selected(pool, keys)) if keys else 0
            for b in budgets:
                key, value, se = best_at(pool, keys, b) if keys else (None, math.nan, math.nan)
                row |= {f"best_{b:g}": value, f"best_{b:g}_se": se,
                        f"best_{b:g}_spans": pool.rows.at[key, "spans"] if key else ""}
            rows.append(row)
            last = row
    return rows


def everything_row(pool: Pool, data_seed: int, budgets: list[float]) -> dict:
    """Every fitted configuration, selected on eval: the ceiling of the replayed methods (selection noise
    included); ``truth_*``: the best test quality within each budget, chosen on test."""
    keys = [k for k in pool.fitted if pool.rows.at[k, "feasible"]]
    row = {"method": EVERYTHING, "data_seed": data_seed, "sampler_seed": None, "kind": "fitted",
           "evaluations": len(keys), "configurations": len(keys), "hv_share": hv_share(pool, keys),
           "front": len(selected(pool, keys))}
    for b in budgets:
        key, value, se = best_at(pool, keys, b)
        row |= {f"best_{b:g}": value, f"best_{b:g}_se": se, f"best_{b:g}_spans": pool.rows.at[key, "spans"] if key else ""}
        within = pool.rows.loc[keys]
        within = within[within["flops_frac"] <= b + 1e-12]
        row[f"truth_{b:g}"] = float(within["test"].max()) if len(within) else math.nan
    return row


def differences(pool: Pool, runs: list[Run], counts: list[int], resamples: int, data_seed: int) -> list[dict]:
    """Mean HV share of :data:`REFERENCE_METHOD` minus each other method's at each count, with a paired bootstrap
    interval over the test samples (the fronts, selected on eval, held fixed; the reference point resampled with
    the unmodified model's quality; the true front's hypervolume held at its observed value)."""
    from rba.stats import paired_bootstrap
    from search._comparisons import REFERENCE_QUALITY_SHARE
    from search.analysis import hypervolume

    by_method: dict[str, list[Run]] = {}
    for run in runs:
        by_method.setdefault(run.method, []).append(run)
    if REFERENCE_METHOD not in by_method:
        return []
    none = pool.pos[f"{pool.kind}:none"]
    out = []
    for n in counts:
        fronts = {m: [list(selected(pool, available(r, n)).index) for r in rs] for m, rs in by_method.items()}
        keys = sorted({k for fs in fronts.values() for f in fs for k in f})
        cols = {k: i for i, k in enumerate(keys)}
        table = pool.samples[[pool.pos[k] for k in keys] + [none]].T  # samples × (keys, none)
        costs = pool.rows.loc[keys, pool.cost].to_numpy(float)

        def mean_share(t: np.ndarray, method: str) -> float:
            means = t.mean(axis=0)
            ref = (REFERENCE_QUALITY_SHARE * means[-1], pool.reference[1])
            return float(np.mean([hypervolume(means[[cols[k] for k in f]], costs[[cols[k] for k in f]], *ref)
                                  for f in fronts[method]])) / pool.true_hv

        for method in by_method:
            if method == REFERENCE_METHOD:
                continue
            diff = paired_bootstrap(lambda t, m=method: mean_share(t, REFERENCE_METHOD) - mean_share(t, m), table,
                                    resamples=resamples, seed=data_seed)
            out.append({"data_seed": data_seed, "method": method, "evaluations": n,
                        "reference_runs": len(by_method[REFERENCE_METHOD]), "runs": len(by_method[method]),
                        "difference": diff.estimate, "low": diff.low, "high": diff.high, "p": diff.p})
    return out


# ---------------------------------------------------------------------- driver
def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _config(args, run: dict):
    """The study's config with the exhaustive run's splits (its test split included)."""
    if args.quick or run.get("config") == "quick":
        from exhaustive import _quick_config

        return _quick_config(Path(tempfile.mkdtemp(prefix="rba-equal-evaluation-")))
    from rba.config import load_study

    cfg = load_study(args.config or run["config"])
    for split, size in run.get("splits", {}).items():
        setattr(cfg.data, split, size)
    return cfg


def verify(session, table: pd.DataFrame, count: int, seed: int) -> dict:
    """Re-evaluate ``count`` random fitted configurations (a fresh trial's path) and compare with the table."""
    rng = np.random.default_rng(seed)
    candidates = table[table["spans"] != "none"]
    picks = candidates.iloc[rng.choice(len(candidates), size=min(count, len(candidates)), replace=False)]
    diffs = {"accuracy": 0.0, "fidelity": 0.0}
    for row in picks.to_dict(orient="records"):
        fresh = session.evaluate(str(row["spans"]))
        for col in diffs:
            if math.isfinite(float(row[col])):
                diffs[col] = max(diffs[col], abs(float(fresh[col]) - float(row[col])))
    return {"configurations": list(picks["spans"].astype(str)), "max_abs_diff": diffs}


def run_data_seed(args, cfg, seed: int, workroot: Path) -> tuple[Pool, list[Run], dict]:
    import copy

    from rba.session import Session
    from rba.spans import parse_spans
    from search._results import rule_columns
    from search.recording import needs_labels

    table, arrays = load_table(args.table / f"seed{seed}")
    cfg = copy.deepcopy(cfg)
    cfg.data.seed = seed
    cfg = cfg.validate()
    quality, cost = rule_columns(cfg.search.objectives)
    if cost not in table:
        raise SystemExit(f"error: the table has no column {cost!r} (the study's cost objective); "
                         "benchmarks/exhaustive.py records flops_frac and params_frac")
    t0 = time.perf_counter()
    session = Session(cfg, need_labels=needs_labels(cfg), progress=False)
    objective = TableObjective(session, table)
    info: dict = {"session_s": round(time.perf_counter() - t0, 1), "configurations": len(table),
                  "test_samples": int(arrays["cosine"].shape[1])}
    feasible = [objective.feasible(parse_spans(str(s))) for s in table["spans"]]
    pool = Pool.from_table(table, arrays, quality, cost, objective.kind, feasible)
    info |= {"reference": list(pool.reference), "true_hv": pool.true_hv}
    if args.verify:
        info["verify"] = verify(session, table, args.verify, seed)
        _log(f"data seed {seed}: replay check on {args.verify} configurations: max |Δ| {info['verify']['max_abs_diff']}")
    runs: list[Run] = []
    for label in [m for m in REPLAYED if m in args.methods]:
        method, settings = REPLAYED[label]
        for s in args.sampler_seeds if label in SEEDED else [None]:
            t0 = time.perf_counter()
            picks = run_method(cfg, session, objective, method, settings, s or 0, args.evaluations,
                               workroot / f"{seed}-{label}-{s}".replace(" ", "_"))
            runs.append(Run(label, seed, s, objective.kind, [f"{objective.kind}:{p}" for p in picks],
                            list(range(1, len(picks) + 1)), time.perf_counter() - t0))
            _log(f"data seed {seed}: {label} (sampler seed {s}): {len(picks)} configurations, "
                 f"{runs[-1].wall_s:.1f} s")
    identity = [m for m in IDENTITY if m in args.methods]
    if identity:
        dropped = Objective(session, kind="identity")
        for label in identity:
            for s in args.sampler_seeds if label in SEEDED else [None]:
                t0 = time.perf_counter()
                picks = run_method(cfg, session, dropped, label, {}, s or 0, args.evaluations,
                                   workroot / f"{seed}-{label}-{s}")
                keys = []
                for p in picks:
                    result = dropped(parse_spans(p))  # already evaluated by the run: its memo
                    if f"identity:{p}" in pool.pos:  # scored on test for an earlier run
                        keys.append(f"identity:{p}")
                        continue
                    split = session.evaluate_split(p, "test", kind="identity")
                    if pool.extra["label"] is not None and not np.array_equal(split.label, pool.extra["label"]):
                        raise SystemExit("error: this session's test split differs from the table's: pass the "
                                         "config and splits the exhaustive run used")
                    values = ((split.prediction == split.label).astype(np.float64) if quality == "accuracy"
                              else np.asarray(split.cosine, dtype=np.float64))
                    keys.append(pool.add("identity", p, float(result[quality]),
                                         {c: float(result[c]) for c in ("flops_frac", "params_frac")}, values))
                if label == "sleb":
                    stats = session.stats
                    singles = [i for i, j in session.pairs if j == i + 1 and stats.dims[i] == stats.dims[j]]
                    charges = sleb_charges(len(singles), len(keys))
                    info["sleb_charges"] = charges
                else:
                    charges = list(range(1, len(keys) + 1))
                runs.append(Run(label, seed, s, "identity", keys, charges, time.perf_counter() - t0))
                _log(f"data seed {seed}: {label} (sampler seed {s}): {len(keys)} configurations, "
                     f"{runs[-1].wall_s:.1f} s")
    return pool, runs, info


def _interval(values) -> tuple[float, float, float]:
    """Mean and 95 % t interval over runs (NaN bounds for a single run)."""
    from scipy import stats

    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if not len(x):
        return math.nan, math.nan, math.nan
    if len(x) < 2 or np.all(x == x[0]):
        return float(x.mean()), (math.nan if len(x) < 2 else float(x[0])), (math.nan if len(x) < 2 else float(x[0]))
    low, high = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
    return float(x.mean()), float(low), float(high)


def summary(curves: pd.DataFrame, counts: list[int], budgets: list[float]) -> pd.DataFrame:
    """Per method and count: runs, mean HV share with its t interval over runs, best-at-budget likewise."""
    rows = []
    for (method, n), group in curves[curves["evaluations"].isin(counts)].groupby(["method", "evaluations"], sort=False):
        mean, low, high = _interval(group["hv_share"])
        row = {"method": method, "evaluations": n, "runs": len(group), "configurations": group["configurations"].mean(),
               "hv_share": mean, "hv_low": low, "hv_high": high}
        for b in budgets:
            m, lo, hi = _interval(group[f"best_{b:g}"])
            row |= {f"best_{b:g}": m, f"best_{b:g}_low": lo, f"best_{b:g}_high": hi,
                    f"best_{b:g}_se": float(group[f"best_{b:g}_se"].mean())}
        rows.append(row)
    return pd.DataFrame(rows)


def _cell(mean: float, low: float, high: float, digits: int = 3) -> str:
    if not math.isfinite(mean):
        return "—"
    if not (math.isfinite(low) and math.isfinite(high)):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _order(methods) -> list[str]:
    known = [*REPLAYED, *IDENTITY, EVERYTHING]
    return sorted(methods, key=lambda m: known.index(m) if m in known else len(known))


def write_markdown(path: Path, study: str, meta: dict, table: pd.DataFrame, everything: pd.DataFrame,
                   diffs: pd.DataFrame, counts: list[int], budgets: list[float], quality: str) -> None:
    from rba._io import atomic_write_text

    n_max = max(counts)
    refs = ", ".join(f"seed {s}: {v['reference'][0]:.4f}" for s, v in meta["data_seeds"].items())
    lines = [f"# Equal-evaluation replay: {study}", "",
             f"Each method evaluates at most {n_max} distinct configurations (repeats are free); its front is selected on "
             f"the **eval** split and scored on the **test** split. Quality: {quality}; cost: {meta['cost']}. "
             f"Data seeds {meta['data_seeds_list']}; sampler seeds {meta['sampler_seeds']} for "
             f"{', '.join(sorted(SEEDED))}, one run per data seed for the others. Reference point fixed in advance: "
             f"0.9 × the unmodified model's test {quality} ({refs}) and the full cost. True front: every fitted "
             f"configuration of the table scored on test (HV share 1). Intervals: 95 % t interval over runs "
             f"(data seed × sampler seed). SLEB is charged one evaluation per end-metric evaluation it makes while "
             f"choosing its order (a quarter of the eval split each), plus one per configuration: its configurations "
             f"arrive after {meta.get('sleb_charges', '—')} evaluations. Identity-drop methods (shortgpt, sleb, "
             f"gromov, random-lesions) pick configurations outside the fitted table; their share can exceed 1.", "",
             "## Hypervolume share of the true test front after n evaluations", "",
             "| method | runs | " + " | ".join(f"n = {n}" for n in counts) + f" | configurations at n = {n_max} |",
             "|---|---|" + "---|" * len(counts) + "---|"]
    for method in _order(table["method"].unique()):
        t = table[table["method"] == method].set_index("evaluations")
        cells = [_cell(t.at[n, "hv_share"], t.at[n, "hv_low"], t.at[n, "hv_high"]) if n in t.index else "—" for n in counts]
        lines.append(f"| {method} | {int(t['runs'].iloc[0])} | " + " | ".join(cells)
                     + f" | {t.at[n_max, 'configurations']:.1f} |")
    e = everything
    cells = [""] * (len(counts) - 1) + [_cell(*_interval(e["hv_share"]))]  # every configuration: n is all of them
    lines.append(f"| {EVERYTHING} (selected on eval; n = all) | {len(e)} | " + " | ".join(cells)
                 + f" | {e['configurations'].mean():.0f} |")
    lines += ["", f"## Best test {quality} within a FLOPs budget, selected on eval, after {n_max} evaluations", "",
              "Mean over runs [95 % t interval]; SE: the mean standard error of one pick on the test split.", "",
              "| method | " + " | ".join(f"FLOPs ≤ {b:g}" for b in budgets) + " |", "|---|" + "---|" * len(budgets)]
    for method in _order(table["method"].unique()):
        t = table[(table["method"] == method) & (table["evaluations"] == n_max)]
        if not len(t):
            continue
        r = t.iloc[0]
        lines.append(f"| {method} | " + " | ".join(
            f"{_cell(r[f'best_{b:g}'], r[f'best_{b:g}_low'], r[f'best_{b:g}_high'])} (SE {r[f'best_{b:g}_se']:.3f})"
            for b in budgets) + " |")
    lines.append(f"| {EVERYTHING} (selected on eval) | " + " | ".join(
        f"{_cell(*_interval(e[f'best_{b:g}']))} (SE {e[f'best_{b:g}_se'].mean():.3f})" for b in budgets) + " |")
    lines.append("| the truth (best on test: an upper bound, selected on test) | " + " | ".join(
        _cell(*_interval(e[f"truth_{b:g}"])) for b in budgets) + " |")
    if len(diffs):
        lines += ["", f"## {REFERENCE_METHOD} minus each method: HV share, paired bootstrap over test samples", "",
                  "Per data seed: mean HV share of the reference method's runs minus the other method's, the fronts "
                  "(selected on eval) held fixed, the test samples resampled (the sampler-seed spread is in the "
                  "intervals above, not here). Positive: the search with all priors is ahead.", "",
                  "| data seed | method | n | difference [95 %] | p |", "|---|---|---|---|---|"]
        for _, r in diffs.iterrows():
            lines.append(f"| {r['data_seed']} | {r['method']} | {r['evaluations']} | "
                         f"{_cell(r['difference'], r['low'], r['high'], 4)} | {r['p']:.3g} |")
        lines += ["", "## Which way the numbers go", ""] + statements(diffs, table, counts)
    lines += ["", f"Exhaustive table: `{meta['table']}` (run.json: commit {meta['exhaustive'].get('rba_commit')}, "
              f"load {meta['exhaustive'].get('load_start')} → {meta['exhaustive'].get('load_end')}). This replay, "
              f"commit {meta['rba_commit']}, {meta['threads']} torch thread(s) on {meta['cpus']} CPUs: "
              + "; ".join(f"data seed {s}: {v.get('wall_s', math.nan):.0f} s (load {v.get('load_start')} → "
                          f"{v.get('load_end')})" for s, v in meta["data_seeds"].items()) + "."]
    atomic_write_text(path, "\n".join(lines) + "\n")


def statements(diffs: pd.DataFrame, table: pd.DataFrame, counts: list[int]) -> list[str]:
    """Plain sentences: at the smallest and largest count, per method, whether the search with all priors is
    ahead, behind or within noise on each data seed; and which method leads at the largest count."""
    out = []
    for n in sorted({min(counts), max(counts)}):
        d = diffs[diffs["evaluations"] == n]
        for method in _order(d["method"].unique()):
            m = d[d["method"] == method]
            parts = []
            for _, r in m.iterrows():
                if r["low"] > 0:
                    verdict = "ahead"
                elif r["high"] < 0:
                    verdict = "**behind**"
                else:
                    verdict = "within noise"
                parts.append(f"seed {r['data_seed']}: {verdict} ({r['difference']:+.4f} [{r['low']:+.4f}, {r['high']:+.4f}])")
            out.append(f"- n = {n}, {REFERENCE_METHOD} vs {method}: " + "; ".join(parts))
        t = table[table["evaluations"] == n].sort_values("hv_share", ascending=False)
        if len(t):
            top = t.iloc[0]
            out.append(f"- n = {n}: the highest mean HV share is {top['method']}'s ({top['hv_share']:.4f}); "
                       f"{REFERENCE_METHOD}'s is "
                       f"{float(t.loc[t['method'] == REFERENCE_METHOD, 'hv_share'].iloc[0]):.4f}"
                       if (t["method"] == REFERENCE_METHOD).any() else
                       f"- n = {n}: the highest mean HV share is {top['method']}'s ({top['hv_share']:.4f})")
    return out


def plot(path: Path, study: str, curves: pd.DataFrame, everything: pd.DataFrame, budget: float, quality: str) -> None:
    from matplotlib.figure import Figure

    from rba._io import atomic_path

    fig = Figure(figsize=(13, 5))
    axes = fig.subplots(1, 2)
    methods = _order(curves["method"].unique())
    palette = [f"C{i}" for i in range(10)] + ["#222222", "#b8860b", "#8fbc8f", "#ff69b4"]
    colors = {m: palette[i % len(palette)] for i, m in enumerate(methods)}
    for method in methods:
        style = "--" if method in IDENTITY else "-"
        for ax, col in zip(axes, ["hv_share", f"best_{budget:g}"]):
            g = curves[curves["method"] == method].groupby("evaluations")[col]
            mean = g.mean()
            ax.plot(mean.index, mean.to_numpy(), style, color=colors[method], label=method, lw=1.4)
            if g.size().max() > 1:  # the 95 % t interval over runs
                bounds = np.array([_interval(v)[1:] for _, v in g])
                ax.fill_between(mean.index, bounds[:, 0], bounds[:, 1], color=colors[method], alpha=0.08, lw=0)
    axes[0].axhline(everything["hv_share"].mean(), color="k", lw=0.8, ls=":", label=f"{EVERYTHING} (on eval)")
    axes[1].axhline(everything[f"truth_{budget:g}"].mean(), color="k", lw=0.8, ls=":", label="truth (on test)")
    top = curves.groupby(["method", "evaluations"])["hv_share"].mean().max()
    axes[0].set_ylim(0, max(1.05, top + 0.05))  # intervals of few runs can be wide: the means stay readable
    best = curves.groupby(["method", "evaluations"])[f"best_{budget:g}"].mean()
    if best.notna().any():
        truth = everything[f"truth_{budget:g}"].mean()
        axes[1].set_ylim(best.min() - 0.05 * abs(best.min()), max(best.max(), truth) + 0.02 * abs(truth))
    axes[0].set(xlabel="evaluations (distinct configurations)", ylabel="HV share of the true test front",
                title=f"{study}: fronts selected on eval, scored on test")
    axes[1].set(xlabel="evaluations (distinct configurations)", ylabel=f"test {quality}",
                title=f"best on eval within FLOPs ≤ {budget:g}, scored on test")
    handles, labels = axes[0].get_legend_handles_labels()
    more, extra = axes[1].get_legend_handles_labels()
    axes[1].legend(handles + more[-1:], labels + extra[-1:], fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)


def part_key(args) -> dict:
    """What a data seed's results depend on, besides the table: a saved part with another key is redone."""
    return {k: getattr(args, k) for k in ("evaluations", "sampler_seeds", "methods", "at", "budgets", "resamples",
                                          "verify", "config", "quick")} | {"table": str(args.table.resolve())}


def load_part(out: Path, seed: int, args) -> dict | None:
    """A data seed's saved results (``parts/seed<S>.json``, written when it finished) if made with these
    arguments; None otherwise (then it is run again)."""
    import json

    path = out / "parts" / f"seed{seed}.json"
    try:
        part = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return part if part.get("key") == json.loads(json.dumps(part_key(args))) else None


def main(argv=None) -> int:
    import json
    import warnings

    import torch

    from rba._io import atomic_write_json, atomic_write_text, package_versions, source_commit

    args = _args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    run_json = args.table / "run.json"
    if not run_json.exists():
        raise SystemExit(f"error: {run_json} is missing: pass the folder benchmarks/exhaustive.py wrote")
    exhaustive_run = json.loads(run_json.read_text())
    seeds = args.data_seeds if args.data_seeds is not None else list(exhaustive_run["seeds"])
    cfg = _config(args, exhaustive_run)
    study = "quick" if args.quick else cfg.name
    out = args.out or args.table / "equal_evaluation"
    out.mkdir(parents=True, exist_ok=True)
    started, load_start = time.perf_counter(), [round(x, 2) for x in os.getloadavg()]
    workroot = Path(tempfile.mkdtemp(prefix="rba-equal-evaluation-runs-"))
    curves, everything, diffs, per_seed = [], [], [], {}
    quality = cost = None
    try:
        for seed in seeds:
            part = load_part(out, seed, args)
            if part is None:
                seed_started, seed_load = time.perf_counter(), [round(x, 2) for x in os.getloadavg()]
                pool, runs, info = run_data_seed(args, cfg, seed, workroot)
                t0 = time.perf_counter()
                part = {"key": part_key(args), "quality": pool.quality, "cost": pool.cost,
                        "curves": curve_rows(pool, runs, args.evaluations, args.budgets),
                        "everything": everything_row(pool, seed, args.budgets),
                        "differences": differences(pool, runs, args.at, args.resamples, seed),
                        "info": info | {"replay_s": {f"{r.method} {r.sampler_seed}": round(r.wall_s, 1) for r in runs}}}
                part["info"] |= {"scoring_s": round(time.perf_counter() - t0, 1), "load_start": seed_load,
                                 "load_end": [round(x, 2) for x in os.getloadavg()],
                                 "wall_s": round(time.perf_counter() - seed_started, 1)}
                atomic_write_json(out / "parts" / f"seed{seed}.json", part)
            else:
                _log(f"data seed {seed}: done before ({out / 'parts' / f'seed{seed}.json'}), not run again")
            quality, cost = part["quality"], part["cost"]
            curves += part["curves"]
            everything.append(part["everything"])
            diffs += part["differences"]
            per_seed[seed] = part["info"]
    finally:
        shutil.rmtree(workroot, ignore_errors=True)
    columns = ["method", "data_seed", "sampler_seed", "kind", "evaluations", "configurations", "front", "hv_share"]
    curves_df, everything_df = pd.DataFrame(curves), pd.DataFrame(everything)
    for df in (curves_df, everything_df):
        df["sampler_seed"] = df["sampler_seed"].astype("Int64")  # None for the methods that take no seed
    curves_df = curves_df[columns + [c for c in curves_df.columns if c not in columns]]
    diffs_df = pd.DataFrame(diffs)
    table = summary(curves_df, args.at, args.budgets)
    atomic_write_text(out / "equal_evaluation.csv", pd.concat([curves_df, everything_df]).to_csv(index=False))
    atomic_write_text(out / "differences.csv", diffs_df.to_csv(index=False))
    meta = {"study": study, "table": str(args.table), "arguments": {k: str(v) if isinstance(v, Path) else v
                                                                     for k, v in vars(args).items()},
            "data_seeds_list": seeds, "sampler_seeds": args.sampler_seeds, "quality": quality, "cost": cost,
            "data_seeds": per_seed, "exhaustive": exhaustive_run, "versions": package_versions(),
            "rba_commit": source_commit(), "threads": args.threads, "cpus": os.cpu_count(),
            "load_start": load_start, "load_end": [round(x, 2) for x in os.getloadavg()],
            "wall_s": round(time.perf_counter() - started, 1)}
    meta["sleb_charges"] = next((v["sleb_charges"] for v in per_seed.values() if "sleb_charges" in v), None)
    write_markdown(out / "equal_evaluation.md", study, meta, table, everything_df, diffs_df, args.at, args.budgets,
                   quality)
    plot(out / "equal_evaluation.png", study, curves_df, everything_df, args.budgets[0], quality)
    atomic_write_json(out / "equal_evaluation.json", meta)
    print((out / "equal_evaluation.md").read_text())
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
