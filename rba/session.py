"""A :class:`Session` ties one config to its model, data splits, cached statistics, fits, costs and evaluator.

Everything is built on first use and kept, so commands and search trials share it:
adapter → splits → statistics (disk cache keyed by content hash) → fits → cost model → evaluator.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch import nn

from rba._io import atomic_write_json, atomic_write_text, package_versions
from rba.adapters import Adapter, Span, check_weights_file, create_adapter
from rba.apply import fold_module, span_module, walk_spans
from rba.capture import capture_statistics
from rba.config import Config, load_config
from rba.cost import CostModel
from rba.data import Dataset, Splits, check_data_paths, load_calibration_dataset, load_dataset, make_splits
from rba.errors import CacheError, ModelError, RBAError, SpanError
from rba.evaluate import Evaluator, SplitCache, SplitScores
from rba.export import export_model, load_export
from rba.fit import SpanFit, TrainSettings, fit_span, get_fit
from rba.methods import get_method
from rba.metrics import score_table
from rba.names import HEAD_ATTR, LM_KINDS, config_hash, maps_tag
from rba.onnx import onnx_speedup, onnx_state
from rba.progress import info, phase, tick
from rba.sequential import SequentialFitter
from rba.spans import check_spans, format_spans, parse_spans
from rba.statistics import STATS_FORMAT, Statistics
from rba.timing import time_ms
from rba.vectors import collect_vectors

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

__all__ = ["Session"]

class Session:
    """One config's model, data, statistics, fits, costs and evaluator, each built on first use.

    ``need_labels``: whether accuracy is wanted (None: whenever the data has labels). ``adapter``, ``stats``
    and ``cost_model`` hand over parts already built for this same config (a Ray worker receives them from the
    driver), so they are used instead of being rebuilt; statistics are checked against this config's key.
    """

    def __init__(self, cfg: Config | str | os.PathLike, *, need_labels: bool | None = None, progress: bool = True,
                 measure_latency: bool = True, adapter: Adapter | None = None, stats: Statistics | None = None,
                 cost_model: CostModel | None = None):
        if isinstance(cfg, (str, os.PathLike)):  # a config file's path, as rba.search takes it
            cfg = load_config(cfg)
        elif not isinstance(cfg, Config):
            raise RBAError(f"Session(cfg): cfg must be a Config (rba.load_config(path)) or a config file's path, "
                           f"got {type(cfg).__name__} {cfg!r:.60}")
        self.cfg = cfg
        self.progress = progress
        self.measure_latency = measure_latency
        self._need_labels = need_labels
        self._fits: dict[tuple[Span, str], SpanFit] = {}
        self._vectors: dict[int, torch.Tensor] = {}
        self._given_adapter = adapter
        self._given_stats = stats
        self._given_cost_model = cost_model
        check_weights_file(cfg)  # a wrong path fails now, not after the model has loaded
        check_data_paths(cfg)

    # ------------------------------------------------------------------ model and data
    @cached_property
    def adapter(self) -> Adapter:
        if self._given_adapter is not None:
            return self._given_adapter
        m = self.cfg.model
        # no "… so far" lines in logs: a model the config cannot build is one error line, however slow the import
        with phase(f"model: loading {m.kind} {m.name}", enabled=self.progress, heartbeat=False):
            return create_adapter(self.cfg)

    @cached_property
    def dataset(self) -> Dataset:
        with phase(f"data: reading {self.cfg.data.kind} {self.cfg.data.path or ''}".rstrip(), enabled=self.progress,
                   heartbeat=False):
            return load_dataset(self.cfg, need_labels=self._need_labels)

    @property
    def need_labels(self) -> bool:
        """Whether accuracy is computed: never for a decoder LM (its rows are tokens, scored by the next-token
        objectives), else as asked, or whenever the data has labels."""
        if self.cfg.model.kind in LM_KINDS:
            return False
        if self._need_labels is None:
            return self.dataset.labels is not None
        return self._need_labels

    @cached_property
    def splits(self) -> Splits:
        return make_splits(self.dataset, self.cfg, need_labels=self.need_labels,
                           calibration=load_calibration_dataset(self.cfg, self.dataset))

    @cached_property
    def pairs(self) -> list[Span]:
        return self.adapter.valid_spans(self.cfg.search.max_span)

    # ------------------------------------------------------------------ statistics
    def statistics_request(self, mlp_outputs: bool | None = None) -> dict[str, Any]:
        """What the statistics depend on: model identity (with its weights digest), calibration data (a content
        hash of the calibration split, from ``data.calibration_path`` in a transfer), preprocessing and capture
        settings, and whether they hold the MLP outputs (``mlp_outputs``, default :meth:`folds`; the key is absent
        without them, so those statistics keep their key). Its hash is the cache key; the cache records it and is
        verified against it on load."""
        d = self.cfg.data
        request = {
            "format": STATS_FORMAT,
            "model": self.adapter.identity,
            "calibration": self.splits.calibration.fingerprint(),
            "preprocess": {"max_length": d.max_length, "image_size": d.image_size},
            "dtype": self.cfg.capture.dtype,
            "pairs": self.pairs,
        }
        if self.folds() if mlp_outputs is None else mlp_outputs:
            request["mlp_outputs"] = True
        if self.cfg.capture.skip_first_token:  # absent otherwise: statistics over every token keep their key
            request["skip_first_token"] = True
        return request

    def statistics_key(self) -> str:
        return config_hash(self.statistics_request())

    def folds(self) -> bool:
        """Whether this config's spans are fitted by a kind that folds (``[fit] kind``, or the one its search method
        replaces spans with, as ``replaceme``'s ``fold``): its statistics then carry the MLP outputs."""
        kinds = {self.cfg.fit.kind, get_method(self.cfg.search.method).fit_kind(self.cfg.fit.kind)}
        return any(get_fit(k).folds for k in kinds)

    def cache_dir(self) -> Path:
        return self.cfg.cache_dir()

    @cached_property
    def stats(self) -> Statistics:
        return self._statistics(self.folds())

    @cached_property
    def fold_stats(self) -> Statistics:
        """Statistics with the MLP outputs, for a fit that folds: :attr:`stats` when they hold them, else those of a
        pass of their own (a fold asked for by a config whose fit kind does not fold)."""
        return self.stats if self.stats.mlp is not None else self._statistics(True)

    def _statistics(self, mlp_outputs: bool) -> Statistics:
        request = self.statistics_request(mlp_outputs)
        key = config_hash(request)
        given = self._given_stats
        # a fold's MLP-output statistics beyond the plain ones handed over (a report's replaceme baseline): their own
        # pass, from the cache when an earlier one wrote it
        if given is not None and not (mlp_outputs and given.mlp is None):
            if given.key != key:
                raise ValueError(f"the statistics handed to this Session have key {given.key!r}, but "
                                 f"its config needs {key!r} (another model, calibration split or capture setting)")
            return given
        path = self.cache_dir() / f"stats-{key}.safetensors"
        if path.exists():
            try:
                stats = Statistics.load(path, request=request)
                info(f"statistics: loaded cache {path}", enabled=self.progress)
                return stats
            except CacheError as exc:
                log.warning(f"rba: warning: {exc}; rebuilding it")
        stats = capture_statistics(
            self.adapter,
            self.splits.calibration.samples,
            pairs=self.pairs,
            batch_size=self.cfg.capture.batch_size,
            dtype=self.cfg.capture.dtype,
            max_memory_gb=self.cfg.capture.max_memory_gb,
            progress=self.progress,
            key=key,
            meta={"model": self.adapter.identity, "samples": len(self.splits.calibration), "request": request},
            mlp_outputs=mlp_outputs,
            skip_first_token=self.cfg.capture.skip_first_token,
        )
        stats.save(path)
        return stats

    # ------------------------------------------------------------------ spans, fits and maps
    def parse(self, text: str) -> list[Span]:
        """Validated spans from ``"2-5,7-9"`` / ``"none"`` / ``"best"`` (the span with the lowest ls_residual)."""
        if str(text).strip().lower() == "best":
            return [self.best_span()]
        return self.check(parse_spans(text))

    def check(self, spans: str | Sequence[Span]) -> list[Span]:
        """Spans as text (:meth:`parse`) or (start, end) pairs, validated against the model and ``search.max_span``
        as the text form is: sorted, non-overlapping, in range, each joining boundaries of one shape."""
        if isinstance(spans, str):
            return self.parse(spans)
        return check_spans(spans, num_blocks=self.adapter.num_blocks, shapes=self.adapter.boundary_shapes(),
                           max_span=self.cfg.search.max_span)

    def best_span(self) -> Span:
        table = score_table(self.stats, self.cfg.fit.ridge)
        row = table.loc[table["ls_residual"].idxmin()]
        return (int(row.start), int(row.end))

    def fit(self, span: Span, kind: str | None = None, *, refit: bool = False) -> SpanFit:
        """The independent fit of ``span`` (on the unmodified network), from what its plug-in needs; kept for
        reuse (``refit=True`` fits it again, cold: the statistics' factorisations are dropped too)."""
        kind = kind or self.cfg.fit.kind
        if refit:
            self._fits.pop((span, kind), None)
            if "stats" in self.__dict__:
                self.stats.scratch.clear()
        if (span, kind) not in self._fits:
            if get_fit(kind).needs == "vectors":
                f = self.cfg.fit
                seed = self.cfg.data.seed if f.seed is None else f.seed
                fit = fit_span(None, span, kind, f.ridge, vectors=self.fit_vectors(span), seed=seed,
                               train=TrainSettings.of(f))
            else:
                stats = self.fold_stats if get_fit(kind).folds else self.stats
                fit = fit_span(stats, span, kind, self.cfg.fit.ridge)
            self._fits[(span, kind)] = fit
        return self._fits[(span, kind)]

    def keep_vectors(self, spans: Sequence[Span]) -> None:
        """Keep the bounded sample of calibration vectors (``fit.max_vectors`` per boundary) at the boundaries of
        ``spans`` that are not held yet: one forward pass over the first calibration samples for all of them,
        its memory printed and capped by ``capture.max_memory_gb`` counting what is already held."""
        missing = sorted({k for span in spans for k in span} - set(self._vectors))
        if not missing:
            return
        held = sum(v.numel() * v.element_size() for v in self._vectors.values()) / 2**30
        c = self.cfg.capture
        self._vectors |= collect_vectors(self.adapter, self.splits.calibration.samples, missing,
                                         limit=self.cfg.fit.max_vectors, batch_size=c.batch_size,
                                         max_memory_gb=c.max_memory_gb - held, progress=self.progress,
                                         skip_first_token=self.cfg.capture.skip_first_token)

    def fit_vectors(self, span: Span) -> tuple[torch.Tensor, torch.Tensor]:
        """Paired vectors (x_i, x_j) of the unmodified network for a fit that trains on vectors: those of the
        first calibration samples (the split is already a random draw), ``fit.max_vectors`` at most, float32 on
        the CPU, from the sample :meth:`keep_vectors` holds."""
        self.keep_vectors([span])
        x, y = self._vectors[span[0]], self._vectors[span[1]]
        n = min(x.shape[0], y.shape[0])
        return x[:n], y[:n]

    @cached_property
    def sequential(self):
        """Sequential fits (``[fit] mode = "sequential"``) of this session's configurations."""
        return SequentialFitter(self)

    def maps(self, spans: Sequence[Span], kind: str | None = None, mode: str | None = None) -> list[nn.Module]:
        """Replacement modules for the configuration ``spans`` (sorted), on the model's device and dtype.

        The one place ``[fit] mode`` is honoured: every command (evaluate, export, search) gets its maps here."""
        kind = kind or self.cfg.fit.kind
        mode = mode or self.cfg.fit.mode
        plugin = get_fit(kind)
        if plugin.folds:
            _check_foldable(spans, mode)
        if mode == "sequential":
            return self.sequential.maps(spans, kind)
        if plugin.needs == "vectors":
            self.keep_vectors(spans)  # one pass for every boundary this configuration needs
        dtype = next(self.adapter.model.parameters()).dtype
        if plugin.folds:
            return [fold_module(self.adapter, self.fit(s, kind), dtype) for s in spans]
        return [span_module(self.fit(s, kind), self.adapter.layout, dtype).to(self.adapter.device) for s in spans]

    # ------------------------------------------------------------------ cost and evaluation
    @cached_property
    def cost_model(self) -> CostModel:
        if self._given_cost_model is not None:
            return self._given_cost_model
        what = "FLOPs and per-block latency" if self.measure_latency else "FLOPs"
        with phase(f"cost model: {what}", enabled=self.progress):
            return CostModel.measure(self.adapter, self.splits.eval.samples, batch_size=self.cfg.evaluate.batch_size,
                                     latency_repeats=self.cfg.evaluate.latency_repeats,
                                     measure_latency=self.measure_latency)

    @cached_property
    def evaluator(self) -> Evaluator:
        e = self.cfg.evaluate
        starts = {i for i, _ in self.pairs}
        if self.folds():  # a fold's forward starts at the block before its span
            starts |= {i - 1 for i in starts if i >= 1}
        return Evaluator(self.adapter, self.splits, head=e.head, batch_size=e.batch_size, probe_c=e.probe_c,
                         need_labels=self.need_labels, starts=starts, progress=self.progress)

    def evaluate(self, spans: str | Sequence[Span], kind: str | None = None, mode: str | None = None) -> dict[str, Any]:
        """All result columns for one configuration: validated spans, or text for :meth:`parse`."""
        kind = kind or self.cfg.fit.kind
        mode = mode or self.cfg.fit.mode
        spans = self.check(spans)
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            maps = self.maps(spans, kind, mode)
        scores = self.evaluator.score(walk_spans(spans, maps), maps, tag=maps_tag(kind, mode))
        tick()  # one evaluation, for the phase that counts them (rba run's report)
        return {"spans": format_spans(spans)} | scores | self.cost_model.cost(spans, kind)

    def evaluate_split(self, spans: str | Sequence[Span], split: str = "test", kind: str | None = None,
                       mode: str | None = None) -> "SplitScores":
        """One configuration's per-sample cosines and predictions (decoder LMs: next-token NLL, KL and top-1
        agreement per sample, with their token counts) on ``split`` (``"test"``: the held-out split
        ``data.test``, which no search sees; ``"eval"``), for standard errors and paired tests (:mod:`rba.stats`)."""
        kind = kind or self.cfg.fit.kind
        mode = mode or self.cfg.fit.mode
        spans = sorted(self.parse(spans) if isinstance(spans, str) else spans)
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            maps = self.maps(spans, kind, mode)
        return self.evaluator.per_sample(walk_spans(spans, maps), maps, split=split, tag=maps_tag(kind, mode))

    def scores(self) -> pd.DataFrame:
        """One row per valid span: ``start, end`` and one column per registered metric (:func:`rba.metrics.list_metrics`)."""
        return score_table(self.stats, self.cfg.fit.ridge)

    def export(self, spans: str | Sequence[Span], out: str | Path) -> Path:
        """Write ``out/model.safetensors`` and ``out/recipe.json`` for this configuration; reload it with
        :func:`rba.load_export`."""
        return export_model(self, self.check(spans), out)

    def clear_caches(self) -> None:
        """Forget what is kept per configuration -- span fits (sequential ones too), the statistics'
        factorisations, the evaluator's prefix memo -- so that the next evaluation starts cold. The model, splits,
        statistics, split caches and cost model stay."""
        self._fits.clear()
        self.__dict__.pop("sequential", None)  # its memo of prefix passes and fits goes with it
        if "stats" in self.__dict__:
            self.stats.scratch.clear()
        if "evaluator" in self.__dict__:
            self.evaluator.clear_memo()

    # ------------------------------------------------------------------ output folder records
    def write_run_info(self, out: Path, **extra: Any) -> None:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.resolved.toml", self.cfg.to_toml(out))
        atomic_write_json(out / "run.json", {
            "versions": package_versions(),
            "statistics_hash": self.stats.key,
            "model": self.adapter.identity,
            "splits": {k: len(v) for k, v in self.splits.indices.items()},
        } | extra)

    def evaluate_export(self, folder: str | Path) -> dict[str, Any]:
        """Score an exported model end to end on this session's splits (latency measured, not modelled).

        The export must come from this config's model and preprocessing: anything else is refused before any
        evaluation runs, naming both model identities."""
        model = self.cfg.model
        trusted = model.kind == "module" and model.trust_code
        exported = load_export(folder, device=str(self.adapter.device), trust_code=trusted,
                               factory=model.name if trusted else None)
        recipe = exported.export_recipe
        self._check_export_identity(folder, recipe)
        spans = parse_spans(recipe["spans"])
        kind = recipe["fit"]["kind"]
        bs = self.cfg.evaluate.batch_size
        pooled = {}
        for name in self.evaluator.parts:
            split = getattr(self.splits, name)
            pooled[name] = SplitCache.build(exported, split.samples, split.labels, keep=set(), batch_size=bs,
                                            name=name).pooled
        scores = self.evaluator.score_pooled(pooled)
        batch = exported.collate(self.splits.eval.samples[:bs])
        n = len(self.splits.eval.samples[:bs])
        with torch.inference_mode():
            latency = time_ms(lambda: exported.forward(batch), repeats=self.cfg.evaluate.latency_repeats, samples=n)
        costs = self.cost_model.cost(spans, kind)
        # the model's parameters, as for a configuration: an exported probe head is the classifier, not the model
        head = getattr(exported.model, HEAD_ATTR, None)
        head_params = 0 if head is None else sum(p.numel() for p in head.parameters())
        costs["params"] = float(sum(p.numel() for p in exported.model.parameters()) - head_params)
        costs["params_frac"] = costs["params"] / self.cost_model.total_params
        costs["latency_ms"] = latency.median_ms
        result = {"spans": format_spans(spans)} | scores | costs

        state = onnx_state(folder)
        if state == "current":  # written by `rba export --format onnx`: ONNX Runtime latency of both, interleaved
            speed = onnx_speedup(folder, repeats=max(7, self.cfg.evaluate.latency_repeats))
            result |= {k: v for k, v in speed.items() if k.startswith("onnx_")}
        elif state == "stale":
            log.warning(f"rba: note: {Path(folder) / 'model.onnx'} belongs to an earlier export into this folder: ONNX "
                 "Runtime latency not measured (rerun `rba export … --format onnx`)")
        tick()  # one evaluation, for the phase that counts them (rba run's report)
        return result

    def _check_export_identity(self, folder: str | Path, recipe: dict[str, Any]) -> None:
        """Refuse an export of another model, or of the same model with other input dimensions."""
        d = self.cfg.data
        ours = {"identity": self.adapter.identity, "preprocess": {"max_length": d.max_length, "image_size": d.image_size}}
        theirs = {"identity": recipe["identity"], "preprocess": recipe["preprocess"]}
        # compared as JSON, the form the recipe was written in (tuples become lists)
        if json.dumps(ours, sort_keys=True, default=str) != json.dumps(theirs, sort_keys=True, default=str):
            raise ModelError(
                f"{folder} was exported from {_describe_model(**theirs)}, but this config describes "
                f"{_describe_model(**ours)}: evaluate the export with the config it was exported from, or export "
                "this config's model with `rba export`"
            )


