"""A disk that fills up during ``rba export``, ``rba scores`` and ``rba data``: one line naming the file and the
space left (exit 2), and nothing half-written: the file keeps what it held before, no temporary file stays.

The full disk is simulated where each command's bytes go: the library call that writes them raises
``OSError(ENOSPC)`` (as the kernel's ``write`` does), or, for safetensors, its own exception with the OS error's
text (what its Rust writer raises)."""

from __future__ import annotations

import errno
import os

import pytest
from _helpers import assert_one_line_error, run_main, vit_sections, write_config


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _files(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} if folder.exists() else {}


def _assert_no_temporary_files(folder):
    assert not [p.name for p in folder.rglob("*.tmp")], sorted(folder.rglob("*"))


@pytest.fixture
def vit_config(tmp_path):
    return write_config(tmp_path / "vit.toml", vit_sections(tmp_path))


def test_disk_full_during_export_keeps_the_previous_export(tmp_path, capsys, monkeypatch, vit_config):

    out = tmp_path / "export"
    rc, _, err = run_main(capsys, "export", vit_config, "--spans", "1-2", "--out", out, "--quiet")
    assert rc == 0, err
    before = _files(out)

    class SafetensorError(Exception):  # safetensors' writer reports the OS error in its own exception's text
        pass

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "
                              "\"No space left on device\" })")

    monkeypatch.setattr("rba.export.save_model", full)  # the name rba.export writes with
    rc, _, err = run_main(capsys, "export", vit_config, "--spans", "2-4", "--out", out, "--quiet")
    assert_one_line_error(rc, err, "no space left", str(out / "model.safetensors"), "free there")
    assert _files(out) == before  # the export of 1-2, whole
    _assert_no_temporary_files(out)


def test_disk_full_during_onnx_export_is_not_called_unsupported(tmp_path, capsys, monkeypatch, vit_config):
    import torch

    monkeypatch.setattr(torch.onnx, "export", _no_space)
    out = tmp_path / "export"
    rc, _, err = run_main(capsys, "export", vit_config, "--spans", "1-2", "--out", out, "--format", "onnx", "--quiet")
    assert_one_line_error(rc, err, "no space left", str(out / "model.onnx"))
    assert "not supported" not in err
    assert not (out / "model.onnx").exists()
    _assert_no_temporary_files(out)


def test_disk_full_during_scores(tmp_path, capsys, monkeypatch, vit_config):
    import pandas as pd

    monkeypatch.setattr(pd.DataFrame, "to_csv", _no_space)
    out = tmp_path / "scores"
    rc, _, err = run_main(capsys, "scores", vit_config, "--out", out, "--quiet")
    assert_one_line_error(rc, err, "no space left", str(out / "scores.csv"))
    assert not (out / "scores.csv").exists()
    _assert_no_temporary_files(out)


def test_disk_full_during_data(tmp_path, capsys, monkeypatch):
    import bz2
    from pathlib import Path

    corpus = tmp_path / "rotten_tomatoes_corpus_full.csv.bz2"
    corpus.write_bytes(bz2.compress(b"category,text\nplot,A man walks home.\n"))
    dest = tmp_path / "plots.csv"
    dest.write_bytes(b"an older file")
    monkeypatch.setattr(Path, "write_bytes", _no_space)
    rc, _, err = run_main(capsys, "data", "plots", "--source", corpus, "--out", dest)
    assert_one_line_error(rc, err, "no space left", str(dest))
    assert dest.read_bytes() == b"an older file"
    _assert_no_temporary_files(tmp_path)
