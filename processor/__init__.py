"""Runners: training (:func:`train`) and evaluation (:func:`test`) of a config."""

from .inference import test
from .trainer import train

__all__ = ["test", "train"]
