"""``rba run`` end to end on a tiny ViT: the files, the completed front (reference row, accuracy filled, sorted
by cost, rows matching ``trials.csv``), the export rule (``--max-drop``), an export that classifies, the
interleaved latency measurement, the baselines section, the analysis sections against computations written out
here, and ``rba report DIR`` re-rendering the report from the files without the model."""

from __future__ import annotations

import itertools
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from rba.cli import main as cli_main
from rba.session import Session
from search import run_study
from search.report import measure_speedup

sys.path.insert(0, str(Path(__file__).resolve().parent / "search_tests"))
# after the path above (E402); single_thread is an autouse fixture, used by being imported (F401)
from _search_helpers import make_config, single_thread  # noqa: E402,F401


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("run-cache")


@pytest.fixture(scope="module")
def study(tmp_path_factory, cache):
    """A fidelity-only run with the default probe head (the trials compute no accuracy), a FLOPs budget, a
    max_drop that some front members meet (the random tiny ViT keeps fidelity 0.85-0.97) and every single span
    evaluated for the report."""
    tmp = tmp_path_factory.mktemp("run")
    cfg = make_config(tmp, cache, search={"trials": 8, "objectives": ["fidelity", "flops"], "budget_flops": 0.9},
                      run={"max_drop": 0.12}, report={"single_spans": True}, data={"test": 40})
    report = run_study(cfg, progress=False)
    return cfg, report


def _expected_pick(front: pd.DataFrame, reference: pd.Series, max_drop: float) -> tuple[str, bool]:
    """The rule, written out on the table: cheapest (flops_frac) configuration within max_drop of the reference
    fidelity, else the best fidelity."""
    cand = front[front["spans"] != "none"]
    best, within = None, False
    for _, r in cand.iterrows():
        if reference["fidelity"] - r["fidelity"] <= max_drop + 1e-12:
            if not within or (r["flops_frac"], -r["fidelity"]) < (best["flops_frac"], -best["fidelity"]):
                best, within = r, True
        elif not within and (best is None or (-r["fidelity"], r["flops_frac"]) < (-best["fidelity"], best["flops_frac"])):
            best = r
    return best["spans"], within


def test_files_and_front_table(study):
    cfg, report = study
    out = cfg.output_dir()
    for name in ("report.md", "scores.csv", "scores.png", "trials.csv", "trials.parquet", "pareto.csv", "pareto.png",
                 "export/model.safetensors", "export/recipe.json", "export/latency.json", "config.resolved.toml"):
        assert (out / name).exists(), name
    trials = pd.read_csv(out / "trials.csv")
    pareto = pd.read_csv(out / "pareto.csv")
    ref, front = pareto.iloc[0], pareto.iloc[1:]
    # the unmodified model is a reference row, not a trial
    assert ref["state"] == "REFERENCE" and ref["spans"] == "none" and pd.isna(ref["number"])
    assert ref["fidelity"] == pytest.approx(1.0) and ref["flops_frac"] == pytest.approx(1.0)
    assert len(front) >= 1 and (front["state"] == "COMPLETE").all() and front["feasible"].all()
    assert list(front["flops_frac"]) == sorted(front["flops_frac"])
    assert (front["flops_frac"] <= 0.9 + 1e-9).all()
    # fidelity-only: the trials leave accuracy empty, the front and the reference get it
    assert trials["accuracy"].isna().all()
    assert pareto["accuracy"].notna().all() and pareto["accuracy"].between(0, 1).all()
    # every front row is its trial's row (accuracy aside)
    by_number = trials.set_index("number")
    for _, row in front.iterrows():
        t = by_number.loc[int(row["number"])]
        assert t["spans"] == row["spans"] and t["state"] == "COMPLETE"
        for c in ("fidelity", "flops", "flops_frac", "params", "params_frac", "latency_ms"):
            assert row[c] == pytest.approx(t[c], rel=1e-9), c
    # the front is non-dominated among the feasible complete trials
    done = trials[(trials["state"] == "COMPLETE") & trials["feasible"].astype(bool)]
    for _, row in front.iterrows():
        assert not ((done["fidelity"] >= row["fidelity"]) & (done["flops_frac"] <= row["flops_frac"])
                    & ((done["fidelity"] > row["fidelity"]) | (done["flops_frac"] < row["flops_frac"]))).any()
    text = report.read_text()
    assert "## Export rule" in text and "max_drop = 0.12" in text
    assert "## Baselines at the same budgets" in text and "- br-greedy (affine; " in text and "- shortgpt (identity; " in text


def test_no_output_file_holds_a_path_of_this_machine(study, tmp_path_factory):
    """A finished run's folder can be moved or committed: no text file in it (the export's included) names an
    absolute path — neither the run's folder, nor the cache, nor the data or the home folder."""
    from pathlib import Path

    cfg, report = study
    out = Path(report).parent
    roots = {str(out.resolve()), str(out.absolute()), str(cfg.cache_dir().resolve()), str(Path.home()),
             str(tmp_path_factory.getbasetemp().resolve())}
    offenders = []
    for path in sorted(out.rglob("*")):
        if not path.is_file() or path.suffix not in (".json", ".toml", ".md", ".csv", ".txt"):
            continue
        text = path.read_text(errors="replace")
        offenders += [f"{path.relative_to(out)}: {root}" for root in roots if root in text]
    assert not offenders, offenders
    resolved = (out / "config.resolved.toml").read_text()
    from rba.config import load_config

    again = load_config(out / "config.resolved.toml")  # relative paths still read back to the same files
    assert again.cache_dir().resolve() == cfg.cache_dir().resolve(), resolved


