"""Test features and their evaluation under the dataset's own protocol, with missing modalities."""

import logging
import sys
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from tqdm import tqdm
from yacs.config import CfgNode

from datasets import MultiModalDataset, Sample, make_test_loader
from model import MHCF
from utils.metrics import RankResult, evaluate_features, evaluate_rank
from utils.modalities import NONE, missing_modalities
from utils.reranking import re_ranking

from .device import BatchToDevice, tf32
from .distributed import DistInfo, gather_rows

__all__ = ["evaluate", "evaluation_features", "evaluation_samples", "extract_features", "score_features"]

logger = logging.getLogger(__name__)


def evaluation_samples(dataset: MultiModalDataset) -> list[Sample]:
    """Every test sample once: the query (when it is also the gallery, as RGBNT201's) or query + gallery."""
    return list(dataset.query) if dataset.gallery is dataset.query else [*dataset.query, *dataset.gallery]


@torch.no_grad()
def extract_features(model: MHCF, loader, to_device: BatchToDevice, settings: Sequence[str],
                     progress: bool = True) -> dict[str, torch.Tensor]:
    """Test features (N, D) on CPU for every TEST.MISS setting, encoding each image once.

    Always float32, whatever SOLVER.AMP and MODEL.TF32 say for training: the authors evaluate in float32,
    and their released operator's unscaled attention scores lose precision in half precision.

    A missing modality's normalised image is all zeros, so its backbone tokens are those of a zero image,
    computed once and shared by every sample; only the heat fusion runs per setting.
    """
    model.eval()
    modalities = model.modalities
    out: dict[str, list[torch.Tensor]] = {s: [] for s in settings}
    zero_tokens = None
    batches = tqdm(loader, desc="features", disable=not (progress and sys.stderr.isatty()), leave=False)
    with tf32(False):
        for batch in batches:
            batch = to_device(batch)
            tokens = model.encode(batch)
            if zero_tokens is None and list(settings) != [NONE]:
                zero_tokens = model.encode({m: torch.zeros_like(batch[m][:1]) for m in modalities})
            for setting in settings:
                missing = missing_modalities(setting, modalities)
                used = {m: zero_tokens[m].expand_as(t) if m in missing else t for m, t in tokens.items()}
                features, _ = model.fuse(used)
                out[setting].append(model.test_feature(features).float().cpu())
    return {s: torch.cat(f) for s, f in out.items()}


def evaluation_features(cfg: CfgNode, model: MHCF, dataset: MultiModalDataset, device: torch.device,
                  settings: Sequence[str] = (NONE,), progress: bool = True,
                  info: DistInfo | None = None) -> dict[str, torch.Tensor]:
    """:func:`extract_features` of every evaluation sample; under torchrun (``info``) each process encodes
    a contiguous share and every process receives them all, in order."""
    samples = evaluation_samples(dataset)
    info = info or DistInfo(device=device)
    lo, hi = (len(samples) * info.rank // info.world_size, len(samples) * (info.rank + 1) // info.world_size)
    loader = make_test_loader(cfg, dataset, samples[lo:hi], pin_memory=device.type == "cuda")
    start = time.time()
    feats = extract_features(model, loader, BatchToDevice(cfg, device), list(settings), progress=progress)
    feats = {s: gather_rows(f, info) for s, f in feats.items()}
    logger.info("extracted %d x %d test features in %.1f s (%d process(es))", len(samples), len(settings),
                time.time() - start, info.world_size)
    return feats


def evaluate(cfg: CfgNode, model: MHCF, dataset: MultiModalDataset, device: torch.device,
             settings: Sequence[str] = (NONE,), progress: bool = True) -> dict[str, RankResult]:
    """Evaluate ``model`` on the dataset's query/gallery under its protocol, for each TEST.MISS setting."""
    feats = evaluation_features(cfg, model, dataset, device, settings, progress)
    return score_features(cfg, dataset, feats, device)


def score_features(cfg: CfgNode, dataset: MultiModalDataset, feats: dict[str, torch.Tensor],
                   device: torch.device) -> dict[str, RankResult]:
    """The dataset's protocol on test features (:func:`evaluation_features`), per TEST.MISS setting;
    distances in full float32 (no TF32) on ``device``."""
    same = dataset.gallery is dataset.query  # RGBNT201: query = gallery, encode once
    meta = dataset.eval_metadata(dataset.query, dataset.gallery)
    num_query = len(dataset.query)
    results = {}
    for setting, feat in feats.items():
        if cfg.TEST.FEAT_NORM:
            feat = F.normalize(feat, dim=1)
        qf, gf = (feat, feat) if same else (feat[:num_query], feat[num_query:])
        if cfg.TEST.RE_RANKING:
            distmat = re_ranking(qf, gf, cfg.TEST.RE_RANKING_K1, cfg.TEST.RE_RANKING_K2,
                                 cfg.TEST.RE_RANKING_LAMBDA)
            results[setting] = evaluate_rank(distmat, **meta)
        else:
            with tf32(False):
                results[setting] = evaluate_features(qf, gf, **meta, chunk_size=cfg.TEST.EVAL_CHUNK,
                                                     device=device)
    return results
