"""k-reciprocal re-ranking against an independent, loop-by-loop transcription of Zhong et al.'s algorithm
(float64 throughout, where the original code keeps V in float16)."""

import numpy as np
import pytest
import torch

from utils.reranking import re_ranking


def classic_re_ranking(qf: np.ndarray, gf: np.ndarray, k1: int, k2: int, lambda_value: float) -> np.ndarray:
    feats = np.concatenate([qf, gf]).astype(np.float64)
    num_query, n = len(qf), len(feats)
    original = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            original[i, j] = max(((feats[i] - feats[j]) ** 2).sum(), 0.0)
    original = np.transpose(original / np.max(original, axis=0))
    initial_rank = np.argsort(original, kind="stable")
    V = np.zeros((n, n))
    for i in range(n):
        forward = initial_rank[i, :k1 + 1]
        backward = initial_rank[forward, :k1 + 1]
        reciprocal = forward[np.where(backward == i)[0]]
        expansion = reciprocal
        for candidate in reciprocal:
            c_forward = initial_rank[candidate, :int(np.around(k1 / 2)) + 1]
            c_backward = initial_rank[c_forward, :int(np.around(k1 / 2)) + 1]
            c_reciprocal = c_forward[np.where(c_backward == candidate)[0]]
            if len(np.intersect1d(c_reciprocal, reciprocal)) > 2 / 3 * len(c_reciprocal):
                expansion = np.append(expansion, c_reciprocal)
        expansion = np.unique(expansion)
        weight = np.exp(-original[i, expansion])
        V[i, expansion] = weight / np.sum(weight)
    if k2 != 1:
        V_qe = np.zeros_like(V)
        for i in range(n):
            V_qe[i, :] = np.mean(V[initial_rank[i, :k2], :], axis=0)
        V = V_qe
    inverted = [np.where(V[:, j] != 0)[0] for j in range(n)]
    jaccard = np.zeros((num_query, n))
    for i in range(num_query):
        overlap = np.zeros(n)
        nonzero = np.where(V[i, :] != 0)[0]
        for j in nonzero:
            overlap[inverted[j]] += np.minimum(V[i, j], V[inverted[j], j])
        jaccard[i] = 1 - overlap / (2 - overlap)
    final = jaccard * (1 - lambda_value) + original[:num_query] * lambda_value
    return final[:, num_query:]


@pytest.mark.parametrize(("k1", "k2", "lambda_value"), [(20, 6, 0.3), (5, 3, 0.5), (7, 1, 0.0)])
def test_re_ranking_matches_the_classic_algorithm(k1, k2, lambda_value):
    rng = np.random.default_rng(k1)
    centres = rng.standard_normal((6, 8))
    qf = centres[rng.integers(0, 6, 10)] + 0.7 * rng.standard_normal((10, 8))
    gf = centres[rng.integers(0, 6, 30)] + 0.7 * rng.standard_normal((30, 8))
    expected = classic_re_ranking(qf, gf, k1, k2, lambda_value)
    got = re_ranking(torch.from_numpy(qf), torch.from_numpy(gf), k1, k2, lambda_value)
    assert got.shape == (10, 30)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    assert not np.allclose(got, expected[:, ::-1])   # non-trivial: the values do vary across the gallery


def test_re_ranking_with_duplicated_images_keeps_index_order():
    # query = gallery (as RGBNT201): every item has an exact twin; ties rank in index order in both
    rng = np.random.default_rng(3)
    feats = rng.standard_normal((12, 4))
    expected = classic_re_ranking(feats, feats, 4, 2, 0.3)
    got = re_ranking(torch.from_numpy(feats), torch.from_numpy(feats), 4, 2, 0.3)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
