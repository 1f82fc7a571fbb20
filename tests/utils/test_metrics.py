"""mAP / CMC / mINP: a hand-computed case, a pure-Python oracle, the chunked evaluator against the
full-matrix one on random data (both protocols, ties, chunk sizes that do not divide the query count), and
near-collinear features, where neither the query chunk nor the feature batch size may change a rank."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from utils import metrics
from utils.metrics import (
    _negatives_before_rows,
    _negatives_before_sorted,
    _order_keys,
    _order_keys_np,
    evaluate_features,
    evaluate_rank,
    pairwise_sq_distances,
)


def oracle(distmat, q_pids, g_pids, q_camids, g_camids, q_sceneids=None, g_sceneids=None, max_rank=50):
    """Plain Python: per query, drop junk, rank by (distance, gallery index), average precision at hits."""
    aps, inps, cmc, valid = [], [], np.zeros(min(max_rank, len(g_pids))), 0
    for i, row in enumerate(distmat):
        items = []
        for g, d in enumerate(row):
            same = q_pids[i] == g_pids[g]
            group_q, group_g = ((q_sceneids[i], g_sceneids[g]) if q_sceneids is not None
                                else (q_camids[i], g_camids[g]))
            if same and group_q == group_g:
                continue
            items.append((float(d), g, same))
        items.sort(key=lambda t: (t[0], t[1]))
        hit_ranks = [r for r, (_, _, same) in enumerate(items, 1) if same]
        if not hit_ranks:
            continue
        valid += 1
        aps.append(sum((k + 1) / r for k, r in enumerate(hit_ranks)) / len(hit_ranks))
        inps.append(len(hit_ranks) / hit_ranks[-1])
        cmc[hit_ranks[0] - 1:] += 1
    return np.mean(aps), np.mean(inps), cmc / valid, valid


def test_hand_computed_case():
    # query 0 (id 1, cam 0): gallery in distance order is [id1 cam0 (junk), id2, id1 cam1, id3, id1 cam2]
    # -> filtered ranking neg, POS, neg, POS: hits at ranks 2 and 4, AP = (1/2 + 2/4) / 2 = 0.5, INP = 2/4.
    # query 1 (id 9) has no positive and is skipped; query 2 (id 3, cam 1): its only id-3 item is at rank 4
    # of the unfiltered list (no junk: camera 0 != 1) -> AP = 1/4, INP = 1/4.
    g_pids, g_cams = [1, 2, 1, 3, 1], [0, 0, 1, 2, 2]
    gallery_x = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    query_x = np.array([0.0, 0.0, 0.0])
    q_pids, q_cams = [1, 9, 3], [0, 0, 1]
    distmat = (query_x[:, None] - gallery_x[None, :]) ** 2
    expected_map, expected_minp = (0.5 + 0.25) / 2, (0.5 + 0.25) / 2
    expected_cmc = np.array([0, 0.5, 0.5, 1.0, 1.0])
    for result in (evaluate_rank(distmat, q_pids, g_pids, q_cams, g_cams),
                   evaluate_features(torch.tensor(query_x[:, None], dtype=torch.float32),
                                     torch.tensor(gallery_x[:, None], dtype=torch.float32),
                                     q_pids, g_pids, q_cams, g_cams, chunk_size=2)):
        assert result.num_valid == 2
        assert result.mAP == pytest.approx(expected_map, abs=1e-12)
        assert result.mINP == pytest.approx(expected_minp, abs=1e-12)
        np.testing.assert_allclose(result.cmc, expected_cmc)
        assert result.as_percent()["Rank-5"] == pytest.approx(100.0)


def test_scene_rule_ignores_cameras():
    # MSVR310: gallery item 0 shares id and scene with the query -> junk, whatever its camera;
    # item 1 shares id and camera but not scene -> a positive.
    distmat = np.array([[0.1, 0.2, 0.3]])
    args = ([5], [5, 5, 6], [0], [1, 0, 0])
    result = evaluate_rank(distmat, *args, q_sceneids=[2], g_sceneids=[2, 3, 2])
    assert result.num_valid == 1 and result.mAP == pytest.approx(1.0) and result.cmc[0] == 1.0
    camera_rule = evaluate_rank(distmat, *args)    # camera rule: item 1 (same id, same camera) is junk
    assert camera_rule.mAP == pytest.approx(1.0) and camera_rule.num_valid == 1
    features = evaluate_features(torch.zeros(1, 1), torch.tensor([[0.1], [0.2], [0.3]]).sqrt(), *args,
                                 q_sceneids=[2], g_sceneids=[2, 3, 2])
    assert features.mAP == pytest.approx(1.0) and features.num_valid == 1


def test_ties_are_broken_by_gallery_order():
    # a negative and a positive at exactly the same distance: the one earlier in the gallery ranks first
    q = torch.zeros(1, 2)
    g = torch.tensor([[1.0, 0.0], [0.0, 1.0]])                   # both at squared distance 1
    for g_pids, expected in (([7, 1], 0.5), ([1, 7], 1.0)):      # negative first -> positive at rank 2
        ranked = evaluate_rank(np.ones((1, 2)), [1], g_pids, [0], [1, 1])
        chunked = evaluate_features(q, g, [1], g_pids, [0], [1, 1])
        assert ranked.mAP == pytest.approx(expected) and chunked.mAP == pytest.approx(expected)


def _random_case(rng, num_query, num_gallery, ids, ties):
    """Integer features, so every distance is exact in float32 whatever the summation order.

    ``ties``: small coordinates and duplicated gallery items, so exact ties abound. Otherwise the main
    coordinates are multiples of s = num_gallery and each gallery item gets a distinct extra coordinate
    e < s (0 for queries): distances s^2 k + e^2 are all distinct within a row.
    """
    if ties:
        qf = rng.integers(-2, 3, (num_query, 6))
        gf = rng.integers(-2, 3, (num_gallery, 6))
        gf[num_gallery // 2:] = gf[:num_gallery - num_gallery // 2]
    else:
        s = num_gallery
        qf = np.concatenate([s * rng.integers(-2, 3, (num_query, 5)), np.zeros((num_query, 1), int)], 1)
        gf = np.concatenate([s * rng.integers(-2, 3, (num_gallery, 5)), rng.permutation(s)[:, None]], 1)
    meta = {"q_pids": rng.integers(0, ids + 2, num_query),  # ids ids..ids+1 are absent from the gallery
            "g_pids": rng.integers(0, ids, num_gallery),
            "q_camids": rng.integers(0, 3, num_query), "g_camids": rng.integers(0, 3, num_gallery),
            "q_sceneids": rng.integers(0, 4, num_query), "g_sceneids": rng.integers(0, 4, num_gallery)}
    distmat = ((qf[:, None].astype(np.float64) - gf[None]) ** 2).sum(-1)
    return torch.tensor(qf, dtype=torch.float32), torch.tensor(gf, dtype=torch.float32), meta, distmat


@pytest.mark.parametrize("ties", [False, True], ids=["tie-free", "ties"])
@pytest.mark.parametrize("protocol", ["camera", "scene"])
def test_chunked_equals_full_matrix(ties, protocol):
    rng = np.random.default_rng(7 + ties)
    qf, gf, meta, distmat = _random_case(rng, 53, 240, ids=12, ties=ties)
    has_ties = (np.diff(np.sort(distmat, axis=1), axis=1) == 0).any(1)
    assert has_ties.all() if ties else not has_ties.any()
    if protocol == "camera":
        meta = {k: v for k, v in meta.items() if "scene" not in k}
    expected_map, expected_minp, expected_cmc, expected_valid = oracle(distmat, **meta, max_rank=50)
    assert 0 < expected_valid < len(qf)          # some queries have no valid positive and are skipped
    reference = evaluate_rank(distmat, **meta)
    assert reference.num_valid == expected_valid
    assert reference.mAP == pytest.approx(expected_map, abs=1e-12)
    assert reference.mINP == pytest.approx(expected_minp, abs=1e-12)
    np.testing.assert_array_equal(reference.cmc, expected_cmc)
    for chunk in (1, 5, 16, 1000):
        chunked = evaluate_features(qf, gf, **meta, chunk_size=chunk, device="cpu")
        assert chunked.num_valid == expected_valid
        assert chunked.mAP == pytest.approx(expected_map, abs=1e-12)
        assert chunked.mINP == pytest.approx(expected_minp, abs=1e-12)
        np.testing.assert_array_equal(chunked.cmc, expected_cmc)


def test_negative_distances_keep_their_order():
    # rounding can make squared distances slightly negative; they must still rank first, in order
    distmat = np.array([[-1e-7, -2e-7, 0.3]])
    ranked = evaluate_rank(distmat, [1], [1, 2, 1], [0], [1, 1, 1])
    assert ranked.mAP == pytest.approx((1 / 2 + 2 / 3) / 2)
    # evaluate_features orders floats through integer keys: negative values must order as floats do,
    # and -0.0 ties with +0.0 (broken by index)
    values = torch.tensor([[-1e-7, -2e-7, 0.3, 0.0, -0.0, -3.5, 2.0]])
    index = torch.arange(7)
    keys = _order_keys(values, index)
    assert keys[0].argsort().tolist() == [5, 1, 0, 3, 4, 2, 6]
    np.testing.assert_array_equal(_order_keys_np(values.numpy()[0], index.numpy()), keys[0].numpy())


def test_cpu_row_path_equals_the_whole_sort_path():
    """The GPU path (sort every row's keys) and the CPU path (key and sort only the negatives up to the
    farthest positive) count the same negatives, ties and negative values included."""
    rng = np.random.default_rng(5)
    dist = torch.from_numpy(rng.integers(-2, 6, (9, 50)).astype(np.float32) / 4)     # many exact ties
    dist[dist == 0] = -0.0
    same = torch.from_numpy(np.stack([rng.choice(50, 6, replace=False) for _ in range(9)]))
    pos_dist = dist.gather(1, same)
    pos_keys = _order_keys(pos_dist, same).sort(dim=1).values
    work = dist.clone().scatter_(1, same, float("inf"))
    expected = _negatives_before_sorted(work, pos_keys)
    got = _negatives_before_rows(work, pos_keys, pos_dist.amax(1))
    assert torch.equal(got, expected)
    # and by definition: negatives with (distance, index) before the positive's
    for r in range(9):
        negatives = [(float(d), g) for g, d in enumerate(dist[r]) if g not in same[r].tolist()]
        for j, key in enumerate(pos_keys[r].tolist()):
            g = key % 2**32
            assert got[r, j] == sum((d, i) < (float(dist[r, g]), g) for d, i in negatives)


def test_non_finite_features_are_rejected():
    with pytest.raises(ValueError, match="NaN"):
        evaluate_features(torch.tensor([[float("nan")]]), torch.zeros(2, 1), [0], [0, 1], [0], [1, 1])


def _near_collinear_network(seed: int = 140, ids: int = 8, per: int = 6, d_in: int = 8, dim: int = 768):
    """A one-layer float64 "network" (inputs (N, d_in), weights (d_in, dim)) whose L2-normalised outputs
    are almost collinear (cosine >= 0.99995, squared distances ~1e-5), with identities and 3 cameras."""
    gen = torch.Generator().manual_seed(seed)
    weights = torch.randn(d_in, dim, generator=gen, dtype=torch.float64) / d_in ** 0.5
    common = torch.randn(d_in, generator=gen, dtype=torch.float64)
    centres = torch.randn(ids, d_in, generator=gen, dtype=torch.float64)
    noise = torch.randn(ids * per, d_in, generator=gen, dtype=torch.float64)
    inputs = common + 2e-3 * (centres.repeat_interleave(per, 0) + 1.5 * noise)
    pids = np.repeat(np.arange(ids), per)
    return inputs, weights, pids, np.tile(np.arange(per), ids) % 3


def test_near_collinear_ranks_do_not_depend_on_chunk_or_batch_size():
    """Features of a float32 network run with batch sizes 1, 7 and 256 (its float32 rounding differs with
    the blocking of the matrix product), evaluated with query chunks of 1, 7 and 256: every figure equals
    the float64 reference. The data keep every query's sorted distances >= 5e-4 apart (relative), far above
    what float32 rounding of the features moves them (~1e-5); the former float32 |q|^2 + |g|^2 - 2 q.g
    cancels ~1e-7 of 1 and gets them wrong."""
    inputs, weights, pids, cams = _near_collinear_network()
    q, g = np.arange(0, len(pids), 3), np.setdiff1d(np.arange(len(pids)), np.arange(0, len(pids), 3))
    meta = {"q_pids": pids[q], "g_pids": pids[g], "q_camids": cams[q], "g_camids": cams[g]}
    exact = F.normalize(inputs @ weights, dim=1)                                         # float64
    assert (exact @ exact.t()).min() >= 0.99995
    exact_dist = torch.cdist(exact[q], exact[g]) ** 2                                    # (Q, G)
    ordered = exact_dist.sort(1).values
    assert (ordered.diff(dim=1) / ordered[:, 1:]).min() >= 5e-4
    reference = evaluate_rank(exact_dist.numpy(), **meta)
    assert 0.3 < reference.mAP < 0.7 and reference.num_valid == len(q)

    x32, w32 = inputs.float(), weights.float()
    naive_maps = set()
    for batch in (1, 7, 256):
        feats = F.normalize(torch.cat([x32[i:i + batch] @ w32 for i in range(0, len(x32), batch)]), dim=1)
        qf, gf = feats[q], feats[g]
        exact_of_these = torch.cdist(qf.double(), gf.double()) ** 2
        torch.testing.assert_close(pairwise_sq_distances(qf, gf).double(), exact_of_these, rtol=1e-6, atol=0)
        assert ((exact_of_these - exact_dist).abs() / exact_dist).max() < 5e-5      # the features' own rounding
        for chunk in (1, 7, 256):
            result = evaluate_features(qf, gf, **meta, chunk_size=chunk)
            assert result.mAP == pytest.approx(reference.mAP, abs=1e-12), (batch, chunk)
            assert result.mINP == pytest.approx(reference.mINP, abs=1e-12), (batch, chunk)
            np.testing.assert_array_equal(result.cmc, reference.cmc)
        naive = qf.pow(2).sum(1, keepdim=True) + gf.pow(2).sum(1) - 2 * qf @ gf.t()
        naive_maps.add(evaluate_rank(naive.numpy(), **meta).mAP)
    assert min(abs(m - reference.mAP) for m in naive_maps) > 1e-3       # the test sees the cancellation


def test_distances_do_not_depend_on_the_gallery_blocks(monkeypatch):
    """The gallery goes through the float64 products in blocks of utils.metrics._BLOCK_BYTES; whatever their
    size (1, 4 rows, all), the centre is the gallery mean and the distances are the same float32 values, the
    exact ones rounded."""
    gen = torch.Generator().manual_seed(3)
    qf, gf = torch.randn(7, 16, generator=gen) + 5, torch.randn(23, 16, generator=gen) + 5
    exact = torch.cdist(qf.double(), gf.double()) ** 2
    results = []
    for rows in (1, 4, 100):
        monkeypatch.setattr(metrics, "_BLOCK_BYTES", 8 * 16 * rows)
        centre, g_sq = metrics.gallery_centre(gf)
        torch.testing.assert_close(centre, gf.double().mean(0), rtol=1e-14, atol=0)
        torch.testing.assert_close(g_sq, (gf.double() - centre).pow(2).sum(1), rtol=1e-14, atol=0)
        results.append(pairwise_sq_distances(qf, gf))
        torch.testing.assert_close(results[-1].double(), exact, rtol=1e-7, atol=0)
    assert all(torch.equal(r, results[0]) for r in results)
