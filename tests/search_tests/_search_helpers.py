"""Shared pieces of the search tests: a tiny random ViT study config, a TOML writer, independent forwards."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from rba.config import dict_to_toml, load_config

DEPTH = 4  # 4 blocks, every span valid: F(9) = 34 configurations


def study_dict(cache: Path, out: Path, *, depth: int = DEPTH, **sections: dict[str, Any]) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "model": {"kind": "timm", "name": "test_vit", "pretrained": False, "options": {"depth": depth}},
        "data": {"kind": "synthetic", "image_size": 32, "calibration": 48, "probe": 48, "eval": 48,
                 "options": {"modality": "image", "classes": 4}},
        "capture": {"cache_dir": str(cache), "batch_size": 16},
        "evaluate": {"latency_repeats": 1, "batch_size": 48},
        "search": {"trials": 6, "objectives": ["fidelity", "flops"]},
        "output": {"dir": str(out)},
    }
    for key, value in sections.items():
        raw.setdefault(key, {}).update(value)
    return raw


def write_config(path: Path, raw: dict[str, Any]) -> Path:
    path.write_text(dict_to_toml(raw))
    return path


def make_config(tmp: Path, cache: Path, name: str = "study", **sections):
    out = tmp / f"{name}-out"
    return load_config(write_config(tmp / f"{name}.toml", study_dict(cache, out, **sections)))


def materialise(adapter, samples, batch_size: int = 16) -> list[np.ndarray]:
    """Every boundary's vectors (float64 numpy), running blocks one by one from the input."""
    parts = []
    with torch.inference_mode():
        for start in range(0, len(samples), batch_size):
            h, ctx = adapter.embed(adapter.collate(samples[start : start + batch_size]))
            out = [adapter.vectors(h, ctx).double().numpy()]
            for k in range(adapter.num_blocks):
                h = adapter.run_block(k, h, ctx)
                out.append(adapter.vectors(h, ctx).double().numpy())
            parts.append(out)
    return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]


def lstsq_fit(x: np.ndarray, y: np.ndarray, ridge: float) -> tuple[np.ndarray, np.ndarray]:
    """Affine fit by numpy lstsq on the ridge-augmented system [X̃; √λ I] W = [Y; 0]."""
    xt = np.hstack([x, np.ones((x.shape[0], 1))])
    lam = ridge * np.trace(xt.T @ xt) / xt.shape[1]
    xa = np.vstack([xt, np.sqrt(lam) * np.eye(xt.shape[1])])
    ya = np.vstack([y, np.zeros((xt.shape[1], y.shape[1]))])
    w, *_ = np.linalg.lstsq(xa, ya, rcond=None)
    return w[:-1], w[-1]


def staged_forward(adapter, samples, spans, weights: dict, batch_size: int = 48) -> torch.Tensor:
    """Pooled output with every block run from the input and span (i, j) applied as x·W + b (numpy
    weights, float64), written independently of rba's evaluator and replacement modules."""
    from conftest import staged_forward as forward_batch

    maps = {span: weights[span] for span in spans}
    with torch.inference_mode():
        return torch.cat([forward_batch(adapter, adapter.collate(samples[s : s + batch_size]), maps).double()
                          for s in range(0, len(samples), batch_size)])


def faulty_objective(fault: str) -> type:
    """An :class:`~search.objective.Objective` subclass whose evaluation of configuration ``fault`` (e.g.
    ``"1-3"``) always raises. Defined in a function, so pickling ships the class by value: the Ray backend runs
    the driver's objective class in its workers, and the fault travels with it."""
    from rba.spans import format_spans
    from search.objective import Objective

    class FaultyObjective(Objective):
        def __call__(self, spans):
            if format_spans(spans) == fault:
                raise RuntimeError(f"injected fault for configuration {fault!r}")
            return super().__call__(spans)

    return FaultyObjective


def dominates(a, b, directions) -> bool:
    """a dominates b: no worse in every objective, strictly better in one."""
    better = worse = False
    for x, y, d in zip(a, b, directions):
        if d == "maximize":
            x, y = -x, -y
        if x < y:
            better = True
        elif x > y:
            worse = True
    return better and not worse


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """One intra-op thread for these tiny models: with 2 threads, a loaded 2-core machine makes every small
    matmul wait on the other thread (measured 50× slower). Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
