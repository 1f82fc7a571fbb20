"""The authors' MHCF forward, re-implemented for ``tools/benchmark.py`` as the speed baseline.

Benchmark-only code: it reproduces the *structure and amount of work* of the released implementation
(repository liuzhaojun-zwd/MHCF: ``model/clip/model.py`` and ``model/make_model.py``), written from the
released operator's description (docs/heat_operator.md) and that structure, so our model can be timed
against theirs side by side:

- CLIP's VisionTransformer: bias-free patch convolution, class and position embeddings, ``ln_pre``, twelve
  residual blocks with ``nn.MultiheadAttention`` in the (L, N, D) layout and a QuickGELU MLP, every block's
  output kept in a list (as theirs returns it), ``ln_post`` and the 768 -> 512 projection;
- the encoder called once per modality;
- the heat conduction operator with the dense N x N adjacency (``torch.bmm`` per diffusion step) and the
  statistics their operator computes, one operator for the three edges, three cycles;
- three BNNeck heads on ``ori``, ``heat_cls`` and ``heat_pat``.

Random initialisation only: nothing here loads weights, and nothing in the package imports this file.
"""

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    """Pre-norm block in the (L, N, D) layout: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, 4 * width)), ("gelu", QuickGELU()),
                                              ("c_proj", nn.Linear(4 * width, width))]))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]  # (L, N, D)
        return x + self.mlp(self.ln_2(x))


class VisionTransformer(nn.Module):
    """CLIP's image tower at a rectangular grid; ``forward`` returns (per-block tokens, tokens, projection)."""

    def __init__(self, grid: tuple[int, int], patch: int = 16, width: int = 768, layers: int = 12,
                 heads: int = 12, output_dim: int = 512):
        super().__init__()
        scale = width ** -0.5
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch, stride=patch, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid[0] * grid[1] + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads) for _ in range(layers))
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))
        attn_std, proj_std, fc_std = width ** -0.5, width ** -0.5 * (2 * layers) ** -0.5, (2 * width) ** -0.5
        for block in self.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)

    def forward(self, images: torch.Tensor):
        x = self.conv1(images).flatten(2).permute(0, 2, 1)                      # (B, N, D)
        cls = self.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype, device=x.device)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding            # (B, 1 + N, D)
        x = self.ln_pre(x).permute(1, 0, 2)                                    # (1 + N, B, D)
        layers = []
        for block in self.resblocks:
            x = block(x)
            layers.append(x.permute(1, 0, 2))
        x = self.ln_post(x.permute(1, 0, 2))                                   # (B, 1 + N, D)
        return layers, x, x @ self.proj


