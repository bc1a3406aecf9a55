"""Devices and the forward dtype (``[model] device``, ``[model] forward_dtype``), on the CPU.

Statistics of a bfloat16 forward are checked against float64 sums of the same model's materialised bfloat16
vectors; evaluation against a hand-written bfloat16 forward; the fit error against a float32 forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import materialise, staged_forward, tiny_config, tiny_samples
from torch import nn

from rba.adapters import create_adapter
from rba.capture import capture_statistics
from rba.cli import main as cli_main
from rba.errors import ConfigError
from rba.export import load_export
from rba.metrics import score_table
from rba.session import Session


class _SpectralBlock(nn.Module):
    """A residual block through the FFT, which the CPU cannot run in float16."""

    def __init__(self, dim: int):
        super().__init__()
        self.fc = nn.Linear(dim, dim)

    def forward(self, x):
        return x + self.fc(torch.fft.irfft(torch.fft.rfft(x, dim=-1), n=x.shape[-1], dim=-1))


class _SpectralNet(nn.Module):
    def __init__(self, dim: int = 8):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, stride=4)
        self.layers = nn.ModuleList(_SpectralBlock(dim) for _ in range(2))

    def forward(self, x):
        h = self.patch(x).flatten(2).transpose(1, 2)
        for layer in self.layers:
            h = layer(h)
        return h.mean(1)


def spectral_net() -> nn.Module:
    return _SpectralNet()


def test_cuda_without_gpu_is_one_error_through_the_api_too(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"^model.device = 'cuda' but torch sees no CUDA GPU") as exc:
        create_adapter(tiny_config(tmp_path, model={"device": "cuda"}))
    assert "\n" not in str(exc.value)
    adapter = create_adapter(tiny_config(tmp_path, model={"device": "auto"}))
    assert adapter.device.type == "cpu"


@pytest.mark.parametrize("family", ["vit", "bert"])
def test_bfloat16_forward_statistics_are_float64_sums_of_its_vectors(tmp_path, family):
    adapter = create_adapter(tiny_config(tmp_path, family, model={"forward_dtype": "bfloat16"}))
    assert adapter.dtype == torch.bfloat16 and all(p.dtype == torch.bfloat16 for p in adapter.model.parameters())
    samples = tiny_samples(family, 32)
    pairs = adapter.valid_spans(2)
    stats = capture_statistics(adapter, samples, pairs=pairs, batch_size=16, progress=False)
    xs = materialise(adapter, samples, batch_size=16)  # the bfloat16 model's vectors, as float64
    assert len(xs[0]) == stats.n
    for k, x in enumerate(xs):
        xt = np.hstack([x, np.ones((len(x), 1))])
        g = stats.gram[k]
        assert g.dtype == torch.float64
        want = xt.T @ xt
        assert np.abs(g.numpy() - want).max() <= 1e-5 * np.abs(want).max()
    for i, j in pairs:
        xt = np.hstack([xs[i], np.ones((len(xs[i]), 1))])
        want = xt.T @ xs[j]
        assert np.abs(stats.cross[(i, j)].numpy() - want).max() <= 1e-5 * np.abs(want).max()


def test_bfloat16_evaluation_runs_maps_in_the_model_and_matches_a_hand_written_forward(tmp_path):
    cfg = tiny_config(tmp_path, model={"forward_dtype": "bfloat16"}, search={"max_span": 2})
    session = Session(cfg, progress=False, measure_latency=False, need_labels=False)  # fidelity only
    spans = [(1, 3)]
    result = session.evaluate(spans)
    (m,) = session.maps(spans)
    assert all(p.dtype == torch.bfloat16 for p in m.parameters())
    samples = session.splits.eval.samples
    with torch.inference_mode():
        x = session.adapter.collate(samples)
        approx = staged_forward(session.adapter, x, {spans[0]: m}).double()
        plain = staged_forward(session.adapter, x).double()
    want = torch.nn.functional.cosine_similarity(approx, plain, dim=1).mean().item()
    # batched (32) against all at once: bfloat16 rounds a little differently per batch
    assert result["fidelity"] == pytest.approx(want, abs=2e-3)
    assert result["fidelity"] < 0.999  # the map changed something, so the comparison means something
    # exported and reloaded, the approximated model runs in bfloat16, maps included
    reloaded = load_export(session.export(spans, tmp_path / "exp"))
    assert reloaded.dtype == torch.bfloat16 and reloaded.identity["forward_dtype"] == "bfloat16"
    with torch.inference_mode():
        got = reloaded.forward(reloaded.collate(samples)).double()
    assert torch.nn.functional.cosine_similarity(got, approx, dim=1).min() > 0.999


def test_bfloat16_fit_error_against_a_float32_forward(tmp_path):
    """The fit residual from a bfloat16 forward's statistics stays close to the float32 forward's (measured on
    MiniLM in the README); its statistics are cached apart, and the float32 key is unchanged by the new key."""
    tables, keys = {}, {}
    for dtype in ("float32", "bfloat16"):
        session = Session(tiny_config(tmp_path, model={"forward_dtype": dtype}, search={"max_span": 3}),
                          progress=False, measure_latency=False)
        tables[dtype] = score_table(session.stats, 1e-6).set_index(["start", "end"])
        keys[dtype] = session.statistics_request()
    assert "forward_dtype" not in keys["float32"]["model"] and keys["bfloat16"]["model"]["forward_dtype"] == "bfloat16"
    f32, b16 = tables["float32"]["ls_residual"], tables["bfloat16"]["ls_residual"]
    rel = ((b16 - f32).abs() / f32).max()
    assert 0 < rel < 0.05, rel


def test_float16_an_operation_the_cpu_cannot_run_is_one_error_line(tmp_path, capsys):
    cfg = tmp_path / "spectral.toml"
    cfg.write_text(f'[model]\nkind = "module"\nname = "{__name__}:spectral_net"\npretrained = false\n'
                   'trust_code = true\nblocks = "layers"\nforward_dtype = "float16"\n'
                   '[data]\nkind = "synthetic"\nimage_size = 16\ncalibration = 4\noptions = { modality = "image" }\n'
                   f'[capture]\ncache_dir = "{tmp_path / "cache"}"\n')
    assert cli_main(["scores", str(cfg), "--quiet", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rba: error: model.forward_dtype = 'float16' is not supported by module model") and \
        "use forward_dtype = bfloat16 or float32" in err and err.count("\n") == 1
    assert not (tmp_path / "out" / "scores.csv").exists()
    # the same model in float32 runs
    assert cli_main(["scores", str(cfg), "--quiet", "--forward-dtype", "float32", "--out", str(tmp_path / "out")]) == 0
