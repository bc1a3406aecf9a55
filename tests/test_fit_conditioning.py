"""The rank-deficiency check of the fits: the Cholesky certificate against eigenvalues known by construction,
and against the full eigen-analysis on statistics of real and collapsed boundaries."""

import warnings

import numpy as np
import pytest
import torch

from rba.fit import RANK_DEFICIENT_RATIO, RankDeficientWarning, conditioning_certificate, fit_span


def _with_spectrum(eigenvalues, seed=0):
    """Q diag(λ) Qᵀ for a random orthogonal Q: a symmetric matrix whose eigenvalues are known exactly."""
    n = len(eigenvalues)
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
    return torch.from_numpy((q * np.asarray(eigenvalues, dtype=np.float64)) @ q.T)


RATIOS = [1e-2, 1e-8, 2e-10, 1.2e-10, 8e-11, 5e-11, 1e-12, 0.0]


@pytest.mark.parametrize("shape", ["dominant", "flat"])
@pytest.mark.parametrize("n", [16, 128])
@pytest.mark.parametrize("ratio", RATIOS)
def test_certificate_agrees_with_the_spectrum(shape, n, ratio, expect=None):
    # data-like: one dominant direction (the mean) and a spread of others; flat: ‖a‖_F ≫ λ_max, so the cheap upper
    # bound on λ_max does not decide. The smallest eigenvalue is ratio·λ_max.
    rest = np.geomspace(1e4, 1e2, n - 2) if shape == "dominant" else np.full(n - 2, 1e6)
    ev = np.concatenate([[1e6], rest, [ratio * 1e6]])
    decided = conditioning_certificate(_with_spectrum(ev), expect=expect)  # the hint orders the tests only
    truth = ratio < RANK_DEFICIENT_RATIO
    # a factor 2 from the threshold is enough for the certificate to decide; closer it may hand over (None)
    if ratio >= 2 * RANK_DEFICIENT_RATIO or ratio <= RANK_DEFICIENT_RATIO / 2:
        assert decided is truth
    else:
        assert decided in (truth, None)


@pytest.mark.parametrize("expect", [True, False])
@pytest.mark.parametrize("shape", ["dominant", "flat"])
@pytest.mark.parametrize("ratio", RATIOS)
def test_certificate_hint_orders_the_tests_only(shape, ratio, expect):
    """Whichever test the hint runs first, the answer is the spectrum's (n = 16: the order is what is tested)."""
    test_certificate_agrees_with_the_spectrum(shape, 16, ratio, expect=expect)


def test_layernorm_like_gram_is_certified_without_eigen_analysis(monkeypatch):
    """Vectors γ⊙z + β with z of zero mean over features (a LayerNorm output): [x, 1] is exactly dependent."""
    rng = np.random.default_rng(1)
    z = rng.standard_normal((4000, 48))
    z -= z.mean(1, keepdims=True)
    z /= z.std(1, keepdims=True)
    x = z * rng.uniform(0.5, 2, 48) + rng.standard_normal(48)
    xt = np.hstack([x, np.ones((len(x), 1))])
    a = torch.from_numpy(xt.T @ xt)
    ev = np.linalg.eigvalsh(xt.T @ xt)
    assert ev[0] / ev[-1] < 1e-14  # the reference: rank-deficient up to rounding

    def refuse(*_):
        raise AssertionError("the certificate should not need an eigen-analysis here")

    monkeypatch.setattr(torch.linalg, "eigvalsh", refuse)
    assert conditioning_certificate(a) is True
    assert conditioning_certificate(a[:-1, :-1]) is False  # without the ones column: full rank


def test_fit_warning_follows_the_certificate(tmp_path, images):
    """On real statistics (a tiny ViT, one block collapsed to 3 dimensions): the fit warns exactly where the full
    eigen-analysis finds a ratio below the threshold."""
    from conftest import tiny_config
    from torch import nn

    from rba.adapters import create_adapter
    from rba.capture import capture_statistics

    adapter = create_adapter(tiny_config(tmp_path, "vit"))

    class Collapse(nn.Module):
        def forward(self, x):
            return torch.cat([x[..., :3], torch.zeros_like(x[..., 3:])], dim=-1)

    adapter.model.blocks[1] = Collapse()
    stats = capture_statistics(adapter, images, pairs=adapter.valid_spans(), dtype="float64", progress=False)
    for i, j in [(0, 1), (2, 3), (3, 4)]:
        g = stats.plain_gram(i)
        ev = torch.linalg.eigvalsh(g)
        expected = float(ev[0].clamp_min(0) / ev[-1]) < RANK_DEFICIENT_RATIO
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fit_span(stats, (i, j), "affine", 1e-6)
        warned = any(issubclass(w.category, RankDeficientWarning) for w in caught)
        assert warned is expected, (i, j)
    assert any(float(torch.linalg.eigvalsh(stats.plain_gram(i))[0]) <= 0 for i in (2, 3))  # the setup collapses


