"""An independent CLIP image tower, written from CLIP's definition with OpenAI's parameter names, to check our
timm-based backbone and the weight converters against.

conv patch embedding (no bias) -> class token -> + position embeddings (the 14x14 grid resized bilinearly
in the checkpoint's dtype, as CLIP-ReID / MHCF do) -> ln_pre -> residual attention blocks (pre-LN,
multi-head attention from one packed in-projection, QuickGELU MLP) -> ln_post. No timm, no
nn.MultiheadAttention, no scaled_dot_product_attention.
"""

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.scale = (width // heads) ** -0.5
        self.in_proj_weight = nn.Parameter(torch.randn(3 * width, width) * width ** -0.5)
        self.in_proj_bias = nn.Parameter(torch.randn(3 * width) * 0.02)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, W = x.shape
        d = W // self.heads
        q, k, v = (x @ self.in_proj_weight.t() + self.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (t.reshape(B, L, self.heads, d).transpose(1, 2) for t in (q, k, v))  # (B, h, L, d)
        weights = torch.softmax(q @ k.transpose(-1, -2) * self.scale, dim=-1)           # (B, h, L, L)
        return self.out_proj((weights @ v).transpose(1, 2).reshape(B, L, W))


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, 4 * width)), ("gelu", QuickGELU()),
                                              ("c_proj", nn.Linear(4 * width, width))]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int):
        super().__init__()
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads) for _ in range(layers)])


class VisionTransformer(nn.Module):
    """OpenAI's ``visual`` module: ``conv1``, ``class_embedding``, ``positional_embedding``, ``ln_pre``,
    ``transformer.resblocks.i.*``, ``ln_post``, ``proj``."""

    def __init__(self, width: int = 768, layers: int = 12, heads: int = 12, patch: int = 16, positions: int = 197,
                 output_dim: int = 512):
        super().__init__()
        scale = width ** -0.5
        self.patch = patch
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch, stride=patch, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(positions, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, layers, heads)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    def positions(self, grid: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
        """Position embeddings for an ``H x W`` patch grid: CLIP-ReID's ``resize_pos_embed`` applied to the
        embeddings stored in ``dtype`` (bilinear, default align_corners and antialias), in the module's dtype."""
        pos = self.positional_embedding.to(dtype)
        if pos.shape[0] - 1 == grid[0] * grid[1]:  # already at the ReID grid (the released checkpoints)
            return pos.to(self.class_embedding.dtype)
        side = math.isqrt(pos.shape[0] - 1)
        old = pos[1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        new = F.interpolate(old, size=tuple(grid), mode="bilinear")
        new = new.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1)
        return torch.cat([pos[:1], new]).to(self.class_embedding.dtype)

    def forward(self, x: torch.Tensor, stored_dtype: torch.dtype = torch.float32) -> torch.Tensor:
        x = self.conv1(x)                                                         # (B, W, H/p, W/p)
        grid = tuple(x.shape[2:])
        x = x.flatten(2).transpose(1, 2)                                          # (B, N, W)
        cls = self.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1])
        x = torch.cat([cls, x], dim=1) + self.positions(grid, stored_dtype)       # (B, 1 + N, W)
        x = self.transformer.resblocks(self.ln_pre(x))
        return self.ln_post(x)


class CLIP(nn.Module):
    """The parts of OpenAI's CLIP a checkpoint reader meets: ``visual`` and a few text-side tensors."""

    def __init__(self, **visual):
        super().__init__()
        self.visual = VisionTransformer(**visual)
        self.positional_embedding = nn.Parameter(torch.randn(77, 64))  # text side, ignored by the readers
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual(images)


@torch.no_grad()
def randomise(module: nn.Module, seed: int, ln_post_scale: float = 1.0) -> nn.Module:
    """Random LayerNorm affines and biases (not the defaults 1 / 0), ``ln_post`` weights scaled by
    ``ln_post_scale``, and every value rounded to float16 (OpenAI's archive is float16)."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in module.named_parameters():
        if name.endswith("bias"):
            p.copy_(0.02 * torch.randn(p.shape, generator=gen))
        elif "ln_" in name and name.endswith("weight"):
            p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
    for name, p in module.named_parameters():
        if "ln_post.weight" in name:
            p.mul_(ln_post_scale)
        p.copy_(p.half().float())
    return module
