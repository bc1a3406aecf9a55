"""The `rba` command: outputs, exit codes, one-line errors, no partial files, where files go.

Most checks call ``rba.cli.main`` in-process (the binary's code path, from the working directory and with the
environment a shell would give, without the interpreter start-up); the real binary (``python -m rba.cli`` in a
subprocess) is run where the process itself matters: a successful run's exit code and files, a bad input's
exit 2 and one line, and a library's progress bar on a non-terminal stderr."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from rba.cli import main as cli_main
from rba.config import dict_to_toml

ROOT = Path(__file__).resolve().parent.parent

TOML = """
[model]
kind = "timm"
name = "test_vit"
pretrained = false
[data]
kind = "synthetic"
image_size = 32
calibration = 32
probe = 32
eval = 32
options = {{ modality = "image", classes = 3 }}
[capture]
cache_dir = "{cache}"
[evaluate]
latency_repeats = 1
"""


def rba(*args, cwd, env=None):
    """The real binary in a subprocess."""
    env = dict(os.environ, PYTHONPATH=str(ROOT)) | (env or {})
    return subprocess.run([sys.executable, "-m", "rba.cli", *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=env)


@pytest.fixture
def rba_in(monkeypatch, capsys):
    """``rba ARGS`` in-process from the working directory ``cwd``, with ``env`` added to the environment: a
    :class:`subprocess.CompletedProcess` like :func:`rba`'s (usage errors exit through ``SystemExit``)."""

    def run(*args, cwd, env=None):
        monkeypatch.chdir(cwd)
        for key, value in (env or {}).items():
            monkeypatch.setenv(key, value)
        capsys.readouterr()
        try:
            code = cli_main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    return run


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    cfg = tmp / "tiny.toml"
    cfg.write_text(TOML.format(cache=tmp / "cache"))
    return tmp, cfg


def test_scores_writes_csv_png_and_run_info(study):
    tmp, cfg = study
    r = rba("scores", cfg, "--out", tmp / "out", "--max-span", "3", "--quiet", cwd=tmp)
    assert r.returncode == 0, r.stderr
    table = pd.read_csv(tmp / "out" / "scores.csv")
    assert list(table.columns) == ["start", "end", "br", "cosine", "cka", "ls_residual", "svcca"]
    assert len(table) == 6 + 5 + 4 and (table.end - table.start).max() == 3
    assert (tmp / "out" / "scores.png").stat().st_size > 1000
    info = json.loads((tmp / "out" / "run.json").read_text())
    assert len(info["statistics_hash"]) == 16 and "torch" in info["versions"]
    assert "max_span = 3" in (tmp / "out" / "config.resolved.toml").read_text()


def test_evaluate_json_and_export_roundtrip(study, rba_in):
    tmp, cfg = study
    r = rba_in("evaluate", cfg, "--spans", "2-4", "--json", "--quiet", cwd=tmp)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["spans"] == "2-4" and 0 < res["flops_frac"] < 1 and 0 < res["fidelity"] <= 1
    r = rba_in("export", cfg, "--spans", "2-4", "--out", tmp / "exp", "--quiet", cwd=tmp)
    assert r.returncode == 0, r.stderr
    r = rba_in("evaluate", cfg, "--export", tmp / "exp", "--json", "--quiet", cwd=tmp)
    assert r.returncode == 0, r.stderr
    exp = json.loads(r.stdout)
    assert exp["fidelity"] == pytest.approx(res["fidelity"], abs=1e-5) and exp["accuracy"] == res["accuracy"]


@pytest.mark.parametrize("spans,needle", [
    ("2-", "malformed span '2-'"),
    ("", "empty span list"),
    ("1-3,2-5", "spans 1-3 and 2-5 overlap"),
    ("4-9", "span 4-9 is out of range: boundaries run from 0 to 6"),
    ("3-3", "END must be greater than START"),
])
def test_bad_spans_one_line_error_exit_2(study, rba_in, spans, needle):
    tmp, cfg = study
    r = rba_in("evaluate", cfg, "--spans", spans, "--quiet", cwd=tmp)
    assert r.returncode == 2
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0


