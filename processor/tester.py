"""``test.py``: evaluate a checkpoint (ours or the authors' released one) on the configured dataset."""

import logging

import torch
from yacs.config import CfgNode

from config import saved_values
from config.validate import model_differences
from datasets import make_dataset
from model import MHCF, load_model, read_checkpoint
from utils.logger import setup_logging
from utils.modalities import ALL, NONE, miss_settings

from .cli import log_mapped_settings
from .device import prepare_model, resolve_device
from .evaluation import evaluate
from .results import format_results, results_record, write_results

__all__ = ["load_for_evaluation", "test"]

logger = logging.getLogger(__name__)


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
    holds another evaluation's record, a file beside it named for this one: :func:`~processor.results.results_path`)."""
    setup_logging(cfg.OUTPUT_DIR, "test.log")
    log_mapped_settings(cfg)
    device = resolve_device(cfg.MODEL.DEVICE)
    dataset = make_dataset(cfg.DATASETS.NAMES, cfg.DATASETS.ROOT_DIR, cfg.MODEL.MODALITIES)
    model, differences = load_for_evaluation(cfg, cfg.TEST.WEIGHT, device)
    logger.info("evaluating %s on %s (%s)", cfg.TEST.WEIGHT, dataset.name, device)
    sweep = cfg.TEST.MISS == ALL
    settings = miss_settings(cfg.MODEL.MODALITIES) if sweep else [cfg.TEST.MISS]
    results = evaluate(cfg, model, dataset, device, settings)
    extra = {"command": "test.py", "dataset": dataset.name, "weight": cfg.TEST.WEIGHT,
             "modalities": list(cfg.MODEL.MODALITIES), "re_ranking": cfg.TEST.RE_RANKING}
    if differences:
        extra["differs_from_checkpoint"] = differences
    record = results_record(results, NONE if sweep else cfg.TEST.MISS, extra)
    logger.info("results on %s (%s):\n%s", dataset.name, cfg.TEST.WEIGHT, format_results(results))
    logger.info("wrote %s", write_results(cfg.OUTPUT_DIR, record))
    return record
