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

from .device import batch_to

__all__ = ["evaluate", "evaluation_samples", "extract_features"]

logger = logging.getLogger(__name__)


def evaluation_samples(dataset: MultiModalDataset) -> list[Sample]:
    """Every test sample once: the query (when it is also the gallery, as RGBNT201's) or query + gallery."""
    return list(dataset.query) if dataset.gallery is dataset.query else [*dataset.query, *dataset.gallery]


@torch.no_grad()
def extract_features(model: MHCF, loader, device: torch.device, settings: Sequence[str],
                     progress: bool = True) -> dict[str, torch.Tensor]:
    """Test features (N, D) on CPU for every TEST.MISS setting, encoding each image once.

    Always float32, whatever SOLVER.AMP says for training: the authors evaluate in float32, and their
    released operator's unscaled attention scores lose precision in half precision.

    A missing modality's normalised image is all zeros, so its backbone tokens are those of a zero image,
    computed once and shared by every sample; only the heat fusion runs per setting.
    """
    model.eval()
    modalities = model.modalities
    out: dict[str, list[torch.Tensor]] = {s: [] for s in settings}
    zero_tokens = None
    for batch in tqdm(loader, desc="features", disable=not (progress and sys.stderr.isatty()), leave=False):
        batch = batch_to(batch, modalities, device)
        tokens = model.encode(batch)
        if zero_tokens is None and list(settings) != [NONE]:
            zero_tokens = model.encode({m: torch.zeros_like(batch[m][:1]) for m in modalities})
        for setting in settings:
            missing = missing_modalities(setting, modalities)
            used = {m: zero_tokens[m].expand_as(t) if m in missing else t for m, t in tokens.items()}
            features, _ = model.fuse(used)
            out[setting].append(model.test_feature(features).float().cpu())
    return {s: torch.cat(f) for s, f in out.items()}


def evaluate(cfg: CfgNode, model: MHCF, dataset: MultiModalDataset, device: torch.device,
             settings: Sequence[str] = (NONE,), progress: bool = True) -> dict[str, RankResult]:
    """Evaluate ``model`` on the dataset's query/gallery under its protocol, for each TEST.MISS setting."""
    same = dataset.gallery is dataset.query  # RGBNT201: query = gallery, encode once
    samples = evaluation_samples(dataset)
    loader = make_test_loader(cfg, dataset, samples, pin_memory=device.type == "cuda")
    start = time.time()
    feats = extract_features(model, loader, device, list(settings), progress=progress)
    logger.info("extracted %d x %d test features in %.1f s", len(samples), len(settings), time.time() - start)
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
            results[setting] = evaluate_features(qf, gf, **meta, chunk_size=cfg.TEST.EVAL_CHUNK, device=device)
    return results
