"""Losses: one ID (label-smoothed cross-entropy) and one triplet term per head, named ``id/<head>`` and
``triplet/<head>``, already multiplied by their config weights (their sum is the training loss)."""

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from yacs.config import CfgNode

from .triplet import at_least_float32, batch_hard_triplet

__all__ = ["batch_hard_triplet", "make_loss", "presence_groups", "reid_losses"]


def reid_losses(outputs: Mapping[str, Mapping[str, torch.Tensor]], pids: torch.Tensor, *, margin: float | None,
                label_smoothing: float = 0.1, id_weight: float = 1.0,
                triplet_weight: float = 1.0, groups: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """ID loss on each head's logits, triplet loss on its pre-BN feature (mined within ``groups``, if given)."""
    losses = {}
    for name, logits in outputs["logits"].items():
        losses[f"id/{name}"] = id_weight * F.cross_entropy(at_least_float32(logits), pids,
                                                           label_smoothing=label_smoothing)
        triplet = batch_hard_triplet(outputs["features"][name], pids, margin, groups)
        losses[f"triplet/{name}"] = triplet_weight * triplet
    return losses


def presence_groups(present: Mapping[str, torch.Tensor] | None, modalities: Sequence[str]) -> torch.Tensor | None:
    """(B,) int64: the modalities each sample of a batch keeps, as a code (bit i: ``modalities[i]``), the groups
    of the triplet loss when training for missing modalities: a sample is compared with samples seen with the
    same modalities, as retrieval under one missing-modality setting compares them. None without a mask."""
    if present is None:
        return None
    return sum(present[m].to(torch.int64) << i for i, m in enumerate(modalities))


def make_loss(cfg: CfgNode, num_classes: int) -> Callable[..., dict[str, torch.Tensor]]:
    """``loss_fn(outputs, pids, groups=None) -> {name: scalar}`` as configured (``num_classes`` kept for the
    interface); ``groups`` (B,) confines the triplets' mining to each group (:func:`batch_hard_triplet`)."""
    margin = None if cfg.MODEL.SOFT_MARGIN else cfg.SOLVER.MARGIN

    def loss_fn(outputs, pids, groups=None):
        return reid_losses(outputs, pids, margin=margin, label_smoothing=cfg.MODEL.LABEL_SMOOTHING,
                           id_weight=cfg.MODEL.ID_LOSS_WEIGHT, triplet_weight=cfg.MODEL.TRIPLET_LOSS_WEIGHT,
                           groups=groups)

    return loss_fn
