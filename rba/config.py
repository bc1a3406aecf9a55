"""One config schema for every command: a TOML file becomes nested dataclasses.

Precedence: CLI flags > the file > the defaults below. Unknown keys anywhere are an error naming the key and
the valid ones. Configs are parsed as data (``tomllib``); nothing in them is evaluated.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
import typing
from dataclasses import field, fields
from pathlib import Path
from typing import Annotated, Any, Literal, overload

import pydantic
from pydantic import Field
from pydantic.dataclasses import dataclass

from rba._registry import ADAPTERS, FITS
from rba.errors import ConfigError, did_you_mean
from rba.methods import list_methods
from rba.names import DEFAULT_OBJECTIVES, LM_KINDS, OBJECTIVES, config_hash
from rba.samplers import list_samplers

__all__ = [
    "Config",
    "check_dotted_key",
    "ModelConfig",
    "DataConfig",
    "CaptureConfig",
    "FitConfig",
    "EvaluateConfig",
    "RunConfig",
    "ReportConfig",
    "SearchConfig",
    "OutputConfig",
    "load_config",
    "load_study",
    "list_studies",
    "default_cache_dir",
    "config_hash",
    "dict_to_toml",
]

CONFIG_VERSION = 1

# pydantic checks every value against its annotation (strict: no "3" for 3, no true for 1), including on
# assignment (CLI overrides); its errors become one-line ConfigErrors in _config_error.
_SCHEMA = pydantic.ConfigDict(strict=True, validate_assignment=True, allow_inf_nan=False)

#: torch and numpy seed generators take 32-bit seeds
_SEED = Annotated[int, Field(ge=0, le=2**32 - 1)]
_COUNT = Annotated[int, Field(ge=0)]
_POSITIVE_INT = Annotated[int, Field(ge=1)]


@dataclass(config=_SCHEMA)
class ModelConfig:
    kind: str = "timm"
    """a registered adapter kind (``rba ls adapters``, :data:`rba._registry.ADAPTERS`)"""
    name: str = ""
    weights: str | None = None
    """a local weights file (safetensors, or a torch checkpoint loaded with weights_only=True)"""
    weights_hint: str | None = None
    """how to obtain ``weights`` (e.g. the command that trains them): named in the error when the file is missing"""
    pretrained: bool = True
    """false: random initialisation (tests); true: the asset package's weights or ``weights``"""
    blocks: str | None = None
    """dotted path to the block list (kind = "module"; optional override for the others)"""
    trust_code: bool = False
    """kind = "module" imports and calls the factory the config names, i.e. runs code: opt in explicitly"""
    options: dict[str, Any] = field(default_factory=dict)
    """extra keyword arguments for the model constructor (e.g. timm ``depth``, ``embed_dim``)"""
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    """where capture, fits and evaluation run: cpu, cuda (an error without a GPU), auto (the GPU if any)"""
    forward_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """the dtype the model runs its forward in; statistics are still accumulated in float64 (``capture.dtype``
    sets the batch products' dtype, float32 or float64), fits solved in float64"""


@dataclass(config=_SCHEMA)
class DataConfig:
    kind: Literal["text-csv", "npz", "image-folder", "synthetic"] = "text-csv"
    path: str | None = None
    text: str = "text"
    label: str | None = "label"
    calibration: _POSITIVE_INT = 1000
    probe: _COUNT = 1000
    eval: _COUNT = 1000
    test: _COUNT = 0
    """held-out samples drawn after eval from the same permutation (so the other splits stay as without it): what
    reports quote; never seen by a search or the export rule"""
    seed: _SEED = 0
    max_length: _POSITIVE_INT = 128
    image_size: _POSITIVE_INT | None = None
    options: dict[str, Any] = field(default_factory=dict)
    """kind-specific settings (synthetic data: shape, classes)"""
    calibration_path: str | None = None
    """cross-dataset transfer: draw the calibration split (statistics and fits) from this data set instead;
    probe and eval still come from ``path``. Unset: everything from ``path``"""
    calibration_kind: Literal["text-csv", "npz", "image-folder"] | None = None
    """the kind of ``calibration_path`` (default: ``kind``)"""


