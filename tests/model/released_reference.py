"""The authors' released checkpoint format with random weights, an independent forward of their model written
from the released operator's description (docs/heat_operator.md; dense adjacency, bmm diffusion) on top of the
reference CLIP tower, and their training step."""


import copy
import math

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


# ---------------------------------------------------------------------------------------------------
# The released training step (docs/training.md), written from the authors' code without this repository's
# model, loss or solver: their forward in training mode, CLIP-ReID's losses (CrossEntropyLabelSmooth,
# TripletLoss with hard mining), Adam with one group per parameter, timm's CosineLRScheduler stepped with the
# epoch number before the epoch.
# ---------------------------------------------------------------------------------------------------
def authors_lr(epoch: int, lr: float, base_lr: float, warmup: int = 5, max_epochs: int = 40) -> float:
    """The rate of a group whose full rate is ``lr`` in training epoch ``epoch`` (1-based): timm's
    ``CosineLRScheduler._get_lr(epoch)`` with warmup_lr_init = 0.01 x BASE_LR, lr_min = 0.001 x BASE_LR,
    t_initial = max_epochs, warmup_t = warmup, cycle_limit 1, no warm-up prefix."""
    start, floor = 0.01 * base_lr, 0.001 * base_lr
    if epoch < warmup:
        return start + epoch * (lr - start) / warmup
    if epoch // max_epochs >= 1:
        return floor
    return floor + 0.5 * (lr - floor) * (1 + math.cos(math.pi * epoch / max_epochs))


def _batch_norm_train(x: torch.Tensor, state: dict, prefix: str, momentum: float = 0.1,
                      eps: float = 1e-5) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """BatchNorm1d in training mode: batch statistics (biased variance) normalise; the running statistics
    move by ``momentum`` towards the batch mean and unbiased variance."""
    mean, var = x.mean(0), x.var(0, unbiased=False)
    y = (x - mean) / torch.sqrt(var + eps) * state[f"{prefix}.weight"] + state[f"{prefix}.bias"]
    n = len(x)
    running = {f"{prefix}.running_mean": (1 - momentum) * state[f"{prefix}.running_mean"] + momentum * mean.detach(),
               f"{prefix}.running_var": ((1 - momentum) * state[f"{prefix}.running_var"]
                                         + momentum * var.detach() * n / (n - 1)),
               f"{prefix}.num_batches_tracked": state[f"{prefix}.num_batches_tracked"] + 1}
    return y, running


def _label_smoothed_ce(logits: torch.Tensor, pids: torch.Tensor, epsilon: float = 0.1) -> torch.Tensor:
    """CLIP-ReID's CrossEntropyLabelSmooth: targets (1 - eps) one-hot + eps / classes."""
    log_probs = torch.log_softmax(logits, dim=1)
    targets = torch.zeros_like(log_probs).scatter_(1, pids[:, None], 1)
    targets = (1 - epsilon) * targets + epsilon / logits.shape[1]
    return (-targets * log_probs).mean(0).sum()


def _hard_triplet(features: torch.Tensor, pids: torch.Tensor, margin: float) -> torch.Tensor:
    """CLIP-ReID's TripletLoss(margin): Euclidean distances (clamped at 1e-12 before the root), the
    farthest positive and nearest negative of each anchor, MarginRankingLoss(d_an, d_ap, y = 1)."""
    sq = features.pow(2).sum(1, keepdim=True)
    dist = (sq + sq.t() - 2 * features @ features.t()).clamp(min=1e-12).sqrt()
    n = len(pids)
    is_pos = pids.expand(n, n).eq(pids.expand(n, n).t())
    d_ap = dist[is_pos].view(n, -1).max(1).values
    d_an = dist[~is_pos].view(n, -1).min(1).values
    return torch.clamp(-(d_an - d_ap) + margin, min=0).mean()


