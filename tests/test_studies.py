"""The shipped study configs: every one parses; the paper, transfer and trained-here configs fail with one clear
line naming the missing data or weights file and how to make it; the trained-here ViT is the model the training
script builds (one channel, 28 px, 17 tokens)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _helpers import assert_one_line_error, run_main

STUDIES = Path(__file__).resolve().parents[1] / "studies"
PAPER = sorted(p.stem for p in STUDIES.glob("paper_*.toml"))
TRANSFER = sorted(p.stem for p in STUDIES.glob("transfer_*.toml"))


def test_every_study_parses():
    from rba.config import list_studies, load_study

    names = list_studies()
    assert set(names) == {p.stem for p in STUDIES.glob("*.toml")}
    assert len(PAPER) == 12 and {"transfer_digits_to_fashion", "transfer_fashion_to_digits",
                                 "transfer_plots_to_reviews", "transfer_reviews_to_plots"} <= set(TRANSFER)
    for name in names:
        cfg = load_study(name)
        assert cfg.name == name
    for name in TRANSFER:
        assert load_study(name).data.calibration_path


def _files(name: str) -> tuple[str, str | None]:
    from rba.config import load_study

    cfg = load_study(name)
    return cfg.data.path, cfg.data.calibration_path


@pytest.mark.parametrize("name", PAPER + TRANSFER + ["vit_fashion"])
def test_missing_data_names_the_file_and_the_command(tmp_path, monkeypatch, name):
    """In a folder without data/: the DataError (one ``rba: error:`` line in the CLI) names the file and the
    ``rba data`` command that makes it."""
    from rba.config import load_study
    from rba.data import load_dataset
    from rba.errors import DataError

    monkeypatch.chdir(tmp_path)
    path, calibration = _files(name)
    missing = calibration or path  # a transfer's calibration file is checked first
    with pytest.raises(DataError) as info:
        load_dataset(load_study(name))
    message = str(info.value)
    assert "\n" not in message and f"data path not found: {tmp_path / missing}" in message
    if not missing.endswith("imagenet"):
        assert f"make it with `rba data {Path(missing).stem}" in message


@pytest.mark.parametrize("name", PAPER + ["vit_fashion", "transfer_digits_to_fashion"])
def test_missing_weights_one_line_error(tmp_path, monkeypatch, capsys, name):
    """In a folder without weights/: one line naming the weights file and the config's way to get it, before the
    model is built or any data is read."""
    from rba.config import load_study

    monkeypatch.chdir(tmp_path)
    rc, _, err = run_main(capsys, "scores", name, "--out", tmp_path / "out", "--quiet")
    m = load_study(name).model
    assert_one_line_error(rc, err, f"weights file not found: {tmp_path / m.weights}", f"make it with: {m.weights_hint}")
    hint = "studies/train_vit_fashion.py" if "fashion" in name else "download model.safetensors of the timm checkpoint"
    assert hint in m.weights_hint
    assert not (tmp_path / "out").exists()


def test_trained_here_vit_is_the_configs_model():
    """vit_fashion's [model] builds a 1-channel, 28-px timm ViT of depth 8 with 16 patches + CLS, and rba feeds it
    grayscale images normalised as timm's config says ((x/255 − 0.5)/0.5), computed here by hand."""
    import torch

    from rba.adapters import create_adapter
    from rba.config import load_study

    cfg = load_study("vit_fashion")
    cfg.model.pretrained = False
    adapter = create_adapter(cfg)
    assert adapter.num_blocks == 8 and adapter.model.patch_embed.proj.in_channels == 1
    images = np.random.default_rng(0).integers(0, 256, (2, 1, 28, 28), dtype=np.uint8)
    x = adapter.collate(images)
    torch.testing.assert_close(x, (torch.tensor(images).float() / 255 - 0.5) / 0.5)
    h, _ = adapter.embed(x)
    assert tuple(h.shape) == (2, 17, 64) and len(adapter.boundary_shapes()) == 9
    assert adapter.logits(adapter.forward(x)).shape == (2, 10)


@pytest.mark.parametrize("name", ["minilm_reviews", "efficientnet_lite0_fashion"])
def test_fidelity_studies_set_their_export_drop(name):
    """Both studies search on fidelity first: their export rule reads fidelity with a drop of 0.05 (cosine), set
    and explained in the config, not the accuracy-sized default of 0.01."""
    from rba.config import list_studies, load_study
    from search.report import rule_columns

    cfg = load_study(name)
    assert rule_columns(cfg.search.objectives) == ("fidelity", "flops_frac")
    assert cfg.run.max_drop == pytest.approx(0.05)
    text = list_studies()[name].read_text()
    comment = text.split("[run]")[1].split("max_drop")[0]
    assert "fidelity" in comment and "0.01" in comment


def test_transfer_plot_reads_each_table_and_draws_every_pair(tmp_path):
    """studies/transfer_plot.py parses transfer_table.py's markdown (own-data column first, then the other data
    set's; an unlabelled pair has no accuracy columns) and writes one figure."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("transfer_plot", STUDIES / "transfer_plot.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (tmp_path / "a_to_b.md").write_text(
        "# title\n\ntext\n\n| spans | FLOPs | accuracy, b | accuracy, a | fidelity, b | fidelity, a |\n"
        "|---|---|---|---|---|---|\n| none | 1.000 | 0.9 | 0.9 | 1.0 | 1.0 |\n| 1-2 | 0.500 | 0.8 | 0.7 | 0.95 | 0.85 |\n"
        "\nWith SEs (a second table, not plotted):\n\n| spans | quality | own | transfer |\n|---|---|---|---|\n"
        "| 1-2 | accuracy | 0.8 ± 0.01 | 0.7 ± 0.01 |\n")
    (tmp_path / "c_to_d.md").write_text(
        "| spans | FLOPs | fidelity, d | fidelity, c |\n|---|---|---|---|\n| none | 1.000 | 1.0 | 1.0 |\n"
        "| 0-6 | 0.014 | 0.55 | 0.39 |\n")
    frame = module.read_table(tmp_path / "a_to_b.md")
    assert list(frame["spans"]) == ["none", "1-2"]
    assert frame["FLOPs"].tolist() == [1.0, 0.5] and frame["fidelity, a"].tolist() == [1.0, 0.85]
    assert module.columns(frame, "accuracy") == ("accuracy, b", "accuracy, a")
    assert module.columns(module.read_table(tmp_path / "c_to_d.md"), "accuracy") is None
    assert module.main(["--folder", str(tmp_path)]) == 0
    assert (tmp_path / "transfer.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert module.main(["--folder", str(empty)]) == 2
