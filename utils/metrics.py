"""Re-identification metrics: mAP, mINP and CMC under the benchmarks' protocols (DATASETS.md).

Protocol. For every query, gallery items with the query's identity *and* camera are removed (camera rule);
when scene ids are given, those with the query's identity *and* scene are removed instead (MSVR310 scene
rule; cameras are then ignored). The remaining gallery is ranked by increasing distance, ties broken by
gallery order (a stable sort). A query whose filtered gallery holds no positive is skipped and excluded
from every average.

Per query with positives at 1-based ranks r_1 < ... < r_P:
AP = mean_j j / r_j; INP = P / r_P; CMC(k) = 1 if r_1 <= k. mAP, mINP and CMC average over valid queries.
"""

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class RankResult:
    """mAP and mINP as fractions; ``cmc[k - 1]`` is Rank-k (fraction); ``num_valid`` queries were scored."""

    mAP: float
    mINP: float
    cmc: np.ndarray
    num_valid: int

    def as_percent(self) -> dict[str, float]:
        """The figures of ``test_results.json``: mAP, mINP, Rank-1/5/10 in percent."""
        out = {"mAP": 100 * self.mAP, "mINP": 100 * self.mINP}
        for k in (1, 5, 10):
            out[f"Rank-{k}"] = 100 * float(self.cmc[min(k, len(self.cmc)) - 1])
        return out


def _keep_masks(q_pids, g_pids, q_camids, g_camids, q_sceneids, g_sceneids, xp):
    """(valid gallery mask, positive mask) for queries against the gallery, in the array module ``xp``."""
    same_pid = q_pids[:, None] == g_pids[None, :]
    if q_sceneids is not None:
        junk = same_pid & (q_sceneids[:, None] == g_sceneids[None, :])
    else:
        junk = same_pid & (q_camids[:, None] == g_camids[None, :])
    valid = ~junk
    return valid, same_pid & valid


def _summarise(ap_sum: float, inp_sum: float, cmc_counts: np.ndarray, num_valid: int) -> RankResult:
    if num_valid == 0:
        raise ValueError("no query has a positive in the gallery under this protocol")
    return RankResult(ap_sum / num_valid, inp_sum / num_valid, cmc_counts / num_valid, num_valid)


def evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, q_sceneids=None, g_sceneids=None,
                  max_rank: int = 50) -> RankResult:
    """mAP / mINP / CMC from a query x gallery distance matrix (the straightforward reference: one stable
    argsort per query). Scene ids given -> MSVR310 scene rule, else the camera rule (module docstring)."""
    distmat = np.asarray(distmat)
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    q_camids, g_camids = np.asarray(q_camids), np.asarray(g_camids)
    scenes = (np.asarray(q_sceneids), np.asarray(g_sceneids)) if q_sceneids is not None else (None, None)
    max_rank = min(max_rank, distmat.shape[1])
    ap_sum = inp_sum = 0.0
    cmc_counts = np.zeros(max_rank)
    num_valid = 0
    for i in range(distmat.shape[0]):
        valid, positive = _keep_masks(q_pids[i:i + 1], g_pids, q_camids[i:i + 1], g_camids,
                                      None if scenes[0] is None else scenes[0][i:i + 1], scenes[1], np)
        order = np.argsort(distmat[i], kind="stable")
        hits = positive[0][order][valid[0][order]]       # positives in ranked, filtered order
        ranks = np.flatnonzero(hits) + 1                   # 1-based ranks of the positives
        if len(ranks) == 0:
            continue
        num_valid += 1
        ap_sum += float(np.mean(np.arange(1, len(ranks) + 1) / ranks))
        inp_sum += len(ranks) / ranks[-1]
        if ranks[0] <= max_rank:
            cmc_counts[ranks[0] - 1:] += 1
    return _summarise(ap_sum, inp_sum, cmc_counts, num_valid)


def _sortable_keys(dist: torch.Tensor) -> torch.Tensor:
    """int64 keys ordering like (distance, gallery index): the float32 bits made monotone, then the index.

    Distinct for every gallery item, so counting keys below a positive's key gives exactly its rank in a
    stable sort.
    """
    bits = dist.float().contiguous().view(torch.int32)
    bits = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)   # negative floats: reverse their order
    index = torch.arange(dist.shape[1], device=dist.device, dtype=torch.int64)
    return bits.to(torch.int64) * (1 << 32) + index


