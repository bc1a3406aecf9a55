"""Reliability: bad input gives one clear error, finished work is never lost, nothing unsafe is loaded.

Every row of the error table runs through ``rba.cli.main`` (the code path of the real binary, in-process so
that it stays fast); each category also has at least one check in a fresh process (``rba.cli.main``, what the
binary runs, several commands in one interpreter; tests/test_cli.py runs ``python -m rba.cli`` itself): exit
code 2, a one-line ``rba: error: …``, no traceback, and no partial file in the output folder or the statistics
cache.

Not covered here (the search package owns them): a budget no configuration can meet, an unreachable Ray
address, a study folder holding a different study identity, Ray trial retries.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from _helpers import (
    assert_nothing_written,
    assert_one_line_error,
    cli_env,
    run_main,
    text_sections,
    toy_sections,
    vit_sections,
    write_config,
)
from conftest import rba_many, slowed_cli, wait_for

from rba.cli import main


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Path:
    """Data and weights files that the error rows point at."""
    d = tmp_path_factory.mktemp("assets")
    (d / "header_only.csv").write_text("text,label\n")
    (d / "no_text_column.csv").write_text("sentence,label\n" + "".join(f"words {i},{i % 2}\n" for i in range(24)))
    (d / "no_label_column.csv").write_text("text\n" + "".join(f"some words number {i}\n" for i in range(24)))
    (d / "one_class.csv").write_text("text,label\n" + "".join(f"some words number {i},pos\n" for i in range(24)))
    (d / "few.csv").write_text("text,label\n" + "".join(f"some words number {i},{i % 2}\n" for i in range(15)))
    import timm
    from safetensors.torch import save_file

    other = timm.create_model("test_vit", pretrained=False, depth=3)  # 3 blocks: not the 6-block test_vit
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(d / "other_arch.safetensors"))
    return d


# ---------------------------------------------------------------------- bad input: one row per error
# (id, sections(folder, assets) -> dict, argv after the config, needles in the one error line)
ROWS = [
    # model kind or name
    pytest.param(lambda f, a: vit_sections(f, model={"kind": "timmm"}), ["scores"],
                 ["model.kind = 'timmm' is not one of", "Did you mean 'timm'?"], id="model-kind-typo"),
    pytest.param(lambda f, a: vit_sections(f, model={"name": "vit_tiny_patch16_22"}), ["scores"],
                 ["unknown timm model 'vit_tiny_patch16_22'. Did you mean 'vit_tiny_patch16_224'"],
                 id="timm-name-typo"),
    pytest.param(lambda f, a: _with_texts(f, text_sections(f, model={"kind": "sentence-transformers",
                                                                     "name": "all-MiniLM-L6-v3", "pretrained": True})),
                 ["scores"],
                 ["unknown sentence-transformers model 'all-MiniLM-L6-v3'. Did you mean 'all-MiniLM-L6-v2'?",
                  "nothing is downloaded"], id="sentence-transformers-unknown-name"),
    pytest.param(lambda f, a: _with_texts(f, text_sections(f, model={"name": "tiny-bret"})), ["scores"],
                 ["unknown huggingface model 'tiny-bret'. Did you mean 'tiny-bert'?"], id="huggingface-unknown-name"),
    # weights
    pytest.param(lambda f, a: vit_sections(f, model={"pretrained": True, "weights": "missing.safetensors"}),
                 ["scores"], ["weights file not found:", "missing.safetensors"], id="weights-missing"),
    pytest.param(lambda f, a: vit_sections(f, model={"pretrained": True, "weights": str(a / "other_arch.safetensors")}),
                 ["scores"], ["other_arch.safetensors does not match the architecture", "missing keys (e.g. blocks.3."],
                 id="weights-wrong-architecture"),
    pytest.param(lambda f, a: vit_sections(f, model={"pretrained": True}), ["scores"],
                 ["needs pretrained weights: set model.weights", "pretrained = false"], id="weights-not-given"),
    # config keys
    pytest.param(lambda f, a: vit_sections(f, capture={"cache": "x"}), ["scores"],
                 ["unknown key in [capture] 'cache'. Did you mean 'cache_dir'?",
                  "Valid: batch_size, cache_dir, dtype, max_memory_gb"], id="config-unknown-key"),
    pytest.param(lambda f, a: vit_sections(f, search={"max_span": 0}), ["scores"],
                 ["search.max_span = 0: it must be at least 1"], id="max-span-0-in-file"),
    pytest.param(lambda f, a: vit_sections(f), ["scores", "--max-span", "-1"],
                 ["search.max_span = -1: it must be at least 1"], id="max-span-flag-negative"),
    # spans (tests/test_cli.py has "2-", "", "1-3,2-5", "4-9", "3-3")
    pytest.param(lambda f, a: vit_sections(f), ["evaluate", "--spans", "2-5,,7-9"],
                 ["malformed span '' in '2-5,,7-9'"], id="span-empty-item"),
    pytest.param(lambda f, a: vit_sections(f), ["evaluate", "--spans", "a-3"],
                 ["malformed span 'a-3'", "START-END"], id="span-not-numbers"),
    pytest.param(lambda f, a: vit_sections(f), ["evaluate", "--spans", "  "], ["empty span list"], id="span-blank"),
    pytest.param(lambda f, a: vit_sections(f), ["evaluate", "--spans", "0-7"],
                 ["span 0-7 is out of range: boundaries run from 0 to 6"], id="span-out-of-range"),
    pytest.param(lambda f, a: vit_sections(f), ["evaluate", "--spans", "2-4,2-4"],
                 ["spans 2-4 and 2-4 overlap"], id="span-duplicate"),
    pytest.param(lambda f, a: vit_sections(f), ["evaluate", "--spans", "1-5", "--max-span", "2"],
                 ["span 1-5 covers 4 blocks, more than search.max_span = 2"], id="span-longer-than-max-span"),
    pytest.param(lambda f, a: vit_sections(f, model={"kind": "efficientnet-lite", "name": "efficientnet-lite0"},
                                           data={"image_size": 64}), ["evaluate", "--spans", "4-6"],
                 ["span 4-6 is invalid: boundary 4 has shape (40, 8, 8) and boundary 6 has shape (80, 4, 4)"],
                 id="span-changes-shape-cnn"),
    # data
    pytest.param(lambda f, a: text_sections(f, data={"path": "nothere.csv"}), ["scores"],
                 ["data path not found:", "nothere.csv"], id="data-path-missing"),
    pytest.param(lambda f, a: text_sections(f, data={"path": str(a / "header_only.csv")}), ["scores"],
                 ["header_only.csv holds no samples"], id="data-empty-csv"),
    pytest.param(lambda f, a: text_sections(f, data={"path": str(a / "no_text_column.csv")}), ["scores"],
                 ["has no text column 'text' (columns: sentence, label); set data.text"], id="data-text-column-missing"),
    pytest.param(lambda f, a: text_sections(f, data={"path": str(a / "no_label_column.csv")}),
                 ["evaluate", "--spans", "none"],
                 ["has no label column 'label' (columns: text)", "data.label = \"\""], id="data-label-column-missing"),
    pytest.param(lambda f, a: text_sections(f, data={"path": str(a / "one_class.csv")}),
                 ["evaluate", "--spans", "none"],
                 ["accuracy needs at least two classes", "one_class.csv hold one"], id="data-single-class"),
    pytest.param(lambda f, a: text_sections(f, data={"path": str(a / "few.csv"), "eval": 10}), ["scores"],
                 ["the splits ask for 24 samples (calibration 8 + probe 6 + eval 10)", "has only 15"],
                 id="data-fewer-samples-than-splits"),
    pytest.param(lambda f, a: vit_sections(f, data={"kind": "npz", "path": "images.npz"}), ["scores"],
                 ["data path not found:", "images.npz"], id="data-npz-missing"),
]


def _with_texts(folder, sections: dict) -> dict:
    """``sections`` with the texts.csv they name written (input paths are checked first: only the model is wrong)."""
    pd.DataFrame({"text": [f"a short text number {k}" for k in range(24)], "label": [k % 2 for k in range(24)]}) \
        .to_csv(folder / "texts.csv", index=False)
    return sections


@pytest.mark.parametrize("make,argv,needles", ROWS)
def test_bad_input_one_line_error(tmp_path, capsys, assets, make, argv, needles):
    cfg = write_config(tmp_path / "study.toml", make(tmp_path, assets))
    extra = ["--out", tmp_path / "out"] if argv[0] == "scores" else []
    rc, _, err = run_main(capsys, argv[0], cfg, *argv[1:], *extra, "--quiet")
    assert_one_line_error(rc, err, *needles)
    assert_nothing_written(tmp_path)


def test_label_column_not_needed_for_scores(tmp_path, capsys, assets):
    """Labels are needed only for accuracy: `rba scores` reads a CSV without the label column."""
    cfg = write_config(tmp_path / "study.toml", text_sections(tmp_path, data={"path": str(assets / "no_label_column.csv")}))
    rc, _, err = run_main(capsys, "scores", cfg, "--out", tmp_path / "out", "--max-span", "2", "--quiet")
    assert rc == 0, err
    assert len(pd.read_csv(tmp_path / "out" / "scores.csv")) == 4 + 3


def test_config_is_data_not_code(tmp_path, capsys):
    """Config values are plain TOML data: a string that looks like code is only ever a (bad) name."""
    marker = tmp_path / "MARKER"
    code = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    cfg = write_config(tmp_path / "study.toml", vit_sections(tmp_path, model={"name": code}))
    rc, _, err = run_main(capsys, "scores", cfg, "--out", tmp_path / "out", "--quiet")
    assert_one_line_error(rc, err, "unknown timm model")
    assert not marker.exists()


# ---------------------------------------------------------------------- the same, through the real binary
class _WritesMarker:
    """Unpickling this object creates a file: what an unsafe loader would do with a hostile checkpoint."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _cli_unknown_section(f: Path) -> list:
    return ["scores", write_config(f / "study.toml", vit_sections(f, serach={"trials": 3})), "--out", f / "out"]


