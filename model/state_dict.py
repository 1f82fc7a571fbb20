"""Reading and checking state dicts, shared by every weight loader (CLIP weights, checkpoints): the one
``torch.load`` (weights only), the tensors' sanity and their fit to a model."""

import re
import warnings
import zipfile

import torch
from torch import nn

from utils.errors import UserError

__all__ = ["check_state_fits", "check_tensors", "load_weights_only"]


def load_weights_only(path: str, what: str):
    """``torch.load(path, weights_only=True)`` on the CPU; a file it refuses (damaged, foreign, or holding
    Python objects such as a pickle that would run code) is a one-line UserError calling it a ``what``.

    The message says why in a few words of ours: torch's own text advises turning the safety off, which a
    file from elsewhere must never be, so none of it is passed on."""
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols on stderr before refusing
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged file fails inside the unpickler in many ways
        raise UserError(f"{path} is not a readable {what} ({_refusal(exc, path)})") from None


def _refusal(exc: Exception, path: str) -> str:
    text = " ".join(str(exc).split())
    blocked = re.search(r"GLOBAL ([\w.]+)", text)
    if blocked:
        return (f"it holds Python objects other than tensors and plain containers ({blocked.group(1)}); it was "
                f"not loaded")
    if not zipfile.is_zipfile(path):
        return "not a zip archive as torch.save writes, nor a legacy torch file"
    if "weights only" in text.lower() or "weights_only" in text:
        return "it holds data other than tensors and plain containers; it was not loaded"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return first


def check_tensors(state: dict, path: str) -> None:
    """UserError naming the first entry of ``state`` that is not a tensor, or a floating tensor holding NaN or
    infinite values (a model that diverged: its features would be NaN and every rank meaningless)."""
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise UserError(f"{path}: weight entry {key!r} is a {type(value).__name__}, not a tensor")
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        more = f" (and {len(bad) - 1} more tensors)" if len(bad) > 1 else ""
        raise UserError(f"{path}: NaN or infinite values in {bad[0]}{more}; the checkpoint is unusable")


def check_state_fits(model: nn.Module, state: dict[str, torch.Tensor], path: str, what: str) -> None:
    """UserError naming the first missing, unexpected and misshapen keys of ``state`` against ``model``."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    problems = [f"{label} {len(keys)} {noun} ({sep.join(keys[:3])}{sep + '...' if len(keys) > 3 else ''})"
                for label, noun, sep, keys in (("missing", "keys", ", ", missing),
                                               ("unexpected", "keys", ", ", unexpected),
                                               ("", "shape mismatches", "; ", shapes)) if keys]
    if problems:
        raise UserError(f"{path} does not fit {what}: {'; '.join(p.strip() for p in problems)}")
