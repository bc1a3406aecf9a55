"""What accuracy measures: every single span scored on the held-out test split by three objectives, next to probes
on the unmodified model truncated at each boundary.

    python benchmarks/objectives.py minilm_reviews                                    # 21 spans, see docs/benchmarks.md
    python benchmarks/objectives.py efficientnet_lite0_fashion --data data/fashion-mnist-test.npz
    python benchmarks/objectives.py --quick --out /tmp/objectives                     # tiny random ViT, seconds

Per configuration (the unmodified model and every valid single span, replaced by its affine fit), on the test
split (``Session.evaluate_split``; nothing is selected on it):

- ``fidelity``: mean cosine of the pooled representation to the unmodified model's;
- ``accuracy_probe``: a linear probe refitted on the configuration's own probe-split representation
  (``[evaluate] head = "probe"``, what the search scores): how much task information survives, wherever it lies;
- ``accuracy_fixed``: the unmodified model's probe kept (``head = "fixed-probe"``): whether the representation
  still means what it meant to the head downstream of it.

Each with its standard error (:mod:`rba.stats`), and for the accuracies the paired difference to the unmodified
model with McNemar's exact p-value (Holm-adjusted over the spans of each head). Then Spearman ρ between every
statistics metric (``Session.scores()``; oriented so that higher means more redundant: ls_residual negated) and
each objective, pooled over the spans and within span lengths (:mod:`search.analysis`, :mod:`search._comparisons`,
as the report's priors section). **Truncation probes**: for every boundary k, a probe fitted on the probe split's
representation of the unmodified model cut after k blocks (the model's own pooling where boundary k has the last
boundary's shape, else the mean over positions), scored on the test split: how much task information each depth
holds.

Output (``--out``, default ``benchmarks/out/objectives/<study>``): ``configurations.csv``, ``correlations.csv``,
``truncation.csv``, ``objectives.md`` (the three tables) and ``run.json`` (arguments, split sizes, versions, wall
and CPU time, load average). Each configuration's per-sample test results go to ``configs/<spans>.npz`` as it
finishes (atomically, keyed by the model, splits, statistics and fit), and the truncation probes' to
``truncation.npz``: rerunning the same command evaluates only what is missing.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import _common as C  # (the benchmarks' shared helpers; its folder is on sys.path when a script runs)
import numpy as np
import pandas as pd

#: split sizes of a real run: 3,000 probe samples, so that a refitted probe's own variance is small, and 4,000 test
#: samples (binomial SE ≈ 0.75 points at accuracy 0.65; paired differences to the unmodified model are tighter).
#: Eval is scored by nothing here, but every Evaluator builds it and the refitted probe's head runs it per
#: configuration, so it is kept small. Both studies' data hold these with their calibration splits: 12,808
#: reviews, 10,000 Fashion-MNIST test images.
SIZES = {"probe": 3000, "eval": 200, "test": 4000}
QUICK_SIZES = {"probe": 64, "eval": 32, "test": 64}
OBJECTIVES = ("fidelity", "accuracy_probe", "accuracy_fixed")


def _args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("config", nargs="?", default="minilm_reviews", help="config file, or shipped study name")
    p.add_argument("--quick", action="store_true", help="tiny random ViT on synthetic images (smoke test)")
    for name, n in SIZES.items():
        p.add_argument(f"--{name}", type=int, default=None,
                       help=f"[data] {name} (default: {n}; --quick: {QUICK_SIZES[name]})")
    p.add_argument("--data", default=None, help="[data] path (default: the config's)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: benchmarks/out/objectives/<config>)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    return p.parse_args(argv)


def _quick_config(tmp: Path):
    from rba.config import Config

    raw = {
        "model": {"kind": "timm", "name": "test_vit", "pretrained": False, "options": {"depth": 4}},
        "data": {"kind": "synthetic", "image_size": 32, "calibration": 48,
                 "options": {"modality": "image", "classes": 4}},
        "capture": {"cache_dir": str(tmp / "cache"), "batch_size": 16},
        "evaluate": {"latency_repeats": 1, "batch_size": 16},
    }
    return Config.from_dict(raw, name="quick", base_dir=str(tmp))


def sessions(cfg, progress: bool = False):
    """One Session per probe head, ``[evaluate] head`` = "probe" and "fixed-probe"; the second gets the first's
    model and statistics (the heads change no statistic)."""
    from rba.session import Session

    refit = Session(cfg.override({"evaluate.head": "probe"}), progress=progress, measure_latency=False)
    fixed = Session(copy.deepcopy(cfg).override({"evaluate.head": "fixed-probe"}), progress=progress,
                    measure_latency=False, adapter=refit.adapter, stats=refit.stats)
    return refit, fixed


def run_key(session) -> str:
    """What a saved result depends on: model, every split's samples, statistics, fit and probe settings."""
    from rba.names import config_hash

    c = session.cfg
    return config_hash({"model": session.adapter.identity, "statistics": session.stats.key,
                        "splits": {k: np.asarray(v).tolist() for k, v in session.splits.indices.items()},
                        "fit": [c.fit.kind, c.fit.ridge, c.fit.mode], "probe_c": c.evaluate.probe_c,
                        "batch_size": c.evaluate.batch_size})