@dataclass(config=_SCHEMA)
class CaptureConfig:
    batch_size: _POSITIVE_INT = 64
    dtype: Literal["float32", "float64"] = "float32"
    """float32: batch products in float32 added into float64 totals; float64: everything in float64"""
    cache_dir: str | None = None
    """statistics cache folder (default: $XDG_CACHE_HOME/rba, else ~/.cache/rba, shared by all studies)"""
    max_memory_gb: Annotated[float, Field(gt=0)] = 8.0
    """refuse to allocate statistics larger than this"""
    skip_first_token: bool = False
    """leave each sample's first real token out of the statistics (scores and fits; token models only): a decoder
    LM's first token carries massive activations that dominate variance-normalised scores. Measured on SmolLM2
    (docs/decoder-lms.md) it ranks single layers worse and fits worse, so it is off by default"""


@dataclass(config=_SCHEMA)
class FitConfig:
    kind: str = "affine"
    """a registered fit kind (``rba ls fits``, :data:`rba._registry.FITS`)"""
    ridge: Annotated[float, Field(ge=0)] = 1e-6
    mode: Literal["independent", "sequential"] = "independent"
    steps: _POSITIVE_INT = 300
    """trained fits (mlp, res-mlp, ...): Adam steps per span (with early stopping: at most this many)"""
    lr: Annotated[float, Field(gt=0)] = 1e-3
    """trained fits: Adam's learning rate (its peak, with a schedule)"""
    batch_size: _POSITIVE_INT = 1024
    """trained fits: paired vectors per step (the whole sample when it is smaller)"""
    max_vectors: _POSITIVE_INT = 16384
    """trained fits: calibration vectors kept per boundary to train on (memory capped by capture.max_memory_gb)"""
    schedule: Literal["constant", "cosine"] = "constant"
    """trained fits: the learning rate over the steps, constant or cosine decay to 0 at ``steps``"""
    warmup_steps: _COUNT = 0
    """trained fits: steps of linear warm-up from 0 to ``lr`` before the schedule"""
    holdout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    """trained fits: fraction of their paired vectors held out (a seeded draw) for early stopping; 0: none"""
    eval_every: _POSITIVE_INT = 50
    """trained fits with a hold-out: steps between evaluations of the held-out MSE"""
    patience: _POSITIVE_INT = 10
    """trained fits with a hold-out: stop after this many evaluations without a better held-out MSE (the best
    evaluation's weights are kept)"""
    max_seconds: Annotated[float, Field(gt=0)] | None = None
    """trained fits: wall-clock cap of one fit's training, seconds (unset: none; a capped run is not reproducible to
    the step)"""
    seed: _SEED | None = None
    """trained fits: the seed of their initialisation, minibatch order and hold-out draw (unset: data.seed)"""

    def changed_training(self) -> dict[str, Any]:
        """The training settings added after the paper's (``LATER_TRAINING_KEYS``) that differ from their
        defaults: what identities record of them, so that folders written before they existed keep theirs."""
        defaults = FitConfig()
        return {k: getattr(self, k) for k in LATER_TRAINING_KEYS if getattr(self, k) != getattr(defaults, k)}


#: [fit] keys of trained fits added after the paper's steps, lr, batch_size (:meth:`FitConfig.changed_training`)
LATER_TRAINING_KEYS = ("schedule", "warmup_steps", "holdout", "eval_every", "patience", "max_seconds", "seed")


@dataclass(config=_SCHEMA)
class EvaluateConfig:
    head: Literal["probe", "fixed-probe", "native"] = "probe"
    batch_size: _POSITIVE_INT = 64
    probe_c: Annotated[float, Field(gt=0)] = 1.0
    """inverse L2 regularisation of the probe (as scikit-learn's C)"""
    latency_repeats: _POSITIVE_INT = 5


