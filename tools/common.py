"""What the tools share: config and checkpoint arguments, and the CLIs' handling of user errors."""

import argparse
import os
from collections.abc import Callable, Sequence

import torch
from yacs.config import CfgNode

from config import load_config
from datasets import MultiModalDataset, make_dataset
from model import MHCF
from processor.distributed import resolve_device
from processor.inference import load_trained_model
from utils.cli import exit_on_user_error
from utils.logger import setup_logging

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config_file`` and trailing ``KEY VALUE`` overrides, as ``train.py`` / ``test.py``."""
    parser.add_argument("--config_file", default="", help="YAML file, e.g. configs/Synthetic/MHCF.yml, or a "
                        "training run's config.yaml")
    parser.add_argument("opts", nargs=argparse.REMAINDER,
                        help="KEY VALUE overrides, e.g. TEST.WEIGHT output/Synthetic/model_final.pth")


def load_model_and_data(args: argparse.Namespace) -> tuple[CfgNode, MHCF, MultiModalDataset, torch.device]:
    """The config of ``args``, the model of TEST.WEIGHT on the configured device, and the dataset."""
    cfg = load_config(args.config_file or None, args.opts)
    device = resolve_device(cfg.MODEL.DEVICE)
    dataset = make_dataset(cfg.DATASETS.NAMES, cfg.DATASETS.ROOT_DIR)
    model = load_trained_model(cfg, cfg.TEST.WEIGHT, dataset.num_cameras).to(device).eval()
    return cfg, model, dataset, device


def run_tool(main: Callable[[argparse.Namespace], object], parser: argparse.ArgumentParser,
             argv: Sequence[str] | None = None) -> None:
    """Parse ``argv`` and call ``main(args)``; a :class:`UserError` becomes one line on stderr and exit 2."""
    args = parser.parse_args(argv)
    setup_logging()
    exit_on_user_error(lambda: main(args))
