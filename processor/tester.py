"""``test.py``: evaluate a checkpoint (ours or the authors' released one) on the configured dataset."""

import logging

import torch
from yacs.config import CfgNode

from config import saved_values
from config.validate import model_differences
from datasets import make_dataset
from model import MHCF, load_model, read_checkpoint
from utils.logger import setup_logging
from utils.modalities import ALL, NONE, PROTOCOLS, miss_settings

from .cli import log_mapped_settings
from .device import prepare_model, resolve_device
from .evaluation import View, evaluate_pairs, pair_views, view_features
from .results import any_to_any_record, format_any_to_any, format_results, results_record, write_results
from .view_centres import cross_views, score_centred, training_centres

__all__ = ["load_for_evaluation", "test"]

logger = logging.getLogger(__name__)


def _settings(setting: str, modalities) -> list[str]:
    return miss_settings(modalities) if setting == ALL else [setting]


def load_for_evaluation(cfg: CfgNode, path: str, device: torch.device) -> tuple[MHCF, dict[str, dict]]:
    """The configured model with the weights of the checkpoint ``path``, on ``device``, in eval mode; and the
    settings of the network (role ``model`` in config/validate.py) where the config differs from the one the
    checkpoint was trained with, ``{key: {"used": ..., "checkpoint": ...}}``, each logged as a warning: the
    evaluated network then computes differently from the trained one (an ablation, or a wrong config)."""
    checkpoint = read_checkpoint(path)
    differences = model_differences(cfg, saved_values(checkpoint.config)) if checkpoint.config else {}
    for key, (used, theirs) in differences.items():
        logger.warning("%s is %s here but %s in the config %s was trained with: the numbers are those of a "
                       "different network", key, used, theirs, path)
    model = prepare_model(load_model(cfg, checkpoint), cfg, device).eval()
    return model, {key: {"used": used, "checkpoint": theirs} for key, (used, theirs) in differences.items()}


def test(cfg: CfgNode) -> dict:
    """Evaluate TEST.WEIGHT on the configured dataset; write ``OUTPUT_DIR/test_results.json`` (or, when that file
    holds another evaluation's record, a file beside it named for this one: :func:`~processor.results.results_path`).

    TEST.MISS: the same modalities missing in query and gallery ("all": every setting under both protocols).
    TEST.QUERY_MISS / TEST.GALLERY_MISS: any-to-any retrieval, every query setting against every gallery
    setting under TEST.MISS_PROTOCOL (TEST.CENTRE_VIEWS: cross-view cells on centred features).
    """
    setup_logging(cfg.OUTPUT_DIR, "test.log")
    log_mapped_settings(cfg)
    device = resolve_device(cfg.MODEL.DEVICE)
    dataset = make_dataset(cfg.DATASETS.NAMES, cfg.DATASETS.ROOT_DIR, cfg.MODEL.MODALITIES)
    model, differences = load_for_evaluation(cfg, cfg.TEST.WEIGHT, device)
    logger.info("evaluating %s on %s (%s)", cfg.TEST.WEIGHT, dataset.name, device)
    extra = {"command": "test.py", "dataset": dataset.name, "weight": cfg.TEST.WEIGHT,
             "modalities": list(cfg.MODEL.MODALITIES), "re_ranking": cfg.TEST.RE_RANKING}
    if differences:
        extra["differs_from_checkpoint"] = differences
    modalities, protocol = cfg.MODEL.MODALITIES, cfg.TEST.MISS_PROTOCOL
    if cfg.TEST.QUERY_MISS or cfg.TEST.GALLERY_MISS:
        queries = _settings(cfg.TEST.QUERY_MISS or cfg.TEST.MISS, modalities)
        galleries = _settings(cfg.TEST.GALLERY_MISS or cfg.TEST.MISS, modalities)
        pairs = [(View(protocol, q), View(protocol, g)) for q in queries for g in galleries]
        feats = view_features(cfg, model, dataset, device, pair_views(pairs))
        centred = cross_views(pairs) if cfg.TEST.CENTRE_VIEWS else []
        centres = training_centres(cfg, model, dataset, device, centred) if centred else None
        results = score_centred(cfg, dataset, feats, pairs, device, centres)
        first = results[pairs[0]]
        record = {**extra, "query_miss": queries[0], "gallery_miss": galleries[0], "protocol": protocol,
                  **first.as_percent(), "num_valid_queries": first.num_valid,
                  "any_to_any": {**any_to_any_record(results, modalities), "centred_views": bool(centred)}}
        note = ("\ncells whose query and gallery keep different modalities: each side centred on its training mean "
                "(TEST.CENTRE_VIEWS)" if centred else "")
        logger.info("results on %s (%s):\n%s%s", dataset.name, cfg.TEST.WEIGHT, format_any_to_any(results, modalities),
                    note)
    else:
        sweep = cfg.TEST.MISS == ALL
        protocols = PROTOCOLS if sweep else (protocol,)
        settings = _settings(cfg.TEST.MISS, modalities)
        results = evaluate_pairs(cfg, model, dataset, device,
                                 [(View(p, s), View(p, s)) for p in protocols for s in settings])
        sweeps = {p: {s: results[(View(p, s), View(p, s))] for s in settings} for p in protocols}
        record = results_record(sweeps, NONE if sweep else cfg.TEST.MISS, protocol, extra)
        tables = "\n\n".join(format_results(sweeps[p], p if sweep or cfg.TEST.MISS != NONE else None)
                             for p in protocols)
        logger.info("results on %s (%s):\n%s", dataset.name, cfg.TEST.WEIGHT, tables)
    logger.info("wrote %s", write_results(cfg.OUTPUT_DIR, record))
    return record
