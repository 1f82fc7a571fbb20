"""Cross-view retrieval with each view centred on its training mean (TEST.CENTRE_VIEWS).

The features of one modality subset (a view) share an offset of their own: on L2-normalised features, the
mean of an RGB-only view and that of a TI-only view lie apart, and the cosine between an RGB query and a TI
gallery item is dominated by that offset, the same for every pair. Removing each view's mean over the training
set (the test data is never used) leaves what varies from sample to sample. Within one view the offset is
common to query and gallery, and those cells are left as they are.
"""

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from yacs.config import CfgNode

from datasets import MultiModalDataset
from model import MHCF
from utils.metrics import RankResult

from .distributed import DistInfo
from .evaluation import View, pair_views, score_pairs, view_features

__all__ = ["cross_views", "score_centred", "training_centres"]


def cross_views(pairs: Sequence[tuple[View, View]]) -> list[View]:
    """The views of the pairs whose query and gallery views differ (those that centring changes)."""
    return pair_views([pair for pair in pairs if pair[0] != pair[1]])


def training_centres(cfg: CfgNode, model: MHCF, dataset: MultiModalDataset, device: torch.device,
                     views: Sequence[View], progress: bool = True,
                     info: DistInfo | None = None) -> dict[View, torch.Tensor]:
    """Each view's mean L2-normalised feature (D,) over the training samples (test transforms), float64."""
    feats = view_features(cfg, model, dataset, device, views, progress, info, samples=list(dataset.train))
    return {view: F.normalize(f.double(), dim=1).mean(0) for view, f in feats.items()}


def score_centred(cfg: CfgNode, dataset: MultiModalDataset, feats: Mapping[View, torch.Tensor],
                  pairs: Sequence[tuple[View, View]], device: torch.device,
                  centres: Mapping[View, torch.Tensor] | None) -> dict[tuple[View, View], RankResult]:
    """:func:`~processor.evaluation.score_pairs`, except that with ``centres`` a pair whose query and gallery
    views differ compares L2-normalised features minus their view's centre."""
    cross = [pair for pair in pairs if centres is not None and pair[0] != pair[1]]
    results = score_pairs(cfg, dataset, feats, [pair for pair in pairs if pair not in cross], device)
    if cross:
        centred = {v: (F.normalize(feats[v].double(), dim=1) - centres[v]).float() for v in cross_views(cross)}
        results.update(score_pairs(cfg, dataset, centred, cross, device))
    return {pair: results[pair] for pair in pairs}
