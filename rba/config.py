"""One config schema for every command: a TOML file becomes nested dataclasses.

Precedence: CLI flags > the file > the defaults below. Unknown keys anywhere are an error naming the key and
the valid ones. Configs are parsed as data (``tomllib``); nothing in them is evaluated.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from rba.errors import ConfigError, did_you_mean

__all__ = [
    "Config",
    "ModelConfig",
    "DataConfig",
    "CaptureConfig",
    "FitConfig",
    "EvaluateConfig",
    "SearchConfig",
    "OutputConfig",
    "load_config",
    "config_hash",
    "dict_to_toml",
]

CONFIG_VERSION = 1


@dataclass
class ModelConfig:
    kind: str = "timm"
    """timm | sentence-transformers | huggingface | efficientnet-lite | torchvision | module"""
    name: str = ""
    weights: str | None = None
    """a local weights file (safetensors, or a torch checkpoint loaded with weights_only=True)"""
    pretrained: bool = True
    """false: random initialisation (tests); true: the asset package's weights or ``weights``"""
    blocks: str | None = None
    """dotted path to the block list (kind = "module"; optional override for the others)"""
    trust_code: bool = False
    """kind = "module" imports and calls the factory the config names, i.e. runs code: opt in explicitly"""
    options: dict[str, Any] = field(default_factory=dict)
    """extra keyword arguments for the model constructor (e.g. timm ``depth``, ``embed_dim``)"""
    device: str = "cpu"
    """cpu | cuda | auto"""


@dataclass
class DataConfig:
    kind: str = "text-csv"
    """text-csv | npz | image-folder | synthetic"""
    path: str | None = None
    text: str = "text"
    label: str | None = "label"
    calibration: int = 1000
    probe: int = 1000
    eval: int = 1000
    seed: int = 0
    max_length: int = 128
    image_size: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    """kind-specific settings (synthetic data: shape, classes)"""


@dataclass
class CaptureConfig:
    batch_size: int = 64
    dtype: str = "float32"
    """float32: batch products in float32 added into float64 totals; float64: everything in float64"""
    cache_dir: str | None = None
    """statistics cache folder (default: <output dir>/../.rba_cache, shared by studies)"""
    max_memory_gb: float = 8.0
    """refuse to allocate statistics larger than this"""


@dataclass
class FitConfig:
    kind: str = "affine"
    """affine | linear | identity"""
    ridge: float = 1e-6
    mode: str = "independent"
    """independent | sequential"""


@dataclass
class EvaluateConfig:
    head: str = "probe"
    """probe | fixed-probe | native"""
    batch_size: int = 64
    probe_c: float = 1.0
    """inverse L2 regularisation of the probe (as scikit-learn's C)"""
    latency_repeats: int = 5


@dataclass
class SearchConfig:
    trials: int = 50
    backend: str = "optuna"
    method: str = "optuna"
    sampler: str = "tpe"
    seed: int = 0
    objectives: list[str] = field(default_factory=lambda: ["accuracy", "flops"])
    budget_flops: float | None = None
    budget_params: float | None = None
    budget_latency: float | None = None
    max_span: int | None = None
    priors: bool = True
    storage: str | None = None
    study_name: str | None = None
    n_jobs: int = 1
    timeout: float | None = None
    ray_address: str | None = None
    max_concurrent: int = 2
    max_failures: int = 1
    screening: bool = False