@dataclass(config=_SCHEMA)
class SearchConfig:
    trials: _COUNT = 50
    backend: Literal["optuna", "ray"] = "optuna"
    method: str = "optuna"
    """a registered search method (``rba ls methods``): optuna (the sampler) or a baseline"""
    sampler: str = "tpe"
    """a registered sampler (``rba ls samplers``, :mod:`rba.samplers`)"""
    seed: _SEED = 0
    objectives: list[str] = field(default_factory=lambda: list(DEFAULT_OBJECTIVES[False]))
    """names of :data:`rba.names.OBJECTIVES`; a config that names none gets ["accuracy", "flops"], or ["kl", "flops"]
    for a decoder LM (``model.kind = "causal-lm"``)"""
    budget_flops: float | None = None
    budget_params: float | None = None
    budget_latency: float | None = None
    max_span: int | None = None
    priors: bool | Literal["proxy"] = True
    """method optuna's first trials: true (proxy fronts, best single spans, BR-greedy), "proxy" (the proxy fronts and
    the best ls_residual span: nothing br proposes, for a search compared with BR-greedy), false (none)"""
    storage: str | None = None
    study_name: str | None = None
    timeout: Annotated[float, Field(gt=0)] | None = None
    ray_address: str | None = None
    max_concurrent: _POSITIVE_INT = 2
    max_failures: _COUNT = 1
    screening: bool = False
    early_stop: bool = False
    """score the eval split in growing subsets (1/4, 1/2, all) and stop a trial that the current front dominates by
    more than the subset's standard error (Optuna backend, ``method = "optuna"``; docs/method.md)"""


@dataclass(config=_SCHEMA)
class RunConfig:
    max_drop: Annotated[float, Field(ge=0)] = 0.01
    """``rba run`` exports the cheapest front member whose first quality objective, when it is maximised, is at
    most this far (absolute) below the unmodified model's"""
    max_rise: Annotated[float, Field(ge=0)] = 0.05
    """... and, when it is minimised (perplexity, kl), at most this far above it, relative: perplexity at most
    (1 + max_rise) × the unmodified model's, kl (nats) at most log(1 + max_rise) above it"""
    onnx: bool = False
    """``rba run`` also writes the export (and the unmodified model) as ONNX and reports the measured ONNX Runtime
    speed-up next to FLOPs"""


@dataclass(config=_SCHEMA)
class ReportConfig:
    """``rba run``'s report: which analysis sections it computes (the cheap ones by default)."""

    baselines: bool | list[str] = True
    """evaluate baseline methods beside the search (configurations the trials evaluated are reused): ``true`` for
    br-greedy, shortgpt, shortgpt-affine, sleb, gromov and gromov-affine, or a list of method names (``rba ls
    methods``, e.g. ``["shortgpt", "sleb", "gromov", "replaceme"]``)"""
    baseline_min_flops: Annotated[float, Field(ge=0, lt=1)] = 0.0
    """the baselines' configurations below this FLOPs fraction are not evaluated, and SLEB stops removing blocks
    there (also ``--method sleb``): what removes more than any budget the report compares at costs evaluations
    and adds nothing (e.g. 0.7 with ``flops_points = [0.8, 0.9]``); 0: all of them"""
    baseline_max_flops: Annotated[float, Field(gt=0)] = 1.0
    """... and those above this FLOPs fraction neither (SLEB still removes blocks through them): with
    ``baseline_min_flops``, a window around the budgets the report compares at, for models whose every evaluation
    is dear (a decoder LM's test split); 1: all of them"""
    sleb_stride: _POSITIVE_INT = 4
    """SLEB re-measures each candidate removal on every n-th batch of the eval split (also ``--method sleb``): a
    larger stride, a smaller token subset, for models whose every evaluation is dear"""
    single_spans: bool = False
    """evaluate every single span (trial results reused) for the Spearman correlation of each metric with the
    post-replacement fidelity and accuracy"""
    flops_points: list[Annotated[float, Field(gt=0)]] = field(default_factory=lambda: [0.5, 0.7])
    """FLOPs fractions at which the report compares the best quality of the search and the baselines"""
    speedup_repeats: _POSITIVE_INT = 7
    """interleaved repeats of the export's speed-up measurement"""


