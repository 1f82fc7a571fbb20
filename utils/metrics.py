"""Re-identification metrics: mAP, mINP and CMC under the benchmarks' protocols (DATASETS.md).

Protocol. For every query, gallery items with the query's identity *and* camera are removed (camera rule);
when scene ids are given, those with the query's identity *and* scene are removed instead (MSVR310 scene
rule; cameras are then ignored). The remaining gallery is ranked by increasing distance, ties broken by
gallery order (a stable sort). A query whose filtered gallery holds no positive is skipped and excluded
from every average.

Per query with positives at 1-based ranks r_1 < ... < r_P:
AP = mean_j j / r_j; INP = P / r_P; CMC(k) = 1 if r_1 <= k. mAP, mINP and CMC average over valid queries.
"""

from concurrent.futures import ThreadPoolExecutor
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


_KEY_MAX = torch.iinfo(torch.int64).max


def _order_keys(values: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """int64 keys (written into ``out``) ordering the float32 ``values`` (Q, G) like the pairs (value,
    column index).

    A float's bit pattern read as an integer orders like the float for non-negative values and backwards
    for negative ones (which are mirrored; -0.0 maps onto +0.0). The column index fills the low 32 bits,
    so keys are distinct and their order is a stable sort's.
    """
    out.copy_(values.contiguous().view(torch.int32))
    if float(values.min()) <= 0:   # only duplicates or rounding give such distances: the rare path
        out.copy_(torch.where(out < 0, -(out + 2**31), out))
    index = torch.arange(values.shape[1], device=values.device, dtype=torch.int64)
    return torch.add(index, out, alpha=2**32, out=out)


def _sort_rows_(x: torch.Tensor) -> torch.Tensor:
    """``x`` (Q, N) sorted along its rows. On CPU in place, by NumPy, whose vectorised sort is one to two
    orders of magnitude faster than torch's CPU sort, in as many threads as torch uses (NumPy releases
    the GIL while sorting)."""
    if x.device.type != "cpu":
        return torch.sort(x, dim=1).values
    array = x.numpy()
    if array.size < 1 << 20:
        array.sort(axis=1)
        return x
    blocks = [array[i:i + 16] for i in range(0, len(array), 16)]
    with ThreadPoolExecutor(max_workers=max(torch.get_num_threads(), 1)) as pool:
        list(pool.map(lambda block: block.sort(axis=1), blocks))
    return x


def _stable_argsort(x: torch.Tensor) -> torch.Tensor:
    """Indices sorting the 1-D ``x``, equal values in their original order (NumPy on CPU, see above)."""
    if x.device.type != "cpu":
        return torch.sort(x, stable=True).indices
    return torch.from_numpy(np.argsort(x.numpy(), kind="stable"))


def _positive_ranks(dist: torch.Tensor, same: torch.Tensor, positive: torch.Tensor,
                    keys: torch.Tensor) -> torch.Tensor:
    """1-based ranks (Q, W) of every query's positives in its filtered ranking, in ranking order.

    ``same`` (Q, W) holds the gallery indices of the query's identity (padded by repeating one of them),
    ``positive`` (Q, W) marks those that count (not junk, not padding); ``keys`` is a (Q, G) int64 work
    buffer. The filtered ranking holds the positives and the negatives (other identities) ordered by
    (distance, gallery index). The j-th positive (0-based) has rank ``j + 1 + n_j``, n_j the negatives
    before it, found by binary search of its key in the row's sorted negative keys. Positions j >= the
    query's number of positives hold meaningless values.
    """
    keys = _order_keys(dist, keys)                                                              # (Q, G)
    pos_keys = _sort_rows_(keys.gather(1, same).masked_fill_(~positive, _KEY_MAX))              # (Q, W)
    negatives = _sort_rows_(keys.scatter_(1, same, _KEY_MAX))    # identity's items last, as if absent
    before = torch.searchsorted(negatives, pos_keys)                                            # (Q, W)
    j = torch.arange(1, same.shape[1] + 1, device=dist.device, dtype=torch.float64)[None, :]
    return before.double() + j


def evaluate_features(qf: torch.Tensor, gf: torch.Tensor, q_pids, g_pids, q_camids, g_camids,
                      q_sceneids=None, g_sceneids=None, max_rank: int = 50, chunk_size: int = 256,
                      device: torch.device | str | None = None) -> RankResult:
    """The same figures as :func:`evaluate_rank` on squared Euclidean distances of features (for
    L2-normalised features that is ``2 - 2 cos``), in memory bounded by ``chunk_size`` x gallery size.

    Per chunk of queries: distances by one matrix product; then the ranks of the positives
    (:func:`_positive_ranks`): the negatives' (distance, index) keys are sorted as plain integers, no
    argsort, and each positive is located among them by binary search. The gallery items of a query's identity come from
    an index of the gallery by identity, so no query x gallery mask is built. Runs on ``device`` (default:
    the features' device; on CUDA the chunks run on the GPU).
    """
    device = torch.device(device) if device is not None else qf.device
    if not all(torch.isfinite(v) for x in (qf, gf) if x.numel() for v in torch.aminmax(x)):
        raise ValueError("features hold NaN or infinite values")
    gf = gf.to(device=device, dtype=torch.float32)
    g_sq = gf.pow(2).sum(1)

    def as_tensor(values):
        return torch.as_tensor(np.asarray(values), device=device)

    q_pids, g_pids = as_tensor(q_pids), as_tensor(g_pids)
    # the junk rule: same identity and same scene (MSVR310) or same camera
    q_groups, g_groups = ((as_tensor(q_sceneids), as_tensor(g_sceneids)) if q_sceneids is not None
                          else (as_tensor(q_camids), as_tensor(g_camids)))
    g_by_pid = _stable_argsort(g_pids)                          # gallery indices grouped by identity
    g_sorted_pids = g_pids[g_by_pid]
    first = torch.searchsorted(g_sorted_pids, q_pids, side="left")                              # (Q,)
    count = torch.searchsorted(g_sorted_pids, q_pids, side="right") - first                     # (Q,)
    max_rank = min(max_rank, gf.shape[0])
    ap_sum = inp_sum = 0.0
    cmc_counts = torch.zeros(max_rank, dtype=torch.float64, device=device)
    num_valid = 0
    # work buffers reused by every chunk (fresh large allocations would cost a page fault per page)
    dist_buffer = torch.empty(min(chunk_size, qf.shape[0]), gf.shape[0], device=device)
    keys_buffer = torch.empty(dist_buffer.shape, dtype=torch.int64, device=device)
    for start in range(0, qf.shape[0], chunk_size):
        rows = torch.arange(start, min(start + chunk_size, qf.shape[0]), device=device)
        rows = rows[count[rows] > 0]                      # queries whose identity is in the gallery
        if len(rows) == 0:
            continue
        width = int(count[rows].max())
        offsets = torch.arange(width, device=device)[None, :]                                   # (1, W)
        in_block = offsets < count[rows, None]                                                  # (Q, W)
        same = g_by_pid[first[rows, None] + torch.where(in_block, offsets, 0)]                  # (Q, W)
        positive = in_block & (g_groups[same] != q_groups[rows, None])                          # (Q, W)
        keep = positive.any(1)                            # queries without a valid positive are skipped
        rows, same, positive = rows[keep], same[keep], positive[keep]
        if len(rows) == 0:
            continue
        q = qf[rows.to(qf.device)].to(device=device, dtype=torch.float32)
        dist = dist_buffer[:len(rows)]
        torch.add(q.pow(2).sum(1, keepdim=True), g_sq[None, :], out=dist)
        dist.addmm_(q, gf.t(), alpha=-2)                                                        # (Q, G)
        ranks = _positive_ranks(dist, same, positive, keys_buffer[:len(rows)])                  # (Q, W)
        num_pos = positive.sum(1)
        j = torch.arange(1, ranks.shape[1] + 1, device=device, dtype=torch.float64)[None, :]
        ap = torch.where(j <= num_pos[:, None], j / ranks, 0.0).sum(1) / num_pos
        last = ranks.gather(1, (num_pos - 1)[:, None])[:, 0]
        num_valid += len(rows)
        ap_sum += float(ap.sum())
        inp_sum += float((num_pos / last).sum())
        best = ranks[:, 0].long()
        best = best[best <= max_rank]
        cmc_counts += torch.bincount(best - 1, minlength=max_rank).double().cumsum(0)
    return _summarise(ap_sum, inp_sum, cmc_counts.cpu().numpy(), num_valid)


def pairwise_sq_distances(qf: torch.Tensor, gf: torch.Tensor) -> torch.Tensor:
    """Full query x gallery squared Euclidean distances (for re-ranking and small evaluations)."""
    qf, gf = qf.float(), gf.float()
    return qf.pow(2).sum(1, keepdim=True) + gf.pow(2).sum(1)[None, :] - 2 * qf @ gf.t()
