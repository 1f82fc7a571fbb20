"""Modal-bias measurements: pure computations on features, shared by ``tools/`` and the trainer.

- :class:`ModalityGap`: how far apart the modalities of the same samples lie in feature space, as the
  mean cosine distance between the modalities of one sample and the cosine distance between the
  modalities' centroids (means of the unit-normalised features), accumulated over batches.
- :func:`energy_shares`: each modality's share of a concatenated feature's energy (squared norm).
- :class:`RunningMean`: sample-weighted means of named scalars over batches.
- :func:`retrieval_by_modalities` / :func:`retrieval_summary`: the missing-modality sweep read as "which
  modalities were used", with the single-modality spread and the fusion gain.
- :func:`ranked_lists`: a query's top-k gallery under the dataset's protocol, with match flags.
- :func:`patch_change`: per-patch norm of the change of the patch tokens, on the token grid.
"""

from collections.abc import Mapping, Sequence
from itertools import combinations

import numpy as np
import torch
import torch.nn.functional as F

from .metrics import RankResult, _keep_masks


def pair_name(a: str, b: str) -> str:
    return f"{a}-{b}"


class ModalityGap:
    """Modality gap of per-modality features (B, C), accumulated over batches.

    For every pair (a, b) of modalities:

    - ``sample``: mean over samples i of ``1 - cos(x_a,i, x_b,i)`` -- how different the modalities of
      the same sample look (0: identical directions, 1: orthogonal, 2: opposite);
    - ``centroid``: ``1 - cos(mu_a, mu_b)`` with ``mu_m`` the mean of the unit-normalised features of
      modality m -- the shift between the modalities' clouds as wholes.

    ``"mean"`` averages over the pairs.
    """

    def __init__(self, modalities: Sequence[str]):
        self.modalities = list(modalities)
        self.pairs = list(combinations(self.modalities, 2))
        self.count = 0
        self.distance_sums = {p: 0.0 for p in self.pairs}
        self.unit_sums: dict[str, torch.Tensor] = {}

    def update(self, features: Mapping[str, torch.Tensor]) -> None:
        unit = {m: F.normalize(features[m].detach().double(), dim=1) for m in self.modalities}  # (B, C)
        self.count += unit[self.modalities[0]].shape[0]
        for a, b in self.pairs:
            self.distance_sums[(a, b)] += float((1 - (unit[a] * unit[b]).sum(1)).sum())
        for m, u in unit.items():
            total = u.sum(0).cpu()                                                                # (C,)
            self.unit_sums[m] = total if m not in self.unit_sums else self.unit_sums[m] + total

    def compute(self) -> dict[str, dict[str, float]]:
        if not self.count:
            raise ValueError("ModalityGap.compute() before any update()")
        sample = {pair_name(*p): s / self.count for p, s in self.distance_sums.items()}
        centroid = {pair_name(a, b): 1 - float(F.cosine_similarity(self.unit_sums[a], self.unit_sums[b], dim=0))
                    for a, b in self.pairs}
        for figures in (sample, centroid):
            figures["mean"] = sum(figures.values()) / len(self.pairs)
        return {"sample": sample, "centroid": centroid}


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


def kept_modalities(missing: Sequence[str], modalities: Sequence[str]) -> str:
    """``"NI+TI"`` for RGB missing out of RGB/NI/TI: the name of the modalities a setting keeps."""
    return "+".join(m for m in modalities if m not in missing)


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
    valid, _ = _keep_masks(*arrays, np)
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
