"""An export never decides to run code, and its checksum covers recipe and weights.

A ``kind = "module"`` export names a factory that rebuilding it would import and call. Only the caller may
trust it (its own config, or ``load_export(..., trust_code=True)``), and only for the factory it names. The
recipe's checksum is recomputed here by an attacker's own code (sha256 of the canonical JSON), so the refusal
cannot rest on it.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from _helpers import TOY_DIR, assert_one_line_error, cli_env, run_main, toy_sections, vit_sections, write_config

from rba.errors import RBAError
from rba.export import load_export

# A module whose import alone, and whose factory, leave a marker file: it must never be imported.
MARKER_MODULE = '''
import os, pathlib
pathlib.Path(os.environ["RBA_TEST_MARKER"]).write_text("imported")

def make(**kwargs):
    pathlib.Path(os.environ["RBA_TEST_MARKER"]).write_text("called")
    raise SystemExit("the factory ran")
'''


def _tamper(folder: Path, **model) -> None:
    """Rewrite recipe.json's model section and recompute its checksum the way anyone could."""
    path = folder / "recipe.json"
    recipe = json.loads(path.read_text())
    recipe["model"] = model
    body = {k: v for k, v in recipe.items() if k != "recipe_sha256"}
    recipe["recipe_sha256"] = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    path.write_text(json.dumps(recipe))


@pytest.fixture
def hostile_export(tmp_path, capsys, monkeypatch):
    """A real export of a tiny ViT whose recipe was edited to name the marker module's factory."""
    (tmp_path / "evil_factory.py").write_text(MARKER_MODULE)
    marker = tmp_path / "MARKER"
    monkeypatch.setenv("RBA_TEST_MARKER", str(marker))
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = write_config(tmp_path / "vit.toml", vit_sections(tmp_path))
    rc, _, err = run_main(capsys, "export", cfg, "--spans", "1-3", "--out", tmp_path / "exp", "--quiet")
    assert rc == 0, err
    _tamper(tmp_path / "exp", kind="module", name="evil_factory:make", blocks="layers", pretrained=False,
            trust_code=True, options={})
    return tmp_path, cfg, marker


def test_tampered_recipe_runs_no_code_through_the_real_binary(hostile_export):
    folder, cfg, marker = hostile_export
    env = cli_env()
    env["PYTHONPATH"] = f"{folder}:{env['PYTHONPATH']}"
    proc = subprocess.run([sys.executable, "-m", "rba.cli", "evaluate", str(cfg), "--export", str(folder / "exp"),
                           "--quiet"], cwd=folder, capture_output=True, text=True, timeout=300, env=env)
    assert_one_line_error(proc.returncode, proc.stderr, "evil_factory:make", "never decides to run code")
    assert not marker.exists()


def test_tampered_recipe_is_refused_by_the_api(hostile_export):
    folder, _, marker = hostile_export
    with pytest.raises(RBAError, match="evil_factory:make"):
        load_export(folder / "exp")
    # trust given for one factory does not extend to another
    with pytest.raises(RBAError, match="trusts only 'other:make'"):
        load_export(folder / "exp", trust_code=True, factory="other:make")
    assert not marker.exists()


def test_a_trusting_config_for_another_factory_is_refused(hostile_export, capsys, monkeypatch):
    folder, _, marker = hostile_export
    monkeypatch.syspath_prepend(str(TOY_DIR))
    cfg = write_config(folder / "toy.toml", toy_sections(folder, "token_mlp"))
    rc, _, err = run_main(capsys, "evaluate", cfg, "--export", folder / "exp", "--quiet")
    assert_one_line_error(rc, err, "evil_factory:make", "trusts only '_toy:token_mlp'")
    assert not marker.exists()


def test_a_module_export_reloads_for_the_config_that_trusts_it(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(TOY_DIR))
    cfg = write_config(tmp_path / "toy.toml", toy_sections(tmp_path, "token_mlp"))
    rc, _, err = run_main(capsys, "export", cfg, "--spans", "1-3", "--out", tmp_path / "exp", "--quiet")
    assert rc == 0, err
    recipe = json.loads((tmp_path / "exp" / "recipe.json").read_text())
    assert "trust_code" not in recipe["model"]
    rc, out, err = run_main(capsys, "evaluate", cfg, "--export", tmp_path / "exp", "--json", "--quiet")
    assert rc == 0, err
    assert json.loads(out)["spans"] == "1-3"
    with pytest.raises(RBAError, match="_toy:token_mlp"):
        load_export(tmp_path / "exp")  # no trust given
    reloaded = load_export(tmp_path / "exp", trust_code=True, factory="_toy:token_mlp")
    assert reloaded.identity["spans"] == "1-3" and type(reloaded.blocks[1]).__name__ == "SpanMap"


@pytest.mark.parametrize("damage,needle", [
    ("drop-checksum", "has no checksum"),
    ("edit-recipe", "does not match its own checksum"),
    ("swap-weights", "does not match the checksum"),
])
def test_recipe_checksum_covers_recipe_and_weights(tmp_path, capsys, damage, needle):
    cfg = write_config(tmp_path / "vit.toml", vit_sections(tmp_path))
    for spans, out in (("1-3", "e1"), ("2-4", "e2")):
        rc, _, err = run_main(capsys, "export", cfg, "--spans", spans, "--out", tmp_path / out, "--quiet")
        assert rc == 0, err
    path = tmp_path / "e1" / "recipe.json"
    recipe = json.loads(path.read_text())
    if damage == "drop-checksum":
        del recipe["recipe_sha256"]
    elif damage == "edit-recipe":
        recipe["spans"] = "2-4"
    else:  # weights of another export, with model_sha256 rewritten to match them (recipe checksum now stale)
        (tmp_path / "e1" / "model.safetensors").write_bytes((tmp_path / "e2" / "model.safetensors").read_bytes())
        recipe["model_sha256"] = json.loads((tmp_path / "e2" / "recipe.json").read_text())["model_sha256"]
        needle = "does not match its own checksum"
    path.write_text(json.dumps(recipe))
    rc, _, err = run_main(capsys, "evaluate", cfg, "--export", tmp_path / "e1", "--quiet")
    assert_one_line_error(rc, err, needle, "rerun `rba export`")
