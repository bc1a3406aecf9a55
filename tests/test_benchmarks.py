"""Benchmarks: each script's ``--quick`` mode runs (tiny models, a smoke test) and prints its ratio lines; the
shared helpers they rely on (configuration enumeration and sampling, the proxy sweep DP, the Pareto mask, the
naive lstsq fit) are checked against brute force. No timing is asserted anywhere.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

#: script → ratio lines its --quick output must contain
EXPECTED = {
    "per_trial.py": ["RATIO span fit, lstsq / statistics", "RATIO trial, naive / rba cold",
                     "RATIO trial, naive / rba in search"],
    "time_to_front.py": ["RATIO time to front, naive / rba"],
    "capture_overhead.py": ["RATIO capture / forward"],
    "memory.py": ["RATIO peak RSS naive / rba", "RATIO rba peak RSS growth", "RATIO naive peak RSS growth"],
    "proxy_sweep.py": ["RATIO proxy sweep configurations/s", "RATIO spearman(-Σ ls_residual, fidelity)"],
    "latency.py": ["RATIO latency measured / predicted", "RATIO speed-up over unmodified",
                   "RATIO median |relative error| of the latency table"],
    "scaling.py": ["RATIO naive trial without lstsq / rba trial", "RATIO extrapolated naive / rba trial"],
}


#: runs each script named on the command line in this one interpreter (``runpy``, as ``__main__``), with its own
#: argv, stdout and stderr files, and writes its exit code: one interpreter and one torch import for all of them
_DRIVER = """
import contextlib, json, runpy, sys, traceback
from pathlib import Path
jobs = json.loads(sys.argv[1])
for job in jobs:
    folder = Path(job["folder"])
    code = 0
    with open(folder / "stdout.txt", "w") as out, open(folder / "stderr.txt", "w") as err, \\
            contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        sys.argv = job["argv"]
        try:
            runpy.run_path(job["argv"][0], run_name="__main__")
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            traceback.print_exc()
            code = 1
    (folder / "rc.txt").write_text(str(code))
"""


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """Every script's ``--quick`` run, one after another in one fresh interpreter (see ``_DRIVER``)."""
    import json

    jobs = {}
    for script in sorted(EXPECTED):
        folder = tmp_path_factory.mktemp(script.removesuffix(".py"))
        argv = [str(BENCH / script), "--quick", "--json", str(folder / "out.json")]
        if script == "scaling.py":
            argv += ["--plot", str(folder / "scaling.png")]
        if script == "time_to_front.py":
            argv += ["--trials", "4"]  # the Optuna path (search.space encoding, run_search) too
        jobs[script] = {"folder": str(folder), "argv": argv}
    env = dict(os.environ, PYTHONWARNINGS="ignore", PYTHONPATH=os.pathsep.join([str(BENCH), str(ROOT)]))
    driver = subprocess.run([sys.executable, "-c", _DRIVER, json.dumps(list(jobs.values()))], capture_output=True,
                            text=True, timeout=900, cwd=ROOT, env=env)
    runs = {}
    for script, job in jobs.items():
        folder = Path(job["folder"])
        rc = folder / "rc.txt"
        code = int(rc.read_text()) if rc.exists() else f"no exit code (driver: {driver.stderr[-2000:]})"
        runs[script] = (folder, subprocess.CompletedProcess(job["argv"], code, (folder / "stdout.txt").read_text()
                                                             if (folder / "stdout.txt").exists() else "",
                                                             (folder / "stderr.txt").read_text()
                                                             if (folder / "stderr.txt").exists() else ""))
    return runs


@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_quick_mode_runs_and_prints_ratios(script, quick_runs):
    folder, proc = quick_runs[script]
    assert proc.returncode == 0, f"{script} --quick failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    out = proc.stdout
    for line in EXPECTED[script]:
        assert line in out, f"{script} --quick printed no {line!r} line:\n{out[-3000:]}"
    ratios = [ln for ln in out.splitlines() if ln.startswith("RATIO ")]
    assert ratios, out
    # ratio lines come last (after the tables), as the scripts promise
    last = max(k for k, ln in enumerate(out.splitlines()) if ln.startswith("RATIO "))
    assert all(ln.startswith(("RATIO ", "#")) or not ln.strip() for ln in out.splitlines()[last + 1 :])
    assert (folder / "out.json").exists()
    if script == "scaling.py":
        assert (folder / "scaling.png").stat().st_size > 0


