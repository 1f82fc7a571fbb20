"""OpenAI's CLIP image tower in timm's names, with the position grid resized as CLIP-ReID / MHCF do, so that
our encoder gives their tokens."""

import math

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import _convert_openai_clip
from torch import nn

from utils.errors import UserError

__all__ = ["IGNORED_KEYS", "openai_to_timm", "resize_position_grid"]

#: Converted OpenAI keys our backbone does not have: ``visual.proj``, the projection into CLIP's joint
#: image-text space (timm names it head.weight / head.bias). ReID uses the tokens before it.
IGNORED_KEYS = ("head.weight", "head.bias")


def openai_to_timm(state: dict[str, torch.Tensor], model: nn.Module, prefix: str = "visual.",
                   path: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The image tower under ``prefix`` (OpenAI's names) in timm's names, with timm's own converter, minus
    :data:`IGNORED_KEYS`. Tensors keep their dtype."""
    if not any(k.startswith(prefix) for k in state):
        raise UserError(f"{path}: no '{prefix}*' keys; expected OpenAI's CLIP image tower")
    converted = _convert_openai_clip(state, model, prefix=prefix)
    return {k: v for k, v in converted.items() if k not in IGNORED_KEYS}


def resize_position_grid(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``(1, 1 + n*n, C)`` position embeddings -> ``(1, 1 + H*W, C)``: the class position is kept, the square
    grid is resized bilinearly, ``align_corners=False``, no antialias -- as CLIP-ReID's / MHCF's
    ``resize_pos_embed``, which interpolates the checkpoint's tensor in its own dtype (float16 for OpenAI's
    file); computing in float32 and rounding back gives exactly that."""
    cls_pos, old = pos_embed[:, :1], pos_embed[:, 1:]
    side = math.isqrt(old.shape[1])
    if (side, side) == tuple(grid):
        return pos_embed
    C = old.shape[-1]
    old = old.reshape(1, side, side, C).permute(0, 3, 1, 2).float()                     # (1, C, n, n)
    new = F.interpolate(old, size=tuple(grid), mode="bilinear", align_corners=False, antialias=False)
    new = new.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], C).to(pos_embed.dtype)  # (1, H*W, C)
    return torch.cat([cls_pos, new], dim=1)