def released_training_step(state: dict, visual: VisionTransformer, images: dict[str, torch.Tensor],
                           pids: torch.Tensor, *, vehicle: bool, margin: float, epoch: int = 1,
                           base_lr: float = 3.5e-5, bias_lr_factor: float = 2.0, weight_decay: float = 1e-4,
                           weight_decay_bias: float = 1e-4) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One training step of the released model from ``state`` (released names; ``visual`` holds the image
    encoder; neither is modified), in the dtype of the images: returns the loss and the state after the Adam
    step, with the gradients under "grad/<name>".

    Heads: BNNeck (frozen bias) + bias-free classifier on ``ori``, ``heat_cls``, ``heat_pat`` and, for
    vehicles (their ``DIRECT: 0``), on each modality's class token; the release's training forward returns
    nothing in that case, and the loss here is what their loss function makes of the six scores and
    features. Loss = sum over heads of label-smoothed CE (0.1) on the logits + hard triplet on the pre-BN
    feature. Adam (0.9, 0.999, eps 1e-8, L2 weight decay), rate of ``epoch`` for the weights and the biases
    (parameters whose name contains "bias"); parameters without a gradient (``alpha_patch``, ``proj``) stay.
    """
    dtype = images[MODALITIES[0]].dtype
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    visual = copy.deepcopy(visual).to(dtype).train()
    enc = {f"image_encoder.{k}": v for k, v in visual.named_parameters()}
    params = {name: value.detach().clone().requires_grad_(True) for name, value in state.items()
              if value.is_floating_point() and not name.startswith("image_encoder.")
              and "running_" not in name and name != "heat.heat_conductor.spatial_adjacency"
              and not (name.split(".")[0] in _BN_MODULES and name.endswith(".bias"))}
    params.update(enc)
    values = {**state, **params}
    h, w = (n // visual.patch for n in images[MODALITIES[0]].shape[2:])
    values["heat.heat_conductor.spatial_adjacency"] = dense_adjacency(h, w, dtype)   # exact in float64

    tokens = {m: visual(images[m], images[m].dtype) for m in MODALITIES}  # three calls, as their forward
    cls = {m: t[:, 0] for m, t in tokens.items()}
    pat = {m: t[:, 1:] for m, t in tokens.items()}
    for _ in range(3):
        for s, t in EDGES:
            cls[t], pat[t] = released_operator(values, cls[s], pat[s], cls[t], pat[t])
    features = {"ori": torch.cat([tokens[m][:, 0] for m in MODALITIES], 1),
                "heat_cls": torch.cat([cls[m] for m in MODALITIES], 1),
                "heat_pat": torch.cat([pat[m].mean(1) for m in MODALITIES], 1)}
    heads = {"ori": ("bottleneck", "classifier"), "heat_cls": ("bn_heat_cls", "fc_heat_cls"),
             "heat_pat": ("bn_heat_pat", "fc_heat_pat")}
    if vehicle:
        features.update({m: tokens[m][:, 0] for m in MODALITIES})
        heads.update({m: (f"bn_{m[0].lower()}", f"fc_{m[0].lower()}") for m in MODALITIES})
    loss = 0
    running = {}
    for name, (bn, fc) in heads.items():
        normed, stats = _batch_norm_train(features[name], values, bn)
        running.update(stats)
        logits = normed @ values[f"{fc}.weight"].t()
        loss = loss + _label_smoothed_ce(logits, pids) + _hard_triplet(features[name], pids, margin)

    names = list(params)
    grads = torch.autograd.grad(loss, [params[n] for n in names], allow_unused=True)
    new_state = {k: v.detach().clone() for k, v in state.items()}
    new_state.update({f"image_encoder.{k}": v.detach().clone() for k, v in visual.state_dict().items()})
    new_state.update(running)
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    for name, grad in zip(names, grads):
        if grad is None:
            continue
        bias = "bias" in name
        lr = authors_lr(epoch, base_lr * (bias_lr_factor if bias else 1), base_lr)
        p = params[name].detach()
        g = grad + (weight_decay_bias if bias else weight_decay) * p
        m_hat = (1 - beta1) * g / (1 - beta1)
        v_hat = (1 - beta2) * g * g / (1 - beta2)
        new_state[name] = p - lr * m_hat / (v_hat.sqrt() + eps)
        new_state[f"grad/{name}"] = grad
    return loss.detach(), new_state


#: Their BNNeck modules (whose bias is frozen).
_BN_MODULES = ("bottleneck", "bn_heat_cls", "bn_heat_pat", "bn_r", "bn_n", "bn_t")
