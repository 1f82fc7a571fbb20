"""Datasets: one class per benchmark behind :func:`make_dataset`, and the data loaders of a config."""

from utils.errors import UserError

from .bases import MultiModalDataset, Sample
from .loader import TransformedSamples, check_batch_split, make_test_loader, make_train_loader, train_transform
from .market_mm import MarketMM
from .msvr310 import MSVR310
from .rgbnt100 import RGBNT100
from .rgbnt201 import RGBNT201
from .synthetic import Synthetic

DATASETS: dict[str, type[MultiModalDataset]] = {
    cls.name: cls for cls in (RGBNT201, MarketMM, RGBNT100, MSVR310, Synthetic)
}

__all__ = ["DATASETS", "MultiModalDataset", "Sample", "TransformedSamples", "check_batch_split", "make_dataset",
           "make_test_loader", "make_train_loader", "train_transform"]


def make_dataset(name: str, root: str) -> MultiModalDataset:
    """The benchmark ``name`` read from ``root`` (records in ``.train``, ``.query``, ``.gallery``)."""
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r} (DATASETS.NAMES); choose one of {', '.join(DATASETS)}")
    return DATASETS[name](root)