def test_export_follows_the_rule_and_classifies(study):
    import rba

    cfg, report = study
    out = cfg.output_dir()
    pareto = pd.read_csv(out / "pareto.csv")
    expected, within = _expected_pick(pareto.iloc[1:], pareto.iloc[0], 0.12)
    assert within  # the rule's main branch: the cheapest member within the drop
    recipe = json.loads((out / "export" / "recipe.json").read_text())
    assert recipe["spans"] == expected
    assert f"`{expected}`" in report.read_text()
    # the export classifies: its saved head's top-1 on the eval split is the front's accuracy for it
    session = Session(cfg, progress=False)
    exported = rba.load_export(out / "export")
    samples, labels = session.splits.eval.samples, np.asarray(session.splits.eval.labels)
    logits = torch.cat([rba.head_logits(exported, exported.collate(samples[s : s + 16]))
                        for s in range(0, len(samples), 16)])
    assert logits.shape == (len(samples), 4)
    accuracy = float((logits.argmax(1).numpy() == labels).mean())
    row = pareto[pareto["spans"] == expected].iloc[0]
    assert accuracy == pytest.approx(row["accuracy"], abs=1.0 / len(samples) + 1e-9)


def test_max_drop_zero_picks_best_quality_with_warning(study, capsys):
    """Rerun (the study resumes, no new trial) with --max-drop 0 through the CLI: nothing compressed keeps a
    fidelity of exactly 1, so the rule falls back to the best fidelity and says so."""
    cfg, _ = study
    out = cfg.output_dir()
    config = Path(cfg.base_dir) / f"{cfg.name}.toml"
    before = pd.read_csv(out / "trials.csv")
    assert cli_main(["run", str(config), "--max-drop", "0"]) == 0
    assert "warning: no feasible front member is within 0" in capsys.readouterr().err
    after = pd.read_csv(out / "trials.csv")
    assert len(after) == len(before)
    pd.testing.assert_frame_equal(after, before)  # no trial ran again: same numbers, values and durations
    pareto = pd.read_csv(out / "pareto.csv")
    expected, within = _expected_pick(pareto.iloc[1:], pareto.iloc[0], 0.0)
    assert not within
    assert json.loads((out / "export" / "recipe.json").read_text())["spans"] == expected
    text = (out / "report.md").read_text()
    assert "max_drop = 0 " in text
    # the cost section: this run's search evaluated no trial, so the search's time is the summed trial durations
    complete = after[after["state"] == "COMPLETE"]
    done, summed, one = len(complete), complete["duration_s"].sum(), complete["duration_s"].median()
    assert f"The study resumed ({done} of its {done} completed trials ran before this run" in text
    assert (f"the summed duration of all its completed trials, {summed:.1f} s (the eval split's cache and the latency "
            f"table not included): {summed / one:.1f}× one evaluation ({one:.3g} s, the median completed trial). An "
            f"exhaustive sweep of all 34 configurations takes {34 * one:.4g} s (an estimate: the number of "
            f"configurations × one evaluation): {34 * one / summed:.3g}× the search.") in text


def _brute_front(rows: pd.DataFrame, columns: dict[str, bool]) -> set[str]:
    """Configurations no other row dominates (column → maximised?), by pairwise comparison."""
    keep = set()
    for _, a in rows.iterrows():
        dominated = False
        for _, b in rows.iterrows():
            ge = all((b[c] >= a[c]) if up else (b[c] <= a[c]) for c, up in columns.items())
            gt = any((b[c] > a[c]) if up else (b[c] < a[c]) for c, up in columns.items())
            dominated = dominated or (ge and gt)
        if not dominated:
            keep.add(str(a["spans"]))
    return keep


def test_front_lists_the_unmodified_model_once(study):
    """pareto.csv (and the report's table): the reference row, then exactly the configurations a brute-force
    Pareto mask over the feasible completed trials and the reference keeps, without the "none" configuration."""
    cfg, report = study
    out = cfg.output_dir()
    trials, pareto = pd.read_csv(out / "trials.csv"), pd.read_csv(out / "pareto.csv")
    ref = pareto[pareto["state"] == "REFERENCE"]
    assert len(ref) == 1 and (pareto["spans"] == "none").sum() == 1
    done = trials[(trials["state"] == "COMPLETE") & trials["feasible"].astype(bool)
                  & ~trials["stopped_early"].astype(bool)]
    candidates = pd.concat([done, ref], ignore_index=True)
    expected = _brute_front(candidates, {"fidelity": True, "flops": False}) - {"none"}
    members = pareto[pareto["state"] != "REFERENCE"]
    assert set(members["spans"]) == expected and len(members) == len(expected)
    table = report.read_text().split("## Front")[1].split("## Export rule")[0]
    assert sum(ln.startswith("|  | none |") or "| none |" in ln for ln in table.splitlines()) == 1


def test_front_members_against_a_brute_force_mask():
    from search.analysis import front_members

    front = pd.DataFrame({"spans": ["none", "0-1", "1-2", "0-2", "2-3"],
                          "accuracy": [0.80, 0.78, 0.80, 0.70, 0.81],
                          "latency_ms": [2.0, 1.0, 2.5, 1.5, 2.0]})
    reference = {"accuracy": 0.80, "latency_ms": 2.0}
    got = front_members(front, reference, ["accuracy", "latency_ms"])
    rows = pd.concat([front, pd.DataFrame([{"spans": "REF"} | reference])], ignore_index=True)
    # a member the reference dominates (1-2: same accuracy, slower) goes; so does "none"; the rest stay
    dominated_by_ref = {s for s in front["spans"] if s not in _brute_front(rows[rows["spans"].isin([s, "REF"])],
                                                                           {"accuracy": True, "latency_ms": False})}
    assert list(got["spans"]) == [s for s in front["spans"] if s != "none" and s not in dominated_by_ref]
    assert list(got["spans"]) == ["0-1", "0-2", "2-3"]


