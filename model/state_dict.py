"""Checks of a state dict against a model, shared by every weight loader (CLIP weights, checkpoints)."""

import torch
from torch import nn

from utils.errors import UserError

__all__ = ["check_state_fits"]


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
