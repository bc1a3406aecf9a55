"""Packaging: the wheel holds every package and the shipped studies; `rba ls studies` and a study run by name
work from an installed (not editable) copy, away from the source checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_is_listed_in_pyproject():
    """pyproject lists its packages (to map studies/ to rba.studies): a new subpackage must be added there."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for top in ("rba", "search")
             for p in (ROOT / top).rglob("__init__.py")}
    assert found <= listed and listed - found == {"rba.studies"}


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"  # a copy, so the build leaves no build/ or egg-info in the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("rba", "search", "studies"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp / "dist")], check=True, capture_output=True, timeout=300, cwd=tmp)
    wheel = next((tmp / "dist").glob("rba-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        z.extractall(tmp / "site")  # a wheel is a zip of the installed tree
    return wheel, tmp / "site"


def test_wheel_carries_the_studies(installed):
    wheel, site = installed
    names = zipfile.ZipFile(wheel).namelist()
    studies = sorted(p.name for p in (ROOT / "studies").iterdir() if p.suffix in (".toml", ".py"))  # configs, scripts
    assert sorted(Path(n).name for n in names if n.startswith("rba/studies/")) == studies
    assert "rba/config.py" in names and "search/samplers.py" in names


def test_installed_copy_lists_and_loads_studies_by_name(installed, tmp_path):
    _, site = installed
    env = dict(os.environ, PYTHONPATH=str(site))
    # one interpreter for both: the study loaded by name, then `rba ls studies` (rba.cli.main, what the binary runs)
    code = ("import rba, sys; from rba.config import load_study; cfg = load_study('minilm_reviews'); "
            "print(rba.__file__); print(cfg.resolve_path(cfg.data.path)); print(cfg.output_dir()); "
            "from rba.cli import main; sys.exit(main(['ls', 'studies']))")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    module, data, out, *listed = r.stdout.splitlines()
    assert module.startswith(str(site))
    assert Path(data) == tmp_path / "data" / "reviews.csv" and Path(out) == tmp_path / "runs" / "minilm_reviews"
    shipped = sorted(p.stem for p in (ROOT / "studies").glob("*.toml"))
    assert "quickstart" in shipped and "minilm_reviews" in shipped
    assert [line.split()[0] for line in listed] == shipped


def test_package_versions_record_the_source_commit():
    """Every run.json / recipe.json / onnx.json records the git commit rba runs from (checked against git)."""
    import subprocess
    from pathlib import Path

    import rba
    from rba._io import package_versions

    root = Path(rba.__file__).resolve().parent.parent
    if not (root / ".git").exists():
        pytest.skip("rba is not imported from a git checkout here")
    head = subprocess.check_output(["git", "-C", str(root), "rev-parse", "HEAD"], text=True).strip()
    versions = package_versions()
    assert versions["rba-commit"] in (head, head + "-dirty")
    assert {"torch", "transformers", "optuna", "ray", "timm", "python"} <= set(versions)
