"""model/attention.py: the ViT's attention as oneDNN batched products equals timm's attention computed in
float64, forward and backward, and falls back to timm's forward where it does not apply."""

import copy

import pytest
import torch
from timm.layers import Attention
from torch import nn

import accel.attention as attention
from accel import use_cpu_kernels
from accel.attention import FastAttention, batched_matmul
from utils.flops import count_flops


def _backward_with_probe(out: torch.Tensor) -> None:
    probe = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
    (out * probe).sum().backward()


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.dtype == torch.float32 and a.shape == b.shape
    torch.testing.assert_close(a.double(), b, rtol=0, atol=2e-6 * float(b.abs().max()))


@pytest.mark.parametrize("batch, tokens, dim, heads", [(3, 17, 48, 4), (2, 129, 64, 2), (1, 5, 16, 1)])
def test_fast_attention_matches_the_definition_forward_and_backward(batch, tokens, dim, heads):
    """Outputs within 2e-6 of timm's attention in float64; gradients at most twice as far from it as timm's
    float32 attention's (plus 1e-6 of their scale)."""
    torch.manual_seed(0)
    stock = Attention(dim, heads, qkv_bias=True)
    base = torch.randn(batch, tokens, dim + 4)
    results = {}
    for name in ("stock", "fast", "exact"):
        module = copy.deepcopy(stock)
        module = FastAttention(module) if name == "fast" else module.double() if name == "exact" else module
        x = (base.double() if name == "exact" else base.clone()).requires_grad_(True)
        out = module(x[..., 2:-2])  # a non-contiguous input
        _backward_with_probe(out)
        results[name] = [out.detach(), x.grad[..., 2:-2], *(p.grad for p in module.parameters())]
    _close(results["fast"][0], results["exact"][0])
    for fast, stock_value, exact in zip(results["fast"][1:], results["stock"][1:], results["exact"][1:]):
        assert fast.dtype == torch.float32 and fast.shape == exact.shape
        err_fast = (fast.double() - exact).abs().max()
        err_stock = (stock_value.double() - exact).abs().max()
        assert err_fast <= 2 * err_stock + 1e-6 * exact.abs().max()


def test_batched_matmul_is_the_batched_product():
    torch.manual_seed(0)
    a, b = torch.randn(6, 13, 9, dtype=torch.float64), torch.randn(6, 9, 21, dtype=torch.float64)
    _close(batched_matmul(a.float(), b.float()), a @ b)


def test_fits_only_plain_attention():
    assert FastAttention.fits(Attention(32, 4, qkv_bias=True))
    assert not FastAttention.fits(Attention(32, 4, qk_norm=True, norm_layer=nn.LayerNorm))
    assert not FastAttention.fits(Attention(32, 4, attn_drop=0.1))
    assert not FastAttention.fits(nn.MultiheadAttention(32, 4))


def test_masks_other_dtypes_and_autocast_take_timm_forward():
    torch.manual_seed(0)
    stock = Attention(32, 4, qkv_bias=True)
    fast = FastAttention(stock)
    x = torch.randn(2, 7, 32)
    mask = torch.rand(7, 7) > 0.3
    mask.fill_diagonal_(True)
    torch.testing.assert_close(fast(x, attn_mask=mask), stock(x, attn_mask=mask))
    torch.testing.assert_close(fast(x, is_causal=True), stock(x, is_causal=True))
    torch.testing.assert_close(fast.double()(x.double()), stock.double()(x.double()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fast.float()(x).dtype == torch.bfloat16


def test_flop_counter_counts_the_products_executed():
    B, N, C, H = 2, 11, 32, 4
    fast = FastAttention(Attention(C, H, qkv_bias=True))
    x = torch.randn(B, N, C, requires_grad=True)
    flops, _ = count_flops(lambda: fast(x).sum().backward())
    linear = 2 * B * N * (C * 3 * C + C * C)   # qkv and proj, forward
    product = 2 * B * N * N * C                # one of the attention's batched products over all heads
    assert flops == 3 * linear + 6 * product  # backward: 2 GEMMs per linear, 4 products


def test_use_cpu_kernels_keeps_timm_attention_when_the_probe_fails(monkeypatch):
    def failing(*args, **kwargs):
        raise RuntimeError("convolution primitive unavailable")

    monkeypatch.setattr(attention, "batched_matmul", failing)
    attention.fast_attention_available.cache_clear()
    try:
        model = nn.Sequential(Attention(16, 2))
        assert type(use_cpu_kernels(model)[0]) is Attention
    finally:
        monkeypatch.undo()
        attention.fast_attention_available.cache_clear()
    assert type(use_cpu_kernels(nn.Sequential(Attention(16, 2)))[0]) is FastAttention
