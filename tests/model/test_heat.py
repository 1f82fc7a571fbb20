
import numpy as np
import pytest
import torch

from model.heat import HeatConductionOperator, HeatCycle, heat_diffuse, stencil_average
from tools.reference_mhcf import dense_adjacency


def neumann_laplacian(h: int, w: int) -> np.ndarray:
    """Graph Laplacian D - A of the h x w grid with 4-neighbour edges (insulated borders), built by hand."""
    n = h * w
    lap = np.zeros((n, n))
    for i in range(h):
        for j in range(w):
            for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                a, b = i + di, j + dj
                if 0 <= a < h and 0 <= b < w:
                    lap[i * w + j, a * w + b] -= 1
                    lap[i * w + j, i * w + j] += 1
    return lap


def reference_heat(x: np.ndarray, k: np.ndarray, t: float) -> np.ndarray:
    """expm(-k t L) applied per channel through numpy's eigen-decomposition of L (float64)."""
    b, c, h, w = x.shape
    evals, evecs = np.linalg.eigh(neumann_laplacian(h, w))
    out = np.empty_like(x)
    for i in range(b):
        for ch in range(c):
            kernel = evecs @ np.diag(np.exp(-k[i, ch] * t * evals)) @ evecs.T
            out[i, ch] = (kernel @ x[i, ch].reshape(-1)).reshape(h, w)
    return out


@pytest.mark.parametrize("h, w", [(16, 8), (8, 16), (5, 3), (1, 6)])
def test_heat_diffuse_equals_matrix_exponential(h, w):
    gen = torch.Generator().manual_seed(h * 100 + w)
    x = torch.randn(2, 3, h, w, generator=gen, dtype=torch.float64)
    k = torch.rand(2, 3, generator=gen, dtype=torch.float64) * 2
    expected = reference_heat(x.numpy(), k.numpy(), 0.7)
    got = heat_diffuse(x.float(), k.float(), 0.7)
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=2e-5 * np.abs(expected).max())


def test_heat_diffuse_physics():
    x = torch.randn(3, 4, 16, 8)
    k = torch.tensor([0.0, 0.3, 1.0, 5.0]).expand(3, 4)
    y = heat_diffuse(x, k, 1.0)
    torch.testing.assert_close(y[:, 0], x[:, 0], atol=1e-5, rtol=0)            # k = 0: identity
    torch.testing.assert_close(y.mean((2, 3)), x.mean((2, 3)), atol=1e-5, rtol=0)  # heat conserved
    dev_in = (x - x.mean((2, 3), keepdim=True)).pow(2).sum((2, 3))
    dev_out = (y - y.mean((2, 3), keepdim=True)).pow(2).sum((2, 3))
    assert torch.all(dev_out <= dev_in + 1e-5)                                  # never sharper
    assert torch.all(dev_out[:, 1:] < dev_in[:, 1:])
    far = heat_diffuse(x, torch.full((3, 4), 1e4), 1.0)                          # equilibrium
    torch.testing.assert_close(far, x.mean((2, 3), keepdim=True).expand_as(x), atol=1e-5, rtol=0)


