"""Heat conduction between modalities (docs/heat_operator.md).

- :func:`heat_diffuse`: the exact heat kernel of the H x W token grid with insulated borders, applied in
  the DCT domain.
- :class:`HeatConductionOperator`: one cross-modal heat conduction operator (CMHCO) source -> target,
  with the authors' released variant (``diffusion="stencil"``).
- :class:`HeatCycle`: the operator applied around the cycle of modalities, several times, with
  absent modalities left out of the ring (:meth:`HeatCycle.forward`).
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

__all__ = ["HeatConductionOperator", "HeatCycle", "HeatOutput", "dct_matrix", "heat_diffuse",
           "laplacian_eigenvalues", "stencil_average", "stencil_norm"]


# ---------------------------------------------------------------------------------------------------
# The diffusion kernel
# ---------------------------------------------------------------------------------------------------
def dct_matrix(n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Orthonormal DCT-II matrix ``D`` (``n x n``, float32): ``D @ x`` transforms, ``D.T @ X`` inverts."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    basis = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    basis[0] /= math.sqrt(2.0)
    return basis.to(device=device, dtype=torch.float32)


def laplacian_eigenvalues(h: int, w: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Eigenvalues ``4 sin²(πn/2H) + 4 sin²(πm/2W)`` (``H x W``) of the grid's Neumann Laplacian."""
    n = torch.arange(h, dtype=torch.float64)[:, None]
    m = torch.arange(w, dtype=torch.float64)[None, :]
    lam = 4 * torch.sin(math.pi * n / (2 * h)) ** 2 + 4 * torch.sin(math.pi * m / (2 * w)) ** 2
    return lam.to(device=device, dtype=torch.float32)


