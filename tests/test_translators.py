"""Trained translators (fit kinds mlp, res-mlp): training against a direct PyTorch loop written here from the
paper's description, the session's bounded vector sample, export → reload, and `rba compare-fits` against
numpy on materialised vectors."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import materialise, ridge_lstsq, staged_forward, tiny_config
from torch import nn

from rba._threads import single_thread
from rba.cli import main as cli_main
from rba.errors import ConfigError, DataError, SpanError
from rba.export import load_export
from rba.fit import TrainSettings, fit_span, get_fit, list_fits
from rba.session import Session

#: fewer samples than the default tiny config: 16 each (5 vectors per sample)
SMALL = {"calibration": 16, "probe": 16, "eval": 16}


# ---------------------------------------------------------------------- a direct loop, written from the paper
class PaperResBlock(nn.Module):
    """TOAST's LearningBlock: LayerNorm → Linear–SiLU–Dropout(0.2)–Linear, + the normalised input → LayerNorm."""

    def __init__(self, d):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Dropout(0.2), nn.Linear(d, d))

    def forward(self, x):
        n = self.norm1(x)
        return self.norm2(self.ff(n) + n)


def paper_module(kind, d):
    if kind == "mlp":
        return nn.Sequential(nn.Linear(d, d // 2), nn.GELU(), nn.Linear(d // 2, d))
    return PaperResBlock(d)


def direct_loop(kind, x, y, *, steps, lr, batch_size, seed):
    """Adam on F.mse_loss; init from torch.manual_seed(seed); minibatches in turn from one permutation per epoch
    drawn by torch.Generator(seed) (the whole sample, in order, when it is no larger than a batch)."""
    torch.manual_seed(seed)
    m = paper_module(kind, x.shape[1])
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(m.parameters(), lr=lr)
    n = x.shape[0]
    batches = []
    if batch_size >= n:
        batches = [torch.arange(n)] * steps
    else:
        while len(batches) < steps:
            perm = torch.randperm(n, generator=g)
            batches += [perm[k : k + batch_size] for k in range(0, n - batch_size + 1, batch_size)]
    losses = []
    m.train()
    for idx in batches[:steps]:
        opt.zero_grad()
        loss = F.mse_loss(m(x[idx]), y[idx])
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return m.eval(), losses


# the paper's module names → rba's: the same tensors in the same creation order
RENAME = {"mlp": {"0": "fc1", "2": "fc2"}, "res-mlp": {"ff.0": "fc1", "ff.3": "fc2", "norm1": "norm1", "norm2": "norm2"}}


def renamed(kind, state):
    out = {}
    for name, t in state.items():
        prefix, leaf = name.rsplit(".", 1)
        out[f"{RENAME[kind][prefix]}.{leaf}"] = t
    return out


def pairs(n=240, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = torch.tanh(x @ torch.randn(d, d, generator=g) / 4) + 0.1 * x
    return x, y


@pytest.mark.parametrize("kind", ["mlp", "res-mlp"])
@pytest.mark.parametrize("batch_size", [64, 1024])  # minibatches (epochs of 3 batches, 15 left over), full batch
def test_training_is_the_direct_loop(kind, batch_size):
    x, y = pairs()
    settings = TrainSettings(steps=12, lr=1e-2, batch_size=batch_size)
    torch.manual_seed(123)
    before = torch.rand(3)
    fit = fit_span(None, (1, 3), kind, vectors=(x, y), seed=7, train=settings)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(3), before)  # the caller's random state is left alone
    with single_thread(), torch.random.fork_rng():  # fits run on one thread; kernels round differently per thread count
        ref, losses = direct_loop(kind, x, y, steps=12, lr=1e-2, batch_size=batch_size, seed=7)
    want = renamed(kind, ref.state_dict())
    assert set(fit.tensors) == set(want)
    for name, t in want.items():
        torch.testing.assert_close(fit.tensors[name], t.double(), rtol=0, atol=0, msg=name)
    assert fit.info["first_loss"] == losses[0] and fit.info["final_loss"] == losses[-1]
    assert losses[-1] < losses[0]  # it trained
    with torch.no_grad():
        out = ref(x).double()
    assert fit.sse == pytest.approx(float(((out - y.double()) ** 2).sum()), rel=1e-6)
    torch.testing.assert_close(fit.predict(x), out, rtol=1e-5, atol=1e-6)  # float64 predict, dropout off
    assert fit.num_params == sum(p.numel() for p in ref.parameters())
    assert get_fit(kind).trained and get_fit(kind).needs == "vectors"
    # seeded: the same seed gives the same weights, another seed others
    again = fit_span(None, (1, 3), kind, vectors=(x, y), seed=7, train=settings)
    other = fit_span(None, (1, 3), kind, vectors=(x, y), seed=8, train=settings)
    assert all(torch.equal(again.tensors[k], fit.tensors[k]) for k in fit.tensors)
    assert not torch.equal(other.tensors["fc1.weight"], fit.tensors["fc1.weight"])


def test_paper_defaults_and_registry(tmp_path):
    assert TrainSettings() == TrainSettings(steps=300, lr=1e-3, batch_size=1024)
    assert {"mlp", "res-mlp"} <= set(list_fits())
    d = 16
    assert get_fit("mlp").num_params(d, d) == d * (d // 2) + d // 2 + (d // 2) * d + d
    assert get_fit("res-mlp").num_params(d, d) == 2 * (d * d + d) + 4 * d  # two linears, two LayerNorms
    with pytest.raises(ConfigError, match="fit.steps"):
        tiny_config(tmp_path, "vit", fit={"kind": "mlp", "steps": 0})


def hand_mlp(h, t):
    z = h.double() @ t["fc1.weight"].T + t["fc1.bias"]
    z = 0.5 * z * (1 + torch.erf(z / math.sqrt(2)))
    return z @ t["fc2.weight"].T + t["fc2.bias"]


def test_session_vectors_export_and_reload(tmp_path):
    """The session trains on its first fit.max_vectors calibration vectors; the export reloads (recipe format 2,
    span_modules[].kind = mlp, trained) and gives the outputs of the model with the hand-written map in place."""
    cfg = tiny_config(tmp_path, "vit", fit={"kind": "mlp", "steps": 15, "max_vectors": 65}, data=SMALL)
    session = Session(cfg, need_labels=False, progress=False, measure_latency=False)
    span = (1, 3)
    xs = materialise(session.adapter, session.splits.calibration.samples, batch_size=cfg.capture.batch_size)
    x, y = session.fit_vectors(span)
    assert x.shape == (65, xs[1].shape[1])
    np.testing.assert_allclose(x.numpy(), xs[1][:65], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(y.numpy(), xs[3][:65], rtol=1e-6, atol=1e-6)
    fit = session.fit(span)
    assert fit.info["vectors"] == 65
    out = session.export("1-3", tmp_path / "exp")
    recipe = (out / "recipe.json").read_text()
    assert '"kind": "mlp"' in recipe and '"trained": true' in recipe
    exported = load_export(out)  # no code trusted: the module comes from the fit registry
    a = session.adapter
    batch = a.collate(session.splits.eval.samples[:16])
    with torch.inference_mode():
        got = exported.forward(batch)
        want = staged_forward(a, batch, {span: lambda h: hand_mlp(h, fit.tensors).to(h.dtype)})
        unmodified = staged_forward(a, batch)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, unmodified, atol=1e-3)


def test_vector_memory_is_capped_before_the_pass(tmp_path):
    cfg = tiny_config(tmp_path, "vit", fit={"kind": "res-mlp", "max_vectors": 10**6},
                      capture={"max_memory_gb": 0.01}, data=SMALL)
    session = Session(cfg, progress=False, measure_latency=False)
    _ = session.stats  # the statistics fit in the cap; the vector sample (1e6 × 64 × 4 B at two boundaries) does not
    with pytest.raises(DataError, match="fit.max_vectors"):
        session.fit((2, 4))


def test_compare_fits_against_numpy(tmp_path, capsys):
    """`rba compare-fits`: one row per span and kind, trained kinds marked; held-out errors recomputed here with
    numpy lstsq (affine) and the identity on materialised eval vectors."""
    cfg = tiny_config(tmp_path, "vit", fit={"steps": 10, "max_vectors": 60}, data=SMALL)
    path = tmp_path / "c.toml"
    path.write_text(cfg.to_toml())
    code = cli_main(["compare-fits", str(path), "--quiet", "--spans", "1-3,2-3", "--out", str(tmp_path / "cmp")])
    assert code == 0
    table = pd.read_csv(tmp_path / "cmp" / "fits.csv")
    assert list(zip(table["span"], table["kind"])) == [(s, k) for s in ("1-3", "2-3")
                                                      for k in ("identity", "affine", "mlp", "res-mlp")]
    assert table.set_index("kind")["trained"].groupby(level=0).all().to_dict() == {
        "identity": False, "affine": False, "mlp": True, "res-mlp": True}
    assert (table["fit_s"] > 0).all()
    # statistics fits see every calibration vector (16 images × 5 tokens), trained ones the kept sample
    assert table.groupby("kind")["fit_vectors"].max().to_dict() == {"identity": 80, "affine": 80, "mlp": 60,
                                                                     "res-mlp": 60}
    report = (tmp_path / "cmp" / "fits.md").read_text()
    assert "mlp (trained)" in report and "res-mlp (trained)" in report and (tmp_path / "cmp" / "fits.png").exists()
    session = Session(cfg, progress=False, measure_latency=False)
    cal = materialise(session.adapter, session.splits.calibration.samples, batch_size=cfg.capture.batch_size)
    ev = materialise(session.adapter, session.splits.eval.samples, batch_size=cfg.capture.batch_size)
    for (i, j), rows in zip([(1, 3), (2, 3)], (table[table.span == "1-3"], table[table.span == "2-3"])):
        rows = rows.set_index("kind")
        xe, ye = ev[i][:60], ev[j][:60]
        total = ((ye - ye.mean(0)) ** 2).sum()
        assert rows.loc["identity", "heldout_mse"] == pytest.approx(((xe - ye) ** 2).mean(), rel=1e-5)
        w, _ = ridge_lstsq(cal[i], cal[j], cfg.fit.ridge)
        pred = np.hstack([xe, np.ones((len(xe), 1))]) @ w
        assert rows.loc["affine", "heldout_rel"] == pytest.approx(((pred - ye) ** 2).sum() / total, rel=1e-3)
    assert "res-mlp" in capsys.readouterr().out
    # a rerun into the same folder goes on from the finished spans (here: all of them, nothing refitted) ...
    args = ["compare-fits", str(path), "--quiet", "--spans", "1-3,2-3", "--out", str(tmp_path / "cmp")]
    assert cli_main(args) == 0
    again = pd.read_csv(tmp_path / "cmp" / "fits.csv")
    pd.testing.assert_frame_equal(again, table)  # fit times too: the same rows, not new fits
    # ... and a folder holding another comparison is refused, not overwritten
    assert cli_main(args + ["--kinds", "affine"]) == 2
    assert "holds a comparison with a different identity (differing keys: kinds)" in capsys.readouterr().err
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "cmp" / "fits.csv"), again)


def test_cli_lists_trained_fits_and_refuses_unknown_kinds(tmp_path, capsys):
    assert cli_main(["ls", "fits"]) == 0
    assert capsys.readouterr().out.splitlines() == ["affine", "affine-mlp (trained)", "fold", "identity",
                                                    "identity-mlp (trained)", "linear", "mlp (trained)",
                                                    "mlp-wide (trained)", "res-mlp (trained)"]
    path = tmp_path / "c.toml"
    path.write_text(tiny_config(tmp_path, "vit").to_toml())
    assert cli_main(["compare-fits", str(path), "--kinds", "affine,mpl", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rba: error: unknown fit kind 'mpl'") and err.count("\n") == 1
    assert not (tmp_path / "x").exists()


def test_diverging_training_stops_with_one_line_and_exports_nothing(tmp_path, capsys):
    """lr = 1e30 drives the MLP's weights to NaN/Inf: the fit stops with one line, and `rba export` writes no
    weights (a NaN map, or the NaN classifier head fitted on its output, would otherwise be exported, exit 0)."""
    cfg = tiny_config(tmp_path, "vit", fit={"kind": "mlp", "steps": 10, "lr": 1e30, "max_vectors": 60}, data=SMALL)
    path = tmp_path / "c.toml"
    path.write_text(cfg.to_toml())
    code = cli_main(["export", str(path), "--spans", "1-3", "--out", str(tmp_path / "exp"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("rba: error: span 1-3: the mlp fit is not finite (NaN/Inf in ")
    assert "lower [fit] lr (now 1e+30)" in err
    assert not (tmp_path / "exp").exists() or not any((tmp_path / "exp").iterdir())
    # the API's fit_span runs the same check: targets that overflow float32 train into a non-finite map
    x = torch.randn(40, 8)
    with pytest.raises(SpanError, match=r"span 0-1: the mlp fit is not finite"):
        fit_span(None, (0, 1), "mlp", vectors=(x, x * 1e30 * 1e30), train=TrainSettings(steps=3, batch_size=40))


# ---------------------------------------------------------------------- training to convergence, other starts
def paper_lr(lr, steps, warmup, schedule, t):
    """The schedule's formula, written here: linear warm-up to lr over `warmup` steps, then constant or cosine to 0."""
    if t < warmup:
        return lr * (t + 1) / warmup
    if schedule == "constant":
        return lr
    return lr / 2 * (1 + math.cos(math.pi * (t - warmup) / (steps - warmup)))


def test_default_settings_are_the_paper_budget():
    assert TrainSettings() == TrainSettings(steps=300, lr=1e-3, batch_size=1024, schedule="constant", warmup_steps=0,
                                            holdout=0.0)
    assert [TrainSettings().lr_at(t) for t in (0, 150, 299)] == [1e-3] * 3
    x, y = pairs(n=40, d=8)
    fit = fit_span(None, (0, 1), "mlp", vectors=(x, y), train=TrainSettings(steps=5))
    assert fit.info["steps"] == 5 and fit.info["stopped"] == "steps" and "best_heldout_mse" not in fit.info


@pytest.mark.parametrize("schedule,warmup", [("cosine", 0), ("cosine", 4), ("constant", 3)])
def test_schedule_is_the_formula_and_training_follows_it(schedule, warmup):
    settings = TrainSettings(steps=12, lr=2e-2, batch_size=64, schedule=schedule, warmup_steps=warmup)
    want = [paper_lr(2e-2, 12, warmup, schedule, t) for t in range(12)]
    assert [settings.lr_at(t) for t in range(12)] == pytest.approx(want, rel=1e-12)
    if schedule == "cosine":
        assert settings.lr_at(warmup) == pytest.approx(2e-2) and settings.lr_at(11) < 2e-2 * 0.05
    # the trained weights are those of the direct loop run with these rates
    x, y = pairs()
    fit = fit_span(None, (1, 3), "mlp", vectors=(x, y), seed=3, train=settings)
    with single_thread(), torch.random.fork_rng():
        torch.manual_seed(3)
        m = paper_module("mlp", 16)
        g = torch.Generator().manual_seed(3)
        opt = torch.optim.Adam(m.parameters(), lr=2e-2)
        perm, pos = None, 240
        for t in range(12):
            if pos + 64 > 240:
                perm, pos = torch.randperm(240, generator=g), 0
            idx, pos = perm[pos : pos + 64], pos + 64
            for group in opt.param_groups:
                group["lr"] = want[t]
            opt.zero_grad()
            F.mse_loss(m(x[idx]), y[idx]).backward()
            opt.step()
    for name, t in renamed("mlp", m.state_dict()).items():
        torch.testing.assert_close(fit.tensors[name], t.double(), rtol=0, atol=0, msg=name)


def held_out_split(n, fraction, seed):
    """The hold-out the settings describe: the first round(fraction·n) of torch.randperm(n, Generator(seed))."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    k = round(fraction * n)
    return perm[:k].sort().values, perm[k:].sort().values


def test_early_stopping_keeps_the_best_held_out_weights():
    """Targets that are noise: the held-out MSE soon rises. The fit stops `patience` evaluations after its best and
    returns the weights of that evaluation, found here by a direct loop that scores every evaluation itself."""
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(120, 8, generator=g), torch.randn(120, 8, generator=g)
    settings = TrainSettings(steps=400, lr=3e-2, holdout=0.25, eval_every=4, patience=3)
    fit = fit_span(None, (0, 2), "mlp", vectors=(x, y), seed=5, train=settings)
    held, train = held_out_split(120, 0.25, 5)
    assert fit.info["heldout_vectors"] == 30 and fit.info["vectors"] == 90
    # the direct loop on the training vectors (one full batch), scoring the held-out ones every 4 steps
    with single_thread(), torch.random.fork_rng():
        torch.manual_seed(5)
        m = paper_module("mlp", 8)
        opt = torch.optim.Adam(m.parameters(), lr=3e-2)
        scores, states = [], []
        for t in range(401):
            if t % 4 == 0:
                with torch.no_grad():
                    scores.append(((m(x[held]) - y[held]) ** 2).mean().item())
                states.append({k: v.clone() for k, v in m.state_dict().items()})
                best = int(np.argmin(scores))
                if len(scores) - 1 - best >= 3:
                    break
            opt.zero_grad()
            F.mse_loss(m(x[train]), y[train]).backward()
            opt.step()
    assert fit.info["stopped"] == "patience" and 0 < fit.info["best_step"] < fit.info["steps"] < 400
    assert fit.info["best_step"] == 4 * best and fit.info["steps"] == 4 * (best + 3)
    assert fit.info["best_heldout_mse"] == pytest.approx(scores[best], rel=1e-6)
    assert min(scores) < scores[-1]  # it did get worse after the best: the kept weights are not the last ones
    for name, t in renamed("mlp", states[best]).items():
        torch.testing.assert_close(fit.tensors[name], t.double(), rtol=0, atol=1e-6, msg=name)
    mse = float(((fit.predict(x[held]) - y[held].double()) ** 2).mean())  # the returned map, scored in float64
    assert mse == pytest.approx(fit.info["best_heldout_mse"], rel=1e-5)


def test_wall_clock_cap_stops_training():
    x, y = pairs(n=64, d=8)
    fit = fit_span(None, (0, 1), "mlp", vectors=(x, y), train=TrainSettings(steps=10**7, max_seconds=0.05))
    assert fit.info["stopped"] == "max_seconds" and 0 < fit.info["steps"] < 10**7 and fit.info["fit_s"] < 1.5


@pytest.mark.parametrize("holdout", [0.0, 0.25])
def test_affine_start_is_numpy_lstsq(holdout):
    """affine-mlp with no steps is the ridge least squares of the training vectors (not the held-out ones)."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(200, 12, generator=g)
    y = torch.tanh(x @ torch.randn(12, 12, generator=g)) + 0.3
    fit = fit_span(None, (2, 5), "affine-mlp", ridge=1e-4, vectors=(x, y), train=TrainSettings(steps=0, holdout=holdout))
    train = held_out_split(200, holdout, 0)[1]
    w, _ = ridge_lstsq(x[train].double().numpy(), y[train].double().numpy(), 1e-4)
    np.testing.assert_allclose(fit.tensors["skip.weight"].T.numpy(), w[:-1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fit.tensors["skip.bias"].numpy(), w[-1], rtol=1e-5, atol=1e-6)
    assert not fit.tensors["fc2.weight"].any() and not fit.tensors["fc2.bias"].any()
    xt = np.hstack([x.double().numpy(), np.ones((200, 1))])
    np.testing.assert_allclose(fit.predict(x).numpy(), xt @ w, rtol=1e-5, atol=1e-5)
    assert fit.info["steps"] == 0
    with pytest.raises(SpanError, match="affine-mlp starts from an affine fit"):
        fit_span(None, (2, 5), "affine-mlp", vectors=(x, y[:, :6]), train=TrainSettings(steps=0))
    # trained from there, it fits its training vectors better than its start
    trained = fit_span(None, (2, 5), "affine-mlp", ridge=1e-4, vectors=(x, y), train=TrainSettings(steps=30, lr=1e-2))
    start = float(((xt @ w - y.double().numpy()) ** 2).sum())
    assert trained.sse < start


def test_identity_start_is_the_identity():
    x, y = pairs(n=50, d=8)
    fit = fit_span(None, (0, 1), "identity-mlp", vectors=(x, y), train=TrainSettings(steps=0))
    torch.testing.assert_close(fit.predict(x), x.double(), rtol=0, atol=0)
    assert fit.sse == pytest.approx(float(((x.double() - y.double()) ** 2).sum()), rel=1e-6)
    with pytest.raises(SpanError, match="identity-mlp starts at the identity and needs equal sizes"):
        fit_span(None, (0, 1), "identity-mlp", vectors=(x, y[:, :6]), train=TrainSettings(steps=0))


def test_new_kinds_shapes_and_registry():
    d = 16
    assert {"mlp-wide", "identity-mlp", "affine-mlp"} <= set(list_fits())
    assert all(get_fit(k).trained and get_fit(k).needs == "vectors" for k in ("mlp-wide", "identity-mlp", "affine-mlp"))
    assert get_fit("mlp-wide").num_params(d, d) == 2 * (d * d + d)
    assert get_fit("affine-mlp").num_params(d, d) == get_fit("identity-mlp").num_params(d, d) == 3 * (d * d + d)
    x, y = pairs()
    fit = fit_span(None, (1, 3), "mlp-wide", vectors=(x, y), train=TrainSettings(steps=20, lr=1e-2))
    assert fit.tensors["fc1.weight"].shape == (d, d) and fit.info["final_loss"] < fit.info["first_loss"]
    torch.testing.assert_close(fit.predict(x), hand_mlp(x, fit.tensors), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fit,message", [
    ({"patience": 0}, "fit.patience = 0: it must be at least 1"),
    ({"max_seconds": -1.0}, "fit.max_seconds = -1.0: it must be greater than 0"),
    ({"holdout": 1.0}, "fit.holdout = 1.0: it must be less than 1"),
    ({"schedule": "cosin"}, "fit.schedule = 'cosin' is not one of constant, cosine. Did you mean 'cosine'?"),
    ({"warmup_steps": 300}, "fit.warmup_steps = 300 is not below fit.steps = 300: lower warmup_steps, or raise steps"),
])
def test_invalid_training_settings_are_one_config_error(tmp_path, fit, message):
    with pytest.raises(ConfigError) as exc:
        tiny_config(tmp_path, "vit", fit=fit)
    assert str(exc.value).startswith(message) and "\n" not in str(exc.value)
    # the same settings made in Python are refused naming the same key
    key = next(iter(fit))
    with pytest.raises(ConfigError, match=f"fit.{key} = "):
        TrainSettings(**fit)


def test_fit_seed_and_the_recorded_identity(tmp_path):
    """fit.seed seeds the trained fit (the splits keep data.seed); identities record the keys added after the
    paper's only where set, so a folder written before them keeps its identity."""
    cfg = tiny_config(tmp_path, "vit", fit={"kind": "mlp", "steps": 3, "max_vectors": 60, "seed": 4,
                                            "holdout": 0.2, "eval_every": 1}, data=SMALL)
    session = Session(cfg, need_labels=False, progress=False, measure_latency=False)
    fit = session.fit((1, 3))
    want = fit_span(None, (1, 3), "mlp", vectors=session.fit_vectors((1, 3)), seed=4,
                    train=TrainSettings(steps=3, holdout=0.2, eval_every=1))
    assert all(torch.equal(fit.tensors[k], want.tensors[k]) for k in want.tensors)
    assert fit.info["heldout_vectors"] == 12 and fit.info["vectors"] == 48
    assert cfg.fit.changed_training() == {"holdout": 0.2, "eval_every": 1, "seed": 4}
    assert tiny_config(tmp_path, "vit", fit={"steps": 7}).fit.changed_training() == {}
