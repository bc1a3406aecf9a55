"""Search over span sets: one objective (:mod:`search.objective`), one encoding (:mod:`search.space`), two
backends (Optuna, Ray Tune) and the baselines, all writing the same files (:mod:`search.pareto`).

``rba search`` calls :func:`run_search`; ``rba run`` calls :func:`run_study`. Ray is imported only when a
study runs on it (``--backend ray``).
"""

from search.objective import OBJECTIVES, RESULT_COLUMNS, Objective
from search.recording import SearchResult
from search.space import SpanSpace
from search.study import run_search, run_study

__all__ = ["run_search", "run_study", "SearchResult", "Objective", "SpanSpace", "OBJECTIVES", "RESULT_COLUMNS"]