def _load(path: Path, key: str) -> dict | None:
    """A saved result, or None when it is missing, unreadable or from other settings."""
    data = C.load_npz(path)
    return data if data is not None and str(data.get("key", "")) == key else None


def evaluate(refit, fixed, spans, path: Path, key: str) -> tuple[dict, bool]:
    """One configuration's test-split cosines and both heads' predictions: loaded from ``path`` when saved with
    ``key``, else evaluated and saved. Returns (arrays, whether it was evaluated now)."""
    data = _load(path, key)
    if data is not None:
        return data, False
    t0 = time.perf_counter()
    a = refit.evaluate_split(spans, "test")
    b = fixed.evaluate_split(spans, "test")
    # no two configurations here share a leading span, so the prefix memo would only hold states (up to its 2 GiB)
    refit.evaluator.clear_memo()
    data = {"key": np.array(key), "cosine": a.cosine, "prediction_probe": a.prediction,
            "prediction_fixed": b.prediction, "label": a.label, "seconds": np.array(time.perf_counter() - t0)}
    C.save_npz(path, data)
    return data, True


def configuration_table(results: dict[str, dict]) -> pd.DataFrame:
    """One row per configuration ("none" first): the three test scores with standard errors, and each accuracy's
    paired difference to the unmodified model with McNemar's exact p-value, Holm-adjusted over the spans."""
    from rba.spans import parse_spans
    from rba.stats import binomial_se, holm, mcnemar, mean_se

    none = results["none"]
    rows = []
    for name, r in results.items():
        spans = parse_spans(name)
        row = {"spans": name, "start": spans[0][0] if spans else np.nan, "end": spans[0][1] if spans else np.nan,
               "length": sum(j - i for i, j in spans), "fidelity": float(np.mean(r["cosine"])),
               "fidelity_se": mean_se(r["cosine"])}
        for head in ("probe", "fixed"):
            correct = r[f"prediction_{head}"] == r["label"]
            row[f"accuracy_{head}"] = float(np.mean(correct))
            row[f"accuracy_{head}_se"] = binomial_se(correct)
            test = mcnemar(none[f"prediction_{head}"] == none["label"], correct)
            row[f"accuracy_{head}_change"], row[f"accuracy_{head}_p"] = test.difference, test.p_exact
        row["seconds"] = float(r["seconds"])
        rows.append(row)
    table = pd.DataFrame(rows)
    spans = table["spans"] != "none"
    for head in ("probe", "fixed"):
        column = f"accuracy_{head}_p_holm"
        table[column] = np.nan
        table.loc[spans, column] = holm(table.loc[spans, f"accuracy_{head}_p"].to_numpy())
    return table