def dense_adjacency(h: int, w: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The released N x N adjacency: 8 neighbours weighted 1 / distance, rows divided by (sum + 1e-8); in
    ``dtype`` from the start (float32 as the released buffer, float64 for exact comparisons)."""
    adj = torch.zeros(h * w, h * w, dtype=dtype)
    for i in range(h):
        for j in range(w):
            for di in (-1, 0, 1):
                for dj in (-1, 0, 1):
                    if (di or dj) and 0 <= i + di < h and 0 <= j + dj < w:
                        adj[i * w + j, (i + di) * w + j + dj] = 1.0 / math.hypot(di, dj)
    return adj / (adj.sum(1, keepdim=True) + 1e-8)


class HeatOperator(nn.Module):
    """The released cross-modal heat conduction operator (docs/heat_operator.md), in their tensor layout."""

    def __init__(self, dim: int, grid: tuple[int, int]):
        super().__init__()
        self.alpha_cls = nn.Parameter(torch.tensor(0.3))
        self.alpha_patch = nn.Parameter(torch.tensor(0.5))
        self.beta = nn.Parameter(torch.tensor(0.2))
        self.conductivity_predictor = nn.Sequential(
            nn.Linear(2 * dim, dim // 2), nn.GELU(), nn.Linear(dim // 2, dim // 4), nn.GELU(),
            nn.Linear(dim // 4, 1), nn.Softplus())
        self.cls_patch_gate = nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU(), nn.Linear(dim, 1), nn.Sigmoid())
        self.patch_spatial_gate = nn.Sequential(nn.Linear(dim, dim // 2), nn.GELU(), nn.Linear(dim // 2, 1),
                                                nn.Sigmoid())
        self.register_buffer("spatial_adjacency", dense_adjacency(*grid))

    def forward(self, src_cls, src_pat, tgt_cls, tgt_pat):
        B, N, C = tgt_pat.shape
        src_mean = F.adaptive_avg_pool1d(src_pat.transpose(1, 2), 1).squeeze(-1)        # (B, C)
        tgt_mean = F.adaptive_avg_pool1d(tgt_pat.transpose(1, 2), 1).squeeze(-1)        # (B, C)
        kappa = self.conductivity_predictor(torch.cat([src_mean, tgt_mean], 1))         # (B, 1)
        gate = self.cls_patch_gate(torch.cat([src_cls.squeeze(1), tgt_mean], 1)).unsqueeze(1)  # (B, 1, 1)
        spatial = self.patch_spatial_gate(tgt_pat)                                      # (B, N, 1)

        cls_b = src_cls.expand(-1, N, -1)                                               # (B, N, C)
        w = torch.softmax(F.cosine_similarity(cls_b, tgt_pat, dim=-1), dim=-1).unsqueeze(-1)
        p1 = tgt_pat + cls_b * w * kappa.view(B, 1, 1) * self.alpha_cls
        attn = torch.softmax(torch.bmm(tgt_pat, src_pat.transpose(1, 2)), dim=-1)       # (B, N, N)
        p = p1 + self.beta * gate.expand(-1, N, -1) * torch.bmm(attn, src_pat)
        adj = self.spatial_adjacency.unsqueeze(0).expand(B, -1, -1)                     # (B, N, N)
        for _ in range(3):
            diffused = spatial * torch.bmm(adj, p) + (1 - spatial) * p
            p = 0.7 * p + 0.3 * diffused

        importance = torch.softmax(torch.norm(p, dim=-1, keepdim=True).add(1e-6).squeeze(-1), dim=-1)
        summary = (p * importance.unsqueeze(-1) * gate.expand(-1, N, -1)).sum(1, keepdim=True)  # (B, 1, C)
        cls = tgt_cls + self.alpha_cls * summary
        stats = {"conductivity": kappa, "interaction_gate": gate.mean(),
                 "cls_change": torch.norm(cls - tgt_cls, dim=-1).mean(),
                 "patch_change": torch.norm(p - tgt_pat, dim=-1).mean()}
        return cls, p, stats


class HeatCycleFusion(nn.Module):
    """RGB -> NI -> TI -> RGB with one shared operator, ``num_cycles`` times; class tokens and patch means."""

    def __init__(self, dim: int, grid: tuple[int, int], num_cycles: int = 3):
        super().__init__()
        self.num_cycles = num_cycles
        self.heat_conductor = HeatOperator(dim, grid)

    def forward(self, tokens: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        cls = [t[:, 0:1] for t in tokens]
        pat = [t[:, 1:] for t in tokens]
        for _ in range(self.num_cycles):
            for s, t in ((0, 1), (1, 2), (2, 0)):
                cls[t], pat[t], _ = self.heat_conductor(cls[s], pat[s], cls[t], pat[t])
        pooled = [F.adaptive_avg_pool1d(p.transpose(1, 2), 1).squeeze(-1) for p in pat]
        return torch.cat([c.squeeze(1) for c in cls], 1), torch.cat(pooled, 1)


class BNNeck(nn.Module):
    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm1d(dim)
        self.bn.bias.requires_grad_(False)
        self.fc = nn.Linear(dim, num_classes, bias=False)
        nn.init.normal_(self.fc.weight, std=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(x))


class ReferenceMHCF(nn.Module):
    """Their MHCF with ``MODEL.DIRECT`` (RGBNT201): in training ``forward`` returns (logits, features) of the
    heads ``ori``, ``heat_cls``, ``heat_pat``; in eval the test feature ``cat(ori, heat_cls, heat_pat)``."""

    def __init__(self, num_classes: int, img_size: tuple[int, int] = (256, 128), modalities=("RGB", "NI", "TI"),
                 patch: int = 16, width: int = 768, layers: int = 12, heads: int = 12):
        super().__init__()
        grid = (img_size[0] // patch, img_size[1] // patch)
        self.modalities = list(modalities)
        self.image_encoder = VisionTransformer(grid, patch, width, layers, heads)
        self.heat = HeatCycleFusion(width, grid)
        self.heads = nn.ModuleList(BNNeck(3 * width, num_classes) for _ in range(3))

    def forward(self, batch: dict[str, torch.Tensor]):
        tokens = [self.image_encoder(batch[m])[1] for m in self.modalities]             # 3 x (B, 1 + N, D)
        ori = torch.cat([t[:, 0] for t in tokens], dim=-1)
        heat_cls, heat_pat = self.heat(tokens)
        features = [ori, heat_cls, heat_pat]
        if self.training:
            return [head(f) for head, f in zip(self.heads, features)], features
        return torch.cat(features, dim=-1)
