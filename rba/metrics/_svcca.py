"""SVCCA (Raghu et al., 2017) from the streamed statistics: SVD-reduce each boundary's representation to the
directions that keep 99% of its variance, then the mean canonical correlation between the two reductions."""

from __future__ import annotations

import math

import torch

from rba._threads import single_thread
from rba.metrics._base import Metric
from rba.spans import Span
from rba.statistics import Statistics

__all__ = ["SVCCA"]


class SVCCA(Metric):
    """Mean canonical correlation of the variance-keeping subspaces of boundaries i and j, from covariances alone.

    The SVD of the centred vectors X = U S Vᵀ is the eigendecomposition of the covariance C = Σ(x − x̄)(x − x̄)ᵀ =
    V S² Vᵀ, so the reduction X·V_k (the top k right singular vectors, k the fewest whose S² sum to ``keep`` of
    the total) needs only C. Reduced, the covariances are diag(S_k²), and the cross-covariance V_kᵢᵀ C_ij V_kⱼ;
    the canonical correlations are the singular values of diag(1/S_kᵢ) V_kᵢᵀ C_ij V_kⱼ diag(1/S_kⱼ)
    (min(kᵢ, kⱼ) of them), and SVCCA is their mean. 1: the same subspace up to a linear map."""

    name = "svcca"
    label = "SVCCA (mean canonical corr., 99% var.)"
    #: fraction of the variance the kept directions hold
    keep = 0.99

    def __call__(self, stats: Statistics, span: Span) -> float:
        with single_thread():  # small dense algebra: one thread (see rba._threads)
            return self._score(stats, span)

    def _score(self, stats: Statistics, span: Span) -> float:
        i, j = span
        basis_i, basis_j = self._basis(stats, i), self._basis(stats, j)
        if basis_i is None or basis_j is None:
            return math.nan
        (v_i, s_i), (v_j, s_j) = basis_i, basis_j
        m = (v_i.T @ stats.cross_covariance(span) @ v_j) / torch.outer(s_i, s_j)
        rho = torch.linalg.svdvals(m).clamp(0.0, 1.0)
        return float(rho.mean())

    def _basis(self, stats: Statistics, k: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(V_k, S_k) at boundary k, computed once per boundary; None when the boundary does not vary."""
        cache = stats.scratch.setdefault("svcca_basis", {})
        key = (k, self.keep)
        if key not in cache:
            evals, evecs = torch.linalg.eigh(self._centered_cov(stats, k))
            evals, evecs = evals.flip(0).clamp_min(0.0), evecs.flip(1)
            total = float(evals.sum())
            if not total > 0:
                cache[key] = None
            else:
                # the fewest leading directions whose variance reaches `keep` of the total
                n = min(int((torch.cumsum(evals, 0) / total < self.keep).sum()) + 1, evals.shape[0])
                cache[key] = evecs[:, :n], evals[:n].sqrt()
        return cache[key]