def test_unknown_key_and_missing_config(study, rba_in):
    tmp, _ = study
    bad = tmp / "bad.toml"
    bad.write_text('[model]\nknd = "timm"\n')
    r = rba("scores", bad, "--out", tmp / "bad_out", cwd=tmp)  # the real binary: exit 2, one line
    assert r.returncode == 2 and "unknown key in [model] 'knd'" in r.stderr and "Valid:" in r.stderr
    assert r.stderr.startswith("rba: error: ") and r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
    assert not (tmp / "bad_out").exists()
    r = rba_in("scores", tmp / "missing.toml", cwd=tmp)
    assert r.returncode == 2 and "config file not found" in r.stderr


# ---------------------------------------------------------------------- help, version, usage errors
SEARCH_ONLY = ["--trials", "--backend", "--method", "--sampler", "--seed", "--objectives", "--budget-flops",
               "--storage", "--study-name", "--timeout", "--address", "--max-concurrent"]


@pytest.mark.parametrize("command", ["scores", "evaluate", "export"])
def test_help_shows_only_the_flags_a_command_uses(command, capsys):
    with pytest.raises(SystemExit) as exc:
        cli_main([command, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "--max-span" in text and "--device" in text and "--quiet" in text
    assert not [flag for flag in SEARCH_ONLY if flag in text]


@pytest.mark.parametrize("command", ["search", "run"])
def test_search_help_lists_the_search_flags(command, capsys):
    with pytest.raises(SystemExit):
        cli_main([command, "--help"])
    text = capsys.readouterr().out
    assert all(flag in text for flag in SEARCH_ONLY)


def test_version(capsys):
    import rba as package

    with pytest.raises(SystemExit) as exc:
        cli_main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"rba {package.__version__}"


@pytest.mark.parametrize("argv,needle", [
    (["search", "c.toml", "--trials", "abc"], "rba search: argument --trials: invalid int value: 'abc'"),
    (["scores", "c.toml", "--trials", "3"], "rba scores: unrecognized arguments: --trials 3"),
    (["evaluate", "c.toml"], "one of the arguments --spans --export is required"),
    (["ls", "models"], "argument what: invalid choice: 'models'"),
    ([], "the following arguments are required: command"),
])
def test_usage_errors_are_one_line_exit_2(argv, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        cli_main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert err.startswith("rba: error: ") and needle in err and err.strip().count("\n") == 0


def test_ls_lists_every_registry(rba_in):
    out = {what: rba_in("ls", what, cwd=ROOT).stdout.splitlines() for what in ("adapters", "fits", "metrics", "samplers")}
    assert out == {"adapters": ["causal-lm", "efficientnet-lite", "huggingface", "module", "sentence-transformers", "timm",
                                "torchvision"],
                   "fits": ["affine", "affine-mlp (trained)", "fold", "identity", "identity-mlp (trained)", "linear",
                            "mlp (trained)", "mlp-wide (trained)", "res-mlp (trained)"],
                   "metrics": ["br", "cosine", "cka", "ls_residual", "svcca"],
                   "samplers": ["tpe", "nsga2", "random", "gp"]}


# ---------------------------------------------------------------------- where files go
def npz_study(folder: Path, **extra) -> Path:
    """A tiny ViT config reading images from a path relative to its own folder, with no output or cache set."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data").mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    np.savez(folder / "data" / "imgs.npz", images=rng.integers(0, 255, size=(48, 3, 32, 32), dtype=np.uint8),
             labels=rng.integers(0, 3, size=48))
    sections = {
        "model": {"kind": "timm", "name": "test_vit", "pretrained": False},
        "data": {"kind": "npz", "path": "data/imgs.npz", "image_size": 32, "calibration": 16, "probe": 16, "eval": 16},
        "evaluate": {"latency_repeats": 1},
    } | extra
    path = folder / "study.toml"
    path.write_text(dict_to_toml(sections))
    return path


def test_outputs_land_where_the_readme_says_from_any_working_directory(tmp_path, rba_in):
    cfg = npz_study(tmp_path / "configs")
    env = {"XDG_CACHE_HOME": str(tmp_path / "xdg")}
    first, second = tmp_path / "work1", tmp_path / "work2" / "deeper"
    for cwd in (first, second):
        cwd.mkdir(parents=True)
        r = rba_in("scores", cfg, "--quiet", "--max-span", "2", cwd=cwd, env=env)
        assert r.returncode == 0, r.stderr
        assert (cwd / "runs" / "study" / "scores.csv").exists()  # unset output.dir: ./runs/<config name>
    # one statistics cache for both runs, in $XDG_CACHE_HOME/rba: the second run reused the first's capture
    assert len(list((tmp_path / "xdg" / "rba").glob("stats-*.safetensors"))) == 1
    assert not (tmp_path / "configs" / "runs").exists() and not (tmp_path / "runs").exists()
    # --out is relative to the shell's working directory
    r = rba_in("scores", cfg, "--quiet", "--max-span", "2", "--out", "mine", cwd=second, env=env)
    assert r.returncode == 0, r.stderr
    assert (second / "mine" / "scores.csv").exists()
    # search writes into the same default folder; export writes where --out says, relative to the shell
    r = rba_in("search", cfg, "--quiet", "--max-span", "2", "--trials", "2", "--objectives", "fidelity,flops", cwd=first,
            env=env)
    assert r.returncode == 0, r.stderr
    assert len(pd.read_csv(first / "runs" / "study" / "trials.csv")) >= 2
    r = rba_in("export", cfg, "--quiet", "--max-span", "2", "--spans", "1-2", "--out", "exp", cwd=second, env=env)
    assert r.returncode == 0, r.stderr
    assert (second / "exp" / "recipe.json").exists()
    assert len(list((tmp_path / "xdg" / "rba").glob("stats-*.safetensors"))) == 1
    # output.dir and capture.cache_dir in the file are relative to the file
    cfg = npz_study(tmp_path / "configs", output={"dir": "results"}, capture={"cache_dir": "cache"})
    r = rba_in("scores", cfg, "--quiet", "--max-span", "2", cwd=first, env=env)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "configs" / "results" / "scores.csv").exists()
    assert len(list((tmp_path / "configs" / "cache").glob("stats-*.safetensors"))) == 1


def test_data_writes_to_out_or_to_data_in_the_working_directory(tmp_path, rba_in):
    r = rba_in("data", "reviews", "--out", "sub/r.csv", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert pd.read_csv(tmp_path / "sub" / "r.csv").shape[0] > 1000
    r = rba_in("data", "reviews", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "data" / "reviews.csv").exists()


# ---------------------------------------------------------------------- environment, before any long work
def one_line_error(r, needle):
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("rba: error: ") and needle in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0


@pytest.mark.parametrize("out,needle", [
    ("afile", "is an existing file, not a folder"),
    ("afile/sub", "cannot be created:"),
    ("/proc/rba-out", "is inside /proc, a system folder"),
])
def test_bad_output_folder_is_refused_before_the_capture(tmp_path, rba_in, out, needle):
    cfg = npz_study(tmp_path)
    (tmp_path / "afile").write_text("x")
    env = {"XDG_CACHE_HOME": str(tmp_path / "xdg")}
    r = rba_in("scores", cfg, "--out", out, cwd=tmp_path, env=env)
    one_line_error(r, needle)
    assert not (tmp_path / "xdg").exists()  # refused before the capture wrote its cache


def test_cache_dir_that_is_a_file_is_refused(tmp_path, rba_in):
    cfg = npz_study(tmp_path, capture={"cache_dir": "cachefile"})
    (tmp_path / "cachefile").write_text("x")
    one_line_error(rba_in("scores", cfg, cwd=tmp_path), "statistics cache folder (capture.cache_dir)")


def test_data_out_that_is_a_folder_is_refused(tmp_path, rba_in):
    one_line_error(rba_in("data", "reviews", "--out", tmp_path, cwd=tmp_path), "is a folder: give the file to write")
    assert not list(tmp_path.iterdir())


def test_export_into_a_file_is_refused(tmp_path, rba_in):
    cfg = npz_study(tmp_path)
    (tmp_path / "afile").write_text("x")
    one_line_error(rba_in("export", cfg, "--spans", "1-2", "--out", "afile", cwd=tmp_path,
                       env={"XDG_CACHE_HOME": str(tmp_path / "xdg")}),
                   "export folder afile is an existing file")


def test_device_cuda_without_gpu_is_an_error_and_auto_falls_back(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)
    cfg = npz_study(tmp_path)
    assert cli_main(["scores", str(cfg), "--device", "cuda", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rba: error: model.device = 'cuda' but torch sees no CUDA GPU") and err.count("\n") == 1
    assert not (tmp_path / "runs").exists()
    assert cli_main(["scores", str(cfg), "--device", "auto", "--quiet", "--max-span", "1"]) == 0
    notes = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("rba: note:")]
    assert notes == ["rba: note: model.device = 'auto' and no CUDA GPU is visible: running on the CPU"]
    assert (tmp_path / "runs" / "study" / "scores.csv").exists()


@pytest.mark.parametrize("data,argv,needle", [
    ({"eval": 0}, ["evaluate", "--spans", "none"], "data.eval = 0, but `rba evaluate` scores configurations"),
    ({"probe": 0}, ["evaluate", "--spans", "none"], "data.probe = 0, but evaluate.head = 'probe' fits a classifier"),
    ({"eval": 0}, ["export", "--spans", "1-2", "--out", "exp"], "data.eval = 0, but `rba export`"),
    ({"probe": 0}, ["search", "--objectives", "accuracy,flops"], "data.probe = 0"),
    ({"eval": 0}, ["search", "--objectives", "fidelity,flops"], "data.eval = 0, but `rba search`"),
])
def test_splits_a_command_needs_must_not_be_empty(tmp_path, rba_in, data, argv, needle):
    cfg = npz_study(tmp_path)
    text = cfg.read_text().replace("probe = 16", f"probe = {data.get('probe', 16)}").replace(
        "eval = 16", f"eval = {data.get('eval', 16)}")
    cfg.write_text(text)
    one_line_error(rba_in(argv[0], cfg, *argv[1:], cwd=tmp_path, env={"XDG_CACHE_HOME": str(tmp_path / "xdg")}),
                   needle)
    assert not (tmp_path / "xdg").exists()


def test_image_size_the_model_cannot_take(tmp_path, rba_in):
    cfg = npz_study(tmp_path)
    cfg.write_text(cfg.read_text().replace("image_size = 32", "image_size = 8"))
    one_line_error(rba_in("scores", cfg, cwd=tmp_path, env={"XDG_CACHE_HOME": str(tmp_path / "xdg")}),
                   "data.image_size = 8 does not fit timm model 'test_vit' (Input height (8) should be divisible "
                   "by patch size (16).)")


@pytest.mark.slow
def test_no_transformers_loading_bar_in_logs_or_with_quiet(tmp_path):
    """stderr is not a terminal here: transformers' "Loading weights" bar would be redraws in a log."""
    sections = {
        "model": {"kind": "sentence-transformers", "name": "all-MiniLM-L6-v2"},
        "data": {"kind": "synthetic", "calibration": 8, "probe": 8, "eval": 8,
                 "options": {"modality": "text", "classes": 2}},
        "capture": {"cache_dir": "cache"},
    }
    (tmp_path / "m.toml").write_text(dict_to_toml(sections))
    loud = rba("scores", "m.toml", "--max-span", "1", cwd=tmp_path)
    quiet = rba("scores", "m.toml", "--max-span", "1", "--quiet", cwd=tmp_path)
    assert loud.returncode == quiet.returncode == 0, quiet.stderr
    assert "model: loading sentence-transformers all-MiniLM-L6-v2: done" in loud.stderr.splitlines()
    assert "Loading weights" not in loud.stderr and "%|" not in loud.stderr and "\r" not in loud.stderr
    assert "Loading weights" not in quiet.stderr and "%|" not in quiet.stderr
