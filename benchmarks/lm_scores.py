"""Which treatment of a decoder LM's residual stream makes the span scores predict the damage of replacing a span.

Decoder LMs carry massive activations in their residual stream (a few dimensions, mostly on the first token, the
attention sink) that dominate variance-normalised statistics. For every span up to ``--max-span`` blocks this
script computes each score (br, cosine, cka, ls_residual, from :mod:`rba.metrics` on statistics accumulated by
:class:`rba.statistics.StatisticsCollector`) under several treatments of the calibration vectors:

- ``as_is``: every real token (what the engine does by default);
- ``no_first``: each text's first token left out;
- ``standardised``: each dimension z-scored per boundary (its mean and standard deviation over the vectors);
- ``rms``: each vector divided by its root mean square (what the next layer's input norm sees, without its
  weight);
- ``no_first+standardised``, ``no_first+rms``: both;

and the KL divergence (from the unmodified model's next-token distribution, mean over the held-out eval tokens)
that replacing the span by its affine map causes: the map fitted on every token (the engine's ``affine``) and,
with ``--no-first-fits``, the map fitted without the first tokens. It reports Spearman rank correlations between
each score (oriented so that higher predicts more damage: −br, 1 − cosine, 1 − cka, ls_residual) and that KL,
within each span length (spans of equal cost, the decision a prior makes) and their mean over lengths.

    python3 benchmarks/lm_scores.py --json benchmarks/out/lm_scores.json      # SmolLM2-135M on plot summaries
    python3 benchmarks/lm_scores.py --quick                                     # tiny random Llama, seconds

Run it from a scratch folder holding data/plots.csv (``rba data plots``) with ``--data``; the model from
``rba data smollm2``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C
import numpy as np
import torch

TREATMENTS = ["as_is", "no_first", "standardised", "rms", "no_first+standardised", "no_first+rms"]
SCORES = {"br": lambda v: -v, "cosine": lambda v: 1 - v, "cka": lambda v: 1 - v, "ls_residual": lambda v: v}


def lm_config(args, cache_dir):
    if args.quick:
        model = {"kind": "causal-lm", "name": "tiny-llama", "pretrained": False,
                 "options": {"num_hidden_layers": 6}}
        data = {"kind": "synthetic", "calibration": 32, "probe": 0, "eval": 16, "seed": 0, "max_length": 32,
                "options": {"modality": "text", "classes": 2}}
    else:
        model = {"kind": "causal-lm", "name": "SmolLM2-135M-Instruct", "pretrained": True}
        data = {"kind": "text-csv", "path": str(Path(args.data).resolve()), "text": "text",
                "label": "", "calibration": args.calibration, "probe": 0, "eval": args.eval, "seed": 0,
                "max_length": args.max_length}
    return C.make_config(model, data, cache_dir=cache_dir, capture_batch=16, eval_batch=8, max_span=args.max_span,
                         fit={"kind": "affine"}, search={"objectives": ["kl", "params"]})


@torch.inference_mode()
def boundary_states(adapter, samples, batch_size: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Every boundary's vectors of ``samples`` (float32, rows in the adapter's vector order) and each row's position
    in its text (0: the first token)."""
    states: list[list[torch.Tensor]] = []
    positions = []
    for start in range(0, len(samples), batch_size):
        h, ctx = adapter.embed(adapter.collate(samples[start:start + batch_size]))
        vecs = [adapter.vectors(h_k, ctx).float() for _, h_k in adapter.boundaries(h, ctx)]
        if not states:
            states = [[] for _ in vecs]
        for k, v in enumerate(vecs):
            states[k].append(v)
        positions.append((ctx.mask.long().cumsum(1) - 1)[ctx.mask])
    return [torch.cat(s) for s in states], torch.cat(positions)


def treat(states: list[torch.Tensor], positions: torch.Tensor, treatment: str) -> list[torch.Tensor]:
    keep = positions > 0 if treatment.startswith("no_first") else torch.ones_like(positions, dtype=torch.bool)
    out = []
    for x in states:
        x = x[keep]
        if treatment.endswith("standardised"):
            x = (x - x.mean(0)) / x.std(0).clamp_min(1e-12)
        elif treatment.endswith("rms"):
            x = x / x.pow(2).mean(1, keepdim=True).sqrt().clamp_min(1e-12)
        out.append(x)
    return out


def statistics_of(states: list[torch.Tensor], pairs, rows: int = 2048):
    from rba.statistics import StatisticsCollector

    collector = StatisticsCollector([x.shape[1] for x in states], pairs)
    for start in range(0, states[0].shape[0], rows):
        collector.update([x[start:start + rows] for x in states])
    return collector.result()


def span_scores(stats, pairs, ridge: float) -> dict[str, np.ndarray]:
    from rba.metrics import BlockRedundancy, Cosine, LinearCKA, LSResidual

    metrics = {"br": BlockRedundancy(), "cosine": Cosine(), "cka": LinearCKA(), "ls_residual": LSResidual(ridge)}
    return {name: np.array([m(stats, s) for s in pairs]) for name, m in metrics.items()}


def span_kl(session, pairs, stats, tag: str) -> np.ndarray:
    """Mean eval KL of every single-span configuration, its affine map fitted from ``stats`` (those of every token
    are what the engine's capture accumulates from the same calibration split)."""
    from rba.apply import span_module
    from rba.fit import fit_span

    kl = []
    for span in pairs:
        fit = fit_span(stats, span, "affine", session.cfg.fit.ridge)
        module = span_module(fit, session.adapter.layout).to(session.adapter.device)
        kl.append(session.evaluator.score([span], [module], tag=tag)["kl"])
    return np.array(kl)


