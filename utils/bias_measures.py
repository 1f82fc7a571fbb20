"""Modal-bias measurements: pure computations on features, shared by ``tools/`` and the trainer.

- :func:`modality_gap`: how far apart the modalities lie in feature space: the cosine distance between
  the modalities of one sample, the distance between the modalities' centroids, the share of the
  variance explained by the modality.
- :func:`energy_shares` / :func:`variance_shares`: each modality's share of a concatenated feature's
  energy (squared norm) and of its variance over the samples (what distances between samples see).
- :class:`RunningMean`: sample-weighted means of named scalars over batches.
- :func:`retrieval_by_modalities` / :func:`retrieval_summary`: the missing-modality sweep read as "which
  modalities were used", with the single-modality spread and the fusion gain.
- :func:`ranked_lists`: a query's top-k gallery under the dataset's protocol, with match flags.
- :func:`patch_change` / :func:`mean_spatial_gates`: per-patch norm of the change of the patch tokens,
  and the heat operators' spatial gates per target modality, on the token grid.
"""

from collections.abc import Mapping, Sequence
from itertools import combinations

import numpy as np
import torch
import torch.nn.functional as F

from .metrics import RankResult, protocol_masks
from .modalities import kept_modalities

__all__ = ["RunningMean", "energy_shares", "flatten_scalars", "mean_spatial_gates", "modality_gap", "pair_name",
           "patch_change", "ranked_lists", "retrieval_by_modalities", "retrieval_summary", "variance_shares"]


def pair_name(a: str, b: str) -> str:
    return f"{a}-{b}"


def modality_gap(features: Mapping[str, torch.Tensor]) -> dict:
    """How far apart the modalities lie, from per-modality features (N, C) of the same N samples.

    Tokens after a LayerNorm share a large common component (raw cosine distances between them are
    ~1e-4), so every figure is taken relative to the mean ``mu`` over all samples and modalities:

    - ``sample[a-b]``: mean over samples i of ``1 - cos(x_a,i - mu, x_b,i - mu)`` -- do the modalities of
      one sample deviate from the average token alike (0), independently (1) or oppositely (2)?
    - ``centroid[a-b]``: ``‖mu_a - mu_b‖ / s_w``, the distance between the modalities' centroids in units
      of the within-modality spread ``s_w`` (root mean squared distance of a feature to its modality's
      centroid): 0 when the modalities' clouds coincide on average;
    - ``modality_share``: the share of the features' variance explained by their modality,
      ``mean_m ‖mu_m - mu‖² / mean_{m,i} ‖x_m,i - mu‖²`` (0: no modality offset, 1: only offsets).

    ``"mean"`` averages ``sample`` and ``centroid`` over the pairs.
    """
    modalities = list(features)
    x = {m: f.detach().double().cpu() for m, f in features.items()}                             # (N, C)
    mu = torch.stack([f.mean(0) for f in x.values()]).mean(0)                                      # (C,)
    centroids = {m: f.mean(0) for m, f in x.items()}
    within = torch.stack([(f - centroids[m]).pow(2).sum(1).mean() for m, f in x.items()]).mean()
    between = torch.stack([(c - mu).pow(2).sum() for c in centroids.values()]).mean()
    pairs = list(combinations(modalities, 2))
    sample = {pair_name(a, b): float((1 - F.cosine_similarity(x[a] - mu, x[b] - mu, dim=1)).mean())
              for a, b in pairs}
    centroid = {pair_name(a, b): float((centroids[a] - centroids[b]).norm() / within.sqrt().clamp_min(1e-30))
                for a, b in pairs}
    for figures in (sample, centroid):
        figures["mean"] = sum(figures.values()) / len(pairs)
    return {"sample": sample, "centroid": centroid,
            "modality_share": float(between / (between + within).clamp_min(1e-30))}


def energy_shares(feature: torch.Tensor, num_modalities: int, num_parts: int = 1) -> torch.Tensor:
    """Per-sample share (B, M) of each modality in the energy of ``feature`` (B, D).

    ``feature`` is ``num_parts`` concatenated parts, each the concatenation of ``num_modalities`` equal
    blocks (the layout of ``cat(ori, heat_cls, heat_pat)``, each ``cat`` over modalities). A modality's
    energy is the squared norm of its blocks summed over the parts; rows sum to 1.
    """
    B, D = feature.shape
    if D % (num_modalities * num_parts):
        raise ValueError(f"feature dimension {D} is not {num_parts} parts x {num_modalities} equal blocks")
    blocks = feature.detach().double().reshape(B, num_parts, num_modalities, -1)                 # (B, P, M, C)
    energy = blocks.pow(2).sum(dim=(1, 3))                                                        # (B, M)
    return energy / energy.sum(1, keepdim=True).clamp_min(1e-30)