# ---------------------------------------------------------------------------------------------- helpers
def _fib(k):
    a, b = 0, 1
    for _ in range(k):
        a, b = b, a + b
    return a


def _all_spans(L):
    return [(i, j) for i in range(L) for j in range(i + 1, L + 1)]


def _brute(L, pairs):
    """Every non-overlapping subset of pairs, by brute force over subsets (small L only)."""
    out = set()
    for r in range(len(pairs) + 1):
        for combo in itertools.combinations(sorted(pairs), r):
            if all(b <= c for (_, b), (c, _) in zip(combo, combo[1:])):
                out.add(combo)
    return out


@pytest.mark.parametrize("L", [1, 3, 6, 12])
def test_configuration_counts_are_fibonacci(L):
    import _common as C

    pairs = _all_spans(L)
    configs = C.all_configurations(L, pairs)
    assert len(configs) == _fib(2 * L + 1) == C.count_configurations(L, pairs)[0]
    assert len({tuple(c) for c in configs}) == len(configs)


def test_enumeration_matches_brute_force_with_gaps():
    import _common as C

    pairs = [(0, 1), (0, 2), (2, 3), (2, 4), (3, 4), (4, 5)]  # not every span valid (CNN-like)
    got = {tuple(c) for c in C.all_configurations(5, pairs)}
    assert got == _brute(5, pairs)
    assert C.count_configurations(5, pairs)[0] == len(got)


def test_uniform_sampling_covers_every_configuration_evenly():
    import _common as C

    L, pairs = 3, _all_spans(3)
    rng = np.random.default_rng(0)
    counts: dict[tuple, int] = {}
    draws = 6500
    for _ in range(draws):
        c = tuple(C.sample_configuration(L, pairs, rng))
        counts[c] = counts.get(c, 0) + 1
    assert set(counts) == {tuple(c) for c in C.all_configurations(L, pairs)}  # 13 configurations
    expect = draws / 13
    assert all(abs(v - expect) < 5 * np.sqrt(expect) for v in counts.values())


def test_random_configurations_are_distinct_and_valid():
    import _common as C

    pairs = _all_spans(6)
    configs = C.random_configurations(6, pairs, 10, seed=3)
    assert len(configs) == 10 and len({tuple(c) for c in configs}) == 10
    assert all(c and all(b <= d for (_, b), (d, _) in zip(c, c[1:])) for c in configs)


def test_proxy_sweep_dp_equals_direct_sums():
    import proxy_sweep as P

    L, pairs = 6, _all_spans(6)
    values = np.random.default_rng(1).random((len(pairs), 3))
    member, sums = P.sweep(L, pairs, values)
    assert len(member) == 233
    rows = {tuple(pairs[k] for k in np.flatnonzero(m)): s for m, s in zip(member, sums)}
    assert set(rows) == _brute(L, pairs)
    for spans, s in rows.items():
        direct = sum((values[pairs.index(p)] for p in spans), np.zeros(3))
        np.testing.assert_allclose(s, direct, rtol=1e-12, atol=1e-12)


def test_pareto_mask_matches_brute_force():
    import proxy_sweep as P

    rng = np.random.default_rng(2)
    proxy = rng.integers(0, 8, 60).astype(float)
    cost = rng.integers(0, 8, 60).astype(float)
    got = P.pareto_mask(proxy, cost)
    pts = list(zip(proxy, cost))
    for k, (p, c) in enumerate(pts):
        dominated = any((q <= p and d <= c) and (q < p or d < c) for q, d in pts)
        if dominated:
            assert not got[k]
    # one representative per distinct non-dominated point
    front = {(p, c) for (p, c), g in zip(pts, got) if g}
    expect = {(p, c) for p, c in pts if not any((q <= p and d <= c) and (q < p or d < c) for q, d in pts)}
    assert front == expect and got.sum() == len(expect)


