"""``test.py``: evaluate a checkpoint (ours or the authors' released one) on the configured dataset."""

import logging

from yacs.config import CfgNode

from datasets import make_dataset
from model import load_model, read_checkpoint
from utils.logger import setup_logging
from utils.modalities import ALL, NONE, miss_settings

from .cli import log_mapped_settings
from .device import prepare_model, resolve_device
from .evaluation import evaluate
from .results import format_results, results_record, write_results

__all__ = ["test"]

logger = logging.getLogger(__name__)


def test(cfg: CfgNode) -> dict:
    """Evaluate TEST.WEIGHT on the configured dataset; write ``OUTPUT_DIR/test_results.json`` (or, when that file
    holds another evaluation's record, a file beside it named for this one: :func:`~processor.results.results_path`)."""
    setup_logging(cfg.OUTPUT_DIR, "test.log")
    log_mapped_settings(cfg)
    device = resolve_device(cfg.MODEL.DEVICE)
    dataset = make_dataset(cfg.DATASETS.NAMES, cfg.DATASETS.ROOT_DIR, cfg.MODEL.MODALITIES)
    model = prepare_model(load_model(cfg, read_checkpoint(cfg.TEST.WEIGHT)), cfg, device)
    logger.info("evaluating %s on %s (%s)", cfg.TEST.WEIGHT, dataset.name, device)
    sweep = cfg.TEST.MISS == ALL
    settings = miss_settings(cfg.MODEL.MODALITIES) if sweep else [cfg.TEST.MISS]
    results = evaluate(cfg, model, dataset, device, settings)
    record = results_record(results, NONE if sweep else cfg.TEST.MISS,
                            {"command": "test.py", "dataset": dataset.name, "weight": cfg.TEST.WEIGHT,
                             "modalities": list(cfg.MODEL.MODALITIES), "re_ranking": cfg.TEST.RE_RANKING})
    logger.info("results on %s (%s):\n%s", dataset.name, cfg.TEST.WEIGHT, format_results(results))
    logger.info("wrote %s", write_results(cfg.OUTPUT_DIR, record))
    return record
