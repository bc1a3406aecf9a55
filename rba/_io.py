"""Atomic file output: every file is written under a temporary name in its folder and renamed into place,
so an interrupted run never leaves a truncated file that a later run would trust."""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import tempfile
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Iterator

from rba.errors import DiskFullError

__all__ = ["disk_full", "long_name", "pid_alive", "atomic_path", "remove_stale_tmp", "atomic_write_text", "atomic_write_bytes", "atomic_write_json", "file_sha256", "package_versions", "source_commit"]


#: the errors of a write that found no room: the disk is full, or the user's quota is spent
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_NO_SPACE_TEXTS = (os.strerror(errno.ENOSPC), f"os error {errno.ENOSPC}", "StorageFull")


def disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc``, or an exception it was raised from (libraries wrap their I/O errors), is a write that
    found no space left on the device."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _NO_SPACE:
            return True
        # Rust-backed writers (safetensors) raise their own exception type holding the OS error's text
        if not isinstance(exc, OSError) and any(t in str(exc) for t in _NO_SPACE_TEXTS):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _disk_full_error(path: Path) -> DiskFullError:
    try:
        free = f"{_size(shutil.disk_usage(path.parent).free)} free there"
    except OSError:
        free = "its free space unknown"
    return DiskFullError(f"no space left on the device to write {path} ({free}): nothing was written in its "
                         "place; free some space (or give a folder on another disk) and run the command again")


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
    removed: list[Path] = []
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

    A write that finds the disk full (in the caller's block, or here) raises :class:`DiskFullError`, one line
    naming ``path`` and the space left; ``path`` keeps what it held before.

    A kill (SIGKILL, power loss) can leave the temporary file ``.<name>.<host>.<pid>-<random>.tmp`` behind: no
    reader ever opens it, and the next write of ``path`` removes it (:func:`remove_stale_tmp`).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_tmp(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_HOST}.{os.getpid()}-", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        if disk_full(exc):
            raise _disk_full_error(path) from None
        raise
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o644)  # mkstemp makes 0600; outputs are ordinary files
        os.replace(tmp_path, path)
    except Exception as exc:
        if disk_full(exc):  # one line naming the file, whichever library's write ran out of room
            raise _disk_full_error(path) from None
        raise
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


def long_name(path: str | Path) -> tuple[str, int, int] | None:
    """The first name in ``path`` longer than its file system allows for one name (NAME_MAX, 255 bytes on most),
    as (name, its length in bytes, the limit); None when every name fits."""
    path = Path(path)
    sizes = [(name, len(os.fsencode(name))) for name in path.parts]
    # the limit of the file system the path goes to: that of its nearest existing folder (a name longer than
    # 255 bytes makes exists() raise, so only shorter ones are asked)
    known = next((p for p in path.parents if all(len(os.fsencode(n)) <= 255 for n in p.parts) and p.is_dir()),
                 Path(path.anchor or "."))
    try:
        limit = os.pathconf(known, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    return next(((name, size, limit) for name, size in sizes if size > limit), None)


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
    out = {}
    for name in RECORDED_PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
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
