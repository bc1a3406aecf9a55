"""``rba run`` end to end on a tiny ViT: the files, the completed front (reference row, accuracy filled, sorted
by cost, rows matching ``trials.csv``), the export rule (``--max-drop``), an export that classifies, the
interleaved latency measurement, the baselines section, the analysis sections against computations written out
here, and ``rba report DIR`` re-rendering the report from the files without the model."""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent / "search_tests"))
from _search_helpers import make_config, single_thread  # noqa: E402,F401  (autouse fixture)

from rba.cli import main as cli_main  # noqa: E402
from rba.session import Session  # noqa: E402
from search import run_study  # noqa: E402
from search.report import measure_speedup  # noqa: E402


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
                      run={"max_drop": 0.12}, report={"single_spans": True})
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
    assert "## Baselines at the same budgets" in text and "BR-greedy" in text and "block-drop" in text


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
    # the cost section says that this run's search time covers none of the trials
    done = int((after["state"] == "COMPLETE").sum())
    assert f"The study resumed: {done} of its {done} completed trials ran before this run" in text


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
    assert lines[1].startswith("probe (classifier) and eval (every score here) source: synthetic")


def test_max_drop_refused_when_negative(study, capsys):
    cfg, _ = study
    config = Path(cfg.base_dir) / f"{cfg.name}.toml"
    assert cli_main(["run", str(config), "--max-drop", "-0.1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rba: error:") and "max_drop" in err[0]


def test_speedup_is_measured_back_to_back(monkeypatch):
    """Two models whose forward costs are known on a fake clock (the test times nothing): interleaved calls
    after a warm-up, per-sample medians, the speed-up as the median per-pair ratio with its quartiles."""
    clock = [0.0]
    calls = []
    monkeypatch.setattr("rba.timing.time.perf_counter", lambda: clock[0])

    class Fake:
        def __init__(self, name, seconds):
            self.name, self.seconds, self.n = name, seconds, 0

        def collate(self, samples):
            return samples

        def forward(self, batch):
            assert len(batch) == 4
            calls.append(self.name)
            # the original slows down for one repeat (load), the export for another
            slow = (self.name == "o" and len(calls) == 7) or (self.name == "e" and len(calls) == 10)
            clock[0] += self.seconds * (3 if slow else 1)

    speed = measure_speedup(Fake("o", 0.02), Fake("e", 0.005), list(range(10)), batch_size=4, repeats=5)
    assert calls == ["o", "e"] * 7  # two warm-up pairs, then five interleaved pairs
    assert speed["batch_size"] == 4 and speed["repeats"] == 5 and speed["threads"] == torch.get_num_threads()
    assert speed["original_ms"] == pytest.approx(20 / 4) and speed["export_ms"] == pytest.approx(5 / 4)
    # ratios per pair: 12 (original slow), 4/3 (export slow), and 4 three times
    ratios = np.array([12.0, 4 / 3, 4.0, 4.0, 4.0])
    assert speed["speedup"] == pytest.approx(4.0)
    assert speed["speedup_q1"] == pytest.approx(np.percentile(ratios, 25))
    assert speed["speedup_q3"] == pytest.approx(np.percentile(ratios, 75))


def test_speedup_is_the_ratio_of_the_medians(monkeypatch):
    """Per-repeat times on a fake clock where most per-repeat ratios favour the export but its median latency is
    the slower: the speed-up reads < 1 (the ratio of the medians), the spread is the per-repeat ratios' quartiles."""
    import statistics

    clock = [0.0]
    monkeypatch.setattr("rba.timing.time.perf_counter", lambda: clock[0])
    seconds = {"o": iter([1.0, 1.0, 1.0, 3.0, 2.0]), "e": iter([1.0, 1.0, 2.5, 2.9, 1.9])}  # 2 warm-ups, 3 repeats

    class Fake:
        def __init__(self, name):
            self.name = name

        def collate(self, samples):
            return samples

        def forward(self, batch):
            clock[0] += next(seconds[self.name])

    speed = measure_speedup(Fake("o"), Fake("e"), list(range(4)), batch_size=4, repeats=3)
    o, e = np.array(speed["original_times_ms"]), np.array(speed["export_times_ms"])
    np.testing.assert_allclose(o, np.array([1.0, 3.0, 2.0]) * 1000 / 4)
    np.testing.assert_allclose(e, np.array([2.5, 2.9, 1.9]) * 1000 / 4)
    assert np.median(o / e) > 1  # what the old headline said
    assert speed["speedup"] == pytest.approx(np.median(o) / np.median(e)) and speed["speedup"] < 1
    assert speed["speedup"] == pytest.approx(statistics.median([1, 3, 2]) / statistics.median([2.5, 2.9, 1.9]))
    assert (speed["speedup_q1"], speed["speedup_q3"]) == pytest.approx(tuple(np.percentile(o / e, [25, 75])))


def test_rba_report_measure_refreshes_the_speedup_without_a_search(study, tmp_path, monkeypatch, capsys):
    """A folder an older rba wrote (the "none" trial next to the reference row, a speed record without its
    times), without its export/ (as committed): `rba report DIR --measure` exports the choice again from the
    statistics and measures its speed-up, runs no trial, and the report's line is the ratio of the recorded
    medians."""
    cfg, _ = study
    out = tmp_path / "old"
    shutil.copytree(cfg.output_dir(), out)
    recipe = json.loads((out / "export" / "recipe.json").read_text())
    shutil.rmtree(out / "export")  # as in a committed report, which keeps no weights
    pareto = pd.read_csv(out / "pareto.csv", dtype={"spans": "string"})
    trials = pd.read_csv(out / "trials.csv", dtype={"spans": "string"})
    none = trials[trials["spans"] == "none"].head(1)
    if not len(none):  # as an older rba listed it: the "none" trial among the front members
        none = pareto[pareto["state"] == "REFERENCE"].assign(number=999, state="COMPLETE")
    pd.concat([pareto, none], ignore_index=True).to_csv(out / "pareto.csv", index=False)
    info = json.loads((out / "report.json").read_text())
    for key in ("original_times_ms", "export_times_ms", "load_start", "load_end"):
        info["export"]["speed"].pop(key)
    (out / "report.json").write_text(json.dumps(info))
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
    assert len(o) == len(e) == cfg.report.speedup_repeats
    speedup = float(np.median(o) / np.median(e))
    q1, q3 = np.percentile(o / e, [25, 75])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["speedup"] == pytest.approx(speedup) and summary["speedup_q1"] == pytest.approx(q1)
    assert json.loads((out / "report.json").read_text())["export"]["speed"] == latency
    text = (out / "report.md").read_text()
    assert (f"unmodified {np.median(o):.4g} ms/sample, export {np.median(e):.4g} ms/sample (medians); speed-up "
            f"{speedup:.3g}× (ratio of the medians; per-repeat ratios: interquartile range {q1:.3g}–{q3:.3g} over "
            f"{len(o)} interleaved repeats, batch {latency['batch_size']}") in text
    # the front lists the unmodified model once, as the reference row, in the table and in pareto.csv
    fixed = pd.read_csv(out / "pareto.csv")
    assert all(not ln.split(",")[0].endswith(".0") for ln in (out / "pareto.csv").read_text().splitlines())
    assert f"front: {len(fixed) - 1} configurations besides the unmodified model" in text
    assert (fixed["spans"] == "none").sum() == 1 and fixed.loc[fixed["spans"] == "none", "state"].item() == "REFERENCE"
    table = text.split("## Front")[1].split("## Export rule")[0]
    assert sum("| none |" in ln for ln in table.splitlines()) == 1


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
    out = _copy(study, tmp_path)
    assert sorted(p.name for p in out.glob("*.png")) == sorted(f for f in REPORT_FILES if f.endswith(".png"))
    before = {name: (out / name).read_bytes() for name in REPORT_FILES}
    for name in REPORT_FILES:
        (out / name).unlink()

    def no_model(*args, **kwargs):
        raise AssertionError("rba report built a model")

    monkeypatch.setattr("rba._registry.ADAPTERS.get", no_model)
    assert cli_main(["report", str(out)]) == 0
    assert "report: wrote" in capsys.readouterr().out
    for name, data in before.items():
        assert (out / name).read_bytes() == data, name


@pytest.mark.parametrize("damage", ["no report.json", "no pareto.csv", "bad report.json", "old format", "no folder"])
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
        (out / "report.json").write_text(json.dumps({"format": 0}))
    else:
        target = out / "missing"
    assert cli_main(["report", str(target)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rba: error:"), err
    expected = {"no report.json": "holds no report.json", "no pareto.csv": "lacks pareto.csv",
                "bad report.json": "cannot be read", "old format": "report format 0", "no folder": "is not a folder"}
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
    assert list(baselines.loc[baselines["method"] == "BR-greedy", "spans"]) == greedy
    # block-drop: single blocks by mean cosine of their input and output (Block Influence 1 − cos), highest first
    one = scores[scores["end"] == scores["start"] + 1].sort_values(["cosine", "start"], ascending=[False, True])
    drops = [",".join(f"{a}-{a + 1}" for a in sorted(one["start"].iloc[: k + 1])) for k in range(len(one))]
    assert list(baselines.loc[baselines["method"] == "block-drop", "spans"]) == drops
    # configurations the trials evaluated are reused, with the trials' values
    by_spans = done.set_index("spans")
    for _, r in baselines[baselines["method"] == "BR-greedy"].iterrows():
        assert r["source"] == ("trial" if r["spans"] in by_spans.index else "evaluated")
        if r["source"] == "trial":
            assert r["fidelity"] == pytest.approx(by_spans.loc[r["spans"], "fidelity"], rel=1e-12)
    assert (baselines.loc[baselines["method"] == "block-drop", "source"] == "evaluated").all()

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

    # hypervolume of the search's feasible trials and best fidelity within 50% of the FLOPs
    feas = done[done["feasible"].astype(bool)]
    base_feas = baselines[baselines["feasible"].astype(bool)]
    ref_q = min(feas["fidelity"].min(), base_feas["fidelity"].min())
    hv = _staircase_hv(list(zip(feas["fidelity"], feas["flops_frac"])), ref_q, 1.0)
    best50 = feas.loc[feas["flops_frac"] <= 0.5, "fidelity"].max()
    row = next(ln for ln in text.splitlines() if ln.startswith("| search |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == str(len(feas)) and cells[2] == f"{hv:.4g}" and cells[4] == f"{best50:.4g}"

    # multi-span members of the front, counted by hand
    front = pareto[pareto["state"] != "REFERENCE"]
    multi = [s for s in front["spans"] if "," in s]
    assert (f"**{'Yes' if multi else 'No'}**: {len(multi)} of the front's {len(front)} members") in text

    # the cost question: 34 configurations of 4 blocks × the median completed trial
    assert f"all 34 configurations takes {34 * done['duration_s'].median():.4g} s (an estimate" in text
    report = json.loads((out / "report.json").read_text())
    assert report["configurations"] == 34 and not math.isnan(report["timing"]["total_s"])


def test_rba_report_without_the_optional_sections(study, tmp_path):
    """A study run with ``[report] baselines = false`` and no single spans: the report leaves those sections out
    and says how to turn the priors section on."""
    out = _copy(study, tmp_path)
    info = json.loads((out / "report.json").read_text())
    info |= {"baselines": False, "single_spans": False}
    (out / "report.json").write_text(json.dumps(info))
    for name in ("baselines.csv", "singles.csv", "priors.png", "report.md"):
        (out / name).unlink()
    assert cli_main(["report", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "## Baselines at the same budgets" not in text and "## Search against BR-greedy" not in text
    assert "Not computed: set `[report] single_spans = true`" in text and "## Cost of the search" in text
    assert not (out / "priors.png").exists() and (out / "cost.png").exists()
