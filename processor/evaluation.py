"""Test features and their evaluation under the dataset's own protocol, with missing modalities."""

import logging
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple, TypeVar

import torch
import torch.nn.functional as F
from tqdm import tqdm
from yacs.config import CfgNode

from datasets import MultiModalDataset, Sample, make_test_loader
from model import MHCF
from utils.metrics import RankResult, evaluate_features, evaluate_rank
from utils.modalities import DROP, NONE, ZERO, missing_modalities
from utils.reranking import re_ranking

from .device import BatchToDevice, tf32
from .distributed import DistInfo, gather_rows

__all__ = ["View", "evaluate", "evaluate_pairs", "evaluation_features", "evaluation_samples", "extract_features",
           "extract_views", "pair_views", "score_features", "score_pairs", "view_features"]

logger = logging.getLogger(__name__)

K = TypeVar("K")  # a key of test features: a TEST.MISS setting, or a View


def evaluation_samples(dataset: MultiModalDataset) -> list[Sample]:
    """Every test sample once: the query (when it is also the gallery, as RGBNT201's) or query + gallery."""
    return list(dataset.query) if dataset.gallery is dataset.query else [*dataset.query, *dataset.gallery]


class View(NamedTuple):
    """What the model sees of every sample: the missing modalities (a TEST.MISS setting) and the protocol that
    handles them (``utils.modalities``)."""

    protocol: str
    setting: str


def pair_views(pairs: Sequence[tuple[View, View]]) -> list[View]:
    """Every view the (query view, gallery view) pairs name, once, in order of appearance."""
    return list(dict.fromkeys(view for pair in pairs for view in pair))


def _canonical(view: View) -> View:
    """Nothing missing is the same computation under both protocols."""
    return View(ZERO, NONE) if view.setting == NONE else view


@torch.no_grad()
def extract_views(model: MHCF, loader, to_device: Callable[[dict], dict], views: Sequence[View],
                  progress: bool = True) -> dict[View, torch.Tensor]:
    """Test features (N, D) on CPU for every view, encoding each image once; ``to_device``: the loader's
    batch on the model's device (:class:`~processor.device.BatchToDevice`).

    Always float32, whatever SOLVER.AMP and MODEL.TF32 say for training: the authors evaluate in float32,
    and their released operator's unscaled attention scores lose precision in half precision.

    ``zero``: a missing modality's normalised image is all zeros, so its backbone tokens are those of a zero
    image, computed once and shared by every sample. ``drop``: the model's presence mask (``model/mhcf.py``);
    the missing modality's tokens, encoded once for all views, are never read. Only the heat fusion runs
    per view.
    """
    model.eval()
    modalities = model.modalities
    out: dict[View, list[torch.Tensor]] = {v: [] for v in dict.fromkeys(map(_canonical, views))}
    zero_tokens = None
    batches = tqdm(loader, desc="features", disable=not (progress and sys.stderr.isatty()), leave=False)
    with tf32(False):
        for batch in batches:
            batch = to_device(batch)
            tokens = model.encode(batch)
            first = batch[modalities[0]]
            for view in out:
                missing = missing_modalities(view.setting, modalities)
                if view.protocol == DROP:
                    present = {m: torch.full((len(first),), m not in missing) for m in modalities}  # host
                    features, _ = model.fuse(tokens, present)
                else:
                    if missing and zero_tokens is None:
                        zero_tokens = model.encode({m: torch.zeros_like(batch[m][:1]) for m in modalities})
                    used = {m: zero_tokens[m].expand_as(t) if m in missing else t for m, t in tokens.items()}
                    features, _ = model.fuse(used)
                out[view].append(model.test_feature(features).float().cpu())
    return {v: torch.cat(out[_canonical(v)]) for v in views}


def extract_features(model: MHCF, loader, to_device: Callable[[dict], dict], settings: Sequence[str],
                     progress: bool = True, protocol: str = ZERO) -> dict[str, torch.Tensor]:
    """Test features (N, D) on CPU for every TEST.MISS setting under one protocol (:func:`extract_views`)."""
    feats = extract_views(model, loader, to_device, [View(protocol, s) for s in settings], progress)
    return {view.setting: f for view, f in feats.items()}


