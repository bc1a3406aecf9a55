import tomllib
from pathlib import Path

import pytest

from rba.config import Config, load_config
from rba.errors import ConfigError


def test_defaults_and_roundtrip(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[model]\nkind = "timm"\nname = "test_vit"\npretrained = false\n[search]\ntrials = 7\n')
    cfg = load_config(p)
    assert cfg.search.trials == 7 and cfg.fit.ridge == 1e-6 and cfg.name == "c"
    q = tmp_path / "resolved.toml"
    q.write_text(cfg.to_toml())
    again = load_config(q)
    assert again.to_dict() == cfg.to_dict()


def test_flags_override_file(tmp_path):
    cfg = Config.from_dict({"search": {"trials": 7, "priors": True}})
    cfg.override({"search.trials": 3, "search.priors": None, "search.objectives": ["fidelity", "flops"]})
    assert cfg.search.trials == 3 and cfg.search.priors is True and cfg.search.objectives == ["fidelity", "flops"]


@pytest.mark.parametrize("raw,needle", [
    ({"modle": {}}, "unknown section 'modle'. Did you mean 'model'?"),
    ({"search": {"trails": 3}}, "unknown key in [search] 'trails'. Did you mean 'trials'?"),
    ({"fit": {"kind": "cubic"}}, "fit.kind = 'cubic' is not one of affine, affine-mlp, fold, identity, identity-mlp, linear"),
    ({"search": {"max_span": 0}}, "search.max_span = 0: it must be at least 1"),
    ({"search": {"trials": "many"}}, "search.trials must be int"),
    ({"search": {"objectives": ["accuracy", "speed"]}}, "search.objectives = 'speed'"),
    ({"search": {"budget_flops": -0.5}}, "budget is a positive fraction"),
    ({"report": {"baselines": ["shortgpt", "slep"]}}, "report.baselines = 'slep' is not one of"),
    ({"report": {"baselines": ["optuna"]}}, "report.baselines = 'optuna' is not one of"),
    ({"report": {"baseline_min_flops": 0.8, "baseline_max_flops": 0.7}}, "no baseline configuration would be"),
])
def test_bad_config_names_the_problem(raw, needle):
    with pytest.raises(ConfigError) as exc:
        Config.from_dict(raw)
    assert needle in str(exc.value)
    if "unknown" in needle:
        assert "Valid:" in str(exc.value)


# ---------------------------------------------------------------------- every value checked, one located line
@pytest.mark.parametrize("raw,needle", [
    ({"data": {"image_size": 0}}, "data.image_size = 0: it must be at least 1"),
    ({"data": {"image_size": -32}}, "data.image_size = -32: it must be at least 1"),
    ({"data": {"seed": -1}}, "data.seed = -1: it must be at least 0"),
    ({"search": {"seed": -7}}, "search.seed = -7: it must be at least 0"),
    ({"data": {"seed": 2**40}}, "data.seed = 1099511627776: it must be at most 4294967295"),
    ({"data": {"max_length": 0}}, "data.max_length = 0: it must be at least 1"),
    ({"data": {"calibration": 0}}, "data.calibration = 0: it must be at least 1"),
    ({"data": {"probe": -1}}, "data.probe = -1: it must be at least 0"),
    ({"evaluate": {"probe_c": 0}}, "evaluate.probe_c = 0: it must be greater than 0"),
    ({"evaluate": {"probe_c": -1.5}}, "evaluate.probe_c = -1.5: it must be greater than 0"),
    ({"evaluate": {"probe_c": float("inf")}}, "evaluate.probe_c = inf: it must be a finite number"),
    ({"evaluate": {"latency_repeats": 0}}, "evaluate.latency_repeats = 0: it must be at least 1"),
    ({"fit": {"ridge": float("nan")}}, "fit.ridge = nan: it must be a finite number"),
    ({"fit": {"ridge": float("inf")}}, "fit.ridge = inf: it must be a finite number"),
    ({"fit": {"ridge": -1e-3}}, "fit.ridge = -0.001: it must be at least 0"),
    ({"search": {"n_jobs": 2}}, "search.n_jobs (--n-jobs) was removed: a process runs one trial at a time"),
    ({"search": {"max_concurrent": 0}}, "search.max_concurrent = 0: it must be at least 1"),
    ({"search": {"timeout": float("nan")}}, "search.timeout = nan: it must be a finite number"),
    ({"search": {"budget_flops": float("nan")}}, "search.budget_flops = nan: it must be a finite number"),
    ({"capture": {"max_memory_gb": 0}}, "capture.max_memory_gb = 0: it must be greater than 0"),
    ({"capture": {"dtype": "float16"}}, "capture.dtype = 'float16' is not one of float32, float64"),
    ({"model": {"device": "gpu"}}, "model.device = 'gpu' is not one of cpu, cuda, auto"),
    ({"search": {"sampler": "tpee"}}, "search.sampler = 'tpee' is not one of tpe, nsga2, random, gp. Did you mean 'tpe'?"),
    ({"search": {"priors": 1}}, "search.priors = 1 is not one of true, false, proxy."),
    ({"search": {"trials": True}}, "search.trials must be int, got a boolean"),
    ({"search": {"trials": 2.5}}, "search.trials must be int, got float 2.5"),
    ({"fit": {"ridge": "small"}}, "fit.ridge must be a number, got str 'small'"),
    ({"search": {"objectives": "fidelity"}}, "search.objectives must be a list, got str 'fidelity'"),
    ({"search": {"objectives": ["fidelity", 3]}}, "search.objectives must be a list of strings, got ['fidelity', 3]"),
    ({"model": {"options": [1]}}, "model.options must be a table, got list [1]"),
    ({"model": {"weights": 3}}, "model.weights must be str, got int 3"),
])
def test_bad_value_names_key_value_and_bound(raw, needle):
    with pytest.raises(ConfigError) as exc:
        Config.from_dict(raw)
    assert needle in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize("flag,value,needle", [
    ("search.seed", -1, "search.seed = -1: it must be at least 0"),
    ("search.n_jobs", 2, "search.n_jobs (--n-jobs) was removed: a process runs one trial at a time"),
    ("search.max_concurrent", -2, "search.max_concurrent = -2: it must be at least 1"),
    ("search.trials", -1, "search.trials = -1: it must be at least 0"),
    ("model.device", "tpu", "model.device = 'tpu' is not one of cpu, cuda, auto"),
    ("search.objectives", ["fidelty"], "search.objectives = 'fidelty' is not one of"),
])
def test_bad_flag_value_is_refused_and_leaves_the_config_unchanged(flag, value, needle):
    cfg = Config.from_dict({})
    before = cfg.to_dict()
    with pytest.raises(ConfigError) as exc:
        cfg.override({flag: value})
    assert needle in str(exc.value)
    if flag != "search.objectives":  # a per-value check keeps the old value; objectives are checked after
        assert cfg.to_dict() == before


def test_ints_are_accepted_for_float_keys():
    cfg = Config.from_dict({"fit": {"ridge": 0}, "evaluate": {"probe_c": 2}, "search": {"budget_flops": 1}})
    assert cfg.fit.ridge == 0.0 and isinstance(cfg.fit.ridge, float) and cfg.evaluate.probe_c == 2.0


def test_registered_names_are_valid_config_values():
    """model.kind, fit.kind, search.sampler and search.objectives read their registries, not a copied list."""
    from rba.adapters import list_adapters
    from rba.fit import list_fits
    from rba.names import OBJECTIVES
    from rba.samplers import list_samplers

    for kind in list_adapters():
        assert Config.from_dict({"model": {"kind": kind}}).model.kind == kind
    for kind in list_fits():
        assert Config.from_dict({"fit": {"kind": kind}}).fit.kind == kind
    for name in list_samplers():
        assert Config.from_dict({"search": {"sampler": name}}).search.sampler == name
    for kind, models in (("timm", ("any", "encoder")), ("causal-lm", ("any", "lm"))):  # each objective on its models
        names = [name for name, spec in OBJECTIVES.items() if spec.models in models]
        raw = {"model": {"kind": kind}, "search": {"objectives": names}}
        assert Config.from_dict(raw).search.objectives == names
    assert list_samplers() == ["tpe", "nsga2", "random", "gp"]


def test_sampler_registry_builds_the_named_optuna_sampler():
    import optuna

    from search.samplers import make_sampler

    expected = {"tpe": optuna.samplers.TPESampler, "nsga2": optuna.samplers.NSGAIISampler,
                "random": optuna.samplers.RandomSampler, "gp": optuna.samplers.GPSampler}
    for name, cls in expected.items():
        assert type(make_sampler(Config.from_dict({"search": {"sampler": name}}), "optuna")) is cls


# ---------------------------------------------------------------------- paths
def test_relative_paths_resolve_against_the_config_folder(tmp_path, monkeypatch):
    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "s.toml").write_text('[data]\npath = "d/x.csv"\n[model]\nweights = "w.safetensors"\n'
                                   '[output]\ndir = "out"\n[capture]\ncache_dir = "../cache"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(Path("..") / "configs" / "s.toml")
    assert cfg.resolve_path(cfg.data.path) == folder.resolve() / "d" / "x.csv"
    assert cfg.resolve_path(cfg.model.weights) == folder.resolve() / "w.safetensors"
    assert cfg.output_dir() == folder.resolve() / "out"
    assert cfg.cache_dir().resolve() == (tmp_path / "cache").resolve()
    # the resolved copy written into an output folder reads back to the same files from anywhere
    (tmp_path / "copy.toml").write_text(cfg.to_toml())
    again = load_config(tmp_path / "copy.toml")
    assert again.resolve_path(again.data.path) == folder.resolve() / "d" / "x.csv"
    assert again.output_dir() == folder.resolve() / "out"


def test_unset_output_and_cache_use_cwd_and_xdg(tmp_path, monkeypatch):
    (tmp_path / "s.toml").write_text('[search]\ntrials = 1\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    cfg = load_config(tmp_path / "s.toml")
    assert cfg.output_dir() == tmp_path / "runs" / "s"
    assert cfg.cache_dir() == tmp_path / "xdg" / "rba"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cfg.cache_dir() == tmp_path / "home" / ".cache" / "rba"


def test_a_shipped_study_by_name_resolves_against_the_working_directory(tmp_path, monkeypatch):
    from rba.config import list_studies, load_study

    studies = list_studies()
    assert {"minilm_reviews", "efficientnet_lite0_fashion"} <= set(studies)
    monkeypatch.chdir(tmp_path)
    cfg = load_study("minilm_reviews")
    assert cfg.name == "minilm_reviews" and cfg.output.dir is None
    assert cfg.resolve_path(cfg.data.path) == tmp_path / "data" / "reviews.csv"
    assert cfg.output_dir() == tmp_path / "runs" / "minilm_reviews"
    with pytest.raises(ConfigError, match="no config file or shipped study named 'minilm_review'. "
                                          "Did you mean 'minilm_reviews'?"):
        load_study("minilm_review")
    # shipped studies read the data `rba data` writes (./data/) and set no output folder
    for path in studies.values():
        raw = tomllib.loads(path.read_text())
        assert "output" not in raw and raw["data"]["path"].startswith("data/")


def test_the_suite_never_uses_the_users_statistics_cache():
    """conftest points the default cache folder (and so every subprocess's) into a temporary folder."""
    from pathlib import Path

    from rba.config import Config

    cfg = Config.from_dict({"model": {"kind": "timm", "name": "test_vit", "pretrained": False},
                            "data": {"kind": "synthetic"}}, name="t")
    assert not cfg.cache_dir().resolve().is_relative_to((Path.home() / ".cache").resolve())