def _cli_cnn_span(f: Path) -> list:
    sections = vit_sections(f, model={"kind": "efficientnet-lite", "name": "efficientnet-lite0"}, data={"image_size": 64})
    return ["evaluate", write_config(f / "study.toml", sections), "--spans", "2-4", "--quiet"]


def _cli_data_missing(f: Path) -> list:
    sections = vit_sections(f, data={"kind": "npz", "path": "gone/images.npz"})
    return ["scores", write_config(f / "study.toml", sections), "--out", f / "out", "--quiet"]


def _cli_inf(f: Path) -> list:
    return ["scores", write_config(f / "study.toml", toy_sections(f, "overflow_mlp")), "--out", f / "out", "--quiet"]


def _cli_rank_deficient(f: Path) -> list:
    cfg = write_config(f / "study.toml", toy_sections(f, "rank_deficient_mlp"))
    return ["evaluate", cfg, "--spans", "0-2,2-3", "--json", "--quiet"]


def _cli_pickled_weights(f: Path) -> list:
    torch.save({"state_dict": {"blocks.0.norm1.weight": torch.ones(3), "x": _WritesMarker(f / "MARKER")}}, f / "evil.pt")
    sections = vit_sections(f, model={"pretrained": True, "weights": "evil.pt"})
    return ["scores", write_config(f / "study.toml", sections), "--out", f / "out", "--quiet"]


