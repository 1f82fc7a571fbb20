"""Checkpoints: atomic writes, training state for resumption, and loading weights with clear errors.

Formats read by :func:`load_weights`: ours (``{"format": "mhcf", "model": state_dict, ...}``) and the
authors' released MHCF checkpoints (a bare state dict, converted by :mod:`model.convert` against the model the
config builds).
"""

import logging
import os
import random
import re
import tempfile
import zipfile

import numpy as np
import torch
from torch import nn

from model.clip_weights import check_state_fits
from model.convert import convert_released_state_dict, is_released_state_dict, released_num_classes, strip_module_prefix
from utils.errors import UserError

logger = logging.getLogger(__name__)

FORMAT = "mhcf"
VERSION = 1


def atomic_save(obj: dict, path: str) -> None:
    """Write ``obj`` to ``path`` so that a crash at any moment leaves either the old file or the new one:
    temporary file in the same folder, flushed and fsynced, then renamed over ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def remove_stale_temporaries(folder: str) -> list[str]:
    """Delete the temporary files of :func:`atomic_save` calls that were killed before their rename."""
    if not os.path.isdir(folder):
        return []
    stale = [name for name in os.listdir(folder)
             if name.startswith(".") and name.endswith(".tmp") and ".pth." in name]
    for name in stale:
        os.remove(os.path.join(folder, name))
    return stale


def read_checkpoint(path: str) -> dict:
    """``torch.load(path, weights_only=True)`` with one-line errors for missing or foreign files."""
    if not path:
        raise UserError("TEST.WEIGHT is empty: give the checkpoint to evaluate")
    if not os.path.isfile(path):
        raise UserError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged file fails inside the unpickler in many ways
        raise UserError(f"{path} is not a readable PyTorch checkpoint ({_load_failure(exc, path)})") from None
    if not isinstance(ckpt, dict):
        raise UserError(f"{path} is not a checkpoint (it holds a {type(ckpt).__name__}, not a dict)")
    return ckpt


def _load_failure(exc: Exception, path: str) -> str:
    """Why ``torch.load(weights_only=True)`` failed, in a few words (torch's own text advises turning the
    safety off, which a checkpoint from elsewhere must not be)."""
    text = str(exc)
    match = re.search(r"WeightsUnpickler error: (?:Unsupported global: )?(.+?)(?: was not an allowed|\n|$)",
                      text.replace("\n\n", " "))
    if match and "GLOBAL" in match.group(1):
        return f"it holds Python objects other than tensors and plain containers: {match.group(1).strip()}"
    if not zipfile.is_zipfile(path):
        return "not a zip archive as torch.save writes, nor a legacy torch file"
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return first


def model_state(ckpt: dict, path: str) -> dict[str, torch.Tensor]:
    """The MHCF state dict held by a checkpoint of ours, or a released one as it is (:func:`load_weights`
    converts it once the model is built)."""
    if ckpt.get("format") == FORMAT:
        return ckpt["model"]
    state = ckpt.get("state_dict", ckpt.get("model", ckpt))
    if isinstance(state, dict) and is_released_state_dict(state):
        logger.info("%s is in the authors' released format: converting it", path)
        return strip_module_prefix(state)
    raise UserError(f"{path} is not an MHCF checkpoint (neither ours nor the authors' released format)")


def num_classes_of(state: dict[str, torch.Tensor], path: str) -> int:
    if is_released_state_dict(state):
        num_classes = released_num_classes(state)
        if num_classes is None:
            raise UserError(f"{path}: no classifier.weight in the released checkpoint")
        return num_classes
    key = "heads.ori.classifier.weight"
    if key not in state:
        raise UserError(f"{path}: no {key} in the checkpoint; it is not an MHCF model")
    return int(state[key].shape[0])


def check_compatible(model: nn.Module, state: dict[str, torch.Tensor], path: str) -> None:
    """Raise a UserError naming the first differing keys / shapes between ``model`` and ``state``."""
    check_state_fits(model, state, path, "the configured model")


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], path: str) -> None:
    """Load ``state`` (ours, or the authors' release: converted first) into ``model``, strictly."""
    if is_released_state_dict(state):
        state = convert_released_state_dict(state, model, path)
    check_compatible(model, state, path)
    model.load_state_dict(state, strict=True)


def rng_state() -> dict:
    """Python, NumPy and torch (CPU and CUDA) generator states, in a form ``weights_only`` loading accepts."""
    np_state = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def model_checkpoint(model: nn.Module, num_classes: int, config_yaml: str, epoch: int) -> dict:
    return {"format": FORMAT, "version": VERSION, "model": model.state_dict(), "num_classes": num_classes,
            "config": config_yaml, "epoch": epoch}
