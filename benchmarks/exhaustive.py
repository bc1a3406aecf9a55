"""The true front of a study: every configuration of its search space evaluated once per data seed, on eval and test.

    python benchmarks/exhaustive.py minilm_reviews --test 1000 --seeds 0          # 233 configurations, ≈ 50 min
    python benchmarks/exhaustive.py vit_fashion --test 2000 --seeds 0 1 2         # 1,597 configurations, ≈ 30 min a seed
    python benchmarks/exhaustive.py --quick --out /tmp/ex                         # tiny random ViT, seconds

Per data seed (``[data] seed``: which samples fall into calibration, probe, eval and test; the statistics are
recomputed for each), every configuration is scored as a search trial would be (``Session.evaluate``: eval-split
quality, exact costs) and then on the held-out test split (``Session.evaluate_split``), sample by sample. The
output folder gets, per seed, ``seed<S>/table.csv`` (one row per configuration: spans, eval and test quality, the
test standard errors, costs) and ``seed<S>/per_sample.npz`` (test predictions and cosines, one row per
configuration in table order, and the labels) -- what the equal-evaluation replay
(``benchmarks/equal_evaluation.py``) selects on (eval) and scores on (test).

Work is kept in chunks: every ``--chunk`` configurations go to ``seed<S>/chunks/NNNNN.npz``, written atomically
and checked on resume (the configurations it holds must be the ones the space puts there), so an interrupted run
continues where it stopped (run the same command again); the tables are assembled from the chunks at the end.
``run.json`` records the config, seeds, versions, wall time and the load average.
"""

from __future__ import annotations

import argparse
import json
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


def _args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("config", nargs="?", default="minilm_reviews", help="config file, or shipped study name")
    p.add_argument("--quick", action="store_true", help="tiny random ViT on synthetic images (smoke test)")
    p.add_argument("--test", type=int, default=None, help="test split size ([data] test; default: the config's)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="data seeds (default: %(default)s)")
    p.add_argument("--chunk", type=int, default=25, help="configurations per saved chunk (default: %(default)s)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: benchmarks/out/exhaustive/<config>)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    p.add_argument("--limit", type=int, default=None, help="first N configurations only (a smoke test)")
    return p.parse_args(argv)


def _quick_config(tmp: Path):
    from rba.config import Config

    raw = {
        "model": {"kind": "timm", "name": "test_vit", "pretrained": False, "options": {"depth": 4}},
        "data": {"kind": "synthetic", "image_size": 32, "calibration": 48, "probe": 48, "eval": 48, "test": 48,
                 "options": {"modality": "image", "classes": 4}},
        "capture": {"cache_dir": str(tmp / "cache"), "batch_size": 16},
        "evaluate": {"latency_repeats": 1},
    }
    return Config.from_dict(raw, name="quick", base_dir=str(tmp))


def _load_chunk(path: Path, expected: list[str]) -> dict | None:
    """A saved chunk, or None when it is missing, unreadable or holds other configurations."""
    data = C.load_npz(path)
    if data is None or [str(s) for s in data.get("spans", [])] != expected:
        return None
    return data


def _evaluate_chunk(session, configs: list[list[tuple[int, int]]]) -> dict:
    from rba.spans import format_spans
    from rba.stats import binomial_se, mean_se

    rows, preds, cosines = [], [], []
    for spans in configs:
        trial = session.evaluate(spans)
        test = session.evaluate_split(spans, "test")
        row = {k: trial[k] for k in ("flops_frac", "params_frac", "accuracy", "fidelity")}
        row["test_fidelity"] = float(np.mean(test.cosine))
        row["test_fidelity_se"] = mean_se(test.cosine)
        if test.prediction is not None:
            correct = test.prediction == test.label
            row["test_accuracy"] = float(np.mean(correct))
            row["test_accuracy_se"] = binomial_se(correct)
            preds.append(test.prediction.astype(np.int16))
        cosines.append(test.cosine.astype(np.float32))
        rows.append(row)
        labels = test.label
    out = {"spans": np.array([format_spans(s) for s in configs]),
           "table": np.array(json.dumps(rows)), "cosine": np.stack(cosines)}
    if preds:
        out["prediction"] = np.stack(preds)
        out["label"] = np.asarray(labels)
    return out


def run_seed(cfg, seed: int, out: Path, chunk: int, limit: int | None = None) -> pd.DataFrame:
    from rba.session import Session
    from rba.spans import format_spans
    from search.space import SpanSpace

    cfg.data.seed = seed
    cfg = cfg.validate()
    session = Session(cfg, progress=False)
    space = SpanSpace(session.adapter.num_blocks, session.pairs)
    total = space.count() if limit is None else min(limit, space.count())
    chunks, evaluated = [], 0
    started = time.perf_counter()
    for first in range(0, total, chunk):
        configs = [space.unrank(i) for i in range(first, min(first + chunk, total))]
        names = [format_spans(s) for s in configs]
        path = out / "chunks" / f"{first:05d}.npz"
        data = _load_chunk(path, names)
        if data is None:
            data = _evaluate_chunk(session, configs)
            C.save_npz(path, data)
            evaluated += len(configs)
            print(f"seed {seed}: {first + len(configs)}/{total} configurations "
                  f"({(time.perf_counter() - started) / evaluated:.2f} s each, load {os.getloadavg()[0]:.2f})",
                  flush=True)
        chunks.append(data)
    table = pd.DataFrame([r for c in chunks for r in json.loads(str(c["table"]))])
    table.insert(0, "spans", [str(s) for c in chunks for s in c["spans"]])
    table.insert(1, "seed", seed)
    from rba._io import atomic_write_text

    atomic_write_text(out / "table.csv", table.to_csv(index=False))
    arrays = {"spans": table["spans"].to_numpy(str), "cosine": np.concatenate([c["cosine"] for c in chunks])}
    if "prediction" in chunks[0]:
        arrays["prediction"] = np.concatenate([c["prediction"] for c in chunks])
        arrays["label"] = chunks[0]["label"]
    C.save_npz(out / "per_sample.npz", arrays, compressed=True)  # kept with the results: ViT's is 19 → 12 MB a seed
    return table


def main(argv=None) -> int:
    args = _args(argv)
    import tempfile

    import torch

    from rba._io import atomic_write_json, package_versions, source_commit
    from rba.config import load_study

    torch.set_num_threads(args.threads)
    if args.quick:
        cfg = _quick_config(Path(tempfile.mkdtemp(prefix="rba-exhaustive-")))
        name = "quick"
    else:
        cfg = load_study(args.config)
        name = cfg.name
    if args.test is not None:
        cfg.data.test = args.test
    if not cfg.data.test:
        raise SystemExit("error: the test split is empty: pass --test N (held-out samples scored per configuration)")
    out = args.out or ROOT / "benchmarks" / "out" / "exhaustive" / name
    started, load = time.perf_counter(), os.getloadavg()
    sizes = []
    for seed in args.seeds:
        table = run_seed(cfg, seed, out / f"seed{seed}", args.chunk, args.limit)
        sizes.append(len(table))
    atomic_write_json(out / "run.json", {
        "config": args.config if not args.quick else "quick", "seeds": args.seeds, "configurations": sizes,
        "splits": {k: getattr(cfg.data, k) for k in ("calibration", "probe", "eval", "test")},
        "threads": args.threads, "wall_s": round(time.perf_counter() - started, 1),
        "load_start": [round(x, 2) for x in load], "load_end": [round(x, 2) for x in os.getloadavg()],
        "versions": package_versions(), "rba_commit": source_commit()})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
