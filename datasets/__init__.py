"""Datasets: one class per benchmark behind :func:`make_dataset`, and the data loaders of a config."""

import os
from collections.abc import Sequence

from utils.errors import UserError

from .bases import IMAGE_EXTENSIONS, MultiModalDataset, Sample, read_image
from .loader import TransformedSamples, check_batch_split, make_test_loader, make_train_loader, train_transform
from .market_mm import MarketMM
from .msvr310 import MSVR310
from .rgbnt100 import RGBNT100
from .rgbnt201 import RGBNT201
from .synthetic import Synthetic
from .transforms import build_image_transform

DATASETS: dict[str, type[MultiModalDataset]] = {
    cls.name: cls for cls in (RGBNT201, MarketMM, RGBNT100, MSVR310, Synthetic)
}

__all__ = ["DATASETS", "IMAGE_EXTENSIONS", "MultiModalDataset", "Sample", "TransformedSamples", "build_image_transform",
           "check_batch_split", "make_dataset", "make_test_loader", "make_train_loader", "read_image",
           "train_transform"]


def make_dataset(name: str, root: str, modalities: Sequence[str] | None = None) -> MultiModalDataset:
    """The benchmark ``name`` read from ``root`` (records in ``.train``, ``.query``, ``.gallery``), with the
    given ``modalities`` (MODEL.MODALITIES; default all of the benchmark's)."""
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r} (DATASETS.NAMES); choose one of {', '.join(DATASETS)}")
    folder = os.path.expanduser(root)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UserError(f"DATASETS.ROOT_DIR {root} is a file, not the folder holding the datasets")
    return DATASETS[name](root, modalities)