def correlations(table: pd.DataFrame, scores: pd.DataFrame) -> pd.DataFrame:
    """Spearman ρ of every statistics metric (oriented: higher = more redundant) with each objective, over the
    single spans, pooled and within span lengths (the report's priors section, one objective at a time)."""
    from rba.metrics import get_metric, list_metrics
    from search._comparisons import within_length_correlations
    from search.analysis import prior_correlations

    orientation = {m: bool(get_metric(m).higher_is_redundant) for m in list_metrics()}
    singles = table[table["spans"] != "none"].astype({"start": int, "end": int})
    parts = []
    for objective in OBJECTIVES:
        # the library's helpers orient a quality by its name: both accuracies are maximised, as "accuracy" is
        quality = "fidelity" if objective == "fidelity" else "accuracy"
        one = singles[["start", "end", objective]].rename(columns={objective: quality})
        pooled = prior_correlations(one, scores, orientation, (quality,)).set_index("metric")
        within = within_length_correlations(one, scores, orientation, (quality,))
        within.insert(2, "pooled", [pooled.loc[m, "spearman"] for m in within["metric"]])
        within.insert(3, "pooled_p", [pooled.loc[m, "p_value"] for m in within["metric"]])
        within["quality"] = objective
        parts.append(within)
    return pd.concat(parts, ignore_index=True).rename(columns={"quality": "objective"})


def _pool(adapter, state, ctx, own: bool):
    """A boundary's pooled representation: the model's own pooling (``own``: possible where the boundary has the
    last one's shape), else the mean over positions (a CNN's earlier stages have other channel counts than its
    head takes)."""
    if own:
        return adapter.pool(state, ctx)
    if adapter.layout == "pixels":
        return state.mean((2, 3))
    mask = ctx.mask.to(state.dtype)[..., None]
    return (state * mask).sum(1) / mask.sum(1)


def boundary_pooled(adapter, samples, batch_size: int):
    """Pooled representations of ``samples`` at every boundary, by one walk over the unmodified blocks, in the
    row order the evaluation caches batch them in (``order``, the samples' positions). Returns ``(probes, pooled,
    order)``: ``probes`` lists (boundary, pooling) with pooling "model" (the model's own) or "mean" (over
    positions, where the boundary's shape differs from the last one's; then the last boundary is also pooled so,
    for a like-for-like comparison), ``pooled`` the (n, F) float32 tensor of each."""
    import torch

    from rba.capture import iter_batches, length_order

    shapes = adapter.boundary_shapes()
    last = len(shapes) - 1
    probes = [(k, "model" if shapes[k] == shapes[last] else "mean") for k in range(len(shapes))]
    if any(how == "mean" for _, how in probes):
        probes.append((last, "mean"))
    order = length_order(samples)
    if order is None:
        order = np.arange(len(samples))
    else:
        samples = [samples[i] for i in order]
    pooled: list[list] = [[] for _ in probes]
    with torch.inference_mode():
        for _, chunk in iter_batches(samples, batch_size):
            h, ctx = adapter.embed(adapter.collate(chunk))
            for k, state in adapter.boundaries(h, ctx):
                for p, (boundary, how) in enumerate(probes):
                    if boundary == k:
                        pooled[p].append(_pool(adapter, state, ctx, how == "model").float().cpu())
    return probes, [torch.cat(p) for p in pooled], order


