"""Dependency drift, checked in a throwaway virtual environment.

    python tools/deps.py latest   # newest release of every dependency; run the tests; print the versions
    python tools/deps.py freeze   # the same, and if the tests pass, write constraints.txt (the tested set)

Both build a fresh virtual environment (pip's cache makes a repeat quick), install ``-e ".[test]"`` with
``--upgrade`` (so the newest releases, whatever this machine already has), run the test suite with that
environment's Python, and print the installed versions of rba's direct dependencies. ``--tests real`` runs
only the tests on real assets and real backends (MiniLM, EfficientNet-Lite0, ViT, the Optuna and Ray
searches, ONNX export) instead of the whole suite. ``freeze`` writes ``constraints.txt`` only after the whole
suite passed (``pip freeze --exclude-editable``, with a header saying when and on which Python).
"""

from __future__ import annotations

import argparse
import datetime
import platform
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: the real-asset and real-backend tests: what a new release of a dependency breaks first
REAL_TESTS = ["tests/test_real_minilm.py", "tests/adapters_tests", "tests/test_onnx.py", "tests/test_export.py",
              "tests/search_tests/test_ray_backend.py", "tests/search_tests/test_study.py", "tests/test_studies.py"]


def _run(cmd: list[str], **kwargs) -> int:
    print("+", " ".join(cmd), flush=True)
    return subprocess.call(cmd, cwd=ROOT, **kwargs)


def _direct_dependencies() -> list[str]:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = list(meta["dependencies"]) + [d for extra in meta.get("optional-dependencies", {}).values() for d in extra]
    out = []
    for spec in names:
        name = spec.split(";")[0]
        for sep in "<>=!~[ ":
            name = name.split(sep)[0]
        out.append(name.strip())
    return sorted(set(out), key=str.lower)


def _versions(python: Path) -> dict[str, str]:
    code = ("import json, sys\nfrom importlib.metadata import version, PackageNotFoundError\nout = {}\n"
            "for n in sys.argv[1:]:\n    try:\n        out[n] = version(n)\n    except PackageNotFoundError:\n"
            "        out[n] = 'missing'\nprint(json.dumps(out))")
    import json

    text = subprocess.check_output([str(python), "-c", code, *_direct_dependencies()], cwd=ROOT, text=True)
    return json.loads(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["latest", "freeze"])
    parser.add_argument("--tests", choices=["all", "real"], default="all",
                        help="the whole suite (default) or only the real-asset / real-backend tests")
    parser.add_argument("--venv", type=Path, help="build the environment here and keep it (default: a temporary one)")
    args = parser.parse_args(argv)
    if args.action == "freeze" and args.tests != "all":
        parser.error("freeze writes constraints.txt only after the whole suite passed: drop --tests")

    venv = args.venv or Path(tempfile.mkdtemp(prefix="rba-deps-"))
    python = venv / "bin" / "python"
    try:
        if _run([sys.executable, "-m", "venv", "--clear", str(venv)]):
            return 1
        if _run([str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"]):
            return 1
        if _run([str(python), "-m", "pip", "install", "-q", "--upgrade", "-e", ".[test]"]):
            return 1
        versions = _versions(python)
        print("installed:", ", ".join(f"{k} {v}" for k, v in versions.items()), flush=True)
        selection = REAL_TESTS if args.tests == "real" else []
        status = _run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", *selection])
        print(f"tests ({args.tests}) with the newest releases: {'passed' if status == 0 else f'FAILED (exit {status})'}")
        if status != 0 or args.action == "latest":
            return status
        frozen = subprocess.check_output([str(python), "-m", "pip", "freeze", "--exclude-editable"], cwd=ROOT, text=True)
        header = (f"# The versions the whole test suite passed with ({datetime.date.today().isoformat()}, Python "
                  f"{platform.python_version()}, {platform.system()} {platform.machine()}).\n"
                  "# Install with: pip install -e \".[test]\" -c constraints.txt\n"
                  "# Regenerate with: python tools/deps.py freeze\n")
        (ROOT / "constraints.txt").write_text(header + frozen)
        print(f"wrote {ROOT / 'constraints.txt'}")
        return 0
    finally:
        if args.venv is None:
            shutil.rmtree(venv, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
