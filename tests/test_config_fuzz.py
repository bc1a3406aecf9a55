"""Property-based tests: whatever a config or a span string holds, rba either accepts it or raises its one-line
error (an RBAError) — never another exception. No model is loaded; each test stays under 200 examples."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import string
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rba.config import Config, load_config
from rba.errors import ConfigError, SpanError
from rba.spans import check_spans, format_spans, parse_spans

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: section -> its keys, read from the schema
SECTIONS = {f.name: [g.name for g in dataclasses.fields(f.default_factory())]
            for f in dataclasses.fields(Config) if f.name not in ("name", "base_dir")}

# values of every TOML type (and None, which the Python API can pass), biased to the edges of the ranges
scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1), st.sampled_from([0, 1, -1, 2**32, 2**32 - 1]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -0.0, 1e-300, 1e308]),
    st.text(max_size=12), st.sampled_from(["timm", "affine", "tpe", "fidelity", "cpu", "npz", "probe", "ray"]),
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                      max_leaves=6)
section_names = st.one_of(st.sampled_from(sorted(SECTIONS)), st.text(min_size=1, max_size=8))


@st.composite
def raw_configs(draw):
    """Known and unknown sections and keys, any values, sometimes a non-table where a section belongs."""
    raw = {}
    for section in draw(st.lists(section_names, max_size=4, unique=True)):
        if draw(st.integers(0, 9)) == 0:
            raw[section] = draw(scalars)
            continue
        keys = st.one_of(st.sampled_from(SECTIONS.get(section, ["x"])), st.text(min_size=1, max_size=8))
        raw[section] = draw(st.dictionaries(keys, values, max_size=5))
    return raw


def assert_one_line(exc: BaseException) -> None:
    text = str(exc)
    assert text and "\n" not in text and "\r" not in text


@SETTINGS
@given(raw_configs())
def test_any_config_loads_or_raises_one_config_error(raw):
    try:
        cfg = Config.from_dict(raw)
    except ConfigError as exc:
        assert_one_line(exc)
        return
    # accepted: every value is of its declared type and in range
    assert cfg.data.calibration >= 1 and cfg.evaluate.batch_size >= 1 and cfg.search.max_concurrent >= 1
    assert math.isfinite(cfg.fit.ridge) and cfg.fit.ridge >= 0 and cfg.evaluate.probe_c > 0
    assert all(isinstance(o, str) for o in cfg.search.objectives)


@SETTINGS
@given(st.dictionaries(st.sampled_from([f"{s}.{k}" for s, keys in SECTIONS.items() for k in keys]
                                       + ["search.trails", "model.knd"]), values, max_size=4))
def test_any_flag_values_apply_or_raise_one_config_error(flags):
    cfg = Config.from_dict({})
    try:
        cfg.override(flags)
    except ConfigError as exc:
        assert_one_line(exc)


toml_values = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(lambda v: {math.inf: "inf", -math.inf: "-inf"}.get(v, "nan" if v != v else repr(v))),
    st.booleans().map(lambda b: "true" if b else "false"),
    st.text(alphabet=string.printable, max_size=10).map(lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"')
                                                        .replace("\n", "\\n").replace("\r", "\\r") + '"'),
    st.just("[]"), st.just('["fidelity", "flops"]'), st.just("{ a = 1 }"),
)


@st.composite
def toml_texts(draw):
    """TOML documents (some broken): section headers, known and unknown keys, any value."""
    lines = []
    for section in draw(st.lists(section_names, max_size=3)):
        lines.append(f"[{section}]" if draw(st.integers(0, 9)) else f"[{section}")
        keys = st.one_of(st.sampled_from(SECTIONS.get(section, ["x"])), st.from_regex(r"[a-z_]{1,8}", fullmatch=True))
        for _ in range(draw(st.integers(0, 4))):
            lines.append(f"{draw(keys)} = {draw(toml_values)}")
    if draw(st.booleans()):
        lines.append(draw(st.text(max_size=20)))
    return "\n".join(lines)


@SETTINGS
@given(text=toml_texts())
def test_any_toml_file_loads_or_raises_one_config_error(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("fuzz", numbered=True) / "c.toml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        assert_one_line(exc)
        return
    again = path.with_name("again.toml")
    again.write_text(cfg.to_toml())  # an accepted config writes a file that reads back the same
    assert load_config(again).to_dict() == cfg.to_dict()


span_texts = st.one_of(
    st.text(max_size=30),
    st.text(alphabet="0123456789-, none\t", max_size=30),
    st.lists(st.tuples(st.integers(-3, 12), st.integers(-3, 12)), max_size=4).map(
        lambda spans: ",".join(f"{i}-{j}" for i, j in spans)),
    st.integers(1, 6000).map(lambda n: "7" * n + "-3"),  # past int()'s 4300-digit guard
)


@SETTINGS
@given(text=span_texts, num_blocks=st.integers(1, 12), max_span=st.one_of(st.none(), st.integers(1, 12)))
def test_any_span_string_parses_or_raises_one_span_error(text, num_blocks, max_span):
    try:
        spans = check_spans(parse_spans(text), num_blocks=num_blocks, max_span=max_span)
    except SpanError as exc:
        assert_one_line(exc)
        return
    # accepted: sorted, in range, non-overlapping, and formatting then parsing gives them back
    assert all(0 <= i < j <= num_blocks for i, j in spans)
    assert all(b <= c for (_, b), (c, _) in zip(spans, spans[1:]))
    assert parse_spans(format_spans(spans)) == spans


# ---------------------------------------------------------------------- recipes (recipe.json of an export)
def _recipe(folder) -> dict:
    """A valid recipe of a 6-block ViT, its model_sha256 that of the (stand-in) weights file in ``folder``."""
    import hashlib

    weights = folder / "model.safetensors"
    weights.write_bytes(b"weights")
    return {"format": 2, "model": {"kind": "timm", "name": "test_vit", "pretrained": False},
            "identity": {"kind": "timm"}, "preprocess": {"max_length": 128, "image_size": 32}, "spans": "1-3",
            "span_modules": [{"span": [1, 3], "kind": "affine", "trained": False, "dim_in": 64, "dim_out": 64}],
            "head": {"kind": "probe", "features": 64, "classes": 3, "class_names": ["a", "b", "c"]},
            "layout": "tokens", "dims": [64] * 7, "fit": {"kind": "affine", "ridge": 1e-6, "mode": "independent"},
            "statistics_hash": "0" * 16, "model_sha256": hashlib.sha256(b"weights").hexdigest(), "versions": {}}


def _leaves(d, prefix=()):
    """Every path into the recipe (dicts and lists), leaves and inner nodes alike."""
    items = d.items() if isinstance(d, dict) else enumerate(d) if isinstance(d, list) else []
    for k, v in items:
        yield prefix + (k,)
        yield from _leaves(v, prefix + (k,))


def _seal(recipe: dict) -> dict:
    """The recipe with its checksum recomputed, as anyone editing it could: only the schema can refuse it."""
    import hashlib
    import json

    body = {k: v for k, v in recipe.items() if k != "recipe_sha256"}
    return body | {"recipe_sha256": hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()}


sizes = st.one_of(st.integers(-3, 3), st.sampled_from([0, 2**20, 2**20 + 1, 2**31, 2**63 - 1, -(2**63)]))


@st.composite
def edited_recipes(draw, base):
    recipe = json.loads(json.dumps(base))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(sorted(_leaves(recipe), key=str)))
        parent = recipe
        for part in path[:-1]:
            parent = parent[part]
        action = draw(st.integers(0, 9))
        if action == 0 and isinstance(parent, dict):
            parent.pop(path[-1], None)
        else:
            parent[path[-1]] = draw(st.one_of(sizes, values, st.sampled_from(["pixels", "tokens", "2-1", "0-9"])))
    return recipe


@SETTINGS
@given(data=st.data())
def test_any_edited_recipe_reads_or_raises_one_rba_error(tmp_path_factory, data):
    """Keys removed or replaced by any value (negative, zero and huge sizes, wrong types, the other layout), the
    checksum recomputed: read_recipe accepts a recipe only within the schema's bounds, else one line."""
    from rba.errors import RBAError
    from rba.export import read_recipe
    from rba.spans import parse_spans

    folder = tmp_path_factory.mktemp("recipe", numbered=True)
    recipe = _seal(data.draw(edited_recipes(_recipe(folder))))
    (folder / "recipe.json").write_text(json.dumps(recipe))
    try:
        read = read_recipe(folder)
    except RBAError as exc:
        assert_one_line(exc)
        return
    dims = read["dims"]
    assert read["layout"] in ("tokens", "pixels") and all(1 <= d <= 2**20 for d in dims)
    pre = read["preprocess"]
    assert 1 <= pre["max_length"] <= 2**20 and (pre["image_size"] is None or 1 <= pre["image_size"] <= 2**14)
    for entry, span in zip(read["span_modules"], parse_spans(read["spans"]), strict=True):
        i, j = entry["span"]
        assert (i, j) == span and 0 <= i < j < len(dims)
        assert (entry["dim_in"], entry["dim_out"]) == (dims[i], dims[j])
    if read["head"] is not None:
        assert 1 <= read["head"]["features"] <= 2**20 and 1 <= read["head"]["classes"] <= 2**20


