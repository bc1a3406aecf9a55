"""The report's comparisons as data: the held-out test split's per-sample results (:class:`PerSample`,
``per_sample.npz``) and the configurations they score, each method's eval front and picks per budget, the paired
tests with Holm's adjustment, hypervolumes at the fixed reference point, and Spearman within span lengths."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd

from rba.evaluate import token_weighted
from rba.files import atomic_path
from rba.names import LM_COLUMNS, maximised
from search.analysis import best_quality_at, feasible_rows, hypervolume, quality_limit

__all__ = ["PER_SAMPLE", "PerSample", "front_2d", "method_rows", "budget_picks", "test_configurations",
           "evaluate_test_split", "paired_tests", "REFERENCE_QUALITY_CHANGE", "REFERENCE_QUALITY_RISE",
           "reference_change", "fixed_reference", "hypervolumes", "within_length_correlations"]


#: the file of per-sample results on the test split (``report.json``'s ``test`` names it)
PER_SAMPLE = "per_sample.npz"


@dataclass
class PerSample:
    """Per-sample results of several configurations on one split (``per_sample.npz``): configuration r is
    (``kind[r]``, ``spans[r]``), its cosines to the unmodified model ``cosine[r]`` and, when the data has labels,
    its predicted classes ``prediction[r]``; column s of each is data set sample ``index[s]``. Decoder LMs also
    have each sample's scored tokens ``tokens[s]`` and per configuration and sample the mean next-token NLL, KL and
    top-1 agreement (``nll``, ``kl``, ``top1``; :class:`rba.evaluate.SplitScores`)."""

    split: str
    index: np.ndarray
    label: np.ndarray | None
    kind: np.ndarray
    spans: np.ndarray
    cosine: np.ndarray
    prediction: np.ndarray | None
    tokens: np.ndarray | None = None
    nll: np.ndarray | None = None
    kl: np.ndarray | None = None
    top1: np.ndarray | None = None

    @property
    def samples(self) -> int:
        return len(self.index)

    def row(self, kind: str, spans: str) -> int | None:
        """The row of a configuration ("none", the unmodified model, under any fit kind); None if absent."""
        for r, (k, s) in enumerate(zip(self.kind, self.spans, strict=True)):
            if s == spans and (k == kind or spans == "none"):
                return r
        return None

    def correct(self, r: int) -> np.ndarray:
        """Per sample, whether configuration row ``r`` predicted its label (a labelled study only)."""
        if self.prediction is None:
            raise ValueError("these per-sample results hold no predictions: the study's data has no labels")
        return self.prediction[r] == self.label

    def scores(self, kind: str, spans: str) -> dict[str, float]:
        """fidelity and accuracy with their standard errors (of the mean; binomial), and for decoder LMs perplexity,
        kl and top1 over the scored tokens with theirs (over samples, :func:`rba.evaluate.token_weighted`; the delta
        method for perplexity); NaN where absent."""
        from rba.stats import binomial_se, mean_se  # lazy: scipy loads with the first standard error

        out = dict.fromkeys(("fidelity", "fidelity_se", "accuracy", "accuracy_se"), math.nan)
        out |= {k: math.nan for c in LM_COLUMNS for k in (c, f"{c}_se")}
        r = self.row(kind, spans)
        if r is None:
            return out
        out |= {"fidelity": float(self.cosine[r].mean()), "fidelity_se": mean_se(self.cosine[r])}
        if self.prediction is not None:
            correct = self.correct(r)
            out |= {"accuracy": float(correct.mean()), "accuracy_se": binomial_se(correct)}
        if self.tokens is not None:
            for column in LM_COLUMNS:
                mean, se = token_weighted(self.token_sums(column, r), self.tokens)
                out[column], out[f"{column}_se"] = mean, se
            nll = out["perplexity"]
            out["perplexity"], out["perplexity_se"] = float(np.exp(nll)), float(np.exp(nll) * out["perplexity_se"])
        return out

    def token_sums(self, column: str, r: int) -> np.ndarray:
        """Per sample, the sum over its scored tokens of what the next-token quality ``column`` averages (NLL for
        perplexity) for configuration row ``r``."""
        values = getattr(self, "nll" if column == "perplexity" else column)[r]
        return np.nan_to_num(values) * self.tokens

    def save(self, path: Path) -> None:
        arrays = {"split": np.array(self.split), "index": self.index, "kind": self.kind.astype(str),
                  "spans": self.spans.astype(str), "cosine": self.cosine}
        if self.prediction is not None:
            arrays |= {"label": cast(np.ndarray, self.label), "prediction": self.prediction}  # (set together)
        if self.tokens is not None:
            arrays |= {"tokens": self.tokens, "nll": cast(np.ndarray, self.nll), "kl": cast(np.ndarray, self.kl),
                       "top1": cast(np.ndarray, self.top1)}  # (set together)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: np.savez adds no suffix
            # numpy's stub types savez's keywords as its allow_pickle flag too; these keys are array names
            np.savez(f, **arrays)  # type: ignore[arg-type]

    @classmethod
    def load(cls, path: Path) -> "PerSample":
        with np.load(path, allow_pickle=False) as z:
            labelled, lm = "prediction" in z.files, "tokens" in z.files
            return cls(split=str(z["split"]), index=z["index"], label=z["label"] if labelled else None,
                       kind=z["kind"], spans=z["spans"], cosine=z["cosine"],
                       prediction=z["prediction"] if labelled else None,
                       **({k: z[k] for k in ("tokens", "nll", "kl", "top1")} if lm else {}))


def front_2d(rows: pd.DataFrame, quality: str, cost: str) -> pd.DataFrame:
    """The feasible rows no other feasible row beats in (``quality`` ↑, or ↓ when minimised; ``cost`` ↓), sorted by
    cost: what a method selects on eval as its front."""

    higher = maximised(quality)
    ok = feasible_rows(rows)
    ok = ok[ok[quality].notna() & ok[cost].notna()].sort_values([cost, quality], ascending=[True, not higher])
    keep, best = [], -math.inf
    for k, q in zip(ok.index, ok[quality] if higher else -ok[quality], strict=True):
        if q > best:
            keep.append(k)
            best = q
    return ok.loc[keep]


def method_rows(info: dict, trials: pd.DataFrame, baselines: pd.DataFrame | None) -> dict[str, pd.DataFrame]:
    """Label → the configurations a method evaluated on eval, each with its fit kind: the search (every completed
    trial, the study's fit kind) first, then each baseline method."""
    search = trials[trials["state"] == "COMPLETE"].assign(kind=info["kind"])
    methods = {"search": search}
    if baselines is not None:
        methods |= {m: rows for m, rows in baselines.groupby("method", sort=False)}
    return methods


def budget_picks(info: dict, methods: dict[str, pd.DataFrame]) -> dict[str, dict[float, tuple[str, str] | None]]:
    """Per method and ``flops_points`` budget, the configuration (fit kind, spans) it selects on eval: its best
    feasible rule quality within that FLOPs fraction (None when it has none)."""

    quality = info["quality"]
    picks: dict[str, dict[float, tuple[str, str] | None]] = {}
    for label, rows in methods.items():
        picks[label] = {}
        for p in info["flops_points"]:
            _, spans = best_quality_at(rows, quality, p)
            picks[label][p] = None if not spans else (str(rows.loc[rows["spans"] == spans, "kind"].iloc[0]), spans)
    return picks


def test_configurations(info: dict, trials: pd.DataFrame, front: pd.DataFrame,
                        baselines: pd.DataFrame | None) -> list[tuple[str, str]]:
    """Every (fit kind, spans) the report quotes a test-split number for: the unmodified model, the front members
    (and so the export), each method's eval front in (rule quality, rule cost) and its pick at each budget, every
    baseline configuration. In a fixed order, without repeats."""
    quality, cost, kind = info["quality"], info["cost"], info["kind"]
    found = [(kind, "none")] + [(kind, str(s)) for s in front["spans"]]
    if info["choice"]["spans"] is not None:
        found.append((kind, info["choice"]["spans"]))
    methods = method_rows(info, trials, baselines)
    for rows in methods.values():
        selected = front_2d(rows, quality, cost)
        found += [(str(k), str(s)) for k, s in zip(selected["kind"], selected["spans"], strict=True)]
    for by_budget in budget_picks(info, methods).values():
        found += [pick for pick in by_budget.values() if pick is not None]
    if baselines is not None:
        found += [(str(k), str(s)) for k, s in zip(baselines["kind"], baselines["spans"], strict=True)]
    return list(dict.fromkeys((k, s) for k, s in found))


def evaluate_test_split(session, configurations: list[tuple[str, str]], mode: str) -> PerSample:
    """Each configuration scored on the test split sample by sample (:meth:`rba.session.Session.evaluate_split`)."""
    scored = [session.evaluate_split(spans, "test", kind=kind, mode=mode) for kind, spans in configurations]
    first = scored[0]
    labelled = first.prediction is not None
    lm = {}
    if first.tokens is not None:
        lm = {"tokens": np.asarray(first.tokens, dtype=np.int64)}
        lm |= {k: np.stack([getattr(s, k) for s in scored]).astype(np.float64) for k in ("nll", "kl", "top1")}
    return PerSample(split="test", index=np.asarray(first.index), label=first.label if labelled else None,
                     kind=np.array([k for k, _ in configurations]), spans=np.array([s for _, s in configurations]),
                     cosine=np.stack([s.cosine for s in scored]).astype(np.float64),
                     prediction=np.stack([s.prediction for s in scored]).astype(np.int64) if labelled else None,
                     **lm)


def _configuration_label(kind: str, spans: str) -> str:
    return "unmodified" if spans == "none" else f"{spans} ({kind})"


def paired_tests(info: dict, trials: pd.DataFrame, baselines: pd.DataFrame | None, per: PerSample,
                 *, resamples: int = 9999, seed: int = 0) -> pd.DataFrame:
    """The report's paired comparisons on the test split: the export against the unmodified model, and at each
    ``flops_points`` budget the search's pick against each baseline's (:func:`budget_picks`, selected on eval).
    Per comparison and quality: accuracy by McNemar's exact test (with its mid-p), fidelity by a paired bootstrap
    of the mean difference; both with a paired bootstrap interval of the difference (B − A: the export, the
    search). ``p (Holm)`` adjusts every p-value of the table together (one family: the report's comparisons)."""
    from rba.stats import holm, mcnemar, mean_difference  # lazy: scipy loads with the first test

    pairs = []  # (comparison, budget, A, B)
    kind = info["kind"]
    if info["export"] is not None and info["choice"]["spans"] is not None:
        pairs.append(("export vs unmodified", math.nan, (kind, "none"), (kind, info["choice"]["spans"])))
    picks = budget_picks(info, method_rows(info, trials, baselines))
    for label in [m for m in picks if m != "search"]:
        for p in info["flops_points"]:
            a, b = picks[label][p], picks["search"][p]
            if a is not None and b is not None:
                pairs.append((f"search vs {label}", p, a, b))
    rows = []
    qualities = ((["accuracy"] if per.prediction is not None else []) + ["fidelity"]
                 + (list(LM_COLUMNS) if per.tokens is not None else []))
    for comparison, budget, a, b in pairs:
        ra, rb = per.row(*a), per.row(*b)
        if ra is None or rb is None:
            continue
        for quality in qualities:
            p_mid = math.nan
            if quality in LM_COLUMNS:  # over tokens: the difference of two ratio estimates, resampling samples
                diff, value_a, value_b = _token_difference(per, quality, ra, rb, resamples=resamples, seed=seed)
                rows.append({"comparison": comparison, "budget": budget, "quality": quality,
                             "A": _configuration_label(*a), "B": _configuration_label(*b), "A value": value_a,
                             "B value": value_b, "B − A": diff.estimate, "low": diff.low, "high": diff.high,
                             "test": "paired bootstrap", "p": diff.p, "mid-p": p_mid})
                continue
            if quality == "accuracy":
                xa, xb = per.correct(ra), per.correct(rb)
                m = mcnemar(xa, xb)
                test, p, p_mid = "McNemar (exact)", m.p_exact, m.p_mid
            else:
                xa, xb = per.cosine[ra], per.cosine[rb]
                test = "paired bootstrap"
            diff = mean_difference(xa.astype(float), xb.astype(float), resamples=resamples, seed=seed)
            if quality == "fidelity":
                p = diff.p
            rows.append({"comparison": comparison, "budget": budget, "quality": quality,
                         "A": _configuration_label(*a), "B": _configuration_label(*b), "A value": float(np.mean(xa)),
                         "B value": float(np.mean(xb)), "B − A": diff.estimate, "low": diff.low, "high": diff.high,
                         "test": test, "p": p, "mid-p": p_mid})
    table = pd.DataFrame(rows, columns=["comparison", "budget", "quality", "A", "B", "A value", "B value", "B − A",
                                        "low", "high", "test", "p", "mid-p"])
    table["p (Holm)"] = holm(table["p"].to_numpy(dtype=float)) if len(table) else []
    return table


def _token_difference(per: PerSample, quality: str, ra: int, rb: int, **kwargs):
    """B − A of a next-token quality over the scored tokens (perplexity: of the exponentiated mean NLL), with its
    paired bootstrap interval resampling samples (their tokens together); and the two values."""
    from rba.stats import paired_bootstrap  # lazy: scipy loads with the first test

    finish = np.exp if quality == "perplexity" else (lambda x: x)

    def difference(tokens, sum_a, sum_b, axis=-1):
        total = np.sum(tokens, axis=axis)
        return finish(np.sum(sum_b, axis=axis) / total) - finish(np.sum(sum_a, axis=axis) / total)

    assert per.tokens is not None  # next-token qualities are compared only on decoder LMs' results, which have them
    tokens = per.tokens.astype(float)
    sum_a, sum_b = per.token_sums(quality, ra), per.token_sums(quality, rb)
    diff = paired_bootstrap(difference, tokens, sum_a, sum_b, vectorized=True, **kwargs)
    total = tokens.sum()
    return diff, float(finish(sum_a.sum() / total)), float(finish(sum_b.sum() / total))


#: the hypervolume's reference point, fixed before any run: the unmodified model's quality (the export rule's
#: quality column) made worse by a relative change, at the unmodified model's cost. Maximised qualities (accuracy,
#: fidelity, top1): 0.9 ×; configurations that lose more than a tenth, which nobody would deploy, add no area.
REFERENCE_QUALITY_CHANGE = 0.1
#: minimised qualities (the decoder LMs' perplexity; kl by the same rise of cross-entropy): 2 × perplexity,
#: kl + log 2 nats. Wider than a tenth because layer removal moves perplexity far more than a tenth: replacing
#: 4 of SmolLM2-135M's 30 layers by one affine map doubles it (36 → 73 on 25,600 news tokens), so at 1.1 × no
#: configuration that removes a layer would add area. Set before the first LM study ran.
REFERENCE_QUALITY_RISE = 1.0
#: the maximised qualities' reference share (an older name, kept for readers of it)
REFERENCE_QUALITY_SHARE = 1.0 - REFERENCE_QUALITY_CHANGE


def reference_change(quality: str) -> float:
    """The relative change of ``quality`` at the fixed reference point (:data:`REFERENCE_QUALITY_CHANGE` or
    :data:`REFERENCE_QUALITY_RISE`, by the quality's direction)."""
    return REFERENCE_QUALITY_CHANGE if maximised(quality) else REFERENCE_QUALITY_RISE


def fixed_reference(quality_value: float, cost_value: float, quality: str = "fidelity") -> tuple[float, float]:
    """The fixed reference point for an unmodified model of quality ``quality_value`` (in column ``quality``) and
    cost ``cost_value`` (:func:`search.analysis.quality_limit` by :func:`reference_change`)."""
    return quality_limit(quality, quality_value, reference_change(quality)), float(cost_value)


def hypervolumes(info: dict, methods: dict[str, pd.DataFrame], reference: dict,
                 per: PerSample | None = None) -> tuple[pd.DataFrame, dict[str, tuple[float, float]]]:
    """Per method: the hypervolume of its feasible configurations in (rule quality, in its direction; rule cost ↓)
    on eval at the
    fixed reference point (:func:`fixed_reference` of the unmodified model's eval quality) with its share of the
    largest; with a test split, the hypervolume of the method's eval front (:func:`front_2d`, selected on eval)
    scored on the test split, at the fixed reference point of the unmodified model's test quality. Returns the
    table and the reference points by split."""

    quality, cost = info["quality"], info["cost"]
    refs = {"eval": fixed_reference(reference[quality], reference[cost], quality)}
    if per is not None:
        refs["test"] = fixed_reference(per.scores(info["kind"], "none")[quality], reference[cost], quality)
    higher = maximised(quality)
    rows = []
    for label, method in methods.items():
        ok = feasible_rows(method)
        row = {"method": label, "hypervolume": hypervolume(ok[quality], ok[cost], *refs["eval"], higher=higher)
               if len(ok) else 0.0}
        if per is not None:
            front = front_2d(method, quality, cost)
            test_q = [per.scores(str(k), str(s))[quality] for k, s in zip(front["kind"], front["spans"], strict=True)]
            row["test hypervolume"] = hypervolume(test_q, front[cost], *refs["test"], higher=higher)
        rows.append(row)
    table = pd.DataFrame(rows)
    top = table["hypervolume"].max()
    table.insert(2, "share of best", table["hypervolume"] / top if top > 0 else math.nan)
    if per is not None:
        top = table["test hypervolume"].max()
        table["test share of best"] = table["test hypervolume"] / top if top > 0 else math.nan
    return table, refs


def within_length_correlations(singles: pd.DataFrame, scores: pd.DataFrame, orientation: dict[str, bool],
                               qualities=("fidelity", "accuracy")) -> pd.DataFrame:
    """Metrics as priors among spans of one length (``end − start`` blocks: equal cost where the blocks are
    alike), the decision a prior must make once a budget fixes how much to replace: per metric (oriented so that
    higher is more redundant) and quality, the Spearman ρ within each length of at least 3 spans (NaN where the
    metric or the quality is constant there), and their mean weighted by the number of spans. Pooled over all
    lengths, ρ also measures "longer spans hurt more"."""
    from scipy.stats import spearmanr  # lazy: scipy loads with the first rank correlation

    merged = singles.merge(scores, on=["start", "end"], how="inner", suffixes=("", "_score"))
    merged["length"] = merged["end"] - merged["start"]
    lengths = sorted(int(k) for k, n in merged["length"].value_counts().items() if n >= 3)
    rows = []
    for m in orientation:
        if m not in scores.columns:
            continue
        for q in qualities:
            if q not in merged or not merged[q].notna().any():
                continue
            row, weighted, spans = {"metric": m, "quality": q}, 0.0, 0
            for length in lengths:
                group = merged[merged["length"] == length].dropna(subset=[m, q])
                x = group[m] if orientation[m] else -group[m]
                y = group[q] if maximised(q) else -group[q]  # perplexity and kl negated: higher is better
                rho = math.nan
                if len(group) >= 3 and x.nunique() > 1 and group[q].nunique() > 1:
                    rho = float(spearmanr(x, y).statistic)
                    weighted, spans = weighted + rho * len(group), spans + len(group)
                row[f"length {length}"] = rho
                row[f"spans {length}"] = len(group)
            row["within lengths"] = weighted / spans if spans else math.nan
            rows.append(row)
    columns = ["metric", "quality", "within lengths"] + [c for k in lengths for c in (f"length {k}", f"spans {k}")]
    return pd.DataFrame(rows, columns=columns)
