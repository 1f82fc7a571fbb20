"""``test.py``: evaluate a checkpoint (ours or the authors' released one) on the configured dataset."""

import logging

from yacs.config import CfgNode

from datasets import make_dataset
from model import load_model, read_checkpoint
from utils.logger import setup_logging
from utils.modalities import ALL, NONE, PROTOCOLS, miss_settings

from .device import prepare_model, resolve_device
from .evaluation import View, evaluate_pairs
from .results import any_to_any_record, format_any_to_any, format_results, results_record, write_results

__all__ = ["test"]

logger = logging.getLogger(__name__)


def _settings(setting: str, modalities) -> list[str]:
    return miss_settings(modalities) if setting == ALL else [setting]


def test(cfg: CfgNode) -> dict:
    """Evaluate TEST.WEIGHT on the configured dataset; write ``OUTPUT_DIR/test_results.json``.

    TEST.MISS: the same modalities missing in query and gallery ("all": every setting under both protocols).
    TEST.QUERY_MISS / TEST.GALLERY_MISS: any-to-any retrieval, every query setting against every gallery
    setting under TEST.MISS_PROTOCOL.
    """
    setup_logging(cfg.OUTPUT_DIR, "test.log")
    device = resolve_device(cfg.MODEL.DEVICE)
    dataset = make_dataset(cfg.DATASETS.NAMES, cfg.DATASETS.ROOT_DIR)
    model = prepare_model(load_model(cfg, read_checkpoint(cfg.TEST.WEIGHT)), cfg, device)
    logger.info("evaluating %s on %s (%s)", cfg.TEST.WEIGHT, dataset.name, device)
    extra = {"dataset": dataset.name, "weight": cfg.TEST.WEIGHT, "re_ranking": cfg.TEST.RE_RANKING}
    modalities, protocol = cfg.MODEL.MODALITIES, cfg.TEST.MISS_PROTOCOL
    if cfg.TEST.QUERY_MISS or cfg.TEST.GALLERY_MISS:
        queries = _settings(cfg.TEST.QUERY_MISS or cfg.TEST.MISS, modalities)
        galleries = _settings(cfg.TEST.GALLERY_MISS or cfg.TEST.MISS, modalities)
        pairs = [(View(protocol, q), View(protocol, g)) for q in queries for g in galleries]
        results = evaluate_pairs(cfg, model, dataset, device, pairs)
        first = results[pairs[0]]
        record = {**extra, "query_miss": queries[0], "gallery_miss": galleries[0], "protocol": protocol,
                  **first.as_percent(), "num_valid_queries": first.num_valid,
                  "any_to_any": any_to_any_record(results, modalities)}
        logger.info("results on %s (%s):\n%s", dataset.name, cfg.TEST.WEIGHT, format_any_to_any(results, modalities))
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