def test_a_recipe_with_the_other_layout_is_refused_when_loaded(tmp_path):
    """Within the schema, but not the model it names: a ViT's recipe saying its boundaries are pixels."""
    import pytest

    from rba.errors import RBAError
    from rba.export import load_export

    recipe = _recipe(tmp_path)
    recipe["layout"] = "pixels"
    (tmp_path / "recipe.json").write_text(json.dumps(_seal(recipe)))
    with pytest.raises(RBAError, match="pixels boundaries, but the model it names has 6 blocks with tokens"):
        load_export(tmp_path)


# ---------------------------------------------------------------------- sweep files
sweep_keys = st.one_of(st.sampled_from([f"{s}.{k}" for s, keys in SECTIONS.items() for k in keys]),
                       st.sampled_from(["nosuch.key", "name.x", "base_dir.y", "search", "search.seed.x", "."]),
                       st.text(max_size=10))


@st.composite
def sweep_texts(draw):
    lines = []
    if draw(st.integers(0, 9)):
        lines.append('base = "base.toml"')
    if draw(st.integers(0, 3)) == 0:
        lines.append(f"out = {draw(toml_values)}")
    lines.append("[sweep]" if draw(st.integers(0, 9)) else "sweep = 3")
    for key in draw(st.lists(sweep_keys, max_size=3, unique=True)):
        key = key.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
        vals = draw(st.lists(toml_values, max_size=3))
        lines.append(f'"{key}" = [{", ".join(vals)}]' if draw(st.integers(0, 9)) else f'"{key}" = {draw(toml_values)}')
    return "\n".join(lines)


@SETTINGS
@given(text=sweep_texts())
def test_any_sweep_file_expands_or_raises_one_config_error(tmp_path_factory, text):
    """Known and unknown dotted keys (sections that are not sections, keys without a dot), any values, a broken
    base or out: read_sweep builds every study or raises one ConfigError line, before any study runs."""
    from search.sweep import read_sweep

    folder = tmp_path_factory.mktemp("sweep", numbered=True)
    (folder / "base.toml").write_text('[model]\nkind = "timm"\nname = "test_vit"\npretrained = false\n')
    path = folder / "s.toml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        studies = read_sweep(path, folder / "out", lambda cfg: cfg)
    except ConfigError as exc:
        assert_one_line(exc)
        return
    assert studies and len({s.cfg.output.dir for s in studies}) == len(studies)
    assert all(len(os.fsencode(Path(s.cfg.output.dir).name)) <= 255 for s in studies)
