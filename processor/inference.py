"""Feature extraction, evaluation (with missing modalities) and ``test.py``'s entry point."""

import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from itertools import combinations

import torch
import torch.nn.functional as F
from tqdm import tqdm
from yacs.config import CfgNode

from datasets import MultiModalDataset, make_dataset, make_test_loader
from model import MHCF, make_model
from utils.logger import setup_logging
from utils.metrics import RankResult, evaluate_features, evaluate_rank
from utils.reranking import re_ranking

from .checkpoint import load_weights, model_state, num_classes_of, read_checkpoint
from .distributed import resolve_device

logger = logging.getLogger(__name__)


def miss_settings(modalities: Sequence[str]) -> list[str]:
    """``["none", "r", "n", "t", "rn", "rt", "nt"]`` for RGB/NI/TI: every proper subset of the modalities'
    initials that can be missing (at least one modality stays)."""
    initials = [m[0].lower() for m in modalities]
    return ["none"] + ["".join(c) for size in range(1, len(initials)) for c in combinations(initials, size)]


def missing_modalities(setting: str, modalities: Sequence[str]) -> list[str]:
    """The modalities a TEST.MISS setting removes (``"rn"`` -> RGB and NI)."""
    return [] if setting == "none" else [m for m in modalities if m[0].lower() in setting]


def batch_to(batch: dict, modalities: Sequence[str], device: torch.device) -> dict:
    """The batch with its images on ``device`` (non-blocking when the loader pins memory)."""
    return {k: (v.to(device, non_blocking=True) if k in modalities else v) for k, v in batch.items()}


@torch.no_grad()
def extract_features(model: MHCF, loader, device: torch.device, settings: Sequence[str],
                     progress: bool = True) -> dict[str, torch.Tensor]:
    """Test features (N, D) on CPU for every TEST.MISS setting, encoding each image once.

    Always float32, whatever SOLVER.AMP says for training: the authors evaluate in float32, and their
    released operator's unscaled attention scores lose precision in half precision.

    A missing modality's normalised image is all zeros (DESIGN §4.6), so its backbone tokens are those of
    a zero image, computed once and shared by every sample; only the heat fusion runs per setting.
    """
    model.eval()
    modalities = model.modalities
    out: dict[str, list[torch.Tensor]] = {s: [] for s in settings}
    zero_tokens = None
    for batch in tqdm(loader, desc="features", disable=not (progress and sys.stderr.isatty()), leave=False):
        batch = batch_to(batch, modalities, device)
        tokens = model.encode(batch)
        if zero_tokens is None and settings != ["none"]:
            zero_tokens = model.encode({m: torch.zeros_like(batch[m][:1]) for m in modalities})
        for setting in settings:
            missing = missing_modalities(setting, modalities)
            used = {m: zero_tokens[m].expand_as(t) if m in missing else t for m, t in tokens.items()}
            features, _ = model.fuse(used)
            out[setting].append(model.test_feature(features).float().cpu())
    return {s: torch.cat(f) for s, f in out.items()}


def evaluate(cfg: CfgNode, model: MHCF, dataset: MultiModalDataset, device: torch.device,
             settings: Sequence[str] = ("none",), progress: bool = True) -> dict[str, RankResult]:
    """Evaluate ``model`` on the dataset's query/gallery under its protocol, for each TEST.MISS setting."""
    same = dataset.gallery is dataset.query  # RGBNT201: query = gallery, encode once
    samples = dataset.query if same else [*dataset.query, *dataset.gallery]
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


def results_record(results: dict[str, RankResult], setting: str, extra: dict | None = None) -> dict:
    """The ``test_results.json`` record: the figures of ``setting`` at top level (percent); with several
    settings, every setting under "settings" and their mean over the missing-modality settings under
    "average_missing"."""
    record = {**(extra or {}), "miss": setting, **results[setting].as_percent(),
              "num_valid_queries": results[setting].num_valid}
    if len(results) > 1:
        record["settings"] = {s: r.as_percent() for s, r in results.items()}
        missing = [r.as_percent() for s, r in results.items() if s != "none"]
        record["average_missing"] = {k: sum(m[k] for m in missing) / len(missing) for k in missing[0]}
    return record


def format_results(results: dict[str, RankResult]) -> str:
    """A Markdown table of the settings (and their average when several are missing-modality ones)."""
    rows = {s: r.as_percent() for s, r in results.items()}
    missing = [v for s, v in rows.items() if s != "none"]
    if len(missing) > 1:
        rows["average (missing)"] = {k: sum(m[k] for m in missing) / len(missing) for k in missing[0]}
    keys = ["mAP", "Rank-1", "Rank-5", "Rank-10", "mINP"]
    lines = ["| missing | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    lines += [f"| {s} | " + " | ".join(f"{v[k]:.1f}" for k in keys) + " |" for s, v in rows.items()]
    return "\n".join(lines)


def write_results(output_dir: str, record: dict) -> str:
    path = os.path.join(output_dir, "test_results.json")
    os.makedirs(output_dir, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=2)
    os.replace(tmp, path)
    return path


def load_trained_model(cfg: CfgNode, path: str, num_cameras: int = 0) -> MHCF:
    """A model built from the config with the weights of ``path`` (ours or the authors' release)."""
    state = model_state(read_checkpoint(path), path)
    model = make_model(cfg, num_classes_of(state, path), num_cameras, load_pretrained=False)
    load_weights(model, state, path)
    return model


def test(cfg: CfgNode) -> dict:
    """``test.py``: evaluate TEST.WEIGHT on the configured dataset; write ``test_results.json``."""
    setup_logging(cfg.OUTPUT_DIR, "test.log")
    device = resolve_device(cfg.MODEL.DEVICE)
    dataset = make_dataset(cfg.DATASETS.NAMES, cfg.DATASETS.ROOT_DIR)
    model = load_trained_model(cfg, cfg.TEST.WEIGHT, dataset.num_cameras).to(device)
    logger.info("evaluating %s on %s (%s)", cfg.TEST.WEIGHT, dataset.name, device)
    settings = miss_settings(cfg.MODEL.MODALITIES) if cfg.TEST.MISS == "all" else [cfg.TEST.MISS]
    results = evaluate(cfg, model, dataset, device, settings)
    record = results_record(results, "none" if cfg.TEST.MISS == "all" else cfg.TEST.MISS,
                            {"dataset": dataset.name, "weight": cfg.TEST.WEIGHT, "re_ranking": cfg.TEST.RE_RANKING})
    logger.info("results on %s (%s):\n%s", dataset.name, cfg.TEST.WEIGHT, format_results(results))
    logger.info("wrote %s", write_results(cfg.OUTPUT_DIR, record))
    return record
