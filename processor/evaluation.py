"""Test features and their evaluation under the dataset's own protocol, with missing modalities."""

import logging
import sys
import time
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from tqdm import tqdm
from yacs.config import CfgNode

from datasets import MultiModalDataset, Sample, make_test_loader
from model import MHCF
from utils.metrics import RankResult, evaluate_features, evaluate_rank
from utils.modalities import DROP, NONE, ZERO, missing_modalities
from utils.reranking import re_ranking

from .device import batch_to

__all__ = ["View", "evaluate", "evaluate_pairs", "evaluation_samples", "extract_features", "extract_views"]

logger = logging.getLogger(__name__)


def evaluation_samples(dataset: MultiModalDataset) -> list[Sample]:
    """Every test sample once: the query (when it is also the gallery, as RGBNT201's) or query + gallery."""
    return list(dataset.query) if dataset.gallery is dataset.query else [*dataset.query, *dataset.gallery]


class View(NamedTuple):
    """What the model sees of every sample: the missing modalities (a TEST.MISS setting) and the protocol that
    handles them (``utils.modalities``)."""

    protocol: str
    setting: str


def _canonical(view: View) -> View:
    """Nothing missing is the same computation under both protocols."""
    return View(ZERO, NONE) if view.setting == NONE else view


@torch.no_grad()
def extract_views(model: MHCF, loader, device: torch.device, views: Sequence[View],
                  progress: bool = True) -> dict[View, torch.Tensor]:
    """Test features (N, D) on CPU for every view, encoding each image once.

    Always float32, whatever SOLVER.AMP says for training: the authors evaluate in float32, and their
    released operator's unscaled attention scores lose precision in half precision.

    ``zero``: a missing modality's normalised image is all zeros, so its backbone tokens are those of a zero
    image, computed once and shared by every sample. ``drop``: the model's presence mask (``model/mhcf.py``);
    the missing modality's tokens, encoded once for all views, are never read. Only the heat fusion runs
    per view.
    """
    model.eval()
    modalities = model.modalities
    out: dict[View, list[torch.Tensor]] = {v: [] for v in dict.fromkeys(map(_canonical, views))}
    zero_tokens = None
    for batch in tqdm(loader, desc="features", disable=not (progress and sys.stderr.isatty()), leave=False):
        batch = batch_to(batch, modalities, device)
        tokens = model.encode(batch)
        batch_size = len(batch[modalities[0]])
        for view in out:
            missing = missing_modalities(view.setting, modalities)
            if view.protocol == DROP:
                present = {m: torch.full((batch_size,), m not in missing, device=device) for m in modalities}
                features, _ = model.fuse(tokens, present)
            else:
                if missing and zero_tokens is None:
                    zero_tokens = model.encode({m: torch.zeros_like(batch[m][:1]) for m in modalities})
                used = {m: zero_tokens[m].expand_as(t) if m in missing else t for m, t in tokens.items()}
                features, _ = model.fuse(used)
            out[view].append(model.test_feature(features).float().cpu())
    return {v: torch.cat(out[_canonical(v)]) for v in views}


def extract_features(model: MHCF, loader, device: torch.device, settings: Sequence[str],
                     progress: bool = True, protocol: str = ZERO) -> dict[str, torch.Tensor]:
    """Test features (N, D) on CPU for every TEST.MISS setting under one protocol (:func:`extract_views`)."""
    feats = extract_views(model, loader, device, [View(protocol, s) for s in settings], progress)
    return {view.setting: f for view, f in feats.items()}


def evaluate_pairs(cfg: CfgNode, model: MHCF, dataset: MultiModalDataset, device: torch.device,
                   pairs: Sequence[tuple[View, View]], progress: bool = True) -> dict[tuple[View, View], RankResult]:
    """Evaluate ``model`` on the dataset's query/gallery under its protocol, for every (query view, gallery
    view) pair: the query samples seen as the first view are ranked against the gallery seen as the second
    (any-to-any retrieval when they differ). Every image is encoded once."""
    same = dataset.gallery is dataset.query  # RGBNT201: query = gallery, encode once
    samples = evaluation_samples(dataset)
    loader = make_test_loader(cfg, dataset, samples, pin_memory=device.type == "cuda")
    views = list(dict.fromkeys(v for pair in pairs for v in pair))
    start = time.time()
    feats = extract_views(model, loader, device, views, progress=progress)
    logger.info("extracted %d x %d test features in %.1f s", len(samples), len(views), time.time() - start)
    if cfg.TEST.FEAT_NORM:
        feats = {v: F.normalize(f, dim=1) for v, f in feats.items()}
    meta = dataset.eval_metadata(dataset.query, dataset.gallery)
    num_query = len(dataset.query)
    results = {}
    for query_view, gallery_view in pairs:
        qf = feats[query_view] if same else feats[query_view][:num_query]
        gf = feats[gallery_view] if same else feats[gallery_view][num_query:]
        if cfg.TEST.RE_RANKING:
            distmat = re_ranking(qf, gf, cfg.TEST.RE_RANKING_K1, cfg.TEST.RE_RANKING_K2,
                                 cfg.TEST.RE_RANKING_LAMBDA)
            results[(query_view, gallery_view)] = evaluate_rank(distmat, **meta)
        else:
            results[(query_view, gallery_view)] = evaluate_features(qf, gf, **meta, chunk_size=cfg.TEST.EVAL_CHUNK,
                                                                    device=device)
    return results


def evaluate(cfg: CfgNode, model: MHCF, dataset: MultiModalDataset, device: torch.device,
             settings: Sequence[str] = (NONE,), progress: bool = True, protocol: str = ZERO) -> dict[str, RankResult]:
    """Evaluate ``model`` on the dataset's query/gallery under its protocol, for each TEST.MISS setting (the
    same modalities missing in query and gallery) under one missing-modality protocol."""
    pairs = [(View(protocol, s), View(protocol, s)) for s in settings]
    return {query.setting: r for (query, _), r in evaluate_pairs(cfg, model, dataset, device, pairs, progress).items()}