def test_naive_fit_is_the_authors_float32_lstsq():
    """The naive baseline's fit is the paper's code's: least squares in float32 without ridge (checked against
    numpy's float64 lstsq on the same system), with a ones column when affine."""
    import _common as C

    rng = np.random.default_rng(4)
    x = rng.standard_normal((500, 12)).astype(np.float32)
    w_true, b_true = rng.standard_normal((12, 7)), rng.standard_normal(7)
    y = (x @ w_true + b_true + 0.1 * rng.standard_normal((500, 7))).astype(np.float32)
    naive = C.Naive(None, None)
    naive.states = [x, y]
    w, b = naive.fit((0, 1))
    assert w.dtype == b.dtype == __import__("torch").float32 and w.shape == (12, 7) and b.shape == (7,)
    xt = np.hstack([x.astype(np.float64), np.ones((500, 1))])
    ref, *_ = np.linalg.lstsq(xt, y.astype(np.float64), rcond=None)
    np.testing.assert_allclose(w.numpy(), ref[:-1], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(b.numpy(), ref[-1], rtol=1e-4, atol=1e-5)
    # its SSE (computed for the untimed equality checks) is the residual of that solution
    assert abs(naive.sse((0, 1), w, b) - float(((xt @ ref - y) ** 2).sum())) <= 1e-4 * float(((xt @ ref - y) ** 2).sum())
    linear = C.Naive(None, None, affine=False)
    linear.states = [x, y]
    w0, b0 = linear.fit((0, 1))
    ref0, *_ = np.linalg.lstsq(x.astype(np.float64), y.astype(np.float64), rcond=None)
    assert b0 is None
    np.testing.assert_allclose(w0.numpy(), ref0, rtol=1e-4, atol=1e-5)
    # the extra float64 column solves the ridge problem: with ridge 0 it is the same solution
    naive.ridge = 0.0
    w64, b64 = naive.fit_f64((0, 1))
    np.testing.assert_allclose(w64.numpy(), ref[:-1], rtol=1e-9, atol=1e-10)


def test_naive_lstsq_fit_matches_closed_form_fit(tmp_path):
    """The naive baseline and rba's fit from statistics solve the same problem (up to rba's tiny ridge and the
    naive side's float32): same predictions and SSE on real boundary vectors of a small model."""
    import _common as C

    from rba.fit import fit_span
    from rba.session import Session

    cfg = C.vit_config(tmp_path, depth=3, width=16, heads=2, image_size=32, patch=8, calibration=24, eval=8)
    s = Session(cfg, need_labels=False, progress=False, measure_latency=False)
    naive = C.Naive(s.adapter, s.splits, ridge=cfg.fit.ridge, batch_size=cfg.capture.batch_size)
    naive.materialise()
    assert naive.states[0].shape == (s.stats.n, 16)
    import torch

    for span in [(0, 1), (1, 3), (0, 3)]:
        w, b = naive.fit(span)
        f = fit_span(s.stats, span, "affine", cfg.fit.ridge)
        x = torch.from_numpy(naive.states[span[0]]).double()
        ref, got = x @ w.double() + b.double(), f.predict(x)
        assert float((got - ref).norm() / ref.norm()) < 1e-4
        sse = naive.sse(span, w, b)
        # the statistics' SSE is a difference of large sums: its error scales with Σ‖y‖², not with the SSE
        total = float(s.stats.sum_sq(span[1]))
        assert abs(f.sse - sse) <= 1e-3 * sse + 1e-5 * total


def test_naive_method_on_tensor_states_is_the_same_fit():
    """Where the model runs on a GPU the naive method keeps its states there as float32 tensors: the fit, its
    SSE and its maps from tensor states equal numpy's float64 lstsq on the same system (as for numpy states)."""
    import _common as C
    import torch

    rng = np.random.default_rng(5)
    x = rng.standard_normal((400, 10)).astype(np.float32)
    y = (x @ rng.standard_normal((10, 6)) + rng.standard_normal(6) + 0.1 * rng.standard_normal((400, 6))).astype(np.float32)
    naive = C.Naive(None, None)
    naive.states = [torch.from_numpy(x.copy()), torch.from_numpy(y.copy())]
    w, b = naive.fit((0, 1))
    xt = np.hstack([x.astype(np.float64), np.ones((400, 1))])
    ref, *_ = np.linalg.lstsq(xt, y.astype(np.float64), rcond=None)
    np.testing.assert_allclose(w.numpy(), ref[:-1], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(b.numpy(), ref[-1], rtol=1e-4, atol=1e-5)
    sse = float(((xt @ ref - y) ** 2).sum())
    assert abs(naive.sse((0, 1), w, b) - sse) <= 1e-4 * sse
    assert naive.nbytes() == x.nbytes + y.nbytes


def test_gpu_benchmark_quick_mode_runs_on_the_cpu(tmp_path, capsys):
    """benchmarks/gpu.py (run on the GPU machine by gpu_run.sh) in quick mode on the CPU: the same code path,
    every part measured and written; sizes checked against what the tiny model must give."""
    import json

    import gpu
    import torch

    threads = torch.get_num_threads()
    try:
        gpu.main(["--quick", "--device", "cpu", "--json", str(tmp_path / "gpu.json")])
    finally:
        torch.set_num_threads(threads)
    out = json.loads((tmp_path / "gpu.json").read_text())
    assert out["device"]["type"] == "cpu" and out["skipped"] == []
    depth, image, patch = gpu.QUICK["depth"], gpu.QUICK["image_size"], gpu.QUICK["patch"]
    spans = depth * (depth + 1) // 2  # every (i, j), 0 <= i < j <= depth
    tokens = (image // patch) ** 2 + 1  # patches + the class token
    rows = out["parts"]["capture"]["rows"]
    assert [r["batch"] for r in rows] == [16, 32] and all(r["spans"] == spans and r["samples"] == 64 for r in rows)
    assert all(r["forward_s"] > 0 and abs(r["ratio"] - r["capture_s"] / r["forward_s"]) < 1e-12 for r in rows)
    trial = out["parts"]["trial"]
    assert trial["fits"]["spans"] == spans and trial["fits"]["vectors"] == 64 * tokens
    assert trial["fits"]["lstsq_spans_timed"] == 3 and len(trial["trials"]) == 2 and trial["unequal"] == []
    printed = capsys.readouterr().out
    for name in ("RATIO capture / forward on cpu", "RATIO span fit, lstsq / statistics, cold on cpu",
                 "RATIO trial, naive / rba cold on cpu"):
        assert name in printed


def test_gpu_benchmark_checks_its_arguments_and_time_limit(tmp_path, capsys, monkeypatch):
    import json

    import gpu
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exc:
        gpu.main(["--device", "cuda", "--json", str(tmp_path / "no.json")])
    assert exc.value.code == 2 and not (tmp_path / "no.json").exists()
    err = capsys.readouterr().err
    assert err.startswith("gpu.py: error: --device cuda but torch sees no CUDA GPU") and err.count("\n") == 1
    threads = torch.get_num_threads()
    try:  # a part not started by --time-limit is skipped, and says so in the JSON
        gpu.main(["--quick", "--time-limit", "0", "--json", str(tmp_path / "gpu.json")])
    finally:
        torch.set_num_threads(threads)
    out = json.loads((tmp_path / "gpu.json").read_text())
    assert out["skipped"] == ["capture", "trial"] and out["parts"] == {}


def _quick_objectives(out):
    import objectives
    import torch

    threads = torch.get_num_threads()
    try:
        assert objectives.main(["--quick", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)


def test_objectives_quick_mode_against_an_independent_computation(tmp_path):
    """benchmarks/objectives.py --quick: every single span's test scores equal a direct computation (the span's map
    walked into the blocks, probes fitted here); the unmodified model's refitted and fixed probes are one probe,
    and so is the truncation probe at the last boundary; a rerun evaluates nothing."""
    import json

    import objectives
    import pandas as pd
    import torch
    import torch.nn.functional as F

    from rba.evaluate import LinearProbe
    from rba.session import Session
    from rba.spans import format_spans

    out = tmp_path / "out"
    _quick_objectives(out)
    table = pd.read_csv(out / "configurations.csv", keep_default_na=False).set_index("spans")
    trunc = pd.read_csv(out / "truncation.csv")
    corr = pd.read_csv(out / "correlations.csv")
    run = json.loads((out / "run.json").read_text())
    assert (out / "objectives.md").read_text().startswith("# Objectives: quick")

    sizes = {f"data.{k}": n for k, n in objectives.QUICK_SIZES.items()}
    session = Session(objectives._quick_config(tmp_path).override(sizes), progress=False)
    assert run["key"] == objectives.run_key(session) and run["splits"]["test"] == objectives.QUICK_SIZES["test"]
    assert list(table.index) == ["none"] + [format_spans([s]) for s in session.pairs]
    assert set(corr["objective"]) == set(objectives.OBJECTIVES) and corr["pooled"].notna().all()

    adapter, splits, bs = session.adapter, session.splits, session.cfg.evaluate.batch_size
    classes = int(max(splits.probe.labels.max(), splits.test.labels.max())) + 1
    y_probe = torch.as_tensor(splits.probe.labels, dtype=torch.long)

    def pooled(samples, replace):
        with torch.inference_mode():
            return torch.cat([adapter.pool(adapter.last_boundary(*adapter.embed(adapter.collate(samples[s:s + bs])),
                                                                 replace=replace), None).float()
                              for s in range(0, len(samples), bs)])

    probe0, test0 = pooled(splits.probe.samples, {}), pooled(splits.test.samples, {})
    fixed = LinearProbe(session.cfg.evaluate.probe_c).fit(probe0, y_probe, classes)
    base = float((fixed.predict(test0).numpy() == splits.test.labels).mean())
    none = table.loc["none"]
    assert none["accuracy_probe"] == none["accuracy_fixed"] == base and abs(none["fidelity"] - 1) < 1e-6
    whole = trunc[(trunc["boundary"] == adapter.num_blocks) & (trunc["pooling"] == "model")]
    assert len(whole) == 1 and whole["accuracy"].item() == base and whole["change_vs_whole"].item() == 0
    assert list(trunc["boundary"]) == list(range(adapter.num_blocks + 1))
    for span in session.pairs:
        replace = {span: session.maps([span])[0]}
        probe, test = pooled(splits.probe.samples, replace), pooled(splits.test.samples, replace)
        refit = LinearProbe(session.cfg.evaluate.probe_c).fit(probe, y_probe, classes)
        row = table.loc[format_spans([span])]
        assert row["accuracy_probe"] == float((refit.predict(test).numpy() == splits.test.labels).mean()), span
        assert row["accuracy_fixed"] == float((fixed.predict(test).numpy() == splits.test.labels).mean()), span
        cosine = F.cosine_similarity(test.double(), test0.double(), dim=1).mean().item()
        assert abs(row["fidelity"] - cosine) < 1e-9, span

    _quick_objectives(out)  # resumed: every configuration and the truncation probes are read back
    assert json.loads((out / "run.json").read_text())["evaluated_now"] == 0
    pd.testing.assert_frame_equal(pd.read_csv(out / "configurations.csv", keep_default_na=False).set_index("spans")
                                  .drop(columns="seconds"), table.drop(columns="seconds"))


def test_objectives_truncation_pools_a_cnn_by_the_mean_where_its_head_cannot(tmp_path):
    """A CNN's earlier stages have other channel counts than its head takes: there a boundary is pooled by the
    mean over pixels, and the last boundary is pooled both ways."""
    import objectives
    import torch
    from conftest import tiny_config

    from rba.evaluate import SplitCache
    from rba.session import Session

    session = Session(tiny_config(tmp_path, "cnn"), progress=False)
    adapter, samples = session.adapter, session.splits.probe.samples
    probes, pooled, order = objectives.boundary_pooled(adapter, samples, 16)
    L, shapes = adapter.num_blocks, adapter.boundary_shapes()
    assert probes[-1] == (L, "mean") and (L, "model") in probes and {k for k, _ in probes} == set(range(L + 1))
    assert all((how == "model") == (shapes[k] == shapes[L]) for k, how in probes[:-1])
    cache = SplitCache.build(adapter, samples, None, keep=set(), batch_size=16, name="probe")
    assert torch.equal(pooled[probes.index((L, "model"))], cache.pooled[np.argsort(order)])
    for (k, how), p in zip(probes, pooled):
        assert p.shape == (len(samples), shapes[k][0] if how == "mean" else cache.pooled.shape[1])
