import copy

import pytest
import torch
from timm.layers import Mlp, QuickGELU
from torch import nn

import accel
import accel.onednn as onednn
from accel import use_cpu_kernels
from accel.attention import FastAttention
from accel.onednn import OneDNNLinear, QuickGELUMlp
from model.backbone import ClipViT
from utils.flops import count_flops


def _grads(fn, *tensors):
    """Output and gradients of ``(fn(*tensors) * probe).sum()`` w.r.t. every tensor."""
    tensors = [t.detach().clone().requires_grad_(True) for t in tensors]
    out = fn(*tensors)
    probe = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
    (out * probe).sum().backward()
    return out.detach(), [t.grad for t in tensors]


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-5) -> None:
    """``a`` (float32) equals ``b`` (float64 reference) to ``rtol`` of b's largest magnitude."""
    assert a.dtype == torch.float32 and a.shape == b.shape
    torch.testing.assert_close(a.double(), b, rtol=0, atol=rtol * float(b.abs().max()))


def test_linear_matches_reference_forward_and_backward():
    torch.manual_seed(0)
    layer = OneDNNLinear.from_linear(nn.Linear(24, 40))
    base = torch.randn(3, 7, 30, requires_grad=True)
    x = base[..., 3:27]  # non-contiguous (B, N, C) input
    out = layer(x)
    probe = torch.linspace(-1, 1, out.numel()).reshape(out.shape)
    (out * probe).sum().backward()
    ref, (rx, rw, rb) = _grads(lambda x, w, b: x @ w.t() + b, x.double(), layer.weight.double(), layer.bias.double())
    for a, b in ((out.detach(), ref), (base.grad[..., 3:27], rx), (layer.weight.grad, rw), (layer.bias.grad, rb)):
        _close(a, b)


def test_quick_gelu_mlp_matches_reference_forward_and_backward():
    torch.manual_seed(0)
    mlp = QuickGELUMlp(Mlp(32, 128, act_layer=QuickGELU))
    x = torch.randn(2, 9, 32)
    params = (mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight, mlp.fc2.bias)

    def reference(x, w1, b1, w2, b2):
        y = x @ w1.t() + b1
        return (y * torch.sigmoid(1.702 * y)) @ w2.t() + b2

    def fused(x, w1, b1, w2, b2):
        return onednn._QuickGELUMlpFn.apply(x.reshape(-1, 32), w1, b1, w2, b2).reshape(2, 9, 32)

    out, grads = _grads(fused, x, *params)
    ref, ref_grads = _grads(reference, x.double(), *(p.double() for p in params))
    _close(out, ref)
    for a, b in zip(grads, ref_grads):
        _close(a, b)


def test_use_cpu_kernels_keeps_parameters_and_outputs_of_a_backbone():
    """Swapped backbone: same state dict, and outputs and gradients as close to a float64 computation as
    the stock float32 backbone's."""
    torch.manual_seed(0)
    stock = ClipViT("ViT-Mini-8", (32, 16)).train()
    fast = use_cpu_kernels(copy.deepcopy(stock))
    exact = copy.deepcopy(stock).double()
    assert all(isinstance(b.mlp, QuickGELUMlp) for b in fast.blocks)
    assert all(isinstance(b.attn, FastAttention) for b in fast.blocks)
    assert all(isinstance(b.attn.qkv, OneDNNLinear) and isinstance(b.attn.proj, OneDNNLinear) for b in fast.blocks)
    assert list(fast.state_dict()) == list(stock.state_dict())
    images = torch.randn(4, 3, 32, 16)
    outputs = {}
    for name, model, x in (("stock", stock, images), ("fast", fast, images), ("exact", exact, images.double())):
        outputs[name] = model(x)
        probe = torch.linspace(-1, 1, outputs[name].numel(), dtype=x.dtype).reshape(outputs[name].shape)
        (outputs[name] * probe).sum().backward()
    _close(outputs["fast"].detach(), outputs["exact"].detach())
    for (name, p), q, r in zip(stock.named_parameters(), fast.parameters(), exact.parameters()):
        assert q.grad is not None and torch.count_nonzero(q.grad) > 0, name
        err_stock = (p.grad.double() - r.grad).abs().max()
        err_fast = (q.grad.double() - r.grad).abs().max()
        assert err_fast <= 2 * err_stock + 1e-6 * r.grad.abs().max(), name


def test_other_dtypes_and_autocast_take_the_stock_path():
    torch.manual_seed(0)
    linear = nn.Linear(8, 4).double()
    fast = OneDNNLinear.from_linear(linear)
    x = torch.randn(5, 8, dtype=torch.float64)
    assert torch.equal(fast(x), linear(x))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fast.float()(x.float()).dtype == torch.bfloat16


@pytest.mark.parametrize("input_grad", [True, False])
def test_flop_counter_counts_the_onednn_path_like_the_stock_one(input_grad):
    stock = Mlp(16, 64, act_layer=QuickGELU)
    fast = QuickGELUMlp(stock)
    x = torch.randn(10, 16, requires_grad=input_grad)
    counts = []
    for module in (stock, fast):
        counts.append(count_flops(lambda m=module: m(x).sum().backward())[0])
    gemm = 2 * 10 * 16 * 64
    assert counts[0] == counts[1] == (6 if input_grad else 5) * gemm  # 2 forward GEMMs, 2 + 2 (or 1) backward


def test_use_cpu_kernels_is_a_no_op_without_onednn(monkeypatch):
    monkeypatch.setattr(accel, "onednn_available", lambda: False)
    model = nn.Sequential(nn.Linear(4, 4))
    assert type(use_cpu_kernels(model)[0]) is nn.Linear


@pytest.mark.parametrize("bias", [True, False])
def test_linear_without_bias_and_frozen_weight(bias):
    layer = OneDNNLinear.from_linear(nn.Linear(6, 3, bias=bias))
    layer.weight.requires_grad_(False)
    x = torch.randn(4, 6, requires_grad=True)
    layer(x).sum().backward()
    torch.testing.assert_close(x.grad, layer.weight.sum(0).expand(4, 6))
    assert layer.weight.grad is None
    if bias:
        torch.testing.assert_close(layer.bias.grad, torch.full((3,), 4.0))


def test_onednn_available_probes_the_kernels(monkeypatch, caplog):
    assert onednn.onednn_available()  # this build's kernels agree with torch.mm
    real = onednn._matmul_nt

    def failing(*args, **kwargs):
        raise RuntimeError("could not create a primitive descriptor\nmore")

    for broken, message in ((failing, "unavailable, using PyTorch's (could not create a primitive descriptor)"),
                            (lambda *a, **k: real(*a, **k) * 1.01, "disagree with torch.mm")):
        monkeypatch.setattr(onednn, "_matmul_nt", broken)
        onednn.onednn_available.cache_clear()
        with caplog.at_level("WARNING", logger="accel.probe"):
            assert not onednn.onednn_available()
        assert message in caplog.text
        model = nn.Sequential(nn.Linear(4, 4))
        assert type(use_cpu_kernels(model)[0]) is nn.Linear  # falls back to PyTorch's layers
    monkeypatch.setattr(onednn, "_matmul_nt", real)
    onednn.onednn_available.cache_clear()
    assert onednn.onednn_available()
