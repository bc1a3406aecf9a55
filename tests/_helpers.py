"""Helpers the CLI-level tests share: tiny configs written as TOML, ``rba`` run in-process or as the real
binary, and the checks of the one-line error contract (exit code 2, one ``rba: error:`` line, nothing written)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from rba.cli import main
from rba.config import dict_to_toml

ROOT = Path(__file__).resolve().parent.parent
TOY_DIR = ROOT / "tests" / "adapters_tests"  # holds _toy.py (factories for kind = "module")


def write_config(path: Path, sections: dict) -> Path:
    path.write_text(dict_to_toml(sections))
    return path


def vit_sections(folder: Path, **over) -> dict:
    """A tiny random timm ViT (6 blocks) on synthetic images, cache inside ``folder``."""
    sections = {
        "model": {"kind": "timm", "name": "test_vit", "pretrained": False},
        "data": {"kind": "synthetic", "image_size": 32, "calibration": 24, "probe": 24, "eval": 24,
                 "options": {"modality": "image", "classes": 3}},
        "capture": {"cache_dir": str(folder / "cache"), "batch_size": 16},
        "evaluate": {"latency_repeats": 1},
    }
    return _merge(sections, over)


def text_sections(folder: Path, **over) -> dict:
    """A tiny random BERT on a text CSV (the path is relative to the config's folder)."""
    sections = {
        "model": {"kind": "huggingface", "name": "tiny-bert", "pretrained": False},
        "data": {"kind": "text-csv", "path": "texts.csv", "calibration": 8, "probe": 6, "eval": 6},
        "capture": {"cache_dir": str(folder / "cache")},
        "evaluate": {"latency_repeats": 1},
    }
    return _merge(sections, over)


def toy_sections(folder: Path, factory: str, *, toy: str = "_toy", **over) -> dict:
    """``kind = "module"``: a factory of tests/adapters_tests/_toy.py (token MLP, 4 blocks)."""
    sections = {
        "model": {"kind": "module", "name": f"{toy}:{factory}", "blocks": "layers", "pretrained": False, "trust_code": True,
                  "options": {"depth": 4}},
        "data": {"kind": "synthetic", "image_size": 16, "calibration": 16, "probe": 16, "eval": 16,
                 "options": {"modality": "image", "classes": 3}},
        "capture": {"cache_dir": str(folder / "cache")},
        "evaluate": {"latency_repeats": 1},
    }
    return _merge(sections, over)


def _merge(sections: dict, over: dict) -> dict:
    out = {k: dict(v) for k, v in sections.items()}
    for key, value in over.items():
        out.setdefault(key, {}).update(value)
    return out


def run_main(capsys, *argv) -> tuple[int, str, str]:
    """``rba`` in-process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def run_cli(*argv, cwd, timeout=300) -> subprocess.CompletedProcess:
    """The real binary in a subprocess."""
    return subprocess.run([sys.executable, "-m", "rba.cli", *map(str, argv)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=cli_env())


def cli_env() -> dict:
    """The environment for ``rba`` in a subprocess: this checkout and the toy factories importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), str(TOY_DIR), env.get("PYTHONPATH")) if p)
    env["OMP_NUM_THREADS"] = str(torch.get_num_threads())  # same thread count as this process: same float sums
    return env


def assert_one_line_error(rc: int, err: str, *needles: str) -> None:
    assert rc == 2, err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("rba: error: "), err
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"


def assert_nothing_written(folder: Path) -> None:
    """No output folder (or an empty one) and no statistics in the cache: nothing a later run could trust."""
    out = folder / "out"
    assert not out.exists() or not any(out.rglob("*")), sorted(out.rglob("*"))
    cache = folder / "cache"
    assert not cache.exists() or not list(cache.glob("stats-*")), sorted(cache.iterdir())