def test_heat_diffuse_semigroup_and_broadcast():
    x = torch.randn(2, 5, 6, 4)
    once = heat_diffuse(x, 0.4, 2.0)
    twice = heat_diffuse(heat_diffuse(x, 0.4, 1.0), 0.4, 1.0)
    torch.testing.assert_close(once, twice, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(heat_diffuse(x, torch.tensor(0.4), 2.0), heat_diffuse(x, torch.full((2, 5), 0.8), 1.0))


def test_heat_diffuse_runs_in_float32_under_autocast():
    x = torch.randn(2, 8, 16, 8)
    k = torch.rand(2, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = heat_diffuse(x, k, 1.0)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, heat_diffuse(x, k, 1.0), atol=1e-6, rtol=1e-6)


def test_stencil_average_equals_dense_adjacency():
    h, w, c = 5, 4, 3
    adj = dense_adjacency(h, w).double().numpy()  # the released operator's matrix, built entry by entry
    x = torch.randn(2, h, w, c, dtype=torch.float64)
    expected = np.einsum("nm,bmc->bnc", adj, x.reshape(2, h * w, c).numpy()).reshape(2, h, w, c)
    np.testing.assert_allclose(stencil_average(x.float()).numpy(), expected, atol=1e-6)


def _tokens(b, n, c, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, generator=gen), torch.randn(b, n, c, generator=gen)


@pytest.mark.parametrize("diffusion", ["dct", "stencil"])
def test_operator_shapes_and_gates(diffusion):
    op = HeatConductionOperator(32, (4, 2), diffusion)
    (cs, ps), (ct, pt) = _tokens(3, 8, 32, 0), _tokens(3, 8, 32, 1)
    cls, pat, stats = op(cs, ps, ct, pt, torch.full((32,), 0.1) if diffusion == "dct" else None)
    assert cls.shape == (3, 32) and pat.shape == (3, 8, 32)
    assert stats["kappa"].shape == (3,) and torch.all(stats["kappa"] > 0)
    assert stats["gate"].shape == (3,) and torch.all((stats["gate"] > 0) & (stats["gate"] < 1))
    assert stats["spatial_gate"].shape == (3, 8)


def test_dct_operator_starts_near_identity():
    torch.manual_seed(0)
    op = HeatConductionOperator(64, (4, 4), "dct")
    (cs, ps), (ct, pt) = _tokens(2, 16, 64, 2), _tokens(2, 16, 64, 3)
    cls, pat, _ = op(cs, ps, ct, pt, torch.full((64,), 0.05))
    assert (cls - ct).norm() / ct.norm() < 0.05
    assert (pat - pt).norm() / pt.norm() < 0.1


@pytest.mark.parametrize("share", [True, False])
def test_cycle_is_sequential_gauss_seidel(share):
    torch.manual_seed(0)
    order = ["RGB", "NI", "TI"]
    cycle = HeatCycle(order, 16, (2, 2), num_cycles=2, share_operator=share)
    cls = {m: torch.randn(2, 16) for m in order}
    pat = {m: torch.randn(2, 4, 16) for m in order}
    out = cycle(cls, pat)
    c, p = dict(cls), dict(pat)
    tau = cycle.log_tau.exp()
    for n in range(2):
        for e, (src, tgt) in enumerate([("RGB", "NI"), ("NI", "TI"), ("TI", "RGB")]):
            c[tgt], p[tgt], _ = cycle.operator(n, e)(c[src], p[src], c[tgt], p[tgt],
                                                     cycle.target_conductivity(tgt), tau)
    for m in order:
        torch.testing.assert_close(out.cls[m], c[m])
        torch.testing.assert_close(out.patches[m], p[m])
    assert len(out.cls_trace) == 2 and len(out.stats) == 6
    assert len(cycle.operators) == (1 if share else 6)


@pytest.mark.parametrize("diffusion", ["dct", "stencil"])
def test_grid_constants_are_non_persistent_buffers_made_outside_any_inference_mode(diffusion):
    """The DCT / eigenvalue / stencil matrices belong to the operator: they follow it to its device and are
    not created during the forward. A first forward under inference_mode must not poison later training
    (a process-wide cache made there held inference tensors, which autograd refuses to save)."""
    op = HeatConductionOperator(16, (3, 7), diffusion)  # a grid no other test uses
    assert not any("dct" in k or "eigen" in k or "norm" in k for k in op.state_dict())
    assert {n for n, _ in op.named_buffers()} == (
        {"dct_h", "dct_w", "eigenvalues"} if diffusion == "dct" else {"adjacency_norm"})
    (cs, ps), (ct, pt) = _tokens(2, 21, 16, 0), _tokens(2, 21, 16, 1)
    k = torch.full((16,), 0.3) if diffusion == "dct" else None
    with torch.inference_mode():
        op(cs, ps, ct, pt, k)
    pt.requires_grad_(True)
    cls, pat, _ = op(cs, ps, ct, pt, k)
    (cls.sum() + pat.sum()).backward()
    assert pt.grad is not None and torch.isfinite(pt.grad).all()


def test_zero_cycles_is_the_identity_without_parameters():
    cycle = HeatCycle(["RGB", "NI", "TI"], 16, (2, 2), num_cycles=0)
    assert not list(cycle.parameters()) and cycle.parameter_stats() == {}
    cls = {m: torch.randn(2, 16) for m in cycle.order}
    pat = {m: torch.randn(2, 4, 16) for m in cycle.order}
    out = cycle(cls, pat)
    assert all(torch.equal(out.cls[m], cls[m]) and torch.equal(out.patches[m], pat[m]) for m in cycle.order)
    assert out.summary() == {}


@pytest.mark.parametrize("diffusion", ["dct", "stencil"])
def test_gradient_checkpointing_of_the_cycle_keeps_values_and_saves_memory(diffusion):
    order = ["RGB", "NI", "TI"]
    saved = {}
    results = {}
    for ckpt in (False, True):
        torch.manual_seed(0)
        cycle = HeatCycle(order, 32, (4, 2), num_cycles=3, diffusion=diffusion, grad_ckpt=ckpt)
        gen = torch.Generator().manual_seed(1)
        cls = {m: torch.randn(2, 32, generator=gen, requires_grad=True) for m in order}
        pat = {m: torch.randn(2, 8, 32, generator=gen, requires_grad=True) for m in order}
        nbytes = []

        def pack(t, nbytes=nbytes):
            nbytes.append(t.numel() * t.element_size())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = cycle(cls, pat)
        loss = sum(out.cls[m].pow(2).sum() + out.patches[m].pow(2).sum() for m in order)
        loss.backward()
        saved[ckpt] = sum(nbytes)
        results[ckpt] = [loss.detach(), *[p.grad for p in cycle.parameters()], *[cls[m].grad for m in order]]
    for a, b in zip(results[False], results[True]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert saved[True] < saved[False] / 4