def truncation(session, path: Path, key: str) -> pd.DataFrame:
    """Per boundary k of the unmodified model: a probe fitted on the probe split's representation at k, its test
    accuracy with standard error, and its paired difference to the probe of the whole model (McNemar)."""
    import torch

    from rba.evaluate import LinearProbe
    from rba.stats import binomial_se, mcnemar

    data = _load(path, key)
    if data is None:
        t0 = time.perf_counter()
        splits, bs = session.splits, session.cfg.evaluate.batch_size
        probes, probe, probe_order = boundary_pooled(session.adapter, splits.probe.samples, bs)
        _, test, test_order = boundary_pooled(session.adapter, splits.test.samples, bs)
        y_probe = torch.as_tensor(np.asarray(splits.probe.labels)[probe_order], dtype=torch.long)
        y_test = np.asarray(splits.test.labels)[test_order]
        classes = int(max(y_probe.max(), y_test.max())) + 1
        predictions = np.stack([LinearProbe(session.cfg.evaluate.probe_c).fit(p, y_probe, classes).predict(t).numpy()
                                for p, t in zip(probe, test)])
        data = {"key": np.array(key), "boundary": np.array([k for k, _ in probes]),
                "pooling": np.array([how for _, how in probes]), "features": np.array([p.shape[1] for p in probe]),
                "prediction": predictions, "label": y_test, "seconds": np.array(time.perf_counter() - t0)}
        C.save_npz(path, data)
    correct = data["prediction"] == data["label"]
    whole = correct[[k for k, how in enumerate(data["pooling"]) if how == "model"][-1]]
    rows = []
    for k, how, features, c in zip(data["boundary"], data["pooling"], data["features"], correct):
        change = mcnemar(whole, c)
        rows.append({"boundary": int(k), "pooling": str(how), "features": int(features), "accuracy": float(c.mean()),
                     "accuracy_se": binomial_se(c), "change_vs_whole": change.difference, "p_vs_whole": change.p_exact})
    return pd.DataFrame(rows)


def _markdown(frame: pd.DataFrame, digits: int = 4) -> str:
    def cell(v):
        if isinstance(v, float):
            return "n/a" if v != v else f"{v:.{digits}g}"
        return str(v)

    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def _pm(mean: pd.Series, se: pd.Series) -> list[str]:
    return [f"{m:.4f} ± {s:.4f}" for m, s in zip(mean, se)]


def summary(name: str, info: dict, table: pd.DataFrame, corr: pd.DataFrame, trunc: pd.DataFrame) -> str:
    scores = pd.DataFrame({
        "spans": table["spans"], "blocks": table["length"],
        "fidelity": _pm(table["fidelity"], table["fidelity_se"]),
        "accuracy (refitted probe)": _pm(table["accuracy_probe"], table["accuracy_probe_se"]),
        "Δ vs none (refitted)": table["accuracy_probe_change"], "p Holm (refitted)": table["accuracy_probe_p_holm"],
        "accuracy (fixed probe)": _pm(table["accuracy_fixed"], table["accuracy_fixed_se"]),
        "Δ vs none (fixed)": table["accuracy_fixed_change"], "p Holm (fixed)": table["accuracy_fixed_p_holm"]})
    lengths = [c for c in corr.columns if c.startswith("length ")]
    rho = corr[["metric", "objective", "pooled", "pooled_p", "within lengths", *lengths]]
    trunc_view = trunc.assign(accuracy=_pm(trunc["accuracy"], trunc["accuracy_se"])).drop(columns="accuracy_se")
    s = info["splits"]
    return "\n".join([
        f"# Objectives: {name}", "",
        f"Model {info['model']}; test split {s['test']} samples, probe {s['probe']}, eval {s['eval']} (not scored), "
        f"calibration {s['calibration']}; every single span replaced by its affine fit. `benchmarks/objectives.py`, "
        f"{info['wall_s']:.0f} s wall, {info['cpu_s']:.0f} s CPU, {info['threads']} thread(s), load "
        f"{info['load_start'][0]:.2f} → {info['load_end'][0]:.2f}.", "",
        "## Test scores per configuration", "",
        "Mean ± standard error on the test split. `Δ vs none`: the accuracy minus the unmodified model's, on the same "
        "samples; `p Holm`: McNemar's exact test of that difference, Holm-adjusted over the spans of the head. "
        "Refitted probe: a probe fitted on this configuration's own probe-split representation (`head = \"probe\"`); "
        "fixed probe: the unmodified model's probe (`head = \"fixed-probe\"`).", "",
        _markdown(scores), "",
        "## Statistics metrics against each objective", "",
        "Spearman ρ over the single spans between each metric (oriented: higher = more redundant, ls_residual "
        "negated) and each test objective: pooled over all spans (with its p-value), and within span lengths "
        "(`within lengths`: the mean of the per-length ρ weighted by the number of spans; lengths with at least 3 "
        "spans). A metric that predicts an objective has ρ near 1.", "",
        _markdown(rho, 3), "",
        "## Truncation probes", "",
        "A probe fitted on the probe split's representation of the unmodified model cut after k blocks (pooling "
        "`model`: the model's own; `mean`: the mean over positions, where the boundary's shape differs from the "
        "last; the last boundary then also appears mean-pooled), scored on the test split. `change_vs_whole`: its "
        "accuracy minus that of the whole model's probe (the last boundary, the model's pooling) on the same samples, "
        "`p_vs_whole` McNemar's exact p-value (unadjusted).", "",
        _markdown(trunc_view), ""])


