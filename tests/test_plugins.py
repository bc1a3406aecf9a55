"""Plug-ins from outside the package: a module in its own folder registers an adapter (model kind), a fit kind
and a metric; the real ``rba`` binary finds it through the ``rba.plugins`` entry point, and a config naming the
new kinds validates, lists and runs ``scores``, ``evaluate`` and ``search``.

The new metric's column is checked against numpy on the activations the plug-in model produces (run here
by hand, not through rba).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import rba_many

from rba.config import dict_to_toml

ROOT = Path(__file__).resolve().parent.parent

# the model alone (no registration), so this test process can run it without registering the plug-in here
MODEL = textwrap.dedent('''
    import numpy as np
    import torch
    from torch import nn


    class Block(nn.Module):
        def __init__(self, dim):
            super().__init__()
            self.fc = nn.Linear(dim, dim)

        def forward(self, x):
            return x + torch.tanh(self.fc(x))


    class PatchMLP(nn.Module):
        """4×4 patches → tokens → residual tanh blocks → mean over tokens."""

        def __init__(self, dim=12, depth=4, seed=0):
            super().__init__()
            torch.manual_seed(seed)
            self.patch = nn.Conv2d(3, dim, 4, stride=4)
            self.blocks = nn.ModuleList(Block(dim) for _ in range(depth))

        def tokens(self, x):
            return self.patch(x).flatten(2).transpose(1, 2)

        def forward(self, x):
            h = self.tokens(x)
            for block in self.blocks:
                h = block(h)
            return h.mean(1)


    def images(samples):
        return torch.as_tensor(np.asarray(samples)).float() / 255.0
''')

PLUGIN = textwrap.dedent('''
    """An rba plug-in living outside the package: importing it registers one of each kind."""
    import torch
    from torch import nn

    from patch_model import PatchMLP, images
    from rba.adapters import Adapter, Context, register_adapter
    from rba.fit import Fit, SpanFit, register_fit
    from rba.metrics import Metric, register_metric


    class PatchMLPAdapter(Adapter):
        layout = "tokens"

        def __init__(self, cfg):
            model = PatchMLP(**cfg.model.options)
            super().__init__(model, model.blocks, identity={"kind": "patch-mlp", "name": cfg.model.name,
                                                            "options": dict(cfg.model.options)})
            self.image_size = cfg.data.image_size

        def collate(self, samples):
            return images(samples)

        def embed(self, inputs):
            return self.model.tokens(inputs.to(self.device)), Context()

        def pool(self, h, ctx):
            return h.mean(1)

        def forward(self, inputs):
            return self.model(inputs.to(self.device))

        def example_inputs(self):
            return torch.zeros(1, 3, self.image_size, self.image_size)


    class EnergyRatio(Metric):
        """Σ‖x_j‖² / Σ‖x_i‖²: how much a span grows its representation."""

        name = "energy_ratio"

        def __call__(self, stats, span):
            i, j = span
            return stats.sum_sq(j) / stats.sum_sq(i)


    class Shift(nn.Module):
        """h + b on every vector of a boundary tensor."""

        def __init__(self, dim, layout):
            super().__init__()
            self.bias = nn.Parameter(torch.zeros(dim))
            self.layout = layout

        def forward(self, h):
            return h + (self.bias.view(1, -1, 1, 1) if self.layout == "pixels" else self.bias)


    @register_fit("mean-shift")
    class MeanShift(Fit):
        """x_j ≈ x_i + (mean x_j − mean x_i): a span as a constant shift, from the streamed sums."""

        def fit(self, data):
            stats, (i, j) = data.statistics, data.span
            n = stats.count(i)
            bias = (stats.sum_x(j) - stats.sum_x(i)).double() / n
            cross = float(torch.diagonal(stats.cross[data.span][:-1, :]).sum())
            sq = stats.sum_sq(i) - 2 * cross + stats.sum_sq(j)  # Σ‖x_i − x_j‖²
            return SpanFit(data.span, self.name, data.dim_in, data.dim_out, {"bias": bias},
                           max(sq - n * float(bias @ bias), 0.0))

        def module(self, dim_in, dim_out, *, layout, span):
            return Shift(dim_out, layout)


    register_adapter("patch-mlp", PatchMLPAdapter)
    register_metric("energy_ratio", EnergyRatio)
''')


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory):
    """A folder holding the plug-in module and the metadata of a distribution that declares it under the
    ``rba.plugins`` entry-point group (what ``pip install`` of a plug-in package leaves behind)."""
    folder = tmp_path_factory.mktemp("plugin")
    (folder / "patch_model.py").write_text(MODEL)
    (folder / "rba_patch_plugin.py").write_text(PLUGIN)
    dist = folder / "rba_patch_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: rba-patch-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[rba.plugins]\npatch = rba_patch_plugin\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(folder)]),
               XDG_CACHE_HOME=str(folder / "xdg"))
    return folder, env


def rba(*args, env, cwd):
    return subprocess.run([sys.executable, "-m", "rba.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def sections(fit_kind: str) -> dict:
    return {
        "model": {"kind": "patch-mlp", "name": "patch-mlp-12", "pretrained": False, "options": {"dim": 12, "depth": 4}},
        "data": {"kind": "synthetic", "image_size": 16, "calibration": 24, "probe": 24, "eval": 24,
                 "options": {"modality": "image", "classes": 3, "shape": [3, 16, 16]}},
        "fit": {"kind": fit_kind},
        "evaluate": {"latency_repeats": 1},
        "search": {"objectives": ["fidelity", "flops"], "trials": 4, "priors": False},
    }


LS = ("adapters", "fits", "metrics")


@pytest.fixture(scope="module")
def with_plugin(plugin_env) -> dict[str, subprocess.CompletedProcess]:
    """The commands of the tests below, with the plug-in installed, one after another in one fresh interpreter
    (not in this one: registering the plug-in here would leak into other tests)."""
    folder, env = plugin_env
    (folder / "patch.toml").write_text(dict_to_toml(sections("mean-shift")))
    (folder / "typo.toml").write_text(dict_to_toml(sections("mean-shfit")))
    cfg = folder / "patch.toml"
    commands = {f"ls {what}": ["ls", what] for what in LS} | {
        "scores": ["scores", cfg, "--quiet"],
        "evaluate": ["evaluate", cfg, "--spans", "1-3", "--json", "--quiet"],
        "search": ["search", cfg, "--quiet"],
        "typo": ["scores", folder / "typo.toml"],
    }
    return dict(zip(commands, rba_many(*commands.values(), env=env, cwd=folder)))


def test_ls_lists_the_plugin_names(with_plugin):
    listed = {what: with_plugin[f"ls {what}"].stdout.splitlines() for what in LS}
    assert "patch-mlp" in listed["adapters"] and "timm" in listed["adapters"]
    assert listed["fits"] == ["affine", "affine-mlp (trained)", "fold", "identity", "identity-mlp (trained)", "linear",
                              "mean-shift", "mlp (trained)", "mlp-wide (trained)", "res-mlp (trained)"]
    assert listed["metrics"] == ["br", "cosine", "cka", "ls_residual", "svcca", "energy_ratio"]


def test_a_config_naming_plugins_runs_scores_evaluate_and_search(plugin_env, with_plugin):
    folder, _ = plugin_env
    r = with_plugin["scores"]
    assert r.returncode == 0, r.stderr
    table = pd.read_csv(folder / "runs" / "patch" / "scores.csv")
    assert list(table.columns) == ["start", "end", "br", "cosine", "cka", "ls_residual", "svcca", "energy_ratio"]
    assert len(table) == 10  # every span of 4 equal-shaped blocks

    # the new column against numpy on the plug-in model's activations, materialised here
    sys.path.insert(0, str(folder))
    try:
        import torch

        from rba.config import Config
        from rba.data import load_dataset, make_splits

        plugin = __import__("patch_model")  # the model only: registering here would leak into other tests
        config = Config.from_dict({"data": sections("affine")["data"]})  # the same calibration split
        splits = make_splits(load_dataset(config), config, need_labels=False)
        model = plugin.PatchMLP(dim=12, depth=4)
        with torch.inference_mode():
            h = model.tokens(plugin.images(splits.calibration.samples))
            energy = [float((h.double() ** 2).sum())]
            for block in model.blocks:
                h = block(h)
                energy.append(float((h.double() ** 2).sum()))
    finally:
        sys.path.remove(str(folder))
    from rba.adapters import list_adapters
    from rba.metrics import list_metrics

    assert "patch-mlp" not in list_adapters() and "energy_ratio" not in list_metrics()
    expected = [energy[j] / energy[i] for i, j in zip(table.start, table.end)]
    np.testing.assert_allclose(table.energy_ratio, expected, rtol=1e-5)

    r = with_plugin["evaluate"]
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    # costs come from the plug-in's module: blocks 1 and 2 (12·12 + 12 parameters each) become one 12-vector
    # shift, in a model of 3·12·4·4 + 12 (patch conv) + 4 · 156 parameters
    total = 3 * 12 * 4 * 4 + 12 + 4 * (12 * 12 + 12)
    assert result["spans"] == "1-3" and result["params"] == total - 2 * 156 + 12
    assert 0 < result["fidelity"] <= 1
    r = with_plugin["search"]
    assert r.returncode == 0, r.stderr
    trials = pd.read_csv(folder / "runs" / "patch" / "trials.csv")
    assert len(trials) == 4 and trials.state.eq("COMPLETE").all()


def test_a_misspelt_plugin_name_gets_a_hint(with_plugin):
    r = with_plugin["typo"]
    from rba.fit import list_fits

    known = ", ".join(sorted([*list_fits(), "mean-shift"]))  # every registered kind and the plug-in's
    assert r.returncode == 2 and f"fit.kind = 'mean-shfit' is not one of {known}" in r.stderr
    assert "Did you mean 'mean-shift'?" in r.stderr


def test_without_the_plugin_its_names_are_refused(plugin_env):
    folder, env = plugin_env
    cfg = folder / "patch.toml"
    cfg.write_text(dict_to_toml(sections("affine")))
    elsewhere = folder / "elsewhere"  # not the plug-in's folder, which `python -m` would put on sys.path
    elsewhere.mkdir(exist_ok=True)
    r = rba("scores", cfg, env=dict(env, PYTHONPATH=str(ROOT)), cwd=elsewhere)
    assert r.returncode == 2 and "model.kind = 'patch-mlp' is not one of" in r.stderr


def test_a_plugin_that_fails_or_exits_at_import_is_skipped_with_one_warning(tmp_path):
    """Two broken plug-ins installed beside each other, one raising and one calling sys.exit(0) at import: each
    gives one warning line naming it, and the command runs (before, the first stopped every command with exit 2
    and the second turned every command into a silent exit 0)."""
    for name, body in (("rba_raising", "raise RuntimeError('no GPU driver\\nfound')\n"),
                       ("rba_exiting", "import sys\nsys.exit(0)\n")):
        (tmp_path / f"{name}.py").write_text(body)
        dist = tmp_path / f"{name}-0.1.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
        (dist / "entry_points.txt").write_text(f"[rba.plugins]\n{name} = {name}\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(tmp_path)]))
    r = rba("ls", "fits", env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "affine" in r.stdout.splitlines()
    lines = r.stderr.splitlines()
    assert len(lines) == 2 and all(line.startswith("rba: warning: the plug-in ") for line in lines), r.stderr
    assert any("'rba_raising'" in line and "RuntimeError: no GPU driver found" in line for line in lines)
    assert any("'rba_exiting'" in line and "sys.exit(0)" in line for line in lines)


def test_the_python_api_sees_installed_plugins_without_the_cli(plugin_env):
    """Entry points load on the first registry lookup: a config naming the plug-in's model and fit kinds validates,
    and a Session scores it, from Python alone (no rba.cli imported)."""
    folder, env = plugin_env
    cfg = folder / "api.toml"
    cfg.write_text(dict_to_toml(sections("mean-shift")))
    code = ("import sys, rba\n"
            f"session = rba.Session(rba.load_config({str(cfg)!r}), progress=False)\n"
            "result = session.evaluate('1-3')\n"
            "print(result['spans'], 'rba.cli' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], cwd=folder, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split() == ["1-3", "False"]