def correlations(scores: dict[str, np.ndarray], kl: np.ndarray, lengths: np.ndarray) -> dict[str, dict[str, float]]:
    """Spearman ρ(oriented score, KL) per span length ("1", "2", …), their mean ("mean") and pooled ("pooled")."""
    from scipy.stats import spearmanr

    out = {}
    for name, values in scores.items():
        oriented = SCORES[name](values)
        row = {str(n): float(spearmanr(oriented[lengths == n], kl[lengths == n]).statistic)
               for n in sorted(set(lengths.tolist())) if (lengths == n).sum() >= 3}
        row["mean"] = float(np.nanmean(list(row.values())))
        row["pooled"] = float(spearmanr(oriented, kl).statistic)
        out[name] = row
    return out


def main(argv=None) -> int:
    from rba.session import Session

    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--data", default="data/plots.csv", help="a text CSV with a 'text' column")
    p.add_argument("--calibration", type=int, default=96, help="calibration texts")
    p.add_argument("--eval", type=int, default=6, help="held-out texts the KL is measured on")
    p.add_argument("--max-length", type=int, default=128, help="tokens per text at most")
    p.add_argument("--max-span", type=int, default=2)
    p.add_argument("--no-first-fits", action="store_true",
                   help="also the KL of maps fitted without each text's first token (single spans)")
    p.add_argument("--cache-dir", default=None, help="model copy and statistics cache (default: a temporary one)")
    args = p.parse_args(argv)
    C.setup(args)
    with C.temp_cache() as tmp:
        session = Session(lm_config(args, args.cache_dir or tmp), progress=False, measure_latency=False)
        t0 = time.perf_counter()
        adapter = session.adapter
        print(f"# model loaded in {time.perf_counter() - t0:.1f} s", flush=True)
        pairs = session.pairs
        lengths = np.array([j - i for i, j in pairs])
        samples = session.splits.calibration.samples
        t0 = time.perf_counter()
        states, positions = boundary_states(adapter, samples, session.cfg.capture.batch_size)
        first = adapter.collate([samples[0]])["input_ids"][0, :3].tolist()
        print(f"# calibration: {len(samples)} texts, {positions.numel()} tokens ({int((positions == 0).sum())} first "
              f"tokens), states in {time.perf_counter() - t0:.1f} s; first ids of text 0: {first} = "
              f"{adapter.tokenizer.convert_ids_to_tokens(first)}", flush=True)
        norms = torch.stack([x.norm(dim=1) for x in states])  # (boundaries, tokens)
        massive = {"first_token_norm_median": float(norms[:, positions == 0].median()),
                   "other_token_norm_median": float(norms[:, positions > 0].median()),
                   "first_token_share_of_total_variance": [
                       float(((x[positions == 0] - x.mean(0)) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())
                       for x in states]}
        print(f"# token norms (median over boundaries and tokens): first {massive['first_token_norm_median']:.1f}, "
              f"others {massive['other_token_norm_median']:.1f}; first tokens' share of the total variance per "
              "boundary: " + " ".join(f"{v:.2f}" for v in massive["first_token_share_of_total_variance"]), flush=True)

        scores, stats_by = {}, {}
        for treatment in TREATMENTS:
            t0 = time.perf_counter()
            stats = statistics_of(treat(states, positions, treatment), pairs)
            scores[treatment] = span_scores(stats, pairs, session.cfg.fit.ridge)
            if treatment in ("as_is", "no_first"):
                stats_by[treatment] = stats
            print(f"# scores {treatment}: {time.perf_counter() - t0:.1f} s", flush=True)
        del states

        t0 = time.perf_counter()
        kl = span_kl(session, pairs, stats_by["as_is"], tag="affine")
        kl_s = time.perf_counter() - t0
        print(f"# KL of {len(pairs)} affine span replacements on {session.evaluator.parts['eval'].pooled.shape[0]} "
              f"eval tokens: {kl_s:.0f} s", flush=True)
        result = {"machine": C.machine(), "load_at_start": C.load(), "pairs": [list(s) for s in pairs],
                  "calibration_texts": len(samples), "calibration_tokens": int(positions.numel()),
                  "eval_tokens": int(session.evaluator.parts["eval"].pooled.shape[0]),
                  "kl": kl.tolist(), "scores": {t: {k: v.tolist() for k, v in s.items()} for t, s in scores.items()},
                  "massive": massive, "kl_seconds": kl_s}
        result["spearman"] = {t: correlations(s, kl, lengths) for t, s in scores.items()}
        if args.no_first_fits:
            singles = [k for k, n in enumerate(lengths) if n == 1]
            kl_nf = span_kl(session, [pairs[k] for k in singles], stats_by["no_first"], tag="affine-no-first")
            result["kl_no_first_fits"] = {"pairs": [list(pairs[k]) for k in singles], "kl": kl_nf.tolist()}
            print(C.table([{"span": f"{pairs[k][0]}-{pairs[k][1]}", "kl (fit on all tokens)": kl[k],
                            "kl (fit without first tokens)": v} for k, v in zip(singles, kl_nf)],
                          title="single spans: KL of the affine map by the tokens it was fitted on"))
            result["spearman_no_first_fits"] = {
                t: correlations({k: v[singles] for k, v in s.items()}, kl_nf, lengths[singles])
                for t, s in scores.items()}
        rows = [{"treatment": t, "score": name} | {f"rho len {n}": r for n, r in row.items()}
                for t, by in result["spearman"].items() for name, row in by.items()]
        print(C.table(rows, title="Spearman rho(score oriented to predict damage, KL of the affine replacement)"))
        best = max(rows, key=lambda r: r["rho len mean"])
        print(f"RATIO best within-length mean spearman: {best['rho len mean']:.3f} ({best['treatment']}, "
              f"{best['score']})")
        C.write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
