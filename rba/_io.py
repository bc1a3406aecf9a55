"""Atomic file output: every file is written under a temporary name in its folder and renamed into place,
so an interrupted run never leaves a truncated file that a later run would trust."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import socket
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

__all__ = ["pid_alive", "atomic_path", "remove_stale_tmp", "atomic_write_text", "atomic_write_bytes", "atomic_write_json", "file_sha256", "package_versions", "source_commit"]


#: this host's name as it appears in temporary file names (letters, digits and _ only)
_HOST = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname()) or "host"


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this host (one we may not signal counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def remove_stale_tmp(path: str | Path) -> list[Path]:
    """Delete temporary files that :func:`atomic_path` left beside ``path`` when a run was killed.

    Only files named by this host whose writing process no longer runs are removed, so a concurrent writer's
    temporary file (another process, another host on a shared folder) is never touched. Returns what was removed.
    """
    path = Path(path)
    pattern = re.compile(re.escape(f".{path.name}.") + r"([A-Za-z0-9_]+)\.(\d+)-[A-Za-z0-9_]+\.tmp")
    removed = []
    try:
        candidates = list(path.parent.iterdir()) if path.parent.is_dir() else []
    except OSError:
        return removed
    for f in candidates:
        m = pattern.fullmatch(f.name)
        if m and m.group(1) == _HOST and int(m.group(2)) != os.getpid() and not pid_alive(int(m.group(2))):
            try:
                f.unlink()
                removed.append(f)
            except OSError:
                pass
    return removed


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it is removed.

    A kill (SIGKILL, power loss) can leave the temporary file ``.<name>.<host>.<pid>-<random>.tmp`` behind: no
    reader ever opens it, and the next write of ``path`` removes it (:func:`remove_stale_tmp`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_HOST}.{os.getpid()}-", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o644)  # mkstemp makes 0600; outputs are ordinary files
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, payload: Any) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


#: the distributions whose versions every run.json, recipe.json and onnx.json record
RECORDED_PACKAGES = ("rba", "torch", "timm", "transformers", "sentence-transformers", "optuna", "ray", "numpy", "pandas",
                     "safetensors", "scipy", "scikit-learn", "onnx", "onnxruntime")


def package_versions() -> dict[str, str]:
    """Versions of :data:`RECORDED_PACKAGES`, Python's, and ``rba-commit``: the git commit of the rba source that
    runs (``-dirty`` when its tracked files differ from it; absent when rba does not run from a git checkout)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in RECORDED_PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    import platform

    out["python"] = platform.python_version()
    commit = source_commit()
    if commit:
        out["rba-commit"] = commit
    return out


@functools.cache
def source_commit() -> str | None:
    """The git commit of the checkout rba is imported from, with ``-dirty`` when tracked files have changes."""
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    head = git("rev-parse", "HEAD")
    if not head:
        return None
    status = git("status", "--porcelain", "--untracked-files=no")
    return head + ("-dirty" if status else "")