def test_report_names_the_data_sources(study, tmp_path):
    """A transfer study's report says where the statistics came from and where probe and eval came from."""
    from search._render import _data_sources

    cfg, report = study
    assert "disjoint splits of one source" in report.read_text()
    text = (cfg.output_dir() / "config.resolved.toml").read_text()
    assert "# calibration_path = (unset)" in text
    (tmp_path / "config.resolved.toml").write_text(
        text.replace("# calibration_path = (unset)", 'calibration_path = "/data/digits.npz"')
            .replace("# calibration_kind = (unset)", 'calibration_kind = "npz"'))
    lines = _data_sources(tmp_path)
    assert lines[0].startswith("calibration source (statistics and span fits): npz /data/digits.npz")
    assert "another data set than the probe, eval and test splits" in lines[0]
    assert lines[1].startswith("probe (classifier) and eval (the search's and the rule's selection; every score not "
                               "marked test) and test source: synthetic")


def test_max_drop_refused_when_negative(study, capsys):
    cfg, _ = study
    config = Path(cfg.base_dir) / f"{cfg.name}.toml"
    assert cli_main(["run", str(config), "--max-drop", "-0.1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rba: error:") and "max_drop" in err[0]


def test_speedup_is_measured_back_to_back(monkeypatch):
    """Two models whose forward costs are known on a fake clock (the test times nothing): both warmed up, then
    original-export-export-original in every repeat, at least 20 repeats of a fast batch, per-sample medians of
    the same repeats, and the headline: the median of the paired per-repeat ratios."""
    clock = [0.0]
    calls = []
    monkeypatch.setattr("rba.timing.time.perf_counter", lambda: clock[0])

    class Fake:
        def __init__(self, name, seconds):
            self.name, self.seconds = name, seconds

        def collate(self, samples):
            return samples

        def forward(self, batch):
            assert len(batch) == 4
            calls.append(self.name)
            # the original slows down in one run of repeat 3 (load), the export in one of repeat 5
            slow = (self.name == "o" and len(calls) == 8 + 4 * 3 + 1) or (self.name == "e" and len(calls) == 8 + 4 * 5 + 2)
            clock[0] += self.seconds * (3 if slow else 1)

    speed = measure_speedup(Fake("o", 0.02), Fake("e", 0.005), list(range(10)), batch_size=4, repeats=5)
    assert calls == ["o", "e", "e", "o"] * 22  # two warm-up rounds, then 20 repeats (a round is under a second)
    assert speed["batch_size"] == 4 and speed["repeats"] == 20 and speed["threads"] == torch.get_num_threads()
    # per repeat, each side's mean of its two runs, per sample (ms)
    o = np.full(20, 20 / 4)
    e = np.full(20, 5 / 4)
    o[3] = (60 + 20) / 2 / 4
    e[5] = (15 + 5) / 2 / 4
    np.testing.assert_allclose(speed["original_times_ms"], o)
    np.testing.assert_allclose(speed["export_times_ms"], e)
    assert speed["original_ms"] == pytest.approx(np.median(o)) and speed["export_ms"] == pytest.approx(np.median(e))
    assert speed["speedup"] == pytest.approx(np.median(o / e)) == pytest.approx(4.0)
    assert speed["export_faster"] == 1.0 and speed["order"] == "ABBA"
    assert min(o / e) <= speed["speedup_low"] <= speed["speedup"] <= speed["speedup_high"] <= max(o / e)


def test_speedup_is_the_median_of_the_paired_ratios(monkeypatch):
    """Per-repeat times on a fake clock where the ratio of the medians says the export is slower and most paired
    ratios say it is faster: the headline is the paired median (> 1), the share of repeats the export won is
    stated, and the ratio of the medians is not what the record calls the speed-up."""
    clock = [0.0]
    monkeypatch.setattr("rba.timing.time.perf_counter", lambda: clock[0])
    o_s, e_s = [1.0, 3.0, 2.0, 2.2, 1.1], [2.5, 2.9, 1.9, 2.1, 1.0]  # seconds per repeat, slow (no raise to 20)
    seconds = {"o": iter([1.0] * 4 + [v for v in o_s for _ in range(2)]),
               "e": iter([1.0] * 4 + [v for v in e_s for _ in range(2)])}

    class Fake:
        def __init__(self, name):
            self.name = name

        def collate(self, samples):
            return samples

        def forward(self, batch):
            clock[0] += next(seconds[self.name])

    speed = measure_speedup(Fake("o"), Fake("e"), list(range(4)), batch_size=4, repeats=5)
    o, e = np.array(o_s) * 1000 / 4, np.array(e_s) * 1000 / 4
    np.testing.assert_allclose(speed["original_times_ms"], o)
    np.testing.assert_allclose(speed["export_times_ms"], e)
    assert np.median(o) / np.median(e) < 1  # what a ratio of the medians would say
    assert speed["speedup"] == pytest.approx(np.median(o / e)) and speed["speedup"] > 1
    assert speed["export_faster"] == pytest.approx(np.mean(e < o)) == 0.8


def test_speedup_ceiling_is_the_configuration_with_free_maps(study):
    """The ceiling is the unmodified model's cost over the configuration's with the replacing maps free: the cost
    model's own pricing of the identity fit (which costs nothing), by latency table and by FLOPs."""
    from search._measure import speedup_ceiling

    cfg, _ = study
    session = Session(cfg, progress=False)
    cm = session.cost_model
    assert cm.block_latency_ms  # measured
    spans = [(1, 3)]
    by_latency = speedup_ceiling(cm, spans)
    assert by_latency["source"] == "latency table" and by_latency["blocks"] == [1, 2]
    assert by_latency["speedup"] == pytest.approx(cm.cost([], "identity")["latency_ms"]
                                                  / cm.cost(spans, "identity")["latency_ms"])
    cm_flops = type(cm)(**{**cm.to_dict(), "block_latency_ms": []})
    by_flops = speedup_ceiling(cm_flops, [(0, 1), (3, 4)])
    assert by_flops["source"] == "FLOPs"
    assert by_flops["speedup"] == pytest.approx(1 / cm.cost([(0, 1), (3, 4)], "identity")["flops_frac"])
    assert 1 / by_flops["speedup"] < cm.cost([(0, 1), (3, 4)], "affine")["flops_frac"]  # a fitted map costs FLOPs


@pytest.mark.parametrize("speedup", [1.05, 1.6])
def test_a_speedup_above_its_ceiling_is_flagged_not_quoted(study, tmp_path, speedup):
    """The report quotes a speed-up within the ceiling with its interval and share of faster repeats; one above
    it (1.6× for a ceiling of 1.25×) is flagged as implausible noise, in the PyTorch and the ONNX line."""
    out = _copy(study, tmp_path)
    info = json.loads((out / "report.json").read_text())
    export = info["export"]
    export["ceiling"] = {"speedup": 1.25, "source": "latency table", "blocks": [1]}
    export["speed"] |= {"speedup": speedup, "speedup_low": speedup - 0.01, "speedup_high": speedup + 0.02,
                        "export_faster": 0.85}
    export["onnx"] = {"onnx_unmodified_ms": 2.0, "onnx_export_ms": 2.0 / speedup, "onnx_speedup": speedup,
                      "onnx_speedup_low": 1.0, "onnx_speedup_high": 2.0, "onnx_export_faster": 0.7,
                      "confidence": 0.95, "order": "ABBA", "unmodified_times_ms": [2.0] * 20,
                      "export_times_ms": [2.0 / speedup] * 20, "repeats": 20, "threads": 1, "batch_size": 8,
                      "max_rel_diff": 1e-6}
    (out / "report.json").write_text(json.dumps(info))
    assert cli_main(["report", str(out)]) == 0
    text = (out / "report.md").read_text()
    section = text.split("## Exported configuration")[1].split("## Wall time")[0]
    lines = [ln for ln in section.splitlines() if "speed-up" in ln]
    assert len(lines) == 2 and lines[1].startswith("ONNX Runtime")
    quoted = (f"speed-up {speedup:.3g}× (median of {export['speed']['repeats']} paired per-repeat ratios, ABBA order, "
              f"95% interval {speedup - 0.01:.3g}–{speedup + 0.02:.3g}; the export faster in 85% of repeats")
    assert quoted in lines[0]
    for line in lines:
        assert ("implausible, not a result" in line) == (speedup > 1.25)
        assert "ceiling of 1.25×" in line if speedup > 1.25 else "ceiling 1.25×" in line


def test_rba_report_measure_refreshes_the_speedup_without_a_search(study, tmp_path, monkeypatch, capsys):
    """A folder without its export/ (as committed): `rba report DIR --measure` exports the choice again from the
    statistics and measures its speed-up under the paired protocol, runs no trial, and the report quotes the
    median paired ratio; the export table's latencies are that run's medians."""
    cfg, _ = study
    out = tmp_path / "old"
    shutil.copytree(cfg.output_dir(), out)
    recipe = json.loads((out / "export" / "recipe.json").read_text())
    shutil.rmtree(out / "export")  # as in a committed report, which keeps no weights
    study_db = (out / "study.db").read_bytes()
    trials_csv = (out / "trials.csv").read_bytes()

    def no_trial(*args, **kwargs):
        raise AssertionError("rba report --measure evaluated a configuration")

    monkeypatch.setattr("search.objective.Objective.__call__", no_trial)
    monkeypatch.setattr("rba.session.Session.evaluate", no_trial)
    assert cli_main(["report", str(out), "--measure"]) == 0
    assert (out / "study.db").read_bytes() == study_db and (out / "trials.csv").read_bytes() == trials_csv
    again = json.loads((out / "export" / "recipe.json").read_text())  # the choice exported again, identically
    assert again["spans"] == recipe["spans"] == json.loads((out / "report.json").read_text())["choice"]["spans"]
    assert again["recipe_sha256"] == recipe["recipe_sha256"]
    latency = json.loads((out / "export" / "latency.json").read_text())
    o, e = np.array(latency["original_times_ms"]), np.array(latency["export_times_ms"])
    assert len(o) == len(e) == latency["repeats"] >= max(20, cfg.report.speedup_repeats)  # fast batches: 20
    speedup = float(np.median(o / e))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["speedup"] == pytest.approx(speedup) and summary["export_faster"] == pytest.approx(np.mean(e < o))
    report = json.loads((out / "report.json").read_text())
    assert report["export"]["speed"] == latency and report["export"]["ceiling"]["source"] == "latency table"
    assert summary["speedup_ceiling"] == report["export"]["ceiling"]["speedup"]
    text = (out / "report.md").read_text()
    assert (f"unmodified {np.median(o):.4g} ms/sample, export {np.median(e):.4g} ms/sample (medians of the same "
            f"repeats); ") in text
    assert f"speed-up {speedup:.3g}× (median of {len(o)} paired per-repeat ratios, ABBA order" in text
    # the export table shows the latencies of that same run
    table = text.split("## Exported configuration")[1]
    cells = {ln.split("|")[1].strip(): [c.strip() for c in ln.strip("|").split("|")]
             for ln in table.splitlines() if ln.startswith("| ")}
    header = cells["source"]
    at = header.index("latency_ms")
    assert cells["unmodified model"][at] == f"{np.median(o):.4g}"
    assert cells["export (measured)"][at] == f"{np.median(e):.4g}"


def test_sentence_transformer_runs_with_an_export_head():
    """An export's probe head is an attribute of the model; a SentenceTransformer (an nn.Sequential) must not run
    it as a stage (``rba run`` on all-MiniLM-L6-v2 with the probe head crashed in the export's evaluation)."""
    from torch import nn

    from rba.adapters import create_adapter
    from rba.config import Config
    from rba.export import HEAD_ATTR

    cfg = Config.from_dict({"model": {"kind": "sentence-transformers", "name": "all-MiniLM-L6-v2"}})
    adapter = create_adapter(cfg)
    texts = ["a fine film", "dull, far too long and badly acted"]
    batch = adapter.collate(texts)
    with torch.inference_mode():
        expected = adapter.st.encode(texts, convert_to_tensor=True)
        setattr(adapter.model, HEAD_ATTR, nn.Linear(expected.shape[1], 2))
        got = adapter.forward(batch)
        h, ctx = adapter.embed(batch)
        for k in range(adapter.num_blocks):
            h = adapter.run_block(k, h, ctx)
        pooled = adapter.pool(h, ctx)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(pooled, expected, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------- the report: rba report DIR, the analysis
REPORT_FILES = ["report.md", "scores.png", "pareto.png", "priors.png", "cost.png"]


def _copy(study, tmp_path) -> Path:
    """The study folder without the export and the study storage: what ``rba report`` needs, and no more."""
    cfg, _ = study
    out = tmp_path / "copy"
    shutil.copytree(cfg.output_dir(), out, ignore=shutil.ignore_patterns("export", "study.db*", "study.json"))
    return out


def test_rba_report_regenerates_the_report_without_the_model(study, tmp_path, monkeypatch, capsys):
    """Rendering again writes the same bytes, builds no model, changes no other file, and leaves the caller's
    matplotlib backend (here svg, not the Agg the plots draw with) as it was."""
    import matplotlib

    out = _copy(study, tmp_path)
    assert sorted(p.name for p in out.glob("*.png")) == sorted(f for f in REPORT_FILES if f.endswith(".png"))
    from search._render import TABLES

    rendered = REPORT_FILES + [name for name in TABLES if (out / name).exists()]
    assert len(rendered) == len(REPORT_FILES) + len(TABLES)  # baselines and a test split: both tables
    before = {name: (out / name).read_bytes() for name in rendered}
    for name in rendered:
        (out / name).unlink()
    inputs = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}

    def no_model(*args, **kwargs):
        raise AssertionError("rba report built a model")

    monkeypatch.setattr("rba._registry.ADAPTERS.get", no_model)
    backend = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        assert cli_main(["report", str(out)]) == 0
        assert matplotlib.get_backend().lower() == "svg"
    finally:
        matplotlib.use(backend)
    assert "report: wrote" in capsys.readouterr().out
    for name, data in before.items():
        assert (out / name).read_bytes() == data, name
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name not in before} == inputs