def main(argv=None) -> int:
    args = _args(argv)
    import tempfile

    import torch

    from rba._io import atomic_write_json, atomic_write_text, package_versions
    from rba.config import load_study
    from rba.spans import format_spans

    torch.set_num_threads(args.threads)
    if args.quick:
        cfg, name, sizes = _quick_config(Path(tempfile.mkdtemp(prefix="rba-objectives-"))), "quick", QUICK_SIZES
    else:
        cfg = load_study(args.config)
        name, sizes = cfg.name, SIZES
    flags = {f"data.{k}": getattr(args, k) if getattr(args, k) is not None else n for k, n in sizes.items()}
    if args.data is not None:
        flags["data.path"] = str(Path(args.data).resolve())
    cfg = cfg.override(flags)
    out = args.out or ROOT / "benchmarks" / "out" / "objectives" / name
    started, cpu, load = time.perf_counter(), time.process_time(), os.getloadavg()

    refit, fixed = sessions(cfg, progress=not args.quick)
    key = run_key(refit)
    configs = [[]] + [[span] for span in refit.pairs]
    results, evaluated, spent = {}, 0, 0.0
    for n, spans in enumerate(configs, 1):
        label = format_spans(spans)
        results[label], fresh = evaluate(refit, fixed, spans, out / "configs" / f"{label}.npz", key)
        if fresh:
            evaluated, spent = evaluated + 1, spent + float(results[label]["seconds"])
            print(f"{name}: {n}/{len(configs)} configurations ({label}: {float(results[label]['seconds']):.1f} s; "
                  f"{spent / evaluated:.1f} s each, load {os.getloadavg()[0]:.2f})", flush=True)
    table = configuration_table(results)
    corr = correlations(table, refit.scores())
    trunc = truncation(refit, out / "truncation.npz", key)

    info = {"config": "quick" if args.quick else args.config, "argv": sys.argv[1:] if argv is None else list(argv),
            "model": refit.adapter.describe(), "splits": {k: len(v) for k, v in refit.splits.indices.items()},
            "statistics_hash": refit.stats.key, "key": key, "configurations": len(configs),
            "evaluated_now": evaluated, "threads": args.threads, "wall_s": round(time.perf_counter() - started, 1),
            "cpu_s": round(time.process_time() - cpu, 1), "load_start": [round(x, 2) for x in load],
            "load_end": [round(x, 2) for x in os.getloadavg()], "versions": package_versions()}
    for file, frame in (("configurations.csv", table), ("correlations.csv", corr), ("truncation.csv", trunc)):
        atomic_write_text(out / file, frame.to_csv(index=False))
    atomic_write_text(out / "objectives.md", summary(name, info, table, corr, trunc))
    atomic_write_json(out / "run.json", info)
    print(f"wrote {out} ({info['wall_s']} s wall, {info['cpu_s']} s CPU)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