CLI_CASES = {
    "unknown-section": _cli_unknown_section,
    "cnn-span": _cli_cnn_span,
    "data-missing": _cli_data_missing,
    "inf": _cli_inf,
    "rank-deficient": _cli_rank_deficient,
    "pickled-weights": _cli_pickled_weights,
}


@pytest.fixture(scope="module")
def cli(tmp_path_factory) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """Every CLI_CASES command in a process of its own making: one after another in one fresh interpreter
    (``rba.cli.main``, what the binary runs; most of a run is interpreter start-up). Their paths are absolute or
    relative to their config."""
    root = tmp_path_factory.mktemp("cli")
    jobs = {}
    for name, build in CLI_CASES.items():
        folder = root / name
        folder.mkdir()
        jobs[name] = (folder, build(folder))
    results = rba_many(*(argv for _, argv in jobs.values()), cwd=root, env=cli_env())
    return {name: (folder, r) for (name, (folder, _)), r in zip(jobs.items(), results)}


def test_cli_unknown_section_lists_valid_ones(cli):
    folder, r = cli["unknown-section"]
    assert_one_line_error(r.returncode, r.stderr, "unknown section 'serach'. Did you mean 'search'?",
                          "Valid: capture, data, evaluate, fit, model, output, report, run, search")
    assert_nothing_written(folder)


def test_cli_span_that_changes_shape_names_both_shapes(cli):
    """EfficientNet-Lite0's block 3 halves the resolution and widens the channels: span 2-4 crosses it."""
    folder, r = cli["cnn-span"]
    assert_one_line_error(r.returncode, r.stderr, "span 2-4 is invalid: boundary 2 has shape (24, 16, 16) and "
                          "boundary 4 has shape (40, 8, 8); a span must join boundaries of the same layout")
    assert_nothing_written(folder)


