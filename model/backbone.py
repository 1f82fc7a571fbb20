"""CLIP vision transformer backbones built with timm at the ReID input size."""

import logging
from collections.abc import Sequence
from functools import partial

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

__all__ = ["ARCHS", "ClipViT", "build_clip_vit"]

logger = logging.getLogger(__name__)

#: Architectures by MODEL.NAME. All are CLIP image towers: pre-LN ("ln_pre"), QuickGELU MLPs, class
#: token, final LayerNorm ("ln_post"). The first four are OpenAI's (model/clip/download.py has their weights;
#: ViT-L-14-336px is ViT-L-14 pretrained on a 24 x 24 grid of 336-pixel images instead of 16 x 16); the patch
#: grid at the ReID input size is (H // patch, W // patch), e.g. 16 x 8 for ViT-B-16, 8 x 4 for ViT-B-32 and
#: 18 x 9 for ViT-L-14 at 256 x 128 (a 14-pixel grid leaves the last 4 rows and 2 columns of pixels unseen).
ARCHS: dict[str, dict] = {
    "ViT-B-16": {"patch_size": 16, "embed_dim": 768, "depth": 12, "num_heads": 12},
    "ViT-B-32": {"patch_size": 32, "embed_dim": 768, "depth": 12, "num_heads": 12},
    "ViT-L-14": {"patch_size": 14, "embed_dim": 1024, "depth": 24, "num_heads": 16},
    "ViT-L-14-336px": {"patch_size": 14, "embed_dim": 1024, "depth": 24, "num_heads": 16},
    "ViT-Mini-8": {"patch_size": 8, "embed_dim": 128, "depth": 4, "num_heads": 4},
}


class ClipViT(VisionTransformer):
    """A CLIP image tower (timm's VisionTransformer, same parameter names) whose ``forward(images)``
    returns every token after the final norm, ``(B, 1 + N, D)``."""

    def __init__(self, arch: str = "ViT-B-16", img_size: Sequence[int] = (256, 128), drop_path: float = 0.0):
        if arch not in ARCHS:
            raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
        super().__init__(
            img_size=tuple(img_size), num_classes=0, global_pool="token", class_token=True, pre_norm=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-5), act_layer="quick_gelu", drop_path_rate=drop_path,
            **ARCHS[arch])
        self.arch = arch
        self.grid_size = tuple(self.patch_embed.grid_size)  # (H/p, W/p)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_features(images)  # (B, 1 + N, D)


def build_clip_vit(img_size: Sequence[int] = (256, 128), pretrained: str | None = None, arch: str = "ViT-B-16",
                   drop_path: float = 0.0, grad_ckpt: bool = False, cache_dir: str | None = None) -> ClipViT:
    """A CLIP ViT at ``img_size`` (H, W); ``pretrained`` is None (random init), a local OpenAI checkpoint
    (TorchScript archive or state dict with ``visual.*`` keys) or ``"openai"`` (downloaded once into
    ``cache_dir``, SHA256-verified)."""
    model = ClipViT(arch, img_size, drop_path)
    if pretrained:
        from .clip import load_openai_weights

        load_openai_weights(model, pretrained, cache_dir=cache_dir)
    if grad_ckpt:
        model.set_grad_checkpointing(True)
    return model
