"""rba's foldable fit (``[fit] kind = "fold"``) against ReplaceMe's own path (mts-ai/ReplaceMe, ``lstsq.py``).

Naive = ReplaceMe's path: for each chosen span (ℓ, ℓ + n) one calibration pass of the whole model
(``model(**inputs, output_hidden_states=True)``, the LM head included, hooks on every ``layer.mlp``), accumulating
that span's float64 Gram matrices a1ᵀa1 and a1ᵀa2 (a1 = MLP output of layer ℓ − 1, a2 = h_{ℓ+n} + a1 − h_ℓ), solved
with ``torch.linalg.inv(a1ᵀa1 + α·I) @ a1ᵀa2``. Two changes so that both sides solve the same problem (neither
changes the cost): padding is left out of the products (ReplaceMe adds every token of a batch), and α is rba's ridge
λ for the span (ReplaceMe's default is 0). Transformers' last hidden state is after the final norm, rba's boundary L
before it, so a span ending at the last layer is timed but left out of the map comparison.

rba: one statistics pass for every span up to ``max_span`` (the MLP outputs included), then each fold fit in closed
form from those statistics. Rows (ratios naive / rba, both measured in this run, one after the other, at the load
printed next to them):

* **sweep**: ReplaceMe's own sweep, every span of n = 25% of the layers from ℓ = 1 (K_sweep passes vs one);
* **all K**: every foldable span of the budget's search space (lengths 1..n, ℓ ≥ 1; K passes vs one);
* **cold fit per span**: the solve alone on each side (rba's statistics factorisations dropped before each fit);
* **memory per span**: the float64 totals each side holds per span (ReplaceMe: its two D × D Grams; rba: its whole
  statistics over K spans);
* **textbook**: ``torch.linalg.lstsq`` (float64) on the materialised MLP outputs and targets of one span (what a
  textbook fit would do; not ReplaceMe's method);
* **physical limit**: a search trial of rba (``Objective(spans)``: the fold fit, the staged forward from the cached
  boundary, the objective) against the forward of the blocks after its first replaced span plus the objective's
  computation alone, on the same eval split.

The naive passes cost the same for every span (a full forward plus two Gram products), so on the real model
``--naive-passes`` of them are timed (spread over the sweep) and the mean is multiplied by K; the quick run times
every one.

    python benchmarks/replaceme_path.py            # SmolLM2-135M-Instruct (rba data smollm2), 64 reviews × ≤128 tokens
    python benchmarks/replaceme_path.py --quick    # a tiny random Llama (smoke test)
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C
import torch


def _session(args, cache):
    """The session (fit kind fold, ``max_span`` = 25% of the layers, capture products in float64 as ReplaceMe's
    Grams) and that span length n; the model is loaded once."""
    from rba.config import Config
    from rba.session import Session

    if args.quick:
        data = {"kind": "synthetic", "calibration": 24, "probe": 0, "eval": 16, "options": {"modality": "text"}}
        model = {"kind": "causal-lm", "name": "tiny-llama", "pretrained": False, "options": {"num_hidden_layers": 8}}
    else:
        data = {"kind": "text-csv", "path": str(C.reviews_csv()), "text": "text", "calibration": args.texts,
                "probe": 0, "eval": args.eval_texts, "seed": 0, "max_length": args.max_length}
        model = {"kind": "causal-lm", "name": "SmolLM2-135M-Instruct", "pretrained": True}
    raw = {"model": model, "data": data, "fit": {"kind": "fold"},
           "capture": {"cache_dir": str(cache), "batch_size": args.batch_size, "dtype": "float64"},
           "evaluate": {"batch_size": args.batch_size, "latency_repeats": 1},
           "search": {"objectives": ["kl", "params"]}}
    first = Session(Config.from_dict(raw, name="replaceme_path", base_dir=str(C.ROOT)), need_labels=False,
                    progress=False, measure_latency=False)
    load_s, adapter = C.timed(lambda: first.adapter)
    n = max(1, round(0.25 * adapter.num_blocks))
    cfg = Config.from_dict(raw | {"search": raw["search"] | {"max_span": n}}, name="replaceme_path",
                           base_dir=str(C.ROOT))
    return Session(cfg, need_labels=False, progress=False, measure_latency=False, adapter=adapter), n, load_s


class ReplaceMePath:
    """ReplaceMe's lstsq.py, one span per calibration pass."""

    def __init__(self, adapter, samples, batch_size: int):
        self.model, self.adapter, self.samples, self.batch_size = adapter.model, adapter, samples, batch_size
        self.layers = adapter.blocks
        self.hidden = adapter.dims()[0]

    @torch.no_grad()
    def grams(self, span) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass over the calibration samples for span (ℓ, j): a1ᵀa1, a1ᵀa2 in float64."""
        start, end = span
        d = self.hidden
        a1t_a1 = torch.zeros(d, d, dtype=torch.float64)
        a1t_a2 = torch.zeros(d, d, dtype=torch.float64)
        mlp: dict[int, torch.Tensor] = {}
        hooks = [layer.mlp.register_forward_hook(lambda m, a, o, k=k: mlp.__setitem__(k, o.detach()))
                 for k, layer in enumerate(self.layers)]
        try:
            for begin in range(0, len(self.samples), self.batch_size):
                x = self.adapter.collate(self.samples[begin:begin + self.batch_size])
                out = self.model(input_ids=x["input_ids"], attention_mask=x["attention_mask"],
                                 output_hidden_states=True, use_cache=False)
                hidden = out.hidden_states[1:]  # hidden[k]: the output of layer k, as lstsq.py reads them
                real = x["attention_mask"].bool()  # (ReplaceMe: every token; here padding left out)
                a1 = mlp[start - 1][real].double()
                a2 = hidden[end - 1][real].double() + a1 - hidden[start - 1][real].double()
                a1t_a1 += a1.T @ a1
                a1t_a2 += a1.T @ a2
        finally:
            for h in hooks:
                h.remove()
        return a1t_a1, a1t_a2

    @staticmethod
    def solve(a1t_a1: torch.Tensor, a1t_a2: torch.Tensor, alpha: float) -> torch.Tensor:
        return torch.linalg.inv(a1t_a1 + alpha * torch.eye(a1t_a1.shape[0], dtype=torch.float64)) @ a1t_a2

    @torch.no_grad()
    def materialised(self, span) -> tuple[torch.Tensor, torch.Tensor]:
        """(a1, a2) of every real token, float64: what the textbook lstsq fits."""
        start, end = span
        mlp: dict[int, torch.Tensor] = {}
        hook = self.layers[start - 1].mlp.register_forward_hook(lambda m, a, o: mlp.__setitem__(0, o.detach()))
        a1s, a2s = [], []
        try:
            for begin in range(0, len(self.samples), self.batch_size):
                x = self.adapter.collate(self.samples[begin:begin + self.batch_size])
                hidden = self.model(input_ids=x["input_ids"], attention_mask=x["attention_mask"],
                                    output_hidden_states=True, use_cache=False).hidden_states[1:]
                real = x["attention_mask"].bool()
                a1s.append(mlp[0][real].double())
                a2s.append(hidden[end - 1][real].double() + a1s[-1] - hidden[start - 1][real].double())
        finally:
            hook.remove()
        return torch.cat(a1s), torch.cat(a2s)


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--texts", type=int, default=64, help="calibration texts (default 64)")
    p.add_argument("--max-length", type=int, default=128, help="tokens per text at most (default 128)")
    p.add_argument("--eval-texts", type=int, default=16, help="eval texts of the physical-limit trial (default 16)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--naive-passes", type=int, default=3,
                   help="ReplaceMe passes timed on the real model (spread over the sweep; the rest extrapolated)")
    args = p.parse_args()
    C.setup(args)
    from rba.capture import mlp_pairs
    from rba.fit import fit_span
    from rba.statistics import statistics_nbytes
    from search.objective import Objective

    with C.temp_cache() as cache:
        session, n, load_s = _session(args, cache)
        cfg, adapter = session.cfg, session.adapter
        out: dict = {"load_start": C.load(), "span_length": n, "load_model_s": load_s}
        samples = session.splits.calibration.samples
        L, d = adapter.num_blocks, adapter.dims()[0]
        naive = ReplaceMePath(adapter, samples, cfg.capture.batch_size)
        sweep = [(i, i + n) for i in range(1, L - n + 1)]
        space = Objective(session).space.pairs  # every foldable span up to max_span = n
        tokens = int(sum(int(adapter.collate(samples[b:b + 16])["attention_mask"].sum()) for b in range(0, len(samples), 16)))
        print(f"# {adapter.describe()}, hidden {d}; {len(samples)} calibration texts, {tokens} real tokens; span "
              f"length n = {n} (25% of {L}); sweep K = {len(sweep)}, search space K = {len(space)}", flush=True)

        # --- one rba pass, then every fit from it; ReplaceMe's passes right after (same load window)
        load_rba = C.load()
        out["rba_pass_s"], stats = C.timed(lambda: session.stats)
        ridge = cfg.fit.ridge

        def cold_fits(spans):
            total = 0.0
            for s in spans:
                stats.scratch.clear()
                total += C.timed(lambda: fit_span(stats, s, "fold", ridge))[0]
            return total

        out["rba_fit_sweep_s"] = cold_fits(sweep)
        out["rba_fit_space_s"] = cold_fits(space)
        load_naive = C.load()
        timed_spans = sweep if args.quick else sweep[:: max(1, len(sweep) // args.naive_passes)][: args.naive_passes]
        passes, solves, maps = {}, {}, {}
        for s in timed_spans:
            passes[s], grams = C.timed(lambda: naive.grams(s))
            alpha = fit_span(stats, s, "fold", ridge).ridge_lambda
            solves[s], maps[s] = C.timed(lambda: naive.solve(*grams, alpha))
        pass_s = sum(passes.values()) / len(passes)
        solve_s = sum(solves.values()) / len(solves)
        # the same maps: relative difference of each map, spans ending before the last layer
        diffs = []
        for s, w in maps.items():
            if s[1] < L:
                ours = fit_span(stats, s, "fold", ridge).weight
                diffs.append(float((ours - w).norm() / w.norm()))
        out["max_rel_map_diff"] = max(diffs) if diffs else float("nan")
        # textbook: float64 lstsq on one span's materialised rows
        span = timed_spans[0]
        a1, a2 = naive.materialised(span)
        alpha = fit_span(stats, span, "fold", ridge).ridge_lambda
        aug = torch.cat([a1, alpha ** 0.5 * torch.eye(d, dtype=torch.float64)])
        rhs = torch.cat([a2, torch.zeros(d, d, dtype=torch.float64)])
        out["lstsq_solve_s"], w_lstsq = C.timed(lambda: torch.linalg.lstsq(aug, rhs).solution)
        out["lstsq_rel_diff"] = float((w_lstsq - maps[span]).norm() / maps[span].norm())
        load_after = C.load()

        naive_sweep = len(sweep) * (pass_s + solve_s)
        naive_space = len(space) * (pass_s + solve_s)
        rba_sweep = out["rba_pass_s"] + out["rba_fit_sweep_s"]
        rba_space = out["rba_pass_s"] + out["rba_fit_space_s"]
        rba_fit_span = out["rba_fit_space_s"] / len(space)
        rba_bytes = statistics_nbytes(adapter.dims(), session.pairs, [d] * (L - 1),
                                      mlp_pairs([s for s in session.pairs]))
        naive_bytes = 2 * d * d * 8
        out |= {"tokens": tokens, "blocks": L, "hidden": d, "sweep_spans": len(sweep), "space_spans": len(space),
                "naive_passes_timed": len(passes), "naive_pass_s": pass_s, "naive_solve_s": solve_s,
                "naive_sweep_s": naive_sweep, "naive_space_s": naive_space, "rba_sweep_s": rba_sweep,
                "rba_space_s": rba_space, "rba_fit_per_span_s": rba_fit_span, "rba_stats_bytes": rba_bytes,
                "naive_bytes_per_span": naive_bytes, "load_rba": load_rba, "load_naive": load_naive,
                "load_after": load_after}
        rows = [
            {"row": f"ReplaceMe's sweep (K = {len(sweep)}, n = {n})", "ReplaceMe": C.fmt_s(naive_sweep),
             "rba": C.fmt_s(rba_sweep), "ratio": naive_sweep / rba_sweep, "load": load_naive},
            {"row": f"all K = {len(space)} spans of the budget (lengths 1..{n})", "ReplaceMe": C.fmt_s(naive_space),
             "rba": C.fmt_s(rba_space), "ratio": naive_space / rba_space, "load": load_naive},
            {"row": "one calibration pass (ReplaceMe: per span; rba: once)", "ReplaceMe": C.fmt_s(pass_s),
             "rba": C.fmt_s(out["rba_pass_s"]), "ratio": pass_s / out["rba_pass_s"], "load": load_rba},
            {"row": "cold fit per span (solve only)", "ReplaceMe": C.fmt_s(solve_s), "rba": C.fmt_s(rba_fit_span),
             "ratio": solve_s / rba_fit_span, "load": load_naive},
            {"row": "cold fit per span (pass + solve vs fit)", "ReplaceMe": C.fmt_s(pass_s + solve_s),
             "rba": C.fmt_s(rba_fit_span), "ratio": (pass_s + solve_s) / rba_fit_span, "load": load_naive},
            {"row": "memory per span (float64 totals)", "ReplaceMe": f"{naive_bytes / 2**20:.2f} MiB",
             "rba": f"{rba_bytes / len(space) / 2**20:.2f} MiB", "ratio": naive_bytes / (rba_bytes / len(space)),
             "load": "-"},
            {"row": "textbook: materialised torch.linalg.lstsq (solve only)", "ReplaceMe": C.fmt_s(out["lstsq_solve_s"]),
             "rba": C.fmt_s(rba_fit_span), "ratio": out["lstsq_solve_s"] / rba_fit_span, "load": load_after},
        ]
        C.table(rows, title=f"ReplaceMe's path vs rba, {adapter.describe()}, {tokens} calibration tokens"
                + ("" if args.quick else f" (ReplaceMe: {len(passes)} passes timed, × K)"))
        print(f"# same maps: max relative difference {out['max_rel_map_diff']:.2e} over {len(diffs)} spans; "
              f"textbook lstsq vs inv: {out['lstsq_rel_diff']:.2e}", flush=True)

        # --- physical limit: a trial against the blocks after its first replaced span + the objective alone
        best = sweep[len(sweep) // 2]
        _ = session.evaluator  # split caches built (not part of a trial)
        Objective(session)([best])  # warm-up: the first trial pays one-time work (reference log-probabilities)
        session.clear_caches()  # fits, factorisations, prefix memo: the timed trial starts cold
        load_trial = C.load()
        trial_s, result = C.timed(lambda: Objective(session)([best]))
        limit_s = _physical_limit(session, best)
        out |= {"trial_s": trial_s, "limit_s": limit_s, "trial_spans": f"{best[0]}-{best[1]}", "load_trial": load_trial,
                "trial_kl": result["kl"]}
        print(f"# physical limit, trial {best[0]}-{best[1]} (kl {result['kl']:.4g}) on {len(session.splits.eval)} eval "
              f"texts, load {load_trial}: trial {C.fmt_s(trial_s)}, limit {C.fmt_s(limit_s)}", flush=True)
        C.ratio_line("sweep, ReplaceMe / rba", naive_sweep / rba_sweep, detail=f"load {load_naive}")
        C.ratio_line("all K spans, ReplaceMe / rba", naive_space / rba_space, detail=f"load {load_naive}")
        C.ratio_line("cold fit per span, ReplaceMe pass + solve / rba", (pass_s + solve_s) / rba_fit_span,
                     detail=f"load {load_naive}")
        C.ratio_line("memory per span, ReplaceMe / rba", naive_bytes / (rba_bytes / len(space)))
        C.ratio_line("trial / physical limit", trial_s / limit_s, detail=f"load {load_trial}")
        C.write_json(args.json, out)


@torch.inference_mode()
def _physical_limit(session, span) -> float:
    """Seconds of what a trial of ``[span]`` cannot avoid: the folded block ℓ − 1 and the blocks after the span on
    the eval split's cached boundary ℓ − 1, the final norm, and the objective (the next-token scores against the
    unmodified model's), the fold's map already fitted (its time is the fit row's)."""
    from rba._next_token import token_scores
    from rba.apply import replaced

    part = session.evaluator.parts["eval"]
    adapter = session.adapter
    i, j = span
    blocks = [i - 1, *range(j, adapter.num_blocks)]

    def run():
        pooled = []
        for states, ctx in zip(part.states, part.contexts):
            h = states[i - 1]
            for k in blocks:
                h = adapter.run_block(k, h, ctx)
            pooled.append(adapter.pool(h, ctx).float())
        logits = lambda rows: adapter.logits(rows.to(adapter.device, adapter.dtype))  # noqa: E731  (handed on below)
        return token_scores(logits, torch.cat(pooled), torch.arange(len(part.pooled)), part.reference)

    with replaced(adapter, [span], session.maps([span], "fold")):  # block ℓ − 1 is the folded one
        return C.median(C.repeat(run, repeats=3, warmup=1))


if __name__ == "__main__":
    main()