def evaluate_features(qf: torch.Tensor, gf: torch.Tensor, q_pids, g_pids, q_camids, g_camids,
                      q_sceneids=None, g_sceneids=None, max_rank: int = 50, chunk_size: int = 256,
                      device: torch.device | str | None = None) -> RankResult:
    """The same figures as :func:`evaluate_rank` on squared Euclidean distances of features (for
    L2-normalised features that is ``2 - 2 cos``), in memory bounded by ``chunk_size`` x gallery size.

    Per chunk of queries: distances by one matrix product; the ranks of the positives without sorting the
    gallery: positives' keys are sorted per query (few), and every valid gallery item is located among them
    by binary search; a cumulative count then gives how many valid items precede each positive.
    """
    device = torch.device(device) if device is not None else qf.device
    gf = gf.to(device=device, dtype=torch.float32)
    g_sq = gf.pow(2).sum(1)
    meta = [torch.as_tensor(np.asarray(v), device=device) if v is not None else None
            for v in (q_pids, g_pids, q_camids, g_camids, q_sceneids, g_sceneids)]
    max_rank = min(max_rank, gf.shape[0])
    ap_sum = inp_sum = 0.0
    cmc_counts = torch.zeros(max_rank, dtype=torch.float64, device=device)
    num_valid = 0
    big = torch.iinfo(torch.int64).max
    for start in range(0, qf.shape[0], chunk_size):
        sl = slice(start, start + chunk_size)
        q = qf[sl].to(device=device, dtype=torch.float32)
        dist = q.pow(2).sum(1, keepdim=True) + g_sq[None, :] - 2 * q @ gf.t()                 # (Q, G)
        valid, positive = _keep_masks(meta[0][sl], meta[1], meta[2][sl], meta[3],
                                      None if meta[4] is None else meta[4][sl], meta[5], torch)
        keys = _sortable_keys(dist)
        del dist
        num_pos = positive.sum(1)                                                                # (Q,)
        width = max(int(num_pos.max()), 1)
        pos_keys = torch.where(positive, keys, big).sort(dim=1).values[:, :width].contiguous()  # (Q, P)
        neg_keys = torch.where(valid & ~positive, keys, big)                                     # (Q, G)
        del keys
        # slot j = number of positives with a key below the item's: the item precedes positive j
        slot = torch.searchsorted(pos_keys, neg_keys)                                            # (Q, G)
        slot = torch.where(neg_keys == big, width, slot)        # invalid items and positives: no slot
        before = torch.zeros(q.shape[0], width + 1, dtype=torch.int64, device=device)
        before.scatter_add_(1, slot, torch.ones_like(slot))
        before = before[:, :width].cumsum(1)                     # valid negatives preceding positive j
        j = torch.arange(1, width + 1, device=device, dtype=torch.float64)[None, :]
        ranks = before.double() + j                              # 1-based ranks of the positives
        has = torch.arange(width, device=device)[None, :] < num_pos[:, None]
        ok = num_pos > 0
        ap = torch.where(has, j / ranks, 0.0).sum(1)[ok] / num_pos[ok]
        last = ranks.gather(1, (num_pos.clamp(min=1) - 1)[:, None])[:, 0]
        first = ranks[:, 0][ok].long()
        num_valid += int(ok.sum())
        ap_sum += float(ap.sum())
        inp_sum += float((num_pos[ok] / last[ok]).sum())
        first = first[first <= max_rank]
        cmc_counts += torch.bincount(first - 1, minlength=max_rank).double().cumsum(0)
    return _summarise(ap_sum, inp_sum, cmc_counts.cpu().numpy(), num_valid)


def pairwise_sq_distances(qf: torch.Tensor, gf: torch.Tensor) -> torch.Tensor:
    """Full query x gallery squared Euclidean distances (for re-ranking and small evaluations)."""
    qf, gf = qf.float(), gf.float()
    return qf.pow(2).sum(1, keepdim=True) + gf.pow(2).sum(1)[None, :] - 2 * qf @ gf.t()
