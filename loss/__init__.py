"""Losses: one ID (label-smoothed cross-entropy) and one triplet term per head, named ``id/<head>`` and
``triplet/<head>``, already multiplied by their config weights (their sum is the training loss)."""

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from yacs.config import CfgNode

from .triplet import at_least_float32, batch_hard_triplet

__all__ = ["batch_hard_triplet", "make_loss", "reid_losses"]

Gather = Callable[[torch.Tensor], torch.Tensor]


def reid_losses(outputs: Mapping[str, Mapping[str, torch.Tensor]], pids: torch.Tensor, *, margin: float | None,
                label_smoothing: float = 0.1, id_weight: float = 1.0, triplet_weight: float = 1.0,
                gather: Gather | None = None) -> dict[str, torch.Tensor]:
    """ID loss on each head's logits, triplet loss on its pre-BN feature.

    ``gather`` (data-parallel training): ``tensor -> every process's tensor concatenated`` (differentiable);
    triplets are then mined over the global batch, as one process holding it would (one collective for all
    heads' features, one for the labels).
    """
    features, mining_pids = outputs["features"], pids
    if gather is not None:
        names = list(outputs["logits"])
        joined = gather(torch.cat([features[name] for name in names], dim=1))       # (global B, sum D)
        features = dict(zip(names, joined.split([features[name].shape[1] for name in names], dim=1)))
        mining_pids = gather(pids)
    losses = {}
    for name, logits in outputs["logits"].items():
        losses[f"id/{name}"] = id_weight * F.cross_entropy(at_least_float32(logits), pids,
                                                           label_smoothing=label_smoothing)
        losses[f"triplet/{name}"] = triplet_weight * batch_hard_triplet(features[name], mining_pids, margin)
    return losses


def make_loss(cfg: CfgNode, num_classes: int, gather: Gather | None = None) -> Callable[..., dict[str, torch.Tensor]]:
    """``loss_fn(outputs, pids) -> {name: scalar}`` as configured (``num_classes`` kept for the interface);
    ``gather``: see :func:`reid_losses`."""
    margin = None if cfg.MODEL.SOFT_MARGIN else cfg.SOLVER.MARGIN

    def loss_fn(outputs, pids):
        return reid_losses(outputs, pids, margin=margin, label_smoothing=cfg.MODEL.LABEL_SMOOTHING,
                           id_weight=cfg.MODEL.ID_LOSS_WEIGHT, triplet_weight=cfg.MODEL.TRIPLET_LOSS_WEIGHT,
                           gather=gather)

    return loss_fn
