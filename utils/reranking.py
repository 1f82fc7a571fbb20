"""k-reciprocal re-ranking (Zhong et al., "Re-ranking Person Re-identification with k-reciprocal
Encoding", CVPR 2017), as used by the ReID community (k1=20, k2=6, lambda=0.3)."""

import numpy as np
import torch

__all__ = ["re_ranking"]


def _nearest(dist: np.ndarray, k: int) -> np.ndarray:
    """The first ``k`` columns of ``np.argsort(dist, axis=1, kind="stable")`` (ties in index order),
    without sorting whole rows: a partition finds each row's k-th value, then only the items up to it
    are sorted."""
    k = min(k, dist.shape[1])
    kth = np.partition(dist, k - 1, axis=1)[:, k - 1]
    out = np.empty((dist.shape[0], k), dtype=np.int64)
    for i, row in enumerate(dist):
        candidates = np.flatnonzero(row <= kth[i])                   # in index order; ties at kth included
        out[i] = candidates[np.argsort(row[candidates], kind="stable")[:k]]
    return out


def _k_reciprocal(initial_rank: np.ndarray, i: int, k: int) -> np.ndarray:
    """Indices among the k+1 nearest neighbours of ``i`` that also hold ``i`` in their k+1 nearest."""
    forward = initial_rank[i, :k + 1]
    backward = initial_rank[forward, :k + 1]
    return forward[np.any(backward == i, axis=1)]


def re_ranking(qf: torch.Tensor, gf: torch.Tensor, k1: int = 20, k2: int = 6, lambda_value: float = 0.3) -> np.ndarray:
    """Re-ranked query x gallery distances (numpy, Q x G) from features.

    The original distance is the squared Euclidean distance over query + gallery, each column divided by
    its maximum; the k-reciprocal sets are expanded by their members' (k1/2)-reciprocal sets when those
    overlap by more than 2/3; the Jaccard distance of the Gaussian-weighted set encodings (averaged over
    the k2 nearest neighbours, "local query expansion") is mixed with the original distance by lambda.
    Everything is float64 (the original code keeps V in float16); squared distances are clamped at 0, so
    duplicated images tie exactly, and ties rank in index order (queries first, then the gallery).
    Memory is a few (Q + G)^2 float64 arrays, so this suits benchmark-sized test sets.
    """
    num_query = qf.shape[0]
    feats = torch.cat([qf, gf]).detach().cpu().double()
    sq = feats.pow(2).sum(1)
    square = (feats @ feats.t()).mul_(-2).add_(sq[:, None]).add_(sq[None, :]).clamp_(min=0).numpy()  # (n, n)
    dist = np.ascontiguousarray(square.T)   # row i: distances to item i, divided by their maximum
    dist /= square.max(axis=0)[:, None]
    del square
    n = dist.shape[0]
    initial_rank = _nearest(dist, max(k1 + 1, k2))
    half = int(np.around(k1 / 2))
    V = np.zeros((n, n), dtype=np.float64)
    for i in range(n):
        reciprocal = _k_reciprocal(initial_rank, i, k1)
        expansion = reciprocal
        for candidate in reciprocal:
            cand_set = _k_reciprocal(initial_rank, candidate, half)
            if len(np.intersect1d(cand_set, reciprocal)) > 2 / 3 * len(cand_set):
                expansion = np.append(expansion, cand_set)
        expansion = np.unique(expansion)
        weight = np.exp(-dist[i, expansion])
        V[i, expansion] = weight / weight.sum()
    if k2 != 1:  # local query expansion: average over the k2 nearest neighbours, a block of rows at a time
        expanded = np.empty_like(V)
        for start in range(0, n, 256):
            expanded[start:start + 256] = V[initial_rank[start:start + 256, :k2]].mean(axis=1)
        V = expanded
    # Jaccard distance through min-sums sum_j min(V[q, j], V[g, j]); only j where V[q, j] > 0 count
    jaccard = np.empty((num_query, n), dtype=np.float64)
    for q in range(num_query):
        cols = np.flatnonzero(V[q])
        overlap = np.minimum(V[q, cols][None, :], V[:, cols]).sum(axis=1)
        jaccard[q] = 1 - overlap / (2 - overlap)
    final = jaccard * (1 - lambda_value) + dist[:num_query] * lambda_value
    return final[:, num_query:]