def view_features(cfg: CfgNode, model: MHCF, dataset: MultiModalDataset, device: torch.device, views: Sequence[View],
                  progress: bool = True, info: DistInfo | None = None,
                  samples: Sequence[Sample] | None = None) -> dict[View, torch.Tensor]:
    """:func:`extract_views` of ``samples`` (default: every evaluation sample, rows in the order of
    :func:`evaluation_samples`) with the test transforms; under torchrun (``info``) each process encodes a
    contiguous share and every process receives them all, in order."""
    samples = evaluation_samples(dataset) if samples is None else samples
    info = info or DistInfo(device=device)
    lo, hi = (len(samples) * info.rank // info.world_size, len(samples) * (info.rank + 1) // info.world_size)
    loader = make_test_loader(cfg, dataset, samples[lo:hi], pin_memory=device.type == "cuda")
    start = time.time()
    feats = extract_views(model, loader, BatchToDevice(cfg, device), views, progress=progress)
    feats = {v: gather_rows(f, info) for v, f in feats.items()}
    logger.info("extracted %d x %d features in %.1f s (%d process(es))", len(samples), len(feats),
                time.time() - start, info.world_size)
    return feats


def score_pairs(cfg: CfgNode, dataset: MultiModalDataset, feats: Mapping[K, torch.Tensor],
                pairs: Sequence[tuple[K, K]], device: torch.device) -> dict[tuple[K, K], RankResult]:
    """The dataset's protocol for every (query features, gallery features) pair of keys of ``feats``;
    distances in full float32 (no TF32) on ``device``."""
    if cfg.TEST.FEAT_NORM:
        feats = {k: F.normalize(f, dim=1) for k, f in feats.items()}
    same = dataset.gallery is dataset.query  # RGBNT201: query = gallery, encoded once
    meta = dataset.eval_metadata(dataset.query, dataset.gallery)
    num_query = len(dataset.query)
    results = {}
    for query_key, gallery_key in pairs:
        qf = feats[query_key] if same else feats[query_key][:num_query]
        gf = feats[gallery_key] if same else feats[gallery_key][num_query:]
        if cfg.TEST.RE_RANKING:
            distmat = re_ranking(qf, gf, cfg.TEST.RE_RANKING_K1, cfg.TEST.RE_RANKING_K2,
                                 cfg.TEST.RE_RANKING_LAMBDA)
            results[(query_key, gallery_key)] = evaluate_rank(distmat, **meta)
        else:
            with tf32(False):
                results[(query_key, gallery_key)] = evaluate_features(qf, gf, **meta, chunk_size=cfg.TEST.EVAL_CHUNK,
                                                                      device=device)
    return results


def evaluation_features(cfg: CfgNode, model: MHCF, dataset: MultiModalDataset, device: torch.device,
                        settings: Sequence[str] = (NONE,), progress: bool = True, info: DistInfo | None = None,
                        protocol: str = ZERO) -> dict[str, torch.Tensor]:
    """Test features of every evaluation sample per TEST.MISS setting under ``protocol``, sharded over the
    processes of a torchrun (``info``) and gathered on every one."""
    feats = view_features(cfg, model, dataset, device, [View(protocol, s) for s in settings], progress, info)
    return {view.setting: f for view, f in feats.items()}


def score_features(cfg: CfgNode, dataset: MultiModalDataset, feats: Mapping[str, torch.Tensor],
                   device: torch.device) -> dict[str, RankResult]:
    """The dataset's protocol on test features (:func:`evaluation_features`), per TEST.MISS setting (the same
    modalities missing in query and gallery)."""
    return {s: r for (s, _), r in score_pairs(cfg, dataset, feats, [(s, s) for s in feats], device).items()}


def evaluate_pairs(cfg: CfgNode, model: MHCF, dataset: MultiModalDataset, device: torch.device,
                   pairs: Sequence[tuple[View, View]], progress: bool = True) -> dict[tuple[View, View], RankResult]:
    """Evaluate ``model`` on the dataset's query/gallery under its protocol, for every (query view, gallery
    view) pair: the query samples seen as the first view are ranked against the gallery seen as the second
    (any-to-any retrieval when they differ). Every image is encoded once."""
    return score_pairs(cfg, dataset, view_features(cfg, model, dataset, device, pair_views(pairs), progress), pairs,
                       device)


def evaluate(cfg: CfgNode, model: MHCF, dataset: MultiModalDataset, device: torch.device,
             settings: Sequence[str] = (NONE,), progress: bool = True, protocol: str = ZERO) -> dict[str, RankResult]:
    """Evaluate ``model`` on the dataset's query/gallery under its protocol, for each TEST.MISS setting (the
    same modalities missing in query and gallery) under one missing-modality protocol."""
    feats = evaluation_features(cfg, model, dataset, device, settings, progress, protocol=protocol)
    return score_features(cfg, dataset, feats, device)
