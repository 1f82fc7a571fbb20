"""k-reciprocal re-ranking (Zhong et al., "Re-ranking Person Re-identification with k-reciprocal
Encoding", CVPR 2017), as used by the ReID community (k1=20, k2=6, lambda=0.3)."""

import numpy as np
import torch

from .metrics import pairwise_sq_distances


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
    Memory is (Q + G)^2, so this suits benchmark-sized test sets.
    """
    num_query = qf.shape[0]
    feats = torch.cat([qf, gf]).float()
    dist = pairwise_sq_distances(feats, feats).clamp(min=0).cpu().numpy().astype(np.float64)
    dist = (dist / dist.max(axis=0, keepdims=True)).T
    n = dist.shape[0]
    initial_rank = np.argsort(dist, axis=1, kind="stable")
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
    if k2 != 1:
        V = V[initial_rank[:, :k2]].mean(axis=1)
    # Jaccard distance through min-sums sum_j min(V[q, j], V[g, j]); only j where V[q, j] > 0 count
    jaccard = np.empty((num_query, n), dtype=np.float64)
    for q in range(num_query):
        cols = np.flatnonzero(V[q])
        overlap = np.minimum(V[q, cols][None, :], V[:, cols]).sum(axis=1)
        jaccard[q] = 1 - overlap / (2 - overlap)
    final = jaccard * (1 - lambda_value) + dist[:num_query] * lambda_value
    return final[:, num_query:]
