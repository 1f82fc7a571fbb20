"""evaluate_rank against a hand-written oracle that follows the protocol's definition literally."""

import numpy as np
import pytest

from utils.metrics import evaluate_rank


def oracle(dist, q_pids, g_pids, q_cams, g_cams, q_scenes=None, g_scenes=None, max_rank=50):
    aps, inps, firsts = [], [], []
    for i in range(len(q_pids)):
        kept = []
        for j in range(len(g_pids)):
            same_pid = g_pids[j] == q_pids[i]
            if q_scenes is not None:
                drop = same_pid and g_scenes[j] == q_scenes[i]
            else:
                drop = same_pid and g_cams[j] == q_cams[i]
            if not drop:
                kept.append((dist[i][j], g_pids[j] == q_pids[i]))
        kept.sort(key=lambda item: item[0])
        hit_ranks = [r + 1 for r, (_, hit) in enumerate(kept) if hit]
        if not hit_ranks:
            continue
        aps.append(sum((n + 1) / r for n, r in enumerate(hit_ranks)) / len(hit_ranks))
        inps.append(len(hit_ranks) / hit_ranks[-1])
        firsts.append(hit_ranks[0])
    max_rank = min(max_rank, len(g_pids))
    cmc = [sum(f <= k for f in firsts) / len(firsts) for k in range(1, max_rank + 1)]
    return sum(aps) / len(aps), sum(inps) / len(inps), np.array(cmc), len(firsts)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("scene_rule", [False, True])
def test_evaluate_rank_matches_oracle(seed, scene_rule):
    rng = np.random.default_rng(seed)
    q, g = 23, 71
    dist = rng.permutation(q * g).reshape(q, g).astype(float)  # tie-free
    q_pids, g_pids = rng.integers(0, 6, q), rng.integers(0, 6, g)
    q_cams, g_cams = rng.integers(0, 3, q), rng.integers(0, 3, g)
    q_scenes, g_scenes = (rng.integers(0, 4, q), rng.integers(0, 4, g)) if scene_rule else (None, None)
    result = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, q_scenes, g_scenes, max_rank=30)
    m_ap, m_inp, cmc, valid = oracle(dist, q_pids, g_pids, q_cams, g_cams, q_scenes, g_scenes, max_rank=30)
    assert result.num_valid == valid
    assert result.mAP == pytest.approx(m_ap, abs=1e-12)
    assert result.mINP == pytest.approx(m_inp, abs=1e-12)
    np.testing.assert_allclose(result.cmc, cmc, atol=1e-12)


def test_hand_computed_case():
    # one query (pid 1, cam 0); gallery sorted by distance: [pid1 cam0 (junk), pid2, pid1 cam1, pid3, pid1 cam2]
    dist = np.array([[0.1, 0.2, 0.3, 0.4, 0.5]])
    result = evaluate_rank(dist, [1], [1, 2, 1, 3, 1], [0], [0, 0, 1, 0, 2], max_rank=4)
    # after removing the junk item the hits are at ranks 2 and 4: AP = (1/2 + 2/4) / 2, INP = 2/4
    assert result.mAP == pytest.approx(0.5)
    assert result.mINP == pytest.approx(0.5)
    np.testing.assert_array_equal(result.cmc, [0, 1, 1, 1])
    # the scene rule ignores cameras: same scene removes the pid-1 item of another camera too
    result = evaluate_rank(dist, [1], [1, 2, 1, 3, 1], [0], [0, 0, 1, 0, 2], [7], [7, 7, 7, 7, 8], max_rank=4)
    assert result.mAP == pytest.approx(1 / 3)  # only the last item remains a hit, at rank 3


def test_queries_without_positives_are_skipped():
    dist = np.array([[0.1, 0.2], [0.3, 0.1]])
    result = evaluate_rank(dist, [1, 5], [1, 2], [0, 0], [1, 1])
    assert result.num_valid == 1 and result.mAP == 1.0
