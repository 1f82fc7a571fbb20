"""OpenAI's CLIP weights for the backbone.

- :mod:`model.clip.download`: OpenAI's checkpoint of the architecture (``ViT-B-16.pt``, ``ViT-B-32.pt``,
  ``ViT-L-14.pt``, ``ViT-L-14-336px.pt``) downloaded once into a cache folder, SHA256-verified;
- :mod:`model.clip.archive`: the tensors of OpenAI's TorchScript archive (read without executing it) or of a
  plain state dict with ``visual.*`` keys;
- :mod:`model.clip.convert`: timm's key conversion, then the checkpoint's square position grid (7 x 7, 14 x 14,
  16 x 16 or 24 x 24) resized to the ReID grid as CLIP-ReID / MHCF do (bilinear, no antialias), so our encoder
  gives their tokens;
- :func:`load_openai_weights`: all of the above into a :class:`~model.backbone.ClipViT`, strictly.
"""

import logging
import math

from torch import nn

from utils.errors import UserError

from ..state_dict import check_state_fits
from .archive import read_openai_state_dict
from .convert import openai_to_timm, resize_position_grid
from .download import download_openai

__all__ = ["load_openai_weights"]

logger = logging.getLogger(__name__)


def load_openai_weights(model: nn.Module, pretrained: str, cache_dir: str | None = None) -> None:
    """Load OpenAI's CLIP image tower into ``model`` (a :class:`~model.backbone.ClipViT`): ``pretrained`` is
    ``"openai"`` (downloaded once, see :func:`download_openai`) or a local checkpoint."""
    path = download_openai(model.arch, cache_dir) if pretrained == "openai" else pretrained
    state = openai_to_timm(read_openai_state_dict(path), model, path=path)
    side = 0
    if "pos_embed" in state:  # absent: check_state_fits names it
        positions = state["pos_embed"].shape[1] - 1
        side = math.isqrt(positions)
        if side * side != positions:
            raise UserError(f"{path}: {positions} positions do not form OpenAI's square grid")
        state["pos_embed"] = resize_position_grid(state["pos_embed"], model.grid_size)
    check_state_fits(model, state, path, f"the {model.arch} backbone")
    model.load_state_dict(state, strict=True)
    logger.info("loaded CLIP %s weights from %s (position grid %dx%d -> %dx%d)", model.arch, path, side, side,
                *model.grid_size)