def test_cli_data_path_missing(cli):
    folder, r = cli["data-missing"]
    assert_one_line_error(r.returncode, r.stderr, f"data path not found: {folder / 'gone' / 'images.npz'}",
                          "set data.path")
    assert_nothing_written(folder)


def test_cli_inf_in_activations_names_the_boundary(cli):
    """Block 2 of the toy model overflows: boundary 3 (its output) is the first to hold Inf."""
    folder, r = cli["inf"]
    assert_one_line_error(r.returncode, r.stderr, "NaN/Inf values at boundary 3 on the calibration split",
                          "capture.dtype")
    assert_nothing_written(folder)


def test_cli_rank_deficient_span_warns_in_one_line(cli):
    """Half the channels at boundary 0 are exactly zero: fitting span 0-2 needs the ridge, and says so once."""
    _, r = cli["rank-deficient"]
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "warnings.warn" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert re.fullmatch(r"rba: warning: span 0-2: statistics at boundary 0 are rank-deficient \(eigenvalue ratio (?:below )?"
                        r"\S+\); the ridge \(λ = \S+\) takes over", lines[0]), lines[0]
    result = json.loads(r.stdout)
    assert result["spans"] == "0-2,2-3" and 0 < result["fidelity"] <= 1


# ---------------------------------------------------------------------- safe loading
def test_pickled_object_weights_are_refused(cli, tmp_path):
    folder, r = cli["pickled-weights"]
    marker = folder / "MARKER"
    # through the real binary: torch.load(weights_only=True) stops at the first non-tensor global
    assert_one_line_error(r.returncode, r.stderr, f"refusing to load {folder / 'evil.pt'}: it is not a plain tensor "
                          "checkpoint", "(it references io.open, which is not a tensor type)",
                          "never unpickles arbitrary objects", ".safetensors")
    assert "weights_only=False" not in r.stderr  # torch's own advice would run the file's code
    assert not marker.exists()
    assert_nothing_written(folder)
    # the loader directly, on a plain pickle stream (not torch's zip format)
    from rba.adapters._weights import load_weights
    from rba.errors import ModelError

    raw = tmp_path / "evil_raw.pkl"
    raw.write_bytes(pickle.dumps(_WritesMarker(marker)))
    with pytest.raises(ModelError, match="refusing to load .*evil_raw.pkl: it is not a plain tensor checkpoint"):
        load_weights(raw)
    assert not marker.exists()
    # the file really is hostile: an unsafe load creates the marker
    pickle.loads(raw.read_bytes())
    assert marker.exists()


def test_plain_state_dict_checkpoint_still_loads(tmp_path):
    import timm

    from rba.adapters._weights import load_weights

    model = timm.create_model("test_vit", pretrained=False)
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, tmp_path / "ok.pt")
    state = load_weights(tmp_path / "ok.pt")
    assert set(state) == set(model.state_dict())


