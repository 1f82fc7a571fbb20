"""Re-identification metrics: mAP, mINP and CMC under the benchmarks' protocols (docs/datasets.md).

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

__all__ = ["RankResult", "evaluate_features", "evaluate_rank", "pairwise_sq_distances", "protocol_masks"]


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


def protocol_masks(q_pids, g_pids, q_camids, g_camids, q_sceneids, g_sceneids, xp):
    """(valid gallery mask, positive mask), (Q, G) each, for queries against the gallery under the protocol
    of the module docstring; arrays of the array module ``xp`` (numpy or torch)."""
    same_pid = q_pids[:, None] == g_pids[None, :]
    if q_sceneids is not None:
        junk = same_pid & (q_sceneids[:, None] == g_sceneids[None, :])
    else:
        junk = same_pid & (q_camids[:, None] == g_camids[None, :])
    valid = ~junk
    return valid, same_pid & valid


#: Bytes of one float64 block of gallery features (bounds the extra memory of the distances).
_BLOCK_BYTES = 2**22


def _centred_blocks(gf: torch.Tensor, centre: torch.Tensor):
    """``(start, gf[start:stop] - centre)`` in float64 over blocks of about ``_BLOCK_BYTES``, on the centre's
    device."""
    step = max(_BLOCK_BYTES // (8 * max(gf.shape[1], 1)), 1)
    for start in range(0, len(gf), step):
        yield start, torch.sub(gf[start:start + step].to(centre.device), centre)


def gallery_centre(gf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The point :func:`sq_distances` measures from, the mean gallery feature (D,), and the gallery's
    squared norms (G,) about it; float64, block by block (no float64 copy of the gallery)."""
    zero = torch.zeros(gf.shape[1], dtype=torch.float64, device=gf.device)
    centre = sum((g.sum(0) for _, g in _centred_blocks(gf, zero)), zero) / max(len(gf), 1)
    g_sq = torch.empty(len(gf), dtype=torch.float64, device=gf.device)
    for start, g in _centred_blocks(gf, centre):
        g_sq[start:start + len(g)] = g.pow(2).sum(1)
    return centre, g_sq


def sq_distances(qf: torch.Tensor, gf: torch.Tensor, centre: torch.Tensor, g_sq: torch.Tensor,
                 out: torch.Tensor | None = None) -> torch.Tensor:
    """Squared Euclidean distances (Q, G) as float32, computed in float64 from ``qf - centre`` and
    ``gf - centre`` (``centre, g_sq = gallery_centre(gf)``).

    Why: test features can be almost collinear (pairwise cosine >= 0.9999, squared distances ~1e-5);
    ``|q|^2 + |g|^2 - 2 q.g`` in float32 then cancels nearly every digit, and the blocking of the matrix
    product (query chunk, batch size) decides the ranks. Distances do not change when one vector is
    subtracted from all features; after centring, the terms are of the size of the distances, and in
    float64 the products of float32 inputs are exact and the sums carry ~1e-16 relative error. So the
    float32 result is the correctly rounded distance of the features, whatever the chunking (but for a
    ~1e-9 chance per pair that the float64 error straddles a float32 rounding boundary). The gallery is
    converted in blocks of ``_BLOCK_BYTES``, so the extra memory stays small.
    """
    out = torch.empty(len(qf), len(gf), device=qf.device) if out is None else out
    q = torch.sub(qf, centre)                                                                   # (Q, D)
    q_sq = q.pow(2).sum(1, keepdim=True)                                                        # (Q, 1)
    for start, g in _centred_blocks(gf, centre):                                                # (b, D)
        block = torch.addmm(g_sq[None, start:start + len(g)], q, g.t(), alpha=-2)               # (Q, b)
        out[:, start:start + len(g)].copy_(block.add_(q_sq))
    return out


