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
    ({"fit": {"kind": "cubic"}}, "fit.kind = 'cubic' is not one of affine, identity, linear"),
    ({"search": {"max_span": 0}}, "search.max_span = 0: it must be at least 1"),
    ({"search": {"trials": "many"}}, "search.trials must be int"),
    ({"search": {"objectives": ["accuracy", "speed"]}}, "search.objectives = 'speed'"),
    ({"search": {"budget_flops": -0.5}}, "budget is a positive fraction"),
])
def test_bad_config_names_the_problem(raw, needle):
    with pytest.raises(ConfigError) as exc:
        Config.from_dict(raw)
    assert needle in str(exc.value)
    if "unknown" in needle:
        assert "Valid:" in str(exc.value)