def _diffuse_channels_last(x: torch.Tensor, k: torch.Tensor, t: torch.Tensor | float, dh: torch.Tensor,
                           dw: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """Heat flow of ``x`` (B, H, W, C) for time ``t`` with conductivity ``k`` (broadcastable to (B, C)),
    given the DCT matrices ``dh`` (H, H), ``dw`` (W, W) and the eigenvalues ``lam`` (H, W).

    Runs in float32 whatever the autocast state: the spectral decay is sensitive to rounding.
    """
    B, H, W, C = x.shape
    with torch.autocast(device_type=x.device.type, enabled=False):
        xf = x.float()
        dh, dw, lam = dh.float(), dw.float(), lam.float()
        kt = (torch.as_tensor(k, device=x.device).float() * t).expand(B, C)  # (B, C)
        decay = torch.exp(-kt[:, None, None, :] * lam[None, :, :, None])    # (B, H, W, C)
        spec = torch.matmul(dh, xf.reshape(B, H, W * C)).reshape(B * H, W, C)    # DCT along H
        spec = torch.matmul(dw, spec).reshape(B, H, W, C) * decay                # DCT along W, decay
        out = torch.matmul(dw.t(), spec.reshape(B * H, W, C)).reshape(B, H, W * C)  # inverse along W
        out = torch.matmul(dh.t(), out).reshape(B, H, W, C)                      # inverse along H
    return out.to(x.dtype)


def heat_diffuse(x: torch.Tensor, k: torch.Tensor | float, t: torch.Tensor | float = 1.0) -> torch.Tensor:
    """Exact heat flow on the H x W grid with insulated (Neumann) borders.

    ``x`` is (B, C, H, W); ``k`` (conductivity, >= 0) broadcasts to (B, C); ``t`` is the time. Returns
    ``expm(-k t L) x`` per channel, L the 4-neighbour graph Laplacian of the grid, computed as
    ``IDCT2(DCT2(x) * exp(-k t λ))``.
    """
    _, _, H, W = x.shape
    out = _diffuse_channels_last(x.permute(0, 2, 3, 1), k, t, dct_matrix(H, x.device), dct_matrix(W, x.device),
                                 laplacian_eigenvalues(H, W, x.device))  # (B, H, W, C)
    return out.permute(0, 3, 1, 2)


def stencil_norm(h: int, w: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``1 / (row sum + 1e-8)`` of the released adjacency at every cell of the ``h x w`` grid, ``(h, w, 1)``."""
    weights = stencil_weights()
    ones = F.pad(torch.ones(h, w, dtype=torch.float64), (1, 1, 1, 1))
    total = sum(weights[di + 1][dj + 1] * ones[1 + di:1 + di + h, 1 + dj:1 + dj + w]
                for di in (-1, 0, 1) for dj in (-1, 0, 1))
    return (1.0 / (total + 1e-8)).to(device=device)[:, :, None]  # float64, cast to the tokens' dtype at use


def stencil_weights() -> list[list[float]]:
    """The released operator's 3x3 neighbour weights: 1 / distance, 0 at the centre."""
    d = 1.0 / math.sqrt(2.0)
    return [[d, 1.0, d], [1.0, 0.0, 1.0], [d, 1.0, d]]


def stencil_average(x: torch.Tensor, norm: torch.Tensor | None = None) -> torch.Tensor:
    """``A x`` for the released adjacency A (8 neighbours weighted 1/distance, rows normalised by
    (sum + 1e-8)), as a sparse 3x3 operation on ``x`` (B, H, W, C) instead of a dense N x N product.
    ``norm`` is :func:`stencil_norm` of the grid (computed here when not given)."""
    B, H, W, C = x.shape
    padded = F.pad(x, (0, 0, 1, 1, 1, 1))  # (B, H+2, W+2, C), zero outside the grid
    weights = stencil_weights()
    acc = None
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            if di == 0 and dj == 0:
                continue
            term = padded[:, 1 + di:1 + di + H, 1 + dj:1 + dj + W] * weights[di + 1][dj + 1]
            acc = term if acc is None else acc + term
    if norm is None:
        norm = stencil_norm(H, W, x.device)
    return acc * norm.to(x.dtype)


# ---------------------------------------------------------------------------------------------------
# The cross-modal heat conduction operator
# ---------------------------------------------------------------------------------------------------
def _mlp(dims: Sequence[int]) -> nn.Sequential:
    """Linear layers with GELU between them (indices 0, 2, 4, ... are the Linear layers)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        if i:
            layers.append(nn.GELU())
        layers.append(nn.Linear(a, b))
    return nn.Sequential(*layers)


class HeatConductionOperator(nn.Module):
    """CMHCO, source modality s -> target modality t (the released variant with ``diffusion="stencil"``;
    docs/heat_operator.md has both).

    Class token ``c`` (B, C) and patches ``P`` (B, N, C) of both modalities in; the target's updated class
    token and patches out, plus the predicted conductivity ``kappa`` (B,), interaction gate ``g`` (B,)
    and spatial gate ``G`` (B, N).
    """

    STENCIL_STEPS = 3   # explicit diffusion steps of the released operator
    STENCIL_RATE = 0.3  # their step size

    def __init__(self, dim: int, grid: tuple[int, int], diffusion: str = "dct", alpha: float = 0.3,
                 beta: float = 0.2):
        super().__init__()
        if diffusion not in ("dct", "stencil"):
            raise ValueError(f"diffusion must be 'dct' or 'stencil', got {diffusion!r}")
        self.dim = dim
        self.grid = tuple(grid)
        self.diffusion = diffusion
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))
        self.beta = nn.Parameter(torch.tensor(float(beta)))
        self.conductivity_mlp = _mlp([2 * dim, dim // 2, dim // 4, 1])
        self.interaction_gate_mlp = _mlp([2 * dim, dim, 1])
        self.spatial_gate_mlp = _mlp([dim, dim // 2, 1])
        # constant matrices of the grid, as non-persistent buffers: they follow the module to its device,
        # stay out of state dicts, and are ordinary inputs to autograd, inference mode and torch.compile
        H, W = self.grid
        if diffusion == "dct":
            self.register_buffer("dct_h", dct_matrix(H), persistent=False)
            self.register_buffer("dct_w", dct_matrix(W), persistent=False)
            self.register_buffer("eigenvalues", laplacian_eigenvalues(H, W), persistent=False)
            self._init_near_identity()
        else:
            self.register_buffer("adjacency_norm", stencil_norm(H, W), persistent=False)

    def _init_near_identity(self) -> None:
        """Start close to the identity on CLIP tokens: small interaction gate (σ(-3) ≈ 0.05) and small
        weights in the last layers, so the backbone's features pass almost unchanged at first."""
        for mlp in (self.conductivity_mlp, self.interaction_gate_mlp, self.spatial_gate_mlp):
            for layer in mlp:
                if isinstance(layer, nn.Linear):
                    nn.init.trunc_normal_(layer.weight, std=0.02)
                    nn.init.zeros_(layer.bias)
        nn.init.constant_(self.interaction_gate_mlp[-1].bias, -3.0)

    def forward(self, src_cls: torch.Tensor, src_pat: torch.Tensor, tgt_cls: torch.Tensor,
                tgt_pat: torch.Tensor, conductivity: torch.Tensor | None = None,
                tau: torch.Tensor | float = 1.0) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        B, N, C = tgt_pat.shape
        H, W = self.grid
        src_mean, tgt_mean = src_pat.mean(1), tgt_pat.mean(1)                                   # (B, C)
        kappa = F.softplus(self.conductivity_mlp(torch.cat([src_mean, tgt_mean], -1)))          # (B, 1)
        gate = torch.sigmoid(self.interaction_gate_mlp(torch.cat([src_cls, tgt_mean], -1)))     # (B, 1)
        spatial = torch.sigmoid(self.spatial_gate_mlp(tgt_pat))                                 # (B, N, 1)

        # 1. class -> patches: the source class token heats the target patches it resembles
        w = torch.softmax(F.cosine_similarity(src_cls[:, None, :], tgt_pat, dim=-1), dim=-1)    # (B, N)
        p1 = tgt_pat + self.alpha * kappa[:, :, None] * w[:, :, None] * src_cls[:, None, :]     # (B, N, C)

        # 2. cross-modal patch heat: target patches attend to the source patches
        if self.diffusion == "dct":
            query, scale = p1, C ** -0.5
        else:  # released code: queries are the incoming target patches, no 1/sqrt(C)
            query, scale = tgt_pat, 1.0
        heat_in = F.scaled_dot_product_attention(query[:, None], src_pat[:, None], src_pat[:, None],
                                                 scale=scale)[:, 0]                              # (B, N, C)
        p2 = p1 + self.beta * gate[:, :, None] * heat_in

        # 3. diffusion inside the target, where the spatial gate opens
        grid2 = p2.reshape(B, H, W, C)
        gate_grid = spatial.reshape(B, H, W, 1)
        if self.diffusion == "dct":
            k = kappa * conductivity if conductivity is not None else kappa                     # (B, C)
            diffused = _diffuse_channels_last(grid2, k, tau, self.dct_h, self.dct_w, self.eigenvalues)
            p3 = gate_grid * diffused + (1 - gate_grid) * grid2
        else:
            p3 = grid2
            for _ in range(self.STENCIL_STEPS):
                p3 = p3 + self.STENCIL_RATE * gate_grid * (stencil_average(p3, self.adjacency_norm) - p3)
        p3 = p3.reshape(B, N, C)

        # 4. patches -> class: the target class token gathers its hottest (largest-norm) patches
        v = torch.softmax(p3.norm(dim=-1), dim=-1)                                              # (B, N)
        cls = tgt_cls + self.alpha * gate * (v[:, :, None] * p3).sum(1)                         # (B, C)
        stats = {"kappa": kappa[:, 0], "gate": gate[:, 0], "spatial_gate": spatial[..., 0]}
        return cls, p3, stats


# ---------------------------------------------------------------------------------------------------
# The heat cycle
# ---------------------------------------------------------------------------------------------------
@dataclass
class HeatOutput:
    """Per-modality class tokens (B, C) and patches (B, N, C) after the last cycle; ``cls_trace[c]`` holds
    the class tokens after cycle c; ``stats[(cycle, source, target)]`` the operator's κ, g and G.

    With missing modalities, ``edge_present[(source, target)]`` (B,) tells the samples in which the edge ran
    as named (both ends present); the other samples' statistics belong to another edge or to none. It lives
    where the caller's masks live (the loader's: on the host).
    """

    cls: dict[str, torch.Tensor]
    patches: dict[str, torch.Tensor]
    cls_trace: list[dict[str, torch.Tensor]] = field(default_factory=list)
    stats: dict[tuple[int, str, str], dict[str, torch.Tensor]] = field(default_factory=dict)
    edge_present: dict[tuple[str, str], torch.Tensor] | None = None

    def summary(self) -> dict[str, torch.Tensor]:
        """Detached batch means of κ, g and G per edge ``"source->target/name"``, averaged over cycles; with
        missing modalities, over the samples in which the edge ran (an edge that ran in none is left out)."""
        sums: dict[str, list[torch.Tensor]] = {}
        for (_, src, tgt), stats in self.stats.items():
            ran = None if self.edge_present is None else self.edge_present[(src, tgt)]
            count = None if ran is None else int(ran.sum())
            if count == 0:
                continue
            for name, value in stats.items():
                value = value.detach().float()
                if ran is not None:  # the mean over the samples that ran it, without a boolean index (a sync)
                    weight = ran.to(value.device, non_blocking=True).view(-1, *[1] * (value.dim() - 1))
                    value = (value * weight).sum() / (count * value[0].numel())
                sums.setdefault(f"{src}->{tgt}/{name}", []).append(value.mean())
        return {key: torch.stack(values).mean() for key, values in sums.items()}


def _inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


class HeatCycle(nn.Module):
    """Heat conduction around the cycle ``order[0] -> order[1] -> ... -> order[0]``, ``num_cycles`` times.

    Updates are sequential (Gauss-Seidel): each edge sees the target's and source's latest tokens. With
    ``share_operator`` one operator serves every edge and cycle; the per-channel conductivity
    ``k_t = softplus(theta_t)`` is always per target modality (dct only). ``num_cycles=0`` has no
    operator and no parameter: the tokens pass unchanged (the "no heat" ablation). ``grad_ckpt``
    recomputes each operator's activations in the backward pass instead of keeping them.
    """

    def __init__(self, order: Sequence[str], dim: int, grid: tuple[int, int], num_cycles: int = 3,
                 share_operator: bool = True, diffusion: str = "dct", alpha: float = 0.3, beta: float = 0.2,
                 tau: float = 1.0, learn_tau: bool = True, init_conductivity: float = 0.05,
                 grad_ckpt: bool = False):
        super().__init__()
        self.order = list(order)
        self.edges = [(self.order[i], self.order[(i + 1) % len(self.order)]) for i in range(len(self.order))]
        self.num_cycles = num_cycles
        self.share_operator = share_operator
        self.grad_ckpt = grad_ckpt
        count = 0 if num_cycles == 0 else 1 if share_operator else num_cycles * len(self.edges)
        self.operators = nn.ModuleList(
            HeatConductionOperator(dim, grid, diffusion, alpha, beta) for _ in range(count))
        self.conductivity: nn.ParameterDict | None = None
        if diffusion == "dct" and num_cycles > 0:
            theta = _inverse_softplus(init_conductivity)
            self.conductivity = nn.ParameterDict(
                {m: nn.Parameter(torch.full((dim,), theta)) for m in self.order})
            log_tau = torch.tensor(math.log(tau))
            if learn_tau:
                self.log_tau = nn.Parameter(log_tau)
            else:
                self.register_buffer("log_tau", log_tau)

    def operator(self, cycle: int, edge: int) -> HeatConductionOperator:
        return self.operators[0 if self.share_operator else cycle * len(self.edges) + edge]

    def target_conductivity(self, modality: str) -> torch.Tensor | None:
        """``k_t`` (C,) of a target modality; None for the released operator, which has none."""
        return None if self.conductivity is None else F.softplus(self.conductivity[modality])

    @torch.no_grad()
    def parameter_stats(self) -> dict[str, float]:
        """Learned scalars for logging: α, β (mean over operators), τ and mean k_t per target modality (none
        without cycles). One device-to-host copy."""
        if not self.operators:
            return {}
        stats = {"alpha": torch.stack([op.alpha for op in self.operators]).mean(),
                 "beta": torch.stack([op.beta for op in self.operators]).mean()}
        if self.conductivity is not None:
            stats["tau"] = self.log_tau.exp()
            stats.update({f"conductivity/{m}": self.target_conductivity(m).mean() for m in self.order})
        return dict(zip(stats, torch.stack(list(stats.values())).float().tolist()))

    def forward(self, cls: Mapping[str, torch.Tensor], patches: Mapping[str, torch.Tensor],
                present: Mapping[str, torch.Tensor] | None = None) -> HeatOutput:
        """Class tokens (B, C) and patches (B, N, C) per modality in, :class:`HeatOutput` out.

        ``present`` maps every modality to a (B,) bool mask of the samples that have it (None: all of them;
        every sample must have at least one). An absent modality neither gives nor takes heat: edges into it
        are skipped (its tokens come out as they went in), and an edge out of it takes its source from the
        nearest present modality before it in the cycle, so the present modalities form a shorter ring,
        visited in the order of the full one (RGB -> NI -> TI without NI: RGB -> TI -> RGB). A modality
        present alone conducts with itself, as the cycle of a one-modality model does. With nothing missing
        this is the plain cycle, operation for operation.

        The masks may live on the host (the loader's): what they decide (is anything missing, which edges run
        at all) is read there, with no wait for the device, and they are then copied to the tokens' device.
        """
        if present is not None and all(bool(p.all()) for p in present.values()):
            present = None
        cls, patches = dict(cls), dict(patches)
        tau = self.log_tau.exp() if self.conductivity is not None else 1.0
        out = HeatOutput(cls, patches)
        if present is not None:
            out.edge_present = {(src, tgt): present[src] & present[tgt] for src, tgt in self.edges}
            runs = {m: bool(p.any()) for m, p in present.items()}                  # targets present in the batch
            device = next(iter(cls.values())).device
            present = {m: p.to(device, non_blocking=True) for m, p in present.items()}
        checkpointed = self.grad_ckpt and torch.is_grad_enabled()

        def conduct(op, *args):
            if checkpointed:
                return torch.utils.checkpoint.checkpoint(op, *args, use_reentrant=False)
            return op(*args)

        for c in range(self.num_cycles):
            for e, (src, tgt) in enumerate(self.edges):
                operator, conductivity = self.operator(c, e), self.target_conductivity(tgt)
                if present is None:
                    cls[tgt], patches[tgt], stats = conduct(
                        operator, cls[src], patches[src], cls[tgt], patches[tgt], conductivity, tau)
                else:
                    if not runs[tgt]:
                        continue
                    on = present[tgt]                                                        # (B,)
                    src_cls, src_pat = self._nearest_present_source(tgt, cls, patches, present)
                    new_cls, new_pat, stats = conduct(
                        operator, src_cls, src_pat, cls[tgt], patches[tgt], conductivity, tau)
                    cls[tgt] = torch.where(on[:, None], new_cls, cls[tgt])
                    patches[tgt] = torch.where(on[:, None, None], new_pat, patches[tgt])
                out.stats[(c, src, tgt)] = stats
            out.cls_trace.append(dict(cls))
        return out

    def _nearest_present_source(self, target: str, cls: Mapping[str, torch.Tensor],
                                patches: Mapping[str, torch.Tensor], present: Mapping[str, torch.Tensor]
                                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per sample, the class token (B, C) and patches (B, N, C) of the nearest present modality before
        ``target`` in the cycle; ``target``'s own where it is the only one present."""
        i, count = self.order.index(target), len(self.order)
        src_cls, src_pat = cls[target], patches[target]
        for distance in range(count - 1, 0, -1):  # the farthest first: the nearest present one wins
            m = self.order[(i - distance) % count]
            src_cls = torch.where(present[m][:, None], cls[m], src_cls)
            src_pat = torch.where(present[m][:, None, None], patches[m], src_pat)
        return src_cls, src_pat