def pairwise_sq_distances(qf: torch.Tensor, gf: torch.Tensor) -> torch.Tensor:
    """Full query x gallery squared Euclidean distances (Q, G), float32, for small sets (tools,
    visualisation): the same values as :func:`evaluate_features` ranks by."""
    return sq_distances(qf, gf, *gallery_centre(gf))


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
        valid, positive = protocol_masks(q_pids[i:i + 1], g_pids, q_camids[i:i + 1], g_camids,
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


def _order_keys(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """int64 keys ordering the float32 ``values`` like the pairs (value, index); ``index`` (< 2**32)
    broadcasts against ``values``.

    A float's bit pattern read as an integer orders like the float for non-negative values and backwards
    for negative ones (which are mirrored; -0.0 maps onto +0.0). The index fills the low 32 bits, so keys
    of distinct indices are distinct and their order is a stable sort's.
    """
    bits = values.contiguous().view(torch.int32).to(torch.int64)
    if bool((bits < 0).any()):   # negative distances: only from rounding, at (near-)duplicates
        bits = torch.where(bits < 0, -(bits + 2**31), bits)
    return bits.mul_(2**32).add_(index)


def _order_keys_np(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    """:func:`_order_keys` in NumPy, for the CPU path that works row by row (where torch's per-call
    overhead would show)."""
    bits = values.view(np.int32).astype(np.int64)
    if bits.size and bits.min() < 0:
        bits = np.where(bits < 0, -(bits + 2**31), bits)
    bits *= 2**32
    bits += index
    return bits


def _sort_rows_(x: torch.Tensor) -> torch.Tensor:
    """``x`` (Q, N) sorted along its rows; on CPU in place by NumPy, whose vectorised sort is one to two
    orders of magnitude faster than torch's CPU sort."""
    if x.device.type != "cpu":
        return torch.sort(x, dim=1).values
    x.numpy().sort(axis=1)
    return x


def _stable_argsort(x: torch.Tensor) -> torch.Tensor:
    """Indices sorting the 1-D ``x``, equal values in their original order (NumPy on CPU, see above)."""
    if x.device.type != "cpu":
        return torch.sort(x, stable=True).indices
    return torch.from_numpy(np.argsort(x.numpy(), kind="stable"))


def _negatives_before_sorted(dist: torch.Tensor, pos_keys: torch.Tensor) -> torch.Tensor:
    """Per positive key (Q, W): how many keys of its row of ``dist`` (Q, G; +inf where an item is not a
    negative) are smaller. Every row is keyed and sorted whole: the path for GPUs, where sorting is cheap."""
    index = torch.arange(dist.shape[1], device=dist.device)
    return torch.searchsorted(torch.sort(_order_keys(dist, index), dim=1).values, pos_keys)


def _negatives_before_rows(dist: torch.Tensor, pos_keys: torch.Tensor, limit: torch.Tensor) -> torch.Tensor:
    """As :func:`_negatives_before_sorted`, on CPU: per row, only the negatives not farther than the
    row's farthest positive (``limit``, (Q,)) can precede a positive, so only they are keyed and sorted,
    by NumPy, rows spread over torch's number of threads (NumPy releases the GIL on large arrays)."""
    d, keys, bound = dist.numpy(), pos_keys.numpy(), limit.numpy()
    out = np.empty(keys.shape, dtype=np.int64)

    def count(rows: range) -> None:
        for r in rows:
            near = np.flatnonzero(d[r] <= bound[r])
            candidates = _order_keys_np(d[r, near], near)
            candidates.sort()
            out[r] = np.searchsorted(candidates, keys[r])

    workers = max(torch.get_num_threads(), 1)
    step = -(-len(d) // workers)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(count, [range(i, min(i + step, len(d))) for i in range(0, len(d), step)]))
    return torch.from_numpy(out)


def _positive_ranks(dist: torch.Tensor, same: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """1-based ranks (Q, W) of every query's positives in its filtered ranking, in ranking order.

    ``dist`` (Q, G) is a work buffer (overwritten); ``same`` (Q, W) holds the gallery indices of the
    query's identity (padded by repeating one of them), ``positive`` (Q, W) marks those that count (not
    junk, not padding). The filtered ranking holds the positives and the negatives (other identities)
    ordered by (distance, gallery index), i.e. by integer keys (:func:`_order_keys`). The j-th positive
    (0-based) has rank ``j + 1 + n_j``, n_j the negatives with a smaller key. Positions j >= the query's
    number of positives hold meaningless values.
    """
    pos_dist = dist.gather(1, same)                                                             # (Q, W)
    pos_keys = _sort_rows_(_order_keys(pos_dist, same).masked_fill_(~positive, _KEY_MAX))       # (Q, W)
    dist.scatter_(1, same, float("inf"))                        # the query's identity: not negatives
    if dist.device.type == "cpu":
        limit = pos_dist.masked_fill(~positive, -float("inf")).amax(1)                          # (Q,)
        before = _negatives_before_rows(dist, pos_keys, limit)
    else:
        before = _negatives_before_sorted(dist, pos_keys)
    j = torch.arange(1, same.shape[1] + 1, device=dist.device, dtype=torch.float64)[None, :]
    return before.double() + j


def evaluate_features(qf: torch.Tensor, gf: torch.Tensor, q_pids, g_pids, q_camids, g_camids,
                      q_sceneids=None, g_sceneids=None, max_rank: int = 50, chunk_size: int = 256,
                      device: torch.device | str | None = None) -> RankResult:
    """The same figures as :func:`evaluate_rank` on squared Euclidean distances of features (for
    L2-normalised features that is ``2 - 2 cos``), in memory bounded by ``chunk_size`` x gallery size.

    Per chunk of queries: distances by matrix products of centred features in float64
    (:func:`sq_distances`: the ranks do not depend on the chunk size, even for near-collinear
    features); then the ranks of the positives
    (:func:`_positive_ranks`): (distance, index) pairs become plain integer keys, the negatives' keys
    are sorted (on CPU only those not farther than the query's farthest positive), no argsort, and each
    positive is located among them by binary search. The gallery items of a query's identity come from
    an index of the gallery by identity, so no query x gallery mask is built. Runs on ``device`` (default:
    the features' device; on CUDA the chunks run on the GPU).
    """
    device = torch.device(device) if device is not None else qf.device
    if not all(torch.isfinite(v) for x in (qf, gf) if x.numel() for v in torch.aminmax(x)):
        raise ValueError("features hold NaN or infinite values")
    gf = gf.to(device=device, dtype=torch.float32)
    centre, g_sq = gallery_centre(gf)

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
    # one distance buffer for every chunk (a fresh large allocation costs a page fault per page)
    dist_buffer = torch.empty(min(chunk_size, qf.shape[0]), gf.shape[0], device=device)
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
        dist = sq_distances(q, gf, centre, g_sq, out=dist_buffer[:len(rows)])                   # (Q, G)
        ranks = _positive_ranks(dist, same, positive)                                           # (Q, W)
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