def _check_foldable(spans: Sequence[Span], mode: str) -> None:
    """A fold needs block i − 1 of each span (i, j) kept and run: no span from boundary 0, none right after another
    (its block i − 1 would be replaced), and independent fits (the fold is fitted on the unmodified network)."""
    if mode == "sequential":
        raise SpanError("fit kind \"fold\" fits every span on the unmodified network: set [fit] mode = "
                        "\"independent\" (or use [fit] kind = \"affine\" for sequential fits)")
    for (a, b), (i, j) in zip(spans, spans[1:]):
        if b == i:
            raise SpanError(f"spans {a}-{b} and {i}-{j}: fit kind \"fold\" multiplies the map of {i}-{j} into block "
                            f"{i - 1}, which {a}-{b} replaces; leave a block between them, or join them into {a}-{j}")
    if spans and spans[0][0] == 0:
        i, j = spans[0]
        raise SpanError(f"span {i}-{j}: fit kind \"fold\" multiplies its map into the MLP of the block before the "
                        "span, and no block precedes boundary 0; use [fit] kind = \"affine\" for spans from 0")


def _describe_model(identity: dict[str, Any], preprocess: dict[str, Any]) -> str:
    """A model identity in one phrase: kind:name, options, weights digest, input dimensions."""
    words = [f"{identity.get('kind')}:{identity.get('name')}"]
    rest = {k: v for k, v in identity.items() if k not in ("kind", "name")}
    if isinstance(rest.get("weights"), str) and len(rest["weights"]) > 16:
        rest["weights"] = rest["weights"][:12] + "…"
    words += [f"{k}={v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str)}"
              for k, v in sorted(rest.items())]
    words += [f"{k}={v}" for k, v in sorted(preprocess.items()) if v is not None]
    return " ".join(words)
