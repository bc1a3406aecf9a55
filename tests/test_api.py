"""The public API (``import rba``): a lean import, a short ``__all__``, and the same results as the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from test_cli import TOML as CLI_TOML

import rba

REPO = Path(__file__).resolve().parent.parent

# the CLI tests' tiny ViT study, with a short max_span so the search space stays small
TOML = CLI_TOML + "[search]\nmax_span = 3\n"


def cli(capsys, *args, cwd) -> str:
    """``rba ARGS --quiet`` in-process (the binary's code path) from ``cwd``: its stdout."""
    from rba.cli import main

    here = os.getcwd()
    capsys.readouterr()
    os.chdir(cwd)
    try:
        code = main([*map(str, args), "--quiet"])
    finally:
        os.chdir(here)
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("api")
    path = tmp / "tiny.toml"
    path.write_text(TOML.format(cache=tmp / "cache"))
    return tmp, path


def test_import_is_lean_and_all_names_resolve():
    code = ("import sys, rba; heavy = {'torch', 'optuna', 'pandas', 'numpy', 'timm', 'transformers', 'ray', 'search'}; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy)); print(rba.__all__)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    loaded, names = r.stdout.splitlines()
    assert loaded == "[]"
    for name in eval(names):
        assert getattr(rba, name) is not None
    assert set(dir(rba)) >= set(rba.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        rba.nope  # noqa: B018  (the attribute read is what raises)


def test_scores_and_evaluate_equal_the_cli(study, capsys):
    tmp, path = study
    cli(capsys, "scores", path, "--out", tmp / "cli", cwd=tmp)
    session = rba.Session(rba.load_config(path), progress=False)
    api = session.scores()
    pd.testing.assert_frame_equal(pd.read_csv(tmp / "cli" / "scores.csv"), api, rtol=1e-5)  # CSV keeps 6 digits

    from_cli = json.loads(cli(capsys, "evaluate", path, "--spans", "1-3,4-5", "--json", cwd=tmp))
    from_api = session.evaluate("1-3,4-5")
    assert from_cli.keys() == from_api.keys()
    for key, value in from_api.items():
        if key == "latency_ms":  # timed separately in each run
            continue
        if isinstance(value, str):  # e.g. the configuration's text
            assert from_cli[key] == value, key
        elif value != value:  # NaN (a decoder LM's objectives, on this encoder): JSON null
            assert from_cli[key] is None, key
        else:
            assert from_cli[key] == pytest.approx(value, rel=1e-6), key


def test_export_equals_the_cli(study, capsys):
    tmp, path = study
    cli(capsys, "export", path, "--spans", "2-4", "--out", tmp / "cli_export", cwd=tmp)
    session = rba.Session(rba.load_config(path), progress=False)
    session.export("2-4", tmp / "api_export")
    a, b = rba.load_export(tmp / "cli_export"), rba.load_export(tmp / "api_export")
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=0)
    x = a.collate(session.splits.eval.samples[:4])
    with torch.inference_mode():
        torch.testing.assert_close(a.forward(x), b.forward(x), rtol=0, atol=0)
        torch.testing.assert_close(rba.head_logits(a, x), rba.head_logits(b, x), rtol=0, atol=0)


def test_search_equals_the_cli(study, capsys):
    tmp, path = study
    cli(capsys, "search", path, "--method", "random", "--trials", "5", "--objectives", "fidelity,flops", "--out",
        tmp / "cli_search", cwd=tmp)
    cfg = rba.load_config(path)
    result = rba.search(cfg, out=tmp / "api_search", method="random", trials=5, objectives=["fidelity", "flops"])
    assert cfg.search.trials != 5 and cfg.output.dir is None  # the caller's config is left as it was
    columns = ["number", "spans", "fidelity", "flops", "flops_frac", "params", "feasible", "state"]
    from_cli = pd.read_csv(tmp / "cli_search" / "trials.csv")[columns]
    from_api = pd.read_csv(tmp / "api_search" / "trials.csv")[columns]
    assert len(from_api) == 5
    pd.testing.assert_frame_equal(from_cli, from_api)
    pd.testing.assert_frame_equal(result.trials[columns].reset_index(drop=True), from_api, check_dtype=False,
                                  rtol=1e-5)


# ---------------------------------------------------------------------- misuse: RBAError with one line
def _one_line_rba_error(call, *needles: str) -> str:
    from rba.errors import RBAError

    with pytest.raises(RBAError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, message
    return message


@pytest.fixture(scope="module")
def tiny_session(study):
    tmp, path = study
    from rba.config import load_config

    return rba.Session(load_config(path), progress=False, measure_latency=False)


@pytest.mark.parametrize("spans,needle", [
    ([(1, 3), (2, 4)], "spans 1-3 and 2-4 overlap"),  # refused in the string form "1-3,2-4" too
    ([(3, 1)], "span 3-1: END must be greater than START"),
    ([(1, "3")], "span (1, '3') is not a (start, end) pair"),
    ([(1, 2, 3)], "is not a (start, end) pair"),
    ((1, 3), "span 1 is not a (start, end) pair"),
])
def test_span_lists_are_checked_as_span_text_is(tiny_session, spans, needle):
    _one_line_rba_error(lambda: tiny_session.evaluate(spans), needle)


def test_session_takes_a_config_or_its_path_and_refuses_anything_else(study, tmp_path):
    """``Session("x.toml")`` reads the file as ``rba.search`` does (an AttributeError before); a missing file, or a
    value of another type, is one RBAError line."""
    from rba.config import load_config

    _, path = study
    for given in (str(path), path):
        assert rba.Session(given, progress=False).cfg.to_dict() == load_config(path).to_dict()
    _one_line_rba_error(lambda: rba.Session(tmp_path / "absent.toml"), "absent.toml")
    _one_line_rba_error(lambda: rba.Session(5), "cfg must be a Config (rba.load_config(path)) or a config file's "
                                                "path, got int 5")


@pytest.mark.parametrize("name", ["", "a,b", 5, "two words"])
def test_register_fit_refuses_names_no_config_can_use(name):
    from rba.fit import Fit, list_fits, register_fit

    before = list_fits()
    _one_line_rba_error(lambda: register_fit(name)(type("NoFit", (Fit,), {})), f"got {name!r}")
    assert list_fits() == before


def test_recipe_with_unknown_model_keys_is_refused(tiny_session, tmp_path):
    """A recipe whose [model] section holds a key the config schema does not know (checksum recomputed, as
    whoever edits it can): refused naming the key, rather than ignored while the model is rebuilt."""
    import hashlib

    from rba.export import load_export

    out = tiny_session.export("2-3", tmp_path / "exp")
    recipe = json.loads((out / "recipe.json").read_text())
    recipe["model"]["depth_typo"] = 3
    body = {k: v for k, v in recipe.items() if k != "recipe_sha256"}
    recipe["recipe_sha256"] = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    (out / "recipe.json").write_text(json.dumps(recipe))
    _one_line_rba_error(lambda: load_export(out), "unknown keys: model.depth_typo", "rerun `rba export`")


def test_sweep_out_of_the_wrong_type_and_empty_kinds_are_refused(study, tmp_path, capsys):
    from rba.cli import main
    from search.sweep import read_sweep

    tmp, path = study
    sweep = tmp_path / "sweep.toml"
    sweep.write_text(f'base = "{path}"\nout = 5\n[sweep]\n"search.seed" = [0, 1]\n')
    _one_line_rba_error(lambda: read_sweep(sweep, None, lambda c: c), "out = 5 is not a folder")
    nested = tmp_path / "nested.toml"
    nested.write_text(f'base = "{sweep}"\n[sweep]\n"search.seed" = [0, 1]\n')
    _one_line_rba_error(lambda: read_sweep(nested, None, lambda c: c), f"base {sweep} is itself a sweep file")
    capsys.readouterr()
    assert main(["compare-fits", str(path), "--kinds", ",", "--out", str(tmp_path / "cmp"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rba: error: compare-fits got no fit kinds") and err.count("\n") == 1, err
    assert not (tmp_path / "cmp").exists()
