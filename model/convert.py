"""Weight conversion of the authors' released MHCF checkpoints to this implementation's names."""

import torch

from utils.errors import UserError

#: Key prefixes that identify the authors' released checkpoints (possibly behind "module.").
_RELEASED_MARKERS = ("image_encoder.", "heat.heat_conductor.")


def _strip_module(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def is_released_state_dict(state: dict) -> bool:
    """True for a state dict in the authors' released layout (``image_encoder.*``, ``heat.heat_conductor.*``)."""
    keys = _strip_module({k: None for k in state if isinstance(k, str)})
    return any(k.startswith(_RELEASED_MARKERS[0]) for k in keys) and any(
        k.startswith(_RELEASED_MARKERS[1]) for k in keys)


def convert_released_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The released checkpoint's weights under our names (see README, "Reproduce the paper")."""
    raise UserError("converting the authors' released checkpoints is not supported yet")
