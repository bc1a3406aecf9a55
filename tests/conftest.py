import atexit
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import pytest
import torch

from rba.models import models_dir  # loads neither transformers nor huggingface_hub: the variables below still count

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# One intra-op thread, here and in the processes tests start (torch reads OMP_NUM_THREADS at start-up): on a
# 2-core machine with other work running, the tiny models' matmuls on 2 threads wait on each other (an
# in-process `rba evaluate` of the tiny ViT measured 7-22 s on 2 threads, 0.6 s on 1, at load 11)
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)
# Tests never write into the user's statistics cache (~/.cache/rba): the default cache folder of every test, and
# of every process a test starts, is in this session's temporary folder
# (fetched model files such as `rba data smollm2`'s stay where the user keeps them: real-model tests read them there)
USER_MODELS_DIR = models_dir()
_CACHE_HOME = tempfile.mkdtemp(prefix="rba-tests-cache-")
os.environ["XDG_CACHE_HOME"] = _CACHE_HOME
atexit.register(shutil.rmtree, _CACHE_HOME, ignore_errors=True)


#: tiny random-weight models of each family: a ViT (tokens, no padding), a ResNet (pixels, stages of
#: different resolution), a post-LN BERT (tokens with padding)
TINY_MODELS = {
    "vit": ({"kind": "timm", "name": "test_vit", "pretrained": False}, "image"),
    "cnn": ({"kind": "timm", "name": "test_resnet", "pretrained": False, "options": {"layers": [2, 2, 2, 2]}}, "image"),
    "bert": ({"kind": "huggingface", "name": "tiny-bert", "pretrained": False}, "text"),
}

#: tiny random decoder LMs (kind causal-lm), one per family; kept apart from TINY_MODELS because their pooled
#: rows are tokens, not samples (the tests parametrised over TINY_MODELS assume one pooled row per sample)
TINY_LMS = {
    family: ({"kind": "causal-lm", "name": f"tiny-{family}", "pretrained": False}, "text")
    for family in ("llama", "qwen2", "qwen3", "gemma3", "gpt2")
}


def tiny_config(tmp_path, family="vit", /, **sections):
    """A tiny random model of ``family`` (a key of TINY_MODELS or TINY_LMS) on synthetic data; sections override
    entries (``model={"options": {"seed": 1}}`` too)."""
    from rba.config import Config

    model_section, modality = (TINY_MODELS | TINY_LMS)[family]
    raw = {
        "model": dict(model_section),
        "data": {"kind": "synthetic", "calibration": 40, "probe": 40, "eval": 40,
                 "options": {"modality": modality, "classes": 4}},
        "capture": {"cache_dir": str(tmp_path / "cache"), "batch_size": 16},
        "evaluate": {"latency_repeats": 1, "batch_size": 32},
    }
    if modality == "image":
        raw["data"]["image_size"] = 32
    for key, value in sections.items():
        raw.setdefault(key, {}).update(value)
    return Config.from_dict(raw, name="tiny", base_dir=str(tmp_path))


def tiny_vit_config(tmp_path, **sections):
    return tiny_config(tmp_path, "vit", **sections)


def tiny_samples(model, n=24, seed=0):
    """Raw inputs for a tiny model: uint8 images, or texts of very different lengths (padding)."""
    rng = np.random.default_rng(seed)
    if (TINY_MODELS | TINY_LMS)[model][1] == "image":
        return rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    words = "the cat sat on a mat while dogs ran far away from every loud noise".split()
    texts = [" ".join(rng.choice(words, size=int(rng.integers(2, 30)))) for _ in range(n)]
    # in the order rba batches texts (by length), so materialised batches round exactly as captured ones
    return sorted(texts, key=len)


def materialise(adapter, samples, batch_size=64, dtype=torch.float64):
    """Every boundary's vectors as numpy arrays, by running the adapter's blocks directly.

    Use the capture's batch size: the float32 model rounds differently per batch size (~1e-7)."""
    parts = []
    with torch.inference_mode():
        for start in range(0, len(samples), batch_size):
            h, ctx = adapter.embed(adapter.collate(samples[start : start + batch_size]))
            out = [adapter.vectors(h, ctx).to(dtype).numpy()]
            for k in range(adapter.num_blocks):
                h = adapter.run_block(k, h, ctx)
                out.append(adapter.vectors(h, ctx).to(dtype).numpy())
            parts.append(out)
    return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]