@dataclass(config=_SCHEMA)
class OutputConfig:
    dir: str | None = None


@dataclass(config=_SCHEMA)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    fit: FitConfig = field(default_factory=FitConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    run: RunConfig = field(default_factory=RunConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    #: the file name without extension, used for the default output folder
    name: str = "rba"
    #: relative paths in the config resolve against this folder: the config file's own folder, or the working
    #: directory for a shipped study run by name
    base_dir: str = "."

    # ------------------------------------------------------------------ building
    @classmethod
    def from_dict(cls, raw: dict[str, Any], *, name: str = "rba", base_dir: str = ".") -> "Config":
        if not isinstance(raw, dict):
            raise ConfigError("the config's top level must be a table of sections")
        sections = _sections()
        kwargs: dict[str, Any] = {}
        for key, value in raw.items():
            if key not in sections:
                raise ConfigError(_unknown("section", key, sections))
            if not isinstance(value, dict):
                raise ConfigError(f"[{key}] must be a table, got {type(value).__name__}")
            kwargs[key] = _build_section(sections[key], key, value)
        cfg = cls(**kwargs, name=name, base_dir=base_dir)
        if "objectives" not in raw.get("search", {}):
            cfg.search.objectives = list(DEFAULT_OBJECTIVES[cfg.model.kind in LM_KINDS])
        if cfg.model.kind in LM_KINDS and "head" in raw.get("evaluate", {}):
            raise ConfigError(f"evaluate.head = {cfg.evaluate.head!r}, but model.kind = {cfg.model.kind!r} is a "
                              "decoder language model, scored by its own next-token distribution (objectives "
                              "perplexity, kl, top1): remove evaluate.head")
        return cfg.validate()

    def override(self, flags: dict[str, Any]) -> "Config":
        """Apply CLI flags given as ``{"search.trials": 10, ...}``; None means "not given"."""
        for dotted, value in flags.items():
            if value is None:
                continue
            check_dotted_key(dotted)
            section, key = dotted.split(".", 1)
            target = getattr(self, section)
            valid = {f.name for f in fields(target)}
            if key not in valid:
                raise ConfigError(_unknown(f"key in [{section}]", key, valid, section))
            try:
                setattr(target, key, value)
            except pydantic.ValidationError as exc:
                raise _config_error(exc, section, {key: value}) from None
        return self.validate()

    def validate(self) -> "Config":
        """Checks across keys and against the registries (pydantic has checked each value on its own)."""
        _choice("model.kind", self.model.kind, sorted(ADAPTERS.names()))
        _choice("fit.kind", self.fit.kind, sorted(FITS.names()))
        _choice("search.sampler", self.search.sampler, list_samplers())
        _choice("search.method", self.search.method, list_methods())
        for obj in self.search.objectives:
            _choice("search.objectives", obj, list(OBJECTIVES))
        if len(set(self.search.objectives)) != len(self.search.objectives):
            raise ConfigError(f"search.objectives lists a name twice: {self.search.objectives}")
        if not self.search.objectives:
            raise ConfigError(f"search.objectives is empty: name at least one of {', '.join(OBJECTIVES)}")
        self._check_objectives_fit_the_model()
        if self.search.max_span is not None and self.search.max_span < 1:
            raise ConfigError(f"search.max_span = {self.search.max_span}: it must be at least 1 (a span covers one block or more)")
        if self.fit.warmup_steps and self.fit.warmup_steps >= self.fit.steps:
            raise ConfigError(f"fit.warmup_steps = {self.fit.warmup_steps} is not below fit.steps = {self.fit.steps}: "
                              "lower warmup_steps, or raise steps")
        if self.data.calibration_kind is not None and self.data.calibration_path is None:
            raise ConfigError(f"data.calibration_kind = {self.data.calibration_kind!r} but data.calibration_path is "
                              "not set: give the calibration data set's path, or drop calibration_kind")
        if self.report.baseline_min_flops >= self.report.baseline_max_flops:
            raise ConfigError(f"report.baseline_min_flops = {self.report.baseline_min_flops} is not below "
                              f"report.baseline_max_flops = {self.report.baseline_max_flops}: no baseline "
                              "configuration would be evaluated; lower the first or raise the second")
        if isinstance(self.report.baselines, list):
            for name in self.report.baselines:
                _choice("report.baselines", name, [m for m in list_methods() if m not in _NOT_BASELINES])
        for key in ("budget_flops", "budget_params", "budget_latency"):
            v = getattr(self.search, key)
            if v is not None and v <= 0:
                raise ConfigError(f"search.{key} = {v}: a budget is a positive fraction of the unmodified model (e.g. 0.7)")
        return self

    def _check_objectives_fit_the_model(self) -> None:
        """Next-token objectives only for decoder LMs (:data:`rba.names.LM_KINDS`); accuracy and its classifier
        heads only for the other models."""
        lm = self.model.kind in LM_KINDS
        lm_names = [n for n, spec in OBJECTIVES.items() if spec.models == "lm"]
        wrong = [o for o in self.search.objectives if OBJECTIVES[o].models == ("encoder" if lm else "lm")]
        if wrong and lm:
            raise ConfigError(f"search.objectives names {', '.join(map(repr, wrong))}, which needs a classifier, but "
                              f"model.kind = {self.model.kind!r} is a decoder language model: use its next-token "
                              f"objectives, e.g. objectives = [\"kl\", \"flops\"] ({', '.join(lm_names)} or fidelity)")
        if wrong:
            raise ConfigError(f"search.objectives names {', '.join(map(repr, wrong))}, which scores a decoder "
                              f"language model's next-token predictions, but model.kind = {self.model.kind!r} is "
                              f"not one ({', '.join(sorted(LM_KINDS))}): use accuracy or fidelity")
        if lm and self.evaluate.head != "probe":
            raise ConfigError(f"evaluate.head = {self.evaluate.head!r}, but model.kind = {self.model.kind!r} is a "
                              "decoder language model, scored by its own next-token distribution (objectives "
                              "perplexity, kl, top1): remove evaluate.head")

    def require_splits(self, command: str, *, accuracy: bool) -> None:
        """Commands that score configurations need eval samples, and probe samples when a probe is fitted."""
        if self.data.eval < 1:
            raise ConfigError(f"data.eval = 0, but `rba {command}` scores configurations on the eval split: "
                              "set data.eval to at least 1")
        if accuracy and self.evaluate.head != "native" and self.data.probe < 1:
            raise ConfigError(f"data.probe = 0, but evaluate.head = {self.evaluate.head!r} fits a classifier on "
                              "the probe split for accuracy: set data.probe to at least 1, or evaluate.head = "
                              "\"native\"")

    # ------------------------------------------------------------------ paths and serialisation
    @overload
    def resolve_path(self, path: str) -> Path: ...
    @overload
    def resolve_path(self, path: None) -> None: ...
    def resolve_path(self, path: str | None) -> Path | None:
        """``path`` as the config means it: relative paths start at :attr:`base_dir`."""
        if path is None:
            return None
        p = Path(path).expanduser()
        return p if p.is_absolute() else (Path(self.base_dir) / p)

    def output_dir(self) -> Path:
        """``output.dir`` (relative to the config), else ``runs/<config name>`` in the working directory."""
        if self.output.dir:
            return self.resolve_path(self.output.dir)
        return Path.cwd() / "runs" / self.name

    def cache_dir(self) -> Path:
        """``capture.cache_dir`` (relative to the config), else the user's cache folder (one for all studies)."""
        if self.capture.cache_dir:
            return self.resolve_path(self.capture.cache_dir)
        return default_cache_dir()

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("name")
        d.pop("base_dir")
        return d

    def to_toml(self, folder: str | Path | None = None) -> str:
        """The config as TOML that reads back the same: its paths resolved, and written relative to ``folder`` (the
        folder the file goes into, so a moved or committed output folder holds no path of this machine), or
        absolute without one."""
        d = self.to_dict()
        for section, key in _PATH_KEYS:
            if d[section][key]:
                path = self.resolve_path(d[section][key]).absolute()
                d[section][key] = str(path) if folder is None else os.path.relpath(path, Path(folder).absolute())
        header = f"# rba resolved config (version {CONFIG_VERSION}, name {self.name!r})\n"
        return header + dict_to_toml(d)


#: the keys holding paths, resolved against Config.base_dir
_PATH_KEYS = [("data", "path"), ("data", "calibration_path"), ("model", "weights"), ("output", "dir"),
              ("capture", "cache_dir")]


def default_cache_dir() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache") / "rba"


def dict_to_toml(sections: dict[str, dict[str, Any]]) -> str:
    """Sections of plain values as TOML text (unset values become comments); ``load_config`` reads it back."""
    lines = []
    for section, values in sections.items():
        lines.append(f"\n[{section}]")
        for key, value in values.items():
            lines.append(f"# {key} = (unset)" if value is None else f"{key} = {_toml_value(value)}")
    return "\n".join(lines).lstrip("\n") + "\n"


def load_config(path: str | os.PathLike[str], *, base_dir: str | Path | None = None) -> Config:
    """Read a TOML config file; relative paths in it resolve against ``base_dir`` (default: the file's folder).

    Errors name the file and the problem."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file not found: {p} (give a TOML file, or a study name that `rba ls studies` lists)")
    if p.is_dir():
        raise ConfigError(f"config path is a folder, not a TOML file: {p}")
    try:
        raw = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p} is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p} is not a text file") from None
    base = Path(base_dir) if base_dir is not None else p.parent
    return Config.from_dict(raw, name=p.stem, base_dir=str(base.resolve()))


def list_studies() -> dict[str, Path]:
    """The shipped study configs by name: ``studies/*.toml`` of a source checkout, or their installed copies
    (the wheel puts them in ``rba/studies``)."""
    here = Path(__file__).resolve().parent
    for folder in (here.parent / "studies", here / "studies"):
        if any(folder.glob("*.toml")):
            return {p.stem: p for p in sorted(folder.glob("*.toml"))}
    return {}


def load_study(name_or_path: str | Path) -> Config:
    """A config file by path (paths inside resolve against its folder), or a shipped study by name (paths inside
    resolve against the working directory, where ``rba data`` writes and ``runs/`` goes)."""
    p = Path(name_or_path)
    if not p.exists() and p.suffix != ".toml":
        studies = list_studies()
        if str(name_or_path) in studies:
            return load_config(studies[str(name_or_path)], base_dir=Path.cwd())
        if studies:
            raise ConfigError(f"no config file or shipped study named {str(name_or_path)!r}."
                              f"{did_you_mean(name_or_path, studies)} Studies: {', '.join(studies)}")
    return load_config(p)


# ---------------------------------------------------------------------- helpers
#: keys that no longer exist → what to do instead
_REMOVED = {
    "search.n_jobs": "search.n_jobs (--n-jobs) was removed: a process runs one trial at a time (evaluations "
                     "share one model and were serialised anyway); for parallel trials start several `rba search` "
                     "processes on the same --out or --storage, or use --backend ray with --max-concurrent",
}


def _unknown(what: str, key: str, valid, section: str | None = None) -> str:
    if f"{section}.{key}" in _REMOVED:
        return _REMOVED[f"{section}.{key}"]
    valid = sorted(valid)
    return f"unknown {what} {key!r}.{did_you_mean(key, valid)} Valid: {', '.join(valid)}"


#: methods that are no baseline of a report: the sampler search itself, and every configuration of the space
_NOT_BASELINES = ("optuna", "exhaustive")


def _choice(key: str, value: Any, options: list[str]) -> None:
    if value not in options:
        raise ConfigError(f"{key} = {value!r} is not one of {', '.join(options)}.{did_you_mean(value, options)}")


def check_dotted_key(dotted: Any) -> None:
    """``dotted`` names a key of a config section (``"search.seed"``), as a flag or a sweep sets it: otherwise one
    ConfigError naming the section or key that is not in the schema."""
    section, _, key = str(dotted).partition(".")
    sections = _sections()
    if not isinstance(dotted, str) or not key:
        raise ConfigError(f"{dotted!r} is not a dotted config key such as search.seed (section.key)")
    if section not in sections:
        raise ConfigError(_unknown(f"section in the key {dotted!r}:", section, sections))
    valid = {f.name for f in fields(sections[section])}
    if key not in valid:
        raise ConfigError(_unknown(f"key in [{section}]", key, valid, section))


def _sections() -> dict[str, type]:
    # every field but these two is a section, whose default_factory is its dataclass (mypy sees the MISSING case too)
    return {f.name: f.default_factory for f in fields(Config) if f.name not in ("name", "base_dir")}  # type: ignore[misc]


def _build_section(section_cls, section: str, values: dict[str, Any]):
    valid = {f.name for f in fields(section_cls)}
    for key in values:
        if key not in valid:
            raise ConfigError(_unknown(f"key in [{section}]", key, valid, section))
    try:
        return section_cls(**values)
    except pydantic.ValidationError as exc:
        raise _config_error(exc, section, values) from None


_TYPE_WORDS = {
    "int_type": "int", "int_parsing": "int", "int_from_float": "int", "float_type": "a number",
    "float_parsing": "a number", "string_type": "str", "bool_type": "true or false", "bool_parsing": "true or false",
    "list_type": "a list", "dict_type": "a table",
}
_BOUND_WORDS = {"greater_than_equal": ("ge", "at least"), "greater_than": ("gt", "greater than"),
                "less_than_equal": ("le", "at most"), "less_than": ("lt", "less than")}


def _config_error(exc: pydantic.ValidationError, section: str, values: dict[str, Any]) -> ConfigError:
    """The first problem pydantic found, as one line naming the key, the value and what it must be."""
    err = exc.errors(include_url=False)[0]
    key = str(err["loc"][0]) if err["loc"] else "?"
    where = f"{section}.{key}"
    value = values.get(key, err.get("input"))
    kind, ctx = err["type"], err.get("ctx", {})
    words = _bool_or_words(section, key)
    if words:  # a switch that also takes words (search.priors): one line naming them all
        return ConfigError(f"{where} = {value!r} is not one of {', '.join(words)}.{did_you_mean(value, words)}")
    if kind in _BOUND_WORDS:
        name, relation = _BOUND_WORDS[kind]
        bound = ctx[name]
        return ConfigError(f"{where} = {value!r}: it must be {relation} {bound:g}" if isinstance(bound, float)
                           else f"{where} = {value!r}: it must be {relation} {bound}")
    if kind == "finite_number":
        return ConfigError(f"{where} = {value!r}: it must be a finite number")
    if kind == "literal_error":
        hint = typing.get_type_hints(_sections()[section])[key]
        literals = [a for a in typing.get_args(hint) if typing.get_origin(a) is Literal]  # Literal[...] | None
        options = [o for lit in literals for o in typing.get_args(lit)] if literals else list(typing.get_args(hint))
        return ConfigError(f"{where} = {value!r} is not one of {', '.join(options)}.{did_you_mean(value, options)}")
    if len(err["loc"]) > 1 and isinstance(err["loc"][1], int):
        return ConfigError(f"{where} must be a list of strings, got {value!r}")
    if kind in _TYPE_WORDS:
        expected = _TYPE_WORDS[kind]
        if isinstance(value, bool) and kind != "bool_type":
            return ConfigError(f"{where} must be {expected}, got a boolean")
        return ConfigError(f"{where} must be {expected}, got {type(value).__name__} {value!r}")
    return ConfigError(f"{where} = {value!r}: {err['msg'][0].lower()}{err['msg'][1:]}")


def _bool_or_words(section: str, key: str) -> list[str]:
    """``["true", "false", word, ...]`` for a key typed ``bool | Literal[word, ...]``, else []."""
    hint = typing.get_type_hints(_sections()[section]).get(key) if section in _sections() else None
    args = typing.get_args(hint)
    if bool not in args:
        return []
    words = [w for a in args if typing.get_origin(a) is Literal for w in typing.get_args(a)]
    return ["true", "false", *words] if words else []


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