@pytest.mark.parametrize("damage", ["no report.json", "no pareto.csv", "bad report.json", "old format", "no folder",
                                    "bad per_sample.npz", "no per_sample.npz"])
def test_rba_report_refuses_what_it_cannot_render(study, tmp_path, capsys, damage):
    out = _copy(study, tmp_path)
    for name in REPORT_FILES:
        (out / name).unlink()
    target = out
    if damage == "no report.json":
        (out / "report.json").unlink()
    elif damage == "no pareto.csv":
        (out / "pareto.csv").unlink()
    elif damage == "bad report.json":
        (out / "report.json").write_text('{"format": 1')
    elif damage == "old format":
        (out / "report.json").write_text(json.dumps({"format": 1}))
    elif damage == "bad per_sample.npz":
        (out / "per_sample.npz").write_bytes(b"PK\x03\x04 truncated")
    elif damage == "no per_sample.npz":
        (out / "per_sample.npz").unlink()
    else:
        target = out / "missing"
    assert cli_main(["report", str(target)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rba: error:"), err
    expected = {"no report.json": "holds no report.json", "no pareto.csv": "lacks pareto.csv",
                "bad report.json": "is damaged (not JSON", "old format": "report format 1, and this rba reads format",
                "bad per_sample.npz": "per_sample.npz cannot be read", "no per_sample.npz": "lacks per_sample.npz",
                "no folder": "is not a folder"}
    assert expected[damage] in err[0]
    assert not any((out / name).exists() for name in REPORT_FILES)  # nothing written


def test_rba_report_measure_refuses_an_export_of_another_configuration(study, tmp_path, capsys):
    cfg, _ = study
    out = tmp_path / "other"
    shutil.copytree(cfg.output_dir(), out, ignore=shutil.ignore_patterns("study.db*", "report.md"))
    recipe = json.loads((out / "export" / "recipe.json").read_text())
    (out / "export" / "recipe.json").write_text(json.dumps(recipe | {"spans": "0-1"}))
    assert cli_main(["report", str(out), "--measure"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rba: error:") and "holds an export of `0-1`" in err[0], err
    assert not (out / "report.md").exists()


def _hand_ranks_corr(x, y) -> float:
    """Spearman ρ as the Pearson correlation of average ranks (pandas ranks, numpy correlation)."""
    return float(np.corrcoef(pd.Series(list(x)).rank(), pd.Series(list(y)).rank())[0, 1])


def _staircase_hv(points, ref_q, ref_c) -> float:
    """2-D hypervolume (quality up, cost down) by sweeping cost slices: each slice's best quality above ref_q."""
    pts = [(c, q) for q, c in points if q > ref_q and c < ref_c]
    edges = sorted({c for c, _ in pts} | {ref_c})
    area = 0.0
    for lo, hi in zip(edges, edges[1:]):
        best = max((q for c, q in pts if c <= lo), default=ref_q)
        area += (hi - lo) * (best - ref_q)
    return area


def test_report_sections_against_independent_computations(study):
    cfg, _ = study
    out = cfg.output_dir()
    text = (out / "report.md").read_text()
    scores, trials = pd.read_csv(out / "scores.csv"), pd.read_csv(out / "trials.csv")
    pareto, singles = pd.read_csv(out / "pareto.csv"), pd.read_csv(out / "singles.csv")
    baselines = pd.read_csv(out / "baselines.csv")
    done = trials[trials["state"] == "COMPLETE"]

    # BR-greedy, written out: highest br first, skip overlaps, every prefix a configuration
    chosen, greedy = [], []
    for _, r in scores.sort_values(["br", "start", "end"], ascending=[False, True, True]).iterrows():
        if not any(r["start"] < b and a < r["end"] for a, b in chosen):
            chosen.append((int(r["start"]), int(r["end"])))
            greedy.append(",".join(f"{a}-{b}" for a, b in sorted(chosen)))
    assert list(baselines.loc[baselines["method"] == "br-greedy", "spans"]) == greedy
    # shortgpt: single blocks by mean cosine of their input and output (Block Influence 1 − cos), highest first
    one = scores[scores["end"] == scores["start"] + 1].sort_values(["cosine", "start"], ascending=[False, True])
    ranked = [int(a) for a in one["start"]]
    drops = [",".join(f"{a}-{a + 1}" for a in sorted(ranked[: k + 1])) for k in range(len(ranked))]
    assert list(baselines.loc[baselines["method"] == "shortgpt", "spans"]) == drops
    # shortgpt-affine: the same blocks, each run of adjacent ones one fitted span (every span of 4 blocks is valid)
    merged = []
    for k in range(len(ranked)):
        blocks, runs = sorted(ranked[: k + 1]), []
        for b in blocks:
            if runs and runs[-1][1] == b:
                runs[-1][1] = b + 1
            else:
                runs.append([b, b + 1])
        merged.append(",".join(f"{a}-{b}" for a, b in runs))
    assert list(baselines.loc[baselines["method"] == "shortgpt-affine", "spans"]) == merged
    # gromov / gromov-affine: one span of each length 1..4, the same spans dropped and fitted
    for name in ("gromov", "gromov-affine"):
        spans = list(baselines.loc[baselines["method"] == name, "spans"])
        assert [int(s.split("-")[1]) - int(s.split("-")[0]) for s in spans] == [1, 2, 3, 4]
    assert spans == list(baselines.loc[baselines["method"] == "gromov", "spans"])
    # sleb: nested removals of single blocks, never the first or the last remaining block (4 blocks: 2 steps)
    sleb = [set(s.split(",")) for s in baselines.loc[baselines["method"] == "sleb", "spans"]]
    assert len(sleb) == 2 and sleb[0] < sleb[1] and sleb[1] == {"1-2", "2-3"}
    # the fit kind of each method is the registry's: identity for the dropping baselines
    kinds = baselines.groupby("method", sort=False)["kind"].unique().map(list).to_dict()
    assert kinds == {"br-greedy": ["affine"], "shortgpt": ["identity"], "shortgpt-affine": ["affine"],
                     "sleb": ["identity"], "gromov": ["identity"], "gromov-affine": ["affine"], "replaceme": ["fold"]}
    # replaceme (the ViT's blocks fold): one span per length 1..3 (25% of 4 blocks first), none from boundary 0
    replaceme = list(baselines.loc[baselines["method"] == "replaceme", "spans"])
    assert sorted(int(s.split("-")[1]) - int(s.split("-")[0]) for s in replaceme) == [1, 2, 3]
    assert int(replaceme[0].split("-")[1]) - int(replaceme[0].split("-")[0]) == 1
    assert all(int(s.split("-")[0]) >= 1 for s in replaceme)
    # configurations the trials evaluated (with the search's fit kind) are reused, with the trials' values
    by_spans = done.set_index("spans")
    for _, r in baselines[baselines["kind"] == "affine"].iterrows():
        assert r["source"] == ("trial" if r["spans"] in by_spans.index else "evaluated")
        if r["source"] == "trial":
            assert r["fidelity"] == pytest.approx(by_spans.loc[r["spans"], "fidelity"], rel=1e-12)
    assert (baselines.loc[baselines["kind"] == "identity", "source"] == "evaluated").all()
    # a configuration two dropping baselines share has one result (evaluated once, by one objective)
    drop = baselines[baselines["kind"] == "identity"]
    assert (drop.groupby("spans")["fidelity"].nunique() == 1).all()

    # every single span, with accuracy (the data has labels), reusing the trials' fidelity
    assert sorted(zip(singles["start"], singles["end"])) == sorted(zip(scores["start"], scores["end"]))
    assert singles["accuracy"].notna().all() and singles["fidelity"].between(-1, 1).all()
    for _, r in singles.iterrows():
        if r["spans"] in by_spans.index:
            assert r["fidelity"] == pytest.approx(by_spans.loc[r["spans"], "fidelity"], rel=1e-12)
    merged = singles.merge(scores, on=["start", "end"])
    for metric, sign in (("br", 1), ("ls_residual", -1)):
        rho = _hand_ranks_corr(sign * merged[metric], merged["fidelity"])
        assert f"| {metric} | fidelity | {rho:.4g} |" in text, (metric, rho)
    # within each span length (3 or more spans of it), ρ by hand, and the mean weighted by the number of spans
    within = {(r["metric"], r["quality"]): r for r in _table(text.split("next to the pooled ρ.")[1], "")}
    lengths = (merged["end"] - merged["start"]).value_counts()
    kept = sorted(k for k, n in lengths.items() if n >= 3)
    assert kept == [1, 2]  # 4 blocks: 4 spans of one block, 3 of two (2 of three, 1 of four: too few)
    for metric, sign in (("br", 1), ("ls_residual", -1)):
        row, total, weight = within[(metric, "fidelity")], 0.0, 0
        for k in kept:
            group = merged[merged["end"] - merged["start"] == k]
            rho = _hand_ranks_corr(sign * group[metric], group["fidelity"])
            assert row[f"length {k}"] == f"{rho:.4g}" and row[f"spans {k}"] == str(len(group))
            total, weight = total + rho * len(group), weight + len(group)
        assert row["within lengths"] == f"{total / weight:.4g}"
        assert row["pooled"] == f"{_hand_ranks_corr(sign * merged[metric], merged['fidelity']):.4g}"

    # hypervolume of the search's feasible trials at the fixed reference point (0.9 × the unmodified model's
    # fidelity, full cost) and at the worst point of any method, and the best fidelity within 50% of the FLOPs
    feas = done[done["feasible"].astype(bool)]
    base_feas = baselines[baselines["feasible"].astype(bool)]
    reference = pareto[pareto["state"] == "REFERENCE"].iloc[0]
    fixed_q = 0.9 * reference["fidelity"]
    hv = _staircase_hv(list(zip(feas["fidelity"], feas["flops_frac"])), fixed_q, 1.0)
    worst_q = min(feas["fidelity"].min(), base_feas["fidelity"].min())
    hv_worst = _staircase_hv(list(zip(feas["fidelity"], feas["flops_frac"])), worst_q, 1.0)
    best50 = feas.loc[feas["flops_frac"] <= 0.5, "fidelity"].max()
    methods = {row["method"]: row for row in _table(text, "Search against the baselines")}
    cells = methods["search"]
    assert cells["configurations"] == str(len(feas)) and cells["hypervolume"] == f"{hv:.4g}"
    assert cells["hypervolume (worst point)"] == f"{hv_worst:.4g}"
    assert cells["best fidelity at flops_frac ≤ 0.5"] == f"{best50:.4g}"
    assert f"fixed before the runs: fidelity = {fixed_q:.4g} (0.9 × the unmodified model's fidelity)" in text
    # on the test split: the search's eval front (by hand: no feasible trial beats a member in both), its test
    # fidelities from per_sample.npz, at 0.9 × the unmodified model's test fidelity
    z = np.load(out / "per_sample.npz")
    test_fid = {str(sp): float(c.mean()) for k, sp, c in zip(z["kind"], z["spans"], z["cosine"], strict=True)
                if k == "affine" or sp == "none"}
    eval_front = [r for _, r in feas.iterrows()
                  if not any((o["fidelity"] > r["fidelity"] and o["flops_frac"] <= r["flops_frac"])
                             or (o["fidelity"] >= r["fidelity"] and o["flops_frac"] < r["flops_frac"])
                             for _, o in feas.iterrows())]
    test_hv = _staircase_hv([(test_fid[r["spans"]], r["flops_frac"]) for r in eval_front], 0.9 * test_fid["none"], 1.0)
    assert cells["test hypervolume"] == f"{test_hv:.4g}"
    # every single span or less, at the fixed point: the multi-span section's first hypervolume
    evaluated = pd.concat([feas[["spans", "fidelity", "flops_frac"]], singles[["spans", "fidelity", "flops_frac"]]])
    hv_all = _staircase_hv(list(zip(evaluated["fidelity"], evaluated["flops_frac"])), fixed_q, 1.0)
    assert f"of {hv_all:.4g}) at the fixed reference point fidelity = {fixed_q:.4g}, flops_frac = 1;" in text

    # multi-span members of the front, counted by hand
    front = pareto[pareto["state"] != "REFERENCE"]
    multi = [s for s in front["spans"] if "," in s]
    assert (f"**{'Yes' if multi else 'No'}**: {len(multi)} of the front's {len(front)} members") in text

    # the cost question: 34 configurations of 4 blocks × the median completed trial
    assert f"all 34 configurations takes {34 * done['duration_s'].median():.4g} s (an estimate" in text
    report = json.loads((out / "report.json").read_text())
    assert report["configurations"] == 34 and not math.isnan(report["timing"]["total_s"])


def _table(text: str, section: str) -> list[dict[str, str]]:
    """The first markdown table of a report section ("": of ``text``), as rows of cells by column name."""
    body = text.split(f"## {section}")[1].split("\n## ")[0] if section else text
    body = body.splitlines()
    start = next(k for k, ln in enumerate(body) if ln.startswith("|"))
    lines = list(itertools.takewhile(lambda ln: ln.startswith("|"), body[start:]))
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in ln.strip("|").split("|")), strict=True)) for ln in lines[2:]]


