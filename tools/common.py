"""What the tools share: config and checkpoint arguments, and the CLIs' handling of user errors."""

import argparse
import json
import os
from collections.abc import Callable, Sequence

import torch
from yacs.config import CfgNode

from config import load_config
from datasets import MultiModalDataset, make_dataset
from model import MHCF
from processor.cli import ArgumentParser, exit_on_user_error, log_mapped_settings
from processor.device import resolve_device
from processor.tester import load_for_evaluation
from utils.files import atomic_write_text
from utils.logger import setup_logging

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tool_parser(name: str, doc: str) -> argparse.ArgumentParser:
    """The argument parser of ``python -m tools.<name>``: the first paragraph of the module's docstring as the
    description, the whole docstring (usage examples) after the options."""
    return ArgumentParser(prog=f"python -m tools.{name}", description=doc.split("\n\n")[0],
                          formatter_class=argparse.RawDescriptionHelpFormatter, epilog=doc)


def at_least(minimum: float, kind: type = int) -> Callable[[str], float]:
    """argparse ``type``: a finite ``kind`` (int or float) >= minimum; anything else is a one-line usage error."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got "
                                             f"{text!r}") from None
        if not minimum <= value < float("inf"):
            finite = "a finite number " if kind is float else ""
            raise argparse.ArgumentTypeError(f"must be {finite}>= {minimum}, got {text}")
        return value
    return parse


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config_file`` and trailing ``KEY VALUE`` overrides, as ``train.py`` / ``test.py``."""
    parser.add_argument("--config_file", default="", help="YAML file, e.g. configs/Synthetic/MHCF.yml, or a "
                        "training run's config.yaml")
    parser.add_argument("opts", nargs=argparse.REMAINDER,
                        help="KEY VALUE overrides, e.g. TEST.WEIGHT output/Synthetic/model_final.pth")


def load_trained_model(cfg: CfgNode, path: str, device: torch.device) -> MHCF:
    """The configured model with the weights of the checkpoint ``path``, on ``device``, in eval mode (a
    setting of the network that differs from the checkpoint's config is logged as a warning)."""
    return load_for_evaluation(cfg, path, device)[0]


def load_model_and_data(args: argparse.Namespace) -> tuple[CfgNode, MHCF, MultiModalDataset, torch.device]:
    """The config of ``args``, the model of TEST.WEIGHT on the configured device, and the dataset."""
    cfg = load_config(args.config_file or None, args.opts)
    log_mapped_settings(cfg)
    device = resolve_device(cfg.MODEL.DEVICE)
    dataset = make_dataset(cfg.DATASETS.NAMES, cfg.DATASETS.ROOT_DIR, cfg.MODEL.MODALITIES)
    return cfg, load_trained_model(cfg, cfg.TEST.WEIGHT, device), dataset, device


def write_report(folder: str, stem: str, record: dict, text: str, markdown: str | None = None) -> None:
    """Print ``text`` and write ``folder/<stem>.json`` (``record``) and ``folder/<stem>.md`` (``markdown``,
    by default ``text``), each atomically."""
    json_path, md_path = (os.path.join(folder, f"{stem}.{ext}") for ext in ("json", "md"))
    atomic_write_text(json_path, json.dumps(record, indent=2))
    atomic_write_text(md_path, markdown if markdown is not None else text + "\n")
    print(text)
    print(f"\nwrote {json_path} and {md_path}")


def run_tool(run: Callable[[argparse.Namespace], object], parser: argparse.ArgumentParser,
             argv: Sequence[str] | None = None) -> None:
    """Parse ``argv`` and call ``run(args)``; a :class:`UserError` becomes one line on stderr and exit 2."""
    args = parser.parse_args(argv)
    setup_logging()
    exit_on_user_error(lambda: run(args))
