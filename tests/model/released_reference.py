"""The authors' released checkpoint format with random weights, and an independent forward of their model
written from the released operator's description (docs/heat_operator.md; dense adjacency, bmm diffusion) on
top of the reference CLIP tower."""


import torch
import torch.nn.functional as F

from tests.model.clip_reference import VisionTransformer, randomise
from tools.reference_mhcf import dense_adjacency  # the released N x N adjacency, built from its definition

MODALITIES = ("RGB", "NI", "TI")
EDGES = (("RGB", "NI"), ("NI", "TI"), ("TI", "RGB"))


def _linear(gen, out_dim: int, in_dim: int, prefix: str) -> dict[str, torch.Tensor]:
    bound = in_dim ** -0.5
    return {f"{prefix}.weight": (torch.rand(out_dim, in_dim, generator=gen) * 2 - 1) * bound,
            f"{prefix}.bias": (torch.rand(out_dim, generator=gen) * 2 - 1) * bound}


def _batch_norm(gen, dim: int, prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}.weight": 1 + 0.1 * torch.randn(dim, generator=gen),
            f"{prefix}.bias": 0.1 * torch.randn(dim, generator=gen),
            f"{prefix}.running_mean": 0.1 * torch.randn(dim, generator=gen),
            f"{prefix}.running_var": 0.5 + torch.rand(dim, generator=gen),
            f"{prefix}.num_batches_tracked": torch.tensor(1234)}


def released_state_dict(width: int, layers: int, heads: int, patch: int, grid: tuple[int, int], num_classes: int,
                        vehicle: bool, seed: int = 0) -> tuple[dict[str, torch.Tensor], VisionTransformer]:
    """A state dict in the released layout with random weights, and the reference image tower holding them."""
    torch.manual_seed(seed)
    h, w = grid
    # ln_post scaled down: tokens of moderate norm keep the operator's unscaled softmax well conditioned
    visual = randomise(VisionTransformer(width, layers, heads, patch, 1 + h * w), seed, ln_post_scale=0.2).eval()
    state = {f"image_encoder.{k}": v.clone() for k, v in visual.state_dict().items()}
    gen = torch.Generator().manual_seed(seed + 1)
    c = width
    heat = {"alpha_cls": torch.tensor(0.37), "alpha_patch": torch.tensor(0.5), "beta": torch.tensor(0.23),
            "spatial_adjacency": dense_adjacency(h, w)}
    for prefix, dims in (("conductivity_predictor", [2 * c, c // 2, c // 4, 1]),
                         ("cls_patch_gate", [2 * c, c, 1]), ("patch_spatial_gate", [c, c // 2, 1])):
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            heat.update(_linear(gen, b, a, f"{prefix}.{2 * i}"))
    state.update({f"heat.heat_conductor.{k}": v for k, v in heat.items()})
    heads = [("bottleneck", "classifier", 3 * c), ("bn_heat_cls", "fc_heat_cls", 3 * c),
             ("bn_heat_pat", "fc_heat_pat", 3 * c)]
    if vehicle:
        heads += [(f"bn_{s}", f"fc_{s}", c) for s in "rnt"]
    for bn, fc, dim in heads:
        state.update(_batch_norm(gen, dim, bn))
        state[f"{fc}.weight"] = 0.001 * torch.randn(num_classes, dim, generator=gen)
    return state, visual


def _mlp(x: torch.Tensor, state: dict, prefix: str, layers: int) -> torch.Tensor:
    for i in range(layers):
        if i:
            x = F.gelu(x)
        x = x @ state[f"{prefix}.{2 * i}.weight"].t() + state[f"{prefix}.{2 * i}.bias"]
    return x


def released_operator(state: dict, cs, ps, ct, pt):
    """One edge s -> t of the released operator (docs/heat_operator.md): class tokens (B, C), patches (B, N, C)."""
    p = "heat.heat_conductor."
    alpha, beta, adj = state[p + "alpha_cls"], state[p + "beta"], state[p + "spatial_adjacency"]
    kappa = F.softplus(_mlp(torch.cat([ps.mean(1), pt.mean(1)], 1), state, p + "conductivity_predictor", 3))  # (B, 1)
    g = torch.sigmoid(_mlp(torch.cat([cs, pt.mean(1)], 1), state, p + "cls_patch_gate", 2))                  # (B, 1)
    gate = torch.sigmoid(_mlp(pt, state, p + "patch_spatial_gate", 2))                                       # (B, N, 1)
    cos = (pt @ cs[:, :, None])[..., 0] / (pt.norm(dim=-1) * cs.norm(dim=-1, keepdim=True)).clamp_min(1e-8)
    w = torch.softmax(cos, dim=1)                                                                     # (B, N)
    p1 = pt + alpha * kappa[:, :, None] * w[:, :, None] * cs[:, None, :]
    p2 = p1 + beta * g[:, :, None] * torch.bmm(torch.softmax(torch.bmm(pt, ps.transpose(1, 2)), -1), ps)
    p3 = p2
    for _ in range(3):
        p3 = p3 + 0.3 * gate * (torch.bmm(adj.expand(len(p3), -1, -1), p3) - p3)
    v = torch.softmax(p3.norm(dim=-1) + 1e-6, dim=1)                                                  # (B, N)
    return ct + alpha * (v[:, :, None] * g[:, :, None] * p3).sum(1), p3


@torch.no_grad()
def released_features(state: dict, visual: VisionTransformer, images: dict[str, torch.Tensor]) -> torch.Tensor:
    """The released model's test feature ``cat(ori, heat_cls, heat_pat)`` (pre-BN), 3 heat cycles."""
    tokens = {m: visual(images[m]) for m in MODALITIES}
    cls = {m: t[:, 0] for m, t in tokens.items()}
    pat = {m: t[:, 1:] for m, t in tokens.items()}
    for _ in range(3):
        for s, t in EDGES:
            cls[t], pat[t] = released_operator(state, cls[s], pat[s], cls[t], pat[t])
    ori = torch.cat([tokens[m][:, 0] for m in MODALITIES], 1)
    return torch.cat([ori, torch.cat([cls[m] for m in MODALITIES], 1),
                      torch.cat([pat[m].mean(1) for m in MODALITIES], 1)], 1)