def _pm(values: np.ndarray, binary: bool) -> str:
    """mean ± SE written out: √(p(1 − p)/n) for 0/1 outcomes, s/√n (ddof 1) for cosines."""
    m = float(np.mean(values))
    se = math.sqrt(m * (1 - m) / len(values)) if binary else float(np.std(values, ddof=1) / math.sqrt(len(values)))
    return f"{m:.4g} ± {se:.2g}"


def _exact_mcnemar(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided exact McNemar p-value by summing binomial(n, 1/2) probabilities with math.comb."""
    n01, n10 = int(np.sum(a & ~b)), int(np.sum(~a & b))
    n, k = n01 + n10, min(n01, n10)
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)


def test_the_test_split_numbers_and_the_paired_tests(study):
    """With ``[data] test``, the report quotes each configuration on the held-out split with its standard error,
    and the paired tests, all recomputed here from the saved per-sample arrays: the front's test columns, the
    export scored end to end by the exported model (another path than the evaluator), the picks each method makes
    on eval within each budget (selected by hand from trials.csv and baselines.csv), exact McNemar p-values
    summed with math.comb, a numpy bootstrap of the fidelity differences, and Holm's adjustment by hand."""
    import torch.nn.functional as F

    from rba.export import head_logits, load_export

    cfg, report = study
    out = cfg.output_dir()
    text = report.read_text()
    z = np.load(out / "per_sample.npz")
    rows = {(str(k), str(s)): r for r, (k, s) in enumerate(zip(z["kind"], z["spans"], strict=True))}
    correct = z["prediction"] == z["label"]
    n = len(z["index"])
    session = Session(cfg, progress=False, measure_latency=False)
    np.testing.assert_array_equal(z["index"], session.splits.indices["test"])
    np.testing.assert_array_equal(z["label"], session.splits.test.labels)
    assert n == 40 and not np.intersect1d(z["index"], session.splits.indices["eval"]).size

    # the export on the test split, end to end: the exported model against the unmodified one
    choice = json.loads((out / "report.json").read_text())["choice"]["spans"]
    exported = load_export(out / "export")
    with torch.inference_mode():
        batch = session.adapter.collate(session.splits.test.samples)
        cos = F.cosine_similarity(exported.forward(batch).double(), session.adapter.forward(batch).double()).numpy()
        predicted = head_logits(exported, batch).argmax(1).numpy()
    r = rows[("affine", choice)]
    np.testing.assert_allclose(z["cosine"][r], cos, rtol=1e-5, atol=1e-6)
    assert np.mean(z["prediction"][r] == predicted) >= 0.95  # float rounding may flip a sample on a boundary
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_fidelity"] == pytest.approx(z["cosine"][r].mean())
    assert summary["test_accuracy"] == pytest.approx(correct[r].mean())

    # the front's test columns, mean ± SE by hand
    for row in _table(text, "Front"):
        k = rows[("affine", row["spans"])]
        assert row["test fidelity"] == _pm(z["cosine"][k], binary=False)
        assert row["test accuracy"] == _pm(correct[k], binary=True)

    # each method's pick on eval within each budget, then the comparisons on test
    trials = pd.read_csv(out / "trials.csv", dtype={"spans": "string"})
    baselines = pd.read_csv(out / "baselines.csv", dtype={"spans": "string"})
    methods = {"search": trials[(trials["state"] == "COMPLETE")].assign(kind="affine")}
    methods |= {m: g for m, g in baselines.groupby("method", sort=False)}

    def pick(rows_, budget):
        ok = rows_[rows_["feasible"].astype(bool) & (rows_["flops_frac"] <= budget)]
        if not len(ok):
            return None
        best = ok.sort_values(["fidelity", "flops_frac"], ascending=[False, True]).iloc[0]
        return str(best["kind"]), str(best["spans"])

    expected = [("export vs unmodified", "", ("affine", "none"), ("affine", choice))]
    for label in list(methods)[1:]:
        for budget in cfg.report.flops_points:
            a, b = pick(methods[label], budget), pick(methods["search"], budget)
            if a and b:
                expected.append((f"search vs {label}", f"≤ {budget:g}", a, b))
    table = _table(text, "Paired tests on the test split")
    assert [(t["comparison"], t["budget"]) for t in table] == [(c, b) for c, b, _, _ in expected for _ in range(2)]
    rng = np.random.default_rng(1)
    pvalues = []
    for (_comparison, _budget, a, b), (acc, fid) in zip(expected, zip(table[::2], table[1::2], strict=True),
                                                      strict=True):
        ra, rb = rows[a if a[1] != "none" else ("affine", "none")], rows[b]
        def label(k, sp):
            return "unmodified" if sp == "none" else f"{sp} ({k})"
        assert (acc["A"], acc["B"], fid["A"], fid["B"]) == (label(*a), label(*b), label(*a), label(*b))
        assert acc["quality"] == "accuracy" and fid["quality"] == "fidelity"
        p_acc = _exact_mcnemar(correct[ra], correct[rb])
        assert acc["B − A"] == f"{correct[rb].mean() - correct[ra].mean():.4g}" and acc["p"] == f"{p_acc:.4g}"
        diff = z["cosine"][rb] - z["cosine"][ra]
        assert fid["B − A"] == f"{diff.mean():.4g}"
        boot = diff[rng.integers(0, n, size=(20000, n))].mean(axis=1)
        low, high = np.percentile(boot, [2.5, 97.5])
        slack = 0.15 * diff.std(ddof=1) / math.sqrt(n) + 1e-12
        assert abs(float(fid["low"] or 0) - low) <= slack and abs(float(fid["high"] or 0) - high) <= slack
        p_fid = min(1.0, 2 * (1 + min(np.sum(boot <= 0), np.sum(boot >= 0))) / (1 + len(boot)))
        assert abs(float(fid["p"]) - p_fid) <= 0.02
        pvalues += [float(acc["p"]), float(fid["p"])]
    # Holm by hand on the printed p-values: k-th smallest × (m − k + 1), running maximum, capped at 1
    order = np.argsort(pvalues, kind="stable")
    adjusted, running = np.empty(len(pvalues)), 0.0
    for rank, k in enumerate(order):
        running = max(running, min(1.0, pvalues[k] * (len(pvalues) - rank)))
        adjusted[k] = running
    printed = np.array([float(t["p (Holm)"]) for t in table])
    np.testing.assert_allclose(printed, adjusted, rtol=2e-3)  # from 4-digit p-values


def test_rba_report_without_the_optional_sections(study, tmp_path):
    """A study run with ``[report] baselines = false`` and no single spans: the report leaves those sections out
    and says how to turn the priors section on."""
    out = _copy(study, tmp_path)
    info = json.loads((out / "report.json").read_text())
    info |= {"baselines": False, "single_spans": False, "test": None}
    (out / "report.json").write_text(json.dumps(info))
    for name in ("baselines.csv", "singles.csv", "priors.png", "report.md", "per_sample.npz"):
        (out / name).unlink()
    assert cli_main(["report", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "## Baselines at the same budgets" not in text and "## Search against the baselines" not in text
    assert "Not computed: set `[report] single_spans = true`" in text and "## Cost of the search" in text
    assert "- test split: none (`[data] test = 0`)" in text and "## Paired tests" not in text
    assert "test fidelity" not in text and "test split:" not in text.split("## Front")[1]
    assert not (out / "priors.png").exists() and (out / "cost.png").exists()
