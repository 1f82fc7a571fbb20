"""Checkpoints of whole MHCF models: one reader for every format, which detects the format once.

Formats:

- ours, written by :func:`checkpoint_record`: ``{"format": "mhcf", "version", "model": state_dict,
  "num_classes", "config": YAML, "epoch"}``, plus the training state in a ``last.pth`` (``optimizer``,
  ``scheduler``, ``scaler``, ``rng``);
- the authors' released MHCF checkpoints: a bare state dict of their module (possibly behind ``module.`` or
  inside ``state_dict`` / ``model``), converted by :mod:`model.released` once the model is built.

:func:`read_checkpoint` returns a :class:`Checkpoint` that carries what it found: format, weights, number of
identities, config, epoch and training state. ``torch.load`` always runs with ``weights_only=True``.
"""

import logging
import os
from dataclasses import dataclass

import torch
from torch import nn

from utils.errors import UserError

from .released import convert_released_state_dict, is_released_state_dict, released_num_classes, strip_module_prefix
from .state_dict import check_state_fits, check_tensors, load_weights_only

__all__ = ["FORMAT", "OURS", "RELEASED", "Checkpoint", "checkpoint_record", "read_checkpoint"]

logger = logging.getLogger(__name__)

FORMAT = "mhcf"  # the "format" entry of our checkpoints
VERSION = 1
OURS, RELEASED = "mhcf", "released"
#: Entries of a ``last.pth`` that resume training (not needed to evaluate), each a dict.
TRAINING_KEYS = ("optimizer", "scheduler", "scaler", "rng")
#: The best evaluation so far under SOLVER.EVAL_PERIOD (chosen on the test set): a dict, or None (optional).
BEST_ON_TEST_KEY = "best_on_test"


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint as read from ``path``.

    ``state`` holds the model's weights in the format's own names (the released ones are converted by
    :meth:`load_into`); ``config`` is the YAML of the run that wrote it and ``epoch`` its epoch (ours only);
    ``training`` holds the optimizer, scheduler, scaler and generator states of a ``last.pth``.
    """

    path: str
    format: str
    state: dict[str, torch.Tensor]
    num_classes: int
    config: str | None = None
    epoch: int | None = None
    training: dict | None = None

    def load_into(self, model: nn.Module) -> None:
        """Load the weights into ``model`` strictly (released ones converted first, after checking that the
        config fits them); a mismatch is a UserError naming the first differing keys and shapes."""
        state = self._state_for(model)
        check_state_fits(model, state, self.path, "the configured model")
        model.load_state_dict(state, strict=True)

    def init_model(self, model: nn.Module) -> str:
        """Fine-tuning: load the weights into ``model`` as :meth:`load_into` does, except the identity
        classifiers when the checkpoint was trained on another number of identities: those keep their fresh
        initialisation (the BNNecks, identity-free, are loaded). Returns what was loaded and what was not, for
        the log. Anything else that does not fit is a UserError naming it."""
        state = self._state_for(model)
        own = model.state_dict()
        fresh = [k for k in own if _is_classifier(k) and k in state and state[k].shape != own[k].shape]
        check_state_fits(model, {**state, **{k: own[k] for k in fresh}}, self.path, "the configured model")
        model.load_state_dict({k: v for k, v in state.items() if k not in fresh}, strict=False)
        kind = "the authors' released format" if self.format == RELEASED else "ours"
        source = f"{self.path} ({kind}" + (f", epoch {self.epoch})" if self.epoch is not None else ")")
        loaded = f"loaded {len(own) - len(fresh)} of {len(own)} tensors from {source}"
        if not fresh:
            return f"{loaded}: the whole model ({self.num_classes} identities, as this dataset)"
        classes = own[fresh[0]].shape[0]
        return (f"{loaded}; not loaded, re-initialised: {', '.join(fresh)} (the checkpoint's classifiers have "
                f"{self.num_classes} identities, this dataset {classes})")

    def _state_for(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The weights under the names of ``model`` (released ones converted, after checking the config)."""
        return convert_released_state_dict(self.state, model, self.path) if self.format == RELEASED else self.state


def read_checkpoint(path: str, what: str = "TEST.WEIGHT") -> Checkpoint:
    """The checkpoint at ``path`` (``what`` names the setting that gave it, for the error of an empty path).

    One-line UserErrors for a missing, unreadable or foreign file."""
    if not path:
        raise UserError(f"{what} is empty: give the checkpoint to evaluate")
    if not os.path.exists(path):
        raise UserError(f"checkpoint not found: {path}")
    if not os.path.isfile(path):
        raise UserError(f"checkpoint {path} is not a regular file")
    raw = load_weights_only(path, "PyTorch checkpoint")
    if not isinstance(raw, dict):
        raise UserError(f"{path} is not a checkpoint (it holds a {type(raw).__name__}, not a dict)")
    if raw.get("format") == FORMAT:
        state = raw.get("model")
        if not isinstance(state, dict):
            raise UserError(f"{path}: an MHCF checkpoint without its model weights (no 'model' state dict)")
        check_tensors(state, path)
        for key, kind in (("config", str), ("epoch", int)):
            if raw.get(key) is not None and not isinstance(raw[key], kind):
                raise UserError(f"{path}: its {key!r} entry is a {type(raw[key]).__name__}, not a {kind.__name__}")
        num_classes = _classifier_rows(state, "heads.ori.classifier.weight", path)
        training = {k: raw[k] for k in (*TRAINING_KEYS, BEST_ON_TEST_KEY) if k in raw} or None
        return Checkpoint(path, OURS, state, num_classes, raw.get("config"), raw.get("epoch"), training)
    state = raw.get("state_dict", raw.get("model", raw))
    if isinstance(state, dict) and is_released_state_dict(state):
        logger.info("%s is in the authors' released format: converting it", path)
        state = strip_module_prefix(state)
        check_tensors(state, path)
        num_classes = released_num_classes(state)
        if num_classes is None:
            raise UserError(f"{path}: no classifier.weight in the released checkpoint")
        return Checkpoint(path, RELEASED, state, num_classes)
    raise UserError(f"{path} is not an MHCF checkpoint (neither ours nor the authors' released format)")


def _is_classifier(key: str) -> bool:
    """An identity classifier of a BNNeck head (``heads.<name>.classifier.weight``): one row per identity."""
    return key.startswith("heads.") and key.endswith(".classifier.weight")


def _classifier_rows(state: dict[str, torch.Tensor], key: str, path: str) -> int:
    if key not in state:
        raise UserError(f"{path}: no {key} in the checkpoint; it is not an MHCF model")
    return int(state[key].shape[0])


def checkpoint_record(model: nn.Module, num_classes: int, config_yaml: str, epoch: int) -> dict:
    """A checkpoint of ours for ``model`` (what ``torch.save`` writes; :func:`read_checkpoint` reads it)."""
    return {"format": FORMAT, "version": VERSION, "model": model.state_dict(), "num_classes": num_classes,
            "config": config_yaml, "epoch": epoch}