def test_truncated_checkpoints_are_reported(tmp_path, capsys):
    import timm
    from safetensors.torch import save_file

    model = timm.create_model("test_vit", pretrained=False)
    torch.save(model.state_dict(), tmp_path / "full.pt")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "full.safetensors"))
    for name in ("full.pt", "full.safetensors"):
        data = (tmp_path / name).read_bytes()
        (tmp_path / f"cut{Path(name).suffix}").write_bytes(data[: len(data) // 3])
    for cut, needle in (("cut.pt", "cannot load"), ("cut.safetensors", "cannot read")):
        cfg = write_config(tmp_path / "study.toml", vit_sections(tmp_path, model={"pretrained": True, "weights": cut}))
        rc, _, err = run_main(capsys, "scores", cfg, "--out", tmp_path / "out", "--quiet")
        assert_one_line_error(rc, err, f"{needle} {tmp_path / cut}")
        assert_nothing_written(tmp_path)


# ---------------------------------------------------------------------- finished work is never lost
KILL_CALIBRATION = 320


def _scores_sections(folder: Path) -> dict:
    # big enough that capture takes a second or more: the kill lands in the middle of it
    return vit_sections(folder, data={"calibration": KILL_CALIBRATION, "probe": 0, "eval": 0},
                        search={"max_span": 3})


def _stats_files(cache: Path) -> list[Path]:
    return sorted(cache.glob("stats-*")) if cache.exists() else []


def _tmp_files(*folders: Path) -> list[Path]:
    return sorted(p for f in folders if f.exists() for p in f.iterdir() if p.name.endswith(".tmp"))


def test_kill_during_capture_then_rerun_gives_the_same_statistics(tmp_path, capsys):
    from rba._io import _HOST
    from rba.statistics import Statistics

    # an uninterrupted run (in-process)
    a = tmp_path / "a"
    a.mkdir()
    cfg_a = write_config(a / "study.toml", _scores_sections(a))
    rc, _, err = run_main(capsys, "scores", cfg_a, "--out", a / "out", "--quiet")
    assert rc == 0, err
    [cache_a, side_a] = _stats_files(a / "cache")
    assert side_a.name == cache_a.name + ".json"
    reference = pd.read_csv(a / "out" / "scores.csv")

    # the same study in another folder, killed (SIGKILL: no clean-up runs) in the middle of capture
    b = tmp_path / "b"
    b.mkdir()
    cfg_b = write_config(b / "study.toml", _scores_sections(b))
    with open(b / "stdout.txt", "w") as out, open(b / "stderr.txt", "w") as err_f:
        # each capture batch held for 0.2 s: the kill lands mid-capture on any machine
        proc = subprocess.Popen([*slowed_cli("rba.statistics", "StatisticsCollector.update", 0.2), "scores", str(cfg_b),
                                 "--out", str(b / "out")], cwd=b, stdout=out, stderr=err_f, env=cli_env())
        try:
            done = 0

            def capturing() -> bool:  # capture has begun once its size line or its progress bar shows
                nonlocal done
                counts = re.findall(rf"(\d+)/{KILL_CALIBRATION}", (b / "stderr.txt").read_text())
                done = max(map(int, counts), default=0)
                return done > 0 or "statistics:" in (b / "stderr.txt").read_text()

            wait_for(capturing, timeout_s=240, proc=proc, interval_s=0.02)
            assert proc.poll() is None, "the run ended before it could be killed mid-capture:\n" + (b / "stderr.txt").read_text()
            assert done < KILL_CALIBRATION
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert "statistics:" in (b / "stderr.txt").read_text()  # it was capturing
    assert _stats_files(b / "cache") == [], "a killed capture left statistics behind"
    assert not (b / "out" / "scores.csv").exists()

    # what a kill during the cache write itself would leave: a temporary file (from a process that no longer
    # runs), and the data file renamed into place without its checksum file
    (b / "cache").mkdir(exist_ok=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = b / "cache" / f".{cache_a.name}.{_HOST}.{dead.pid}-k1ll3d.tmp"
    stale.write_bytes(cache_a.read_bytes()[:1000])
    (b / "cache" / cache_a.name).write_bytes(cache_a.read_bytes()[:-100])

    # the rerun ignores and removes the leftovers, rebuilds the statistics, and matches the uninterrupted run
    rc, _, err = run_main(capsys, "scores", cfg_b, "--out", b / "out", "--quiet")
    assert rc == 0, err
    warnings_ = [ln for ln in err.splitlines() if "statistics cache" in ln]
    assert len(warnings_) == 1 and "is incomplete" in warnings_[0] and "rebuilding it" in warnings_[0], err
    assert not stale.exists()
    assert _tmp_files(b / "cache", b / "out") == []
    pd.testing.assert_frame_equal(pd.read_csv(b / "out" / "scores.csv"), reference, rtol=1e-5)
    sa, sb = Statistics.load(cache_a), Statistics.load(b / "cache" / cache_a.name)
    assert (sa.n, sa.dims, sa.pairs, sa.key) == (sb.n, sb.dims, sb.pairs, sb.key)
    for k in range(len(sa.gram)):
        torch.testing.assert_close(sa.gram[k], sb.gram[k], rtol=1e-6, atol=1e-6)
    for p in sa.pairs:
        torch.testing.assert_close(sa.cross[p], sb.cross[p], rtol=1e-6, atol=1e-6)


def test_truncated_cache_is_reported_and_rebuilt(tmp_path, capsys):
    """Run `rba scores`, truncate the statistics cache, rerun: one stderr line, the same scores.csv."""
    from rba.statistics import Statistics

    cfg = write_config(tmp_path / "study.toml", vit_sections(tmp_path))
    rc, _, err = run_main(capsys, "scores", cfg, "--out", tmp_path / "out", "--quiet")
    assert rc == 0, err
    first = (tmp_path / "out" / "scores.csv").read_bytes()
    [cache, _] = _stats_files(tmp_path / "cache")
    data = cache.read_bytes()
    cache.write_bytes(data[: len(data) // 2])
    rc, _, err = run_main(capsys, "scores", cfg, "--out", tmp_path / "out", "--quiet")
    assert rc == 0, err
    lines = [ln for ln in err.splitlines() if "warning" in ln or "statistics cache" in ln]
    assert lines == [f"rba: warning: statistics cache {cache} fails its checksum (truncated or corrupted); rebuilding it"], err
    assert "Traceback" not in err
    assert (tmp_path / "out" / "scores.csv").read_bytes() == first
    assert Statistics.load(cache).n > 0  # the rebuilt cache verifies


@pytest.mark.parametrize("damage,needle", [
    ("drop-sidecar", "is incomplete"),
    ("flip-byte", "fails its checksum"),
    ("bad-sidecar-json", "is unreadable"),
    ("sidecar-missing-field", "is inconsistent with its"),
])
def test_damaged_statistics_cache_is_refused(tmp_path, damage, needle):
    from rba.errors import CacheError
    from rba.statistics import Statistics

    stats = Statistics(dims=[2, 2], pairs=[(0, 1)], n=4, gram=[torch.eye(3, dtype=torch.float64) for _ in range(2)],
                       cross={(0, 1): torch.ones(3, 2, dtype=torch.float64)}, cos_sum={(0, 1): 1.0}, key="k")
    path = tmp_path / "stats-k.safetensors"
    stats.save(path)
    assert Statistics.load(path).n == 4 and _tmp_files(tmp_path) == []
    side = path.with_suffix(".safetensors.json")
    if damage == "drop-sidecar":
        side.unlink()
    elif damage == "flip-byte":
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF
        path.write_bytes(bytes(data))
    elif damage == "bad-sidecar-json":
        side.write_text(side.read_text()[:20])
    else:
        info = json.loads(side.read_text())
        del info["dims"]
        side.write_text(json.dumps(info))
    with pytest.raises(CacheError, match=needle):
        Statistics.load(path)


def test_atomic_write_leaves_old_file_on_failure_and_cleans_dead_writers(tmp_path):
    from rba._io import _HOST, atomic_path, atomic_write_text

    target = tmp_path / "scores.csv"
    atomic_write_text(target, "old\n")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half a fi")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old\n" and _tmp_files(tmp_path) == []
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".scores.csv.{_HOST}.{dead.pid}-abc123.tmp"
    live = tmp_path / f".scores.csv.{_HOST}.{os.getppid()}-abc123.tmp"  # a writer that still runs
    other_host = tmp_path / f".scores.csv.elsewhere.{dead.pid}-abc123.tmp"
    other_file = tmp_path / f".scores.csv.json.{_HOST}.{dead.pid}-abc123.tmp"
    for p in (stale, live, other_host, other_file):
        p.write_text("partial")
    atomic_write_text(target, "new\n")
    assert target.read_text() == "new\n"
    assert not stale.exists() and live.exists() and other_host.exists() and other_file.exists()


def test_export_detects_a_model_file_from_another_export(tmp_path, capsys):
    from rba.export import load_export

    cfg = write_config(tmp_path / "study.toml", vit_sections(tmp_path))
    for spans, folder in (("1-3", "e1"), ("2-4", "e2")):
        rc, _, err = run_main(capsys, "export", cfg, "--spans", spans, "--out", tmp_path / folder, "--quiet")
        assert rc == 0, err
    assert _tmp_files(tmp_path / "e1", tmp_path / "e2") == []
    load_export(tmp_path / "e1")
    # a kill between the two writes of a re-export: new model.safetensors, old recipe.json
    (tmp_path / "e1" / "model.safetensors").write_bytes((tmp_path / "e2" / "model.safetensors").read_bytes())
    rc, _, err = run_main(capsys, "evaluate", cfg, "--export", tmp_path / "e1", "--quiet")
    assert_one_line_error(rc, err, "model.safetensors does not match the checksum in", "rerun `rba export`")


def test_unreachable_ray_address_is_refused_at_once(tmp_path, capsys):
    """--backend ray --address to a closed loopback port: one line, exit 2, within seconds, no output files."""
    cfg = write_config(tmp_path / "ray.toml", vit_sections(tmp_path))
    t0 = time.time()
    code = main(["search", str(cfg), "--backend", "ray", "--address", "127.0.0.1:1", "--trials", "2",
                 "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "Ray address 127.0.0.1:1 is unreachable" in err and "ray start --head" in err
    assert "Traceback" not in err and time.time() - t0 < 60
    assert not (tmp_path / "out" / "trials.csv").exists()