def variance_shares(feature: torch.Tensor, num_modalities: int, num_parts: int = 1) -> torch.Tensor:
    """Share (M,) of each modality in the variance of ``feature`` (N, D) over the N samples.

    Same block layout as :func:`energy_shares`; a modality's variance is the sum of the per-dimension
    variances of its blocks. It is also its share of the mean squared distance between two samples
    (``E‖f - f'‖² = 2 · total variance``), the quantity retrieval ranks by.
    """
    N, D = feature.shape
    if D % (num_modalities * num_parts):
        raise ValueError(f"feature dimension {D} is not {num_parts} parts x {num_modalities} equal blocks")
    blocks = feature.detach().double().reshape(N, num_parts, num_modalities, -1)                 # (N, P, M, C)
    variance = blocks.var(dim=0, unbiased=False).sum(dim=(0, 2))                                  # (M,)
    return variance / variance.sum().clamp_min(1e-30)


class RunningMean:
    """Sample-weighted means of named scalars: ``update({name: per-sample values (B,) or batch mean}, B)``."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def update(self, values: Mapping[str, torch.Tensor | float], batch_size: int) -> None:
        for name, value in values.items():
            value = torch.as_tensor(value).detach().double()
            total = float(value.sum()) if value.ndim else float(value) * batch_size
            n = value.numel() if value.ndim else batch_size
            self.sums[name] = self.sums.get(name, 0.0) + total
            self.counts[name] = self.counts.get(name, 0) + n

    def compute(self) -> dict[str, float]:
        return {name: s / self.counts[name] for name, s in self.sums.items()}


def retrieval_by_modalities(results: Mapping[str, RankResult], missing: Mapping[str, Sequence[str]],
                            modalities: Sequence[str]) -> dict[str, dict[str, float]]:
    """The sweep's figures (percent) keyed by the modalities used: ``{"RGB+NI+TI": ..., "RGB": ...}``.

    ``missing`` maps each TEST.MISS setting of ``results`` to the modalities it removes.
    """
    return {kept_modalities(missing[s], modalities): r.as_percent() for s, r in results.items()}


def retrieval_summary(by_modalities: Mapping[str, Mapping[str, float]], modalities: Sequence[str],
                      key: str = "mAP") -> dict:
    """Modal bias read off the sweep (``key``, percent):

    - ``fused``: all modalities; ``single``: each modality alone;
    - ``best_single`` / ``worst_single``: the strongest and weakest modality alone, and ``single_spread``
      their difference (how unequal the modalities are);
    - ``fusion_gain``: fused minus the best single modality;
    - ``drop_without``: per modality, fused minus the figure without it (how much the model relies on it).
    """
    all_name = kept_modalities([], modalities)
    fused = by_modalities[all_name][key]
    single = {m: by_modalities[m][key] for m in modalities if m in by_modalities}
    out: dict = {"metric": key, "fused": fused, "single": single}
    if single:
        best = max(single, key=single.get)
        worst = min(single, key=single.get)
        out.update(best_single=best, worst_single=worst, single_spread=single[best] - single[worst],
                   fusion_gain=fused - single[best])
    drops = {m: fused - by_modalities[kept_modalities([m], modalities)][key]
             for m in modalities if kept_modalities([m], modalities) in by_modalities}
    if drops:
        out["drop_without"] = drops
    return out


def ranked_lists(distmat: torch.Tensor | np.ndarray, q_pids, g_pids, q_camids, g_camids, q_sceneids=None,
                 g_sceneids=None, topk: int = 10) -> list[dict]:
    """Per query: the ``topk`` gallery items under the evaluation protocol (same identity and camera --
    or scene when scene ids are given -- removed, as :mod:`utils.metrics`), as ``{"index": gallery
    indices, "distance": their distances, "match": same identity}``, ranked by distance (stable)."""
    distmat = np.asarray(distmat)
    arrays = [np.asarray(v) if v is not None else None
              for v in (q_pids, g_pids, q_camids, g_camids, q_sceneids, g_sceneids)]
    valid, _ = protocol_masks(*arrays, np)
    out = []
    for i in range(distmat.shape[0]):
        order = np.argsort(distmat[i], kind="stable")
        order = order[valid[i][order]][:topk]
        out.append({"index": order.tolist(), "distance": distmat[i][order].tolist(),
                    "match": (arrays[1][order] == arrays[0][i]).tolist()})
    return out


def patch_change(before: torch.Tensor, after: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """``‖after_i − before_i‖`` per patch token i, on the token grid: (B, N, C) twice -> (B, H, W)."""
    return (after.float() - before.float()).norm(dim=-1).reshape(-1, *grid)


def flatten_scalars(tree: Mapping, prefix: str = "") -> dict[str, float]:
    """``{"a": {"b": 1.0}}`` -> ``{"a/b": 1.0}``; non-numeric leaves (names) are left out."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten_scalars(value, name))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def mean_spatial_gates(stats: Mapping[tuple[int, str, str], Mapping[str, torch.Tensor]],
                       grid: Sequence[int]) -> dict[str, torch.Tensor]:
    """Per target modality, the spatial gate G (B, N) of the edges into it averaged over the cycles, on the
    token grid (B, H, W). ``stats`` is :attr:`model.heat.HeatOutput.stats`."""
    gates: dict[str, list[torch.Tensor]] = {}
    for (_, _, target), edge in stats.items():
        gates.setdefault(target, []).append(edge["spatial_gate"].float())
    return {m: torch.stack(g).mean(0).reshape(-1, *grid) for m, g in gates.items()}