@dataclass
class OutputConfig:
    dir: str | None = None


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    fit: FitConfig = field(default_factory=FitConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    #: the file name without extension, used for the default output folder
    name: str = "rba"
    #: folder of the config file: relative paths in the config are resolved against it
    base_dir: str = "."

    # ------------------------------------------------------------------ building
    @classmethod
    def from_dict(cls, raw: dict[str, Any], *, name: str = "rba", base_dir: str = ".") -> "Config":
        if not isinstance(raw, dict):
            raise ConfigError("the config's top level must be a table of sections")
        sections = {f.name: f for f in fields(cls) if f.name not in ("name", "base_dir")}
        kwargs: dict[str, Any] = {}
        for key, value in raw.items():
            if key not in sections:
                raise ConfigError(_unknown("section", key, sections))
            section_cls = sections[key].default_factory().__class__  # type: ignore[misc]
            if not isinstance(value, dict):
                raise ConfigError(f"[{key}] must be a table, got {type(value).__name__}")
            kwargs[key] = _build_section(section_cls, key, value)
        cfg = cls(**kwargs, name=name, base_dir=base_dir)
        return cfg.validate()

    def override(self, flags: dict[str, Any]) -> "Config":
        """Apply CLI flags given as ``{"search.trials": 10, ...}``; None means "not given"."""
        for dotted, value in flags.items():
            if value is None:
                continue
            section, key = dotted.split(".", 1)
            target = getattr(self, section)
            valid = {f.name for f in fields(target)}
            if key not in valid:
                raise ConfigError(_unknown(f"key in [{section}]", key, valid))
            setattr(target, key, _coerce(type(target), key, value, section))
        return self.validate()

    def validate(self) -> "Config":
        _choice("model.kind", self.model.kind, ["timm", "sentence-transformers", "huggingface", "efficientnet-lite", "torchvision", "module"])
        _choice("model.device", self.model.device, ["cpu", "cuda", "auto"])
        _choice("data.kind", self.data.kind, ["text-csv", "npz", "image-folder", "synthetic"])
        _choice("capture.dtype", self.capture.dtype, ["float32", "float64"])
        _choice("fit.kind", self.fit.kind, ["affine", "linear", "identity"])
        _choice("fit.mode", self.fit.mode, ["independent", "sequential"])
        _choice("evaluate.head", self.evaluate.head, ["probe", "fixed-probe", "native"])
        _choice("search.backend", self.search.backend, ["optuna", "ray"])
        _choice("search.method", self.search.method, ["optuna", "exhaustive", "random", "br-greedy", "block-drop"])
        _choice("search.sampler", self.search.sampler, ["tpe", "nsga2", "random", "gp"])
        for obj in self.search.objectives:
            _choice("search.objectives", obj, ["accuracy", "fidelity", "flops", "params", "latency"])
        if len(set(self.search.objectives)) != len(self.search.objectives):
            raise ConfigError(f"search.objectives lists a name twice: {self.search.objectives}")
        if not self.search.objectives:
            raise ConfigError("search.objectives is empty: name at least one of accuracy, fidelity, flops, params, latency")
        if self.search.max_span is not None and self.search.max_span < 1:
            raise ConfigError(f"search.max_span = {self.search.max_span}: it must be at least 1 (a span covers one block or more)")
        for key in ("calibration", "probe", "eval"):
            if getattr(self.data, key) < 0:
                raise ConfigError(f"data.{key} = {getattr(self.data, key)} must not be negative")
        if self.data.calibration < 1:
            raise ConfigError("data.calibration must be at least 1: statistics need calibration samples")
        for key in ("budget_flops", "budget_params", "budget_latency"):
            v = getattr(self.search, key)
            if v is not None and not (0 < v):
                raise ConfigError(f"search.{key} = {v}: a budget is a positive fraction of the unmodified model (e.g. 0.7)")
        if self.fit.ridge < 0:
            raise ConfigError(f"fit.ridge = {self.fit.ridge} must be ≥ 0")
        if self.capture.batch_size < 1 or self.evaluate.batch_size < 1:
            raise ConfigError("batch sizes must be at least 1")
        if self.search.trials < 0:
            raise ConfigError("search.trials must be ≥ 0")
        return self

    # ------------------------------------------------------------------ paths and serialisation
    def resolve_path(self, path: str | None) -> Path | None:
        if path is None:
            return None
        p = Path(path).expanduser()
        return p if p.is_absolute() else (Path(self.base_dir) / p)

    def output_dir(self) -> Path:
        if self.output.dir:
            return Path(self.output.dir)
        return Path("runs") / self.name

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("name")
        d.pop("base_dir")
        return d

    def to_toml(self) -> str:
        header = f"# rba resolved config (version {CONFIG_VERSION}, name {self.name!r})\n"
        return header + dict_to_toml(self.to_dict())


def dict_to_toml(sections: dict[str, dict[str, Any]]) -> str:
    """Sections of plain values as TOML text (unset values become comments); ``load_config`` reads it back."""
    lines = []
    for section, values in sections.items():
        lines.append(f"\n[{section}]")
        for key, value in values.items():
            lines.append(f"# {key} = (unset)" if value is None else f"{key} = {_toml_value(value)}")
    return "\n".join(lines).lstrip("\n") + "\n"


def load_config(path: str | Path) -> Config:
    """Read a TOML config file. Errors name the file and the problem."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file not found: {p}")
    if p.is_dir():
        raise ConfigError(f"config path is a folder, not a TOML file: {p}")
    try:
        raw = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p} is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p} is not a text file") from None
    return Config.from_dict(raw, name=p.stem, base_dir=str(p.parent.resolve()))


def config_hash(payload: Any) -> str:
    """A stable short hash of JSON-able data."""
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


# ---------------------------------------------------------------------- helpers
def _unknown(what: str, key: str, valid) -> str:
    valid = sorted(valid)
    return f"unknown {what} {key!r}.{did_you_mean(key, valid)} Valid: {', '.join(valid)}"


def _choice(key: str, value: Any, options: list[str]) -> None:
    if value not in options:
        raise ConfigError(f"{key} = {value!r} is not one of {', '.join(options)}.{did_you_mean(value, options)}")


def _build_section(section_cls, section: str, values: dict[str, Any]):
    valid = {f.name for f in fields(section_cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in valid:
            raise ConfigError(_unknown(f"key in [{section}]", key, valid))
        kwargs[key] = _coerce(section_cls, key, value, section)
    return section_cls(**kwargs)


_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "str | None": (str, type(None)),
    "int": (int,),
    "int | None": (int, type(None)),
    "float": (float, int),
    "float | None": (float, int, type(None)),
    "bool": (bool,),
    "list[str]": (list,),
    "dict[str, Any]": (dict,),
}


def _coerce(section_cls, key: str, value: Any, section: str) -> Any:
    ftype = {f.name: f.type for f in fields(section_cls)}[key]
    allowed = _TYPES.get(str(ftype))
    if allowed is None:
        return value
    if bool in allowed and not isinstance(value, bool):
        raise ConfigError(f"{section}.{key} must be true or false, got {value!r}")
    if bool not in allowed and isinstance(value, bool):
        raise ConfigError(f"{section}.{key} must be a {ftype}, got a boolean")
    if not isinstance(value, allowed):
        raise ConfigError(f"{section}.{key} must be {ftype}, got {type(value).__name__} {value!r}")
    if str(ftype) == "list[str]" and not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{section}.{key} must be a list of strings, got {value!r}")
    if float in allowed and isinstance(value, int):
        return float(value)
    return value


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    return json.dumps(str(v))