def ridge_lstsq(x, y, ridge, bias=True):
    """numpy lstsq on the ridge-augmented system [X̃; √λ I] W = [Y; 0], λ = ridge · mean diag(X̃ᵀX̃)."""
    xt = np.hstack([x, np.ones((x.shape[0], 1))]) if bias else x
    lam = ridge * np.trace(xt.T @ xt) / xt.shape[1]
    xa = np.vstack([xt, np.sqrt(lam) * np.eye(xt.shape[1])])
    ya = np.vstack([y, np.zeros((xt.shape[1], y.shape[1]))])
    w, *_ = np.linalg.lstsq(xa, ya, rcond=None)
    return w, xt


@pytest.fixture
def images():
    return np.random.default_rng(0).integers(0, 256, size=(24, 3, 32, 32), dtype=np.uint8)


def staged_forward(adapter, x, maps=None):
    """Hand-written staged forward of one collated batch: embed → blocks → pool, with span (i, j) in ``maps``
    applied where block i would run: a module (``m(h)``) or a vector map (W, b) (torch or numpy, applied in
    float64 through ``adapter.apply_map``)."""
    by_start = {i: (j, m) for (i, j), m in (maps or {}).items()}
    h, ctx = adapter.embed(x)
    k = 0
    while k < adapter.num_blocks:
        if k not in by_start:
            h, k = adapter.run_block(k, h, ctx), k + 1
            continue
        j, m = by_start[k]
        if callable(m):
            h = m(h)
        else:
            w, b = (None if t is None else torch.as_tensor(t).double() for t in m)
            h = adapter.apply_map(h.double(), w, b).to(h.dtype)
        k = j
    return adapter.pool(h, ctx)


def slowed_cli(module: str, qualname: str, seconds: float) -> list[str]:
    """argv that runs ``rba.cli`` with ``module.qualname`` (a method) delayed by ``seconds`` per call.

    Tests that SIGKILL a run mid-way need the work they interrupt to last longer than one poll, whatever the
    machine's speed: tiny models finish a trial or a capture batch in milliseconds on a fast one.
    """
    owner, method = qualname.rsplit(".", 1)
    code = (f"import sys, time; from {module} import {owner} as owner; call = owner.{method}; "
            f"owner.{method} = lambda *a, **k: (time.sleep({seconds}), call(*a, **k))[1]; "
            "from rba.cli import main; sys.exit(main(sys.argv[1:]))")
    return [sys.executable, "-c", code]


def wait_for(condition, *, timeout_s: float, proc=None, interval_s: float = 0.05) -> bool:
    """Poll ``condition()`` every ``interval_s`` until it holds (True), ``timeout_s`` passes or the subprocess
    ``proc`` (if given) ends (False): the wait before a test kills a run mid-way, or before it reads a result."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and (proc is None or proc.poll() is None):
        if condition():
            return True
        time.sleep(interval_s)
    return False


@pytest.fixture(autouse=True)
def _restore_environment():
    """In-process ``rba.cli.main(... "--quiet")`` sets library variables in ``os.environ`` (right for a process,
    wrong for the next test's subprocesses, which would inherit them): every test starts from the same env."""
    saved = dict(os.environ)
    yield
    if os.environ != saved:
        os.environ.clear()
        os.environ.update(saved)


_MANY = """
import contextlib, io, json, sys
from rba.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
    results.append([code, out.getvalue(), err.getvalue()])
sys.stdout.write(json.dumps(results))
"""


def rba_many(*argvs, cwd, env, timeout=300):
    """Several ``rba`` commands, one after another, in one fresh interpreter (``rba.cli.main``, what the binary
    runs): one start-up for commands that need a process of their own, not one each. A CompletedProcess each."""
    import json
    import subprocess

    argvs = [[str(a) for a in argv] for argv in argvs]
    proc = subprocess.run([sys.executable, "-c", _MANY, json.dumps(argvs)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [subprocess.CompletedProcess(argv, code, out, err) for argv, (code, out, err) in
            zip(argvs, json.loads(proc.stdout))]


@pytest.fixture
def translator(monkeypatch):
    """``test-translator`` (tests/_fit_helpers.py) registered for this test only."""
    from _fit_helpers import VectorTranslatorFit

    import rba.fit
    from rba._registry import FITS
    from rba.fit import get_fit, register_fit

    monkeypatch.setattr(FITS, "_targets", dict(FITS._targets))
    monkeypatch.setattr(rba.fit, "_PLUGINS", dict(rba.fit._PLUGINS))
    register_fit("test-translator")(VectorTranslatorFit)
    return get_fit("test-translator")