def test_neighbouring_decision_orders_the_tests(monkeypatch):
    """rank_deficient hands the nearest decided boundary's answer to the certificate: on Grams that are all deficient
    (LayerNorm-like, with the ones column) every boundary after the first takes one factorisation instead of two, and
    every decision still equals the eigen-analysis's."""
    from rba.fit import rank_deficient
    from rba.statistics import Statistics

    rng = np.random.default_rng(2)
    grams, truth = [], []
    for _ in range(4):
        z = rng.standard_normal((2000, 24))
        z -= z.mean(1, keepdims=True)
        x = z * rng.uniform(0.5, 2, 24) + rng.standard_normal(24)
        xt = np.hstack([x, np.ones((len(x), 1))])
        grams.append(torch.from_numpy(xt.T @ xt))
        ev = np.linalg.eigvalsh(xt.T @ xt)
        truth.append(bool(max(ev[0], 0) / ev[-1] < RANK_DEFICIENT_RATIO))
    assert all(truth)
    stats = Statistics([24] * 4, [(0, 1)], 2000, gram=grams, cross={(0, 1): torch.zeros(25, 24, dtype=torch.float64)})
    calls = []
    real = torch.linalg.cholesky_ex
    monkeypatch.setattr(torch.linalg, "cholesky_ex", lambda m, *a, **k: calls.append(1) or real(m, *a, **k))
    per_boundary = []
    for k in range(4):
        before = len(calls)
        assert rank_deficient(stats, k)[0] is truth[k]
        per_boundary.append(len(calls) - before)
    assert per_boundary == [2, 1, 1, 1]


@pytest.mark.parametrize("ratio", RATIOS)
@pytest.mark.parametrize("quality", ["near", "random"])
def test_candidate_vector_decides_only_what_it_can_prove(monkeypatch, ratio, quality):
    """A candidate near the weakest direction certifies a deficient matrix with no factorisation; a poor candidate,
    or one for a matrix above the threshold, changes nothing: the answer is still the spectrum's (or None)."""
    n = 64
    ev = np.concatenate([[1e6], np.geomspace(1e4, 1e2, n - 2), [ratio * 1e6]])
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((n, n)))
    a = torch.from_numpy((q * ev) @ q.T)
    rng = np.random.default_rng(1)
    weakest = q[:, -1] + (1e-6 * rng.standard_normal(n) if quality == "near" else 0)
    candidate = torch.from_numpy(weakest if quality == "near" else rng.standard_normal(n))
    truth = ratio < RANK_DEFICIENT_RATIO
    calls = []
    real = torch.linalg.cholesky_ex
    monkeypatch.setattr(torch.linalg, "cholesky_ex", lambda m, *a, **k: calls.append(1) or real(m, *a, **k))
    decided = conditioning_certificate(a, candidate=candidate)
    if ratio >= 2 * RANK_DEFICIENT_RATIO or ratio <= RANK_DEFICIENT_RATIO / 2:
        assert decided is truth
    else:
        assert decided in (truth, None)
    if quality == "near" and ratio <= RANK_DEFICIENT_RATIO / 2:
        assert calls == []  # proved by the Rayleigh quotient alone


def test_fits_certify_from_their_own_inverse(monkeypatch):
    """Affine fits on LayerNorm-like boundaries (every [x, 1] exactly dependent): the conditioning check reuses the
    ridged inverse the fit computed, so each start boundary costs one factorisation (the fit's own), and the fit
    warns exactly where the eigen-analysis finds a ratio below the threshold."""
    from rba.statistics import Statistics

    rng = np.random.default_rng(3)
    xs = []
    for _ in range(3):
        z = rng.standard_normal((3000, 24))
        z -= z.mean(1, keepdims=True)
        xs.append(z * rng.uniform(0.5, 2, 24) + rng.standard_normal(24))
    xts = [np.hstack([x, np.ones((len(x), 1))]) for x in xs]
    pairs = [(0, 1), (0, 2), (1, 2)]
    stats = Statistics([24] * 3, pairs, 3000, gram=[torch.from_numpy(xt.T @ xt) for xt in xts],
                       cross={(i, j): torch.from_numpy(xts[i].T @ xs[j]) for i, j in pairs})
    truth = {i: bool(max(np.linalg.eigvalsh(xts[i].T @ xts[i])[0], 0) / np.linalg.eigvalsh(xts[i].T @ xts[i])[-1]
                     < RANK_DEFICIENT_RATIO) for i in (0, 1)}
    assert all(truth.values())
    calls = []
    real = torch.linalg.cholesky_ex
    monkeypatch.setattr(torch.linalg, "cholesky_ex", lambda m, *a, **k: calls.append(1) or real(m, *a, **k))
    for span in pairs:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fit_span(stats, span, "affine", 1e-6)
        assert any(issubclass(w.category, RankDeficientWarning) for w in caught) is truth[span[0]], span
    assert len(calls) == 2  # one ridged factorisation per start boundary, none for the checks
