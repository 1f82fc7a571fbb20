"""Losses: one ID (label-smoothed cross-entropy) and one triplet term per head, named ``id/<head>`` and
``triplet/<head>``, already multiplied by their config weights (their sum is the training loss)."""

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from yacs.config import CfgNode

from .triplet import at_least_float32, batch_hard_triplet

__all__ = ["batch_hard_triplet", "make_loss", "presence_groups", "reid_losses"]

Gather = Callable[[torch.Tensor], torch.Tensor]


def reid_losses(outputs: Mapping[str, Mapping[str, torch.Tensor]], pids: torch.Tensor, *, margin: float | None,
                label_smoothing: float = 0.1, id_weight: float = 1.0, triplet_weight: float = 1.0,
                groups: torch.Tensor | None = None, gather: Gather | None = None) -> dict[str, torch.Tensor]:
    """ID loss on each head's logits, triplet loss on its pre-BN feature (mined within ``groups``, if given).

    ``gather`` (data-parallel training): ``tensor -> every process's tensor concatenated`` (differentiable);
    triplets are then mined over the global batch, as one process holding it would (one collective for all
    heads' features, one for the labels, one for the groups).
    """
    features, mining_pids, mining_groups = outputs["features"], pids, groups
    if gather is not None:
        names = list(outputs["logits"])
        joined = gather(torch.cat([features[name] for name in names], dim=1))       # (global B, sum D)
        features = dict(zip(names, joined.split([features[name].shape[1] for name in names], dim=1)))
        mining_pids = gather(pids)
        mining_groups = None if groups is None else gather(groups)
    losses = {}
    for name, logits in outputs["logits"].items():
        losses[f"id/{name}"] = id_weight * F.cross_entropy(at_least_float32(logits), pids,
                                                           label_smoothing=label_smoothing)
        triplet = batch_hard_triplet(features[name], mining_pids, margin, mining_groups)
        losses[f"triplet/{name}"] = triplet_weight * triplet
    return losses


def presence_groups(present: Mapping[str, torch.Tensor] | None, modalities: Sequence[str]) -> torch.Tensor | None:
    """(B,) int64: the modalities each sample of a batch keeps, as a code (bit i: ``modalities[i]``), the groups
    of the triplet loss when training for missing modalities: a sample is compared with samples seen with the
    same modalities, as retrieval under one missing-modality setting compares them. None without a mask."""
    if present is None:
        return None
    return sum(present[m].to(torch.int64) << i for i, m in enumerate(modalities))


def make_loss(cfg: CfgNode, num_classes: int, gather: Gather | None = None) -> Callable[..., dict[str, torch.Tensor]]:
    """``loss_fn(outputs, pids, groups=None) -> {name: scalar}`` as configured (``num_classes`` kept for the
    interface); ``groups`` (B,) confines the triplets' mining to each group (:func:`batch_hard_triplet`);
    ``gather``: see :func:`reid_losses`."""
    margin = None if cfg.MODEL.SOFT_MARGIN else cfg.SOLVER.MARGIN

    def loss_fn(outputs, pids, groups=None):
        return reid_losses(outputs, pids, margin=margin, label_smoothing=cfg.MODEL.LABEL_SMOOTHING,
                           id_weight=cfg.MODEL.ID_LOSS_WEIGHT, triplet_weight=cfg.MODEL.TRIPLET_LOSS_WEIGHT,
                           groups=groups, gather=gather)

    return loss_fn
