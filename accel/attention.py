"""Multi-head self-attention of the ViT as oneDNN batched products on CPU (part of ``MODEL.ONEDNN``).

PyTorch's CPU kernel behind ``F.scaled_dot_product_attention`` (flash attention, tiled for long sequences)
and its batched BLAS product both run the many small per-head products of a ReID ViT (144 heads of 129
tokens x 64 channels per layer for 4 samples x 3 modalities) at about 100 GFLOP/s on a 2-core machine.
oneDNN's grouped 1x1 convolution computes the same batched product at over twice that rate, so
:class:`FastAttention` runs exact attention as six such products and a row softmax:

    forward   scores = scale q k^T,  probs = softmax(scores),  out = probs v
    backward  dv = probs^T dout,  dprobs = dout v^T,  dscores = probs * (dprobs - rowsum(dprobs * probs)),
              dq = scale dscores k,  dk = scale dscores^T q

keeping ``probs`` (heads x tokens x tokens floats) for backward instead of recomputing it. Float32
throughout; the fast path runs for float32 CPU tensors outside autocast and ``torch.compile`` (else
timm's forward), and only for plain attention (no mask, dropout, q/k norms or gate).
"""

import functools

import torch
import torch.nn.functional as F
from timm.layers import Attention
from torch import nn
from torch.autograd.function import once_differentiable

from .probe import fast_path, kernels_agree

__all__ = ["FastAttention", "batched_matmul", "fast_attention_available"]


def _kernel_present() -> bool:
    """This PyTorch build has oneDNN's convolution operator."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


def batched_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` for contiguous float32 CPU a (G, m, k) and b (G, k, n), by oneDNN as a 1x1 convolution with
    G groups: b is the input (G * k channels of n pixels), a the weight (G * m filters of k channels)."""
    G, m, k = a.shape
    out = torch.ops.mkldnn._convolution_pointwise(b.view(1, G * k, b.shape[2], 1), a.view(G * m, k, 1, 1), None,
                                                  [0, 0], [1, 1], [1, 1], G, "none", [], "")
    return out.view(G, m, b.shape[2])                                           # (G, m, n)


@functools.cache
def fast_attention_available() -> bool:
    """True when oneDNN's convolution is present and :func:`batched_matmul` computes, on a small probe, what
    ``torch.bmm`` computes (otherwise :func:`accel.use_cpu_kernels` leaves timm's attention in place)."""
    if not _kernel_present():
        return False
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(*shape, generator=gen, dtype=torch.float64) for shape in ((3, 5, 7), (3, 7, 9)))
    return kernels_agree("oneDNN batched products", "torch.bmm",
                         lambda: [(batched_matmul(a.float(), b.float()), a @ b)])


def _heads(x: torch.Tensor, part: int, scale: float = 1.0) -> torch.Tensor:
    """Part ``part`` (0 q, 1 k, 2 v) of packed projections x (B, N, 3, H, D) as contiguous per-head matrices
    (B * H, N, D), times ``scale``: one copy of whole D-vectors."""
    src = x[:, :, part].transpose(1, 2)                                         # (B, H, N, D)
    out = torch.empty(src.shape, dtype=x.dtype)
    out = torch.mul(src, scale, out=out) if scale != 1.0 else out.copy_(src)
    return out.view(-1, *src.shape[2:])


def _transposed(t: torch.Tensor) -> torch.Tensor:
    """Contiguous (G, n, m) transpose of t (G, m, n): a cache-friendly copy inside each small matrix (twice as
    fast as transposing straight out of the packed projections)."""
    return t.transpose(1, 2).contiguous()


class _MultiHeadAttentionFn(torch.autograd.Function):
    """Attention of packed projections qkv (B, N, 3 * H * D) to (B, N, H * D)."""

    @staticmethod
    def forward(ctx, qkv: torch.Tensor, num_heads: int, scale: float) -> torch.Tensor:
        B, N, three_c = qkv.shape
        H, D = num_heads, three_c // (3 * num_heads)
        x = qkv.view(B, N, 3, H, D)
        scores = batched_matmul(_heads(x, 0), _transposed(_heads(x, 1, scale)))  # (B*H, N, N) = scale q k^T
        probs = torch.softmax(scores, -1)                                          # (B*H, N, N)
        del scores
        out = batched_matmul(probs, _heads(x, 2))                                 # (B*H, N, D)
        ctx.save_for_backward(qkv, probs)
        ctx.num_heads, ctx.scale = num_heads, scale
        return out.view(B, H, N, D).transpose(1, 2).reshape(B, N, H * D)          # (B, N, H*D)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        qkv, probs = ctx.saved_tensors
        B, N, three_c = qkv.shape
        H, scale = ctx.num_heads, ctx.scale
        D = three_c // (3 * H)
        x = qkv.view(B, N, 3, H, D)
        g = _heads(grad.reshape(B, N, 1, H, D), 0)                                  # (B*H, N, D) = dout
        dv_t = batched_matmul(_transposed(g), probs)                              # (B*H, D, N) = (probs^T dout)^T
        dscores = batched_matmul(g, _transposed(_heads(x, 2)))                    # (B*H, N, N) = dout v^T
        torch.ops.aten._softmax_backward_data.out(dscores, probs, -1, probs.dtype, grad_input=dscores)
        dq = batched_matmul(dscores, _heads(x, 1, scale))                         # (B*H, N, D) = scale ds k
        dk_t = batched_matmul(_transposed(_heads(x, 0, scale)), dscores)          # (B*H, D, N) = (scale ds^T q)^T
        dqkv = torch.empty(B, N, 3, H, D, dtype=qkv.dtype)
        for part, d in enumerate((dq, _transposed(dk_t), _transposed(dv_t))):     # each (B*H, N, D)
            dqkv[:, :, part] = d.view(B, H, N, D).transpose(1, 2)
        return dqkv.view(B, N, three_c), None, None


class FastAttention(nn.Module):
    """timm's plain ``Attention`` (same submodules, same state-dict names) whose float32 CPU forward runs
    the batched oneDNN products; elsewhere it computes timm's forward."""

    def __init__(self, attn: Attention):
        super().__init__()
        self.num_heads, self.head_dim, self.scale = attn.num_heads, attn.head_dim, attn.scale
        self.qkv, self.proj = attn.qkv, attn.proj
        self.train(attn.training)

    @staticmethod
    def fits(module: nn.Module) -> bool:
        """True for a timm ``Attention`` computing plain multi-head attention (no norms, gate or dropout)."""
        return (type(module) is Attention and getattr(module, "gate", None) is None
                and module.attn_drop.p == 0 and module.proj_drop.p == 0
                and all(isinstance(getattr(module, name, nn.Identity()), nn.Identity)
                        for name in ("q_norm", "k_norm", "norm")))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        B, N, _ = x.shape
        H, D = self.num_heads, self.head_dim
        if attn_mask is None and not is_causal and fast_path(x):
            return self.proj(_MultiHeadAttentionFn.apply(self.qkv(x), H, self.scale))   # (B, N, C)
        q, k, v = self.qkv(x).view(B, N, 3, H, D).permute(2, 0, 3, 1, 4).unbind(0)    # 3 x (B, H, N, D)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(B, N, H * D))                    # (B, N, C)
