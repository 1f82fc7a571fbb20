"""oneDNN kernels for the fp32 linear layers and the CLIP MLP on CPU (``MODEL.ONEDNN``).

PyTorch runs fp32 ``nn.Linear`` on CPU through its BLAS (MKL), which on some CPUs (AMD's with AVX-512, for
one) takes an AVX2 code path at half the machine's matmul rate. The oneDNN library shipped inside PyTorch
reaches the full rate. :func:`accel.use_cpu_kernels` swaps the model's linear layers, QuickGELU MLPs and
attention for drop-in modules (same parameters, same state-dict names) whose forward and backward call oneDNN:

- :class:`OneDNNLinear`: ``y = x W^T + b`` with the three GEMMs of its forward and backward in oneDNN;
- :class:`QuickGELUMlp`: ``fc2(quick_gelu(fc1(x)))`` with ``quick_gelu(y) = y sigmoid(1.702 y)`` computed as
  ``silu(1.702 y) / 1.702``, the first scale folded into fc1's weights and the second into fc2's output,
  so the activation costs one fused pass forward and one backward instead of timm's three and five, keeps
  two activations for backward instead of three, and backward needs no scaled weights at all;
- :class:`~accel.attention.FastAttention`: the ViT's multi-head attention as oneDNN batched products.

Same numbers as PyTorch's kernels up to float rounding (fp32 throughout, no reduced precision). The fast
path runs only for float32 CPU tensors outside autocast and ``torch.compile``; anything else takes the
stock PyTorch path of the same module.
"""

import functools

import torch
import torch.nn.functional as F
from timm.layers import Mlp, QuickGELU
from torch import nn
from torch.autograd.function import once_differentiable

from .probe import fast_path, kernels_agree

__all__ = ["OneDNNLinear", "QuickGELUMlp", "onednn_available"]

#: QuickGELU's slope: ``quick_gelu(y) = y * sigmoid(QUICK_GELU_SLOPE * y)``.
QUICK_GELU_SLOPE = 1.702


def _kernels_present() -> bool:
    """This PyTorch build has oneDNN and the two operators used here."""
    return (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
            and hasattr(torch.ops.aten, "mkldnn_linear_backward_weights"))


def _matmul_nt(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``a @ b.T (+ bias)`` by oneDNN's inner product; ``a`` (M, K), ``b`` (N, K), which may be a transposed
    view (oneDNN lays it out itself)."""
    return torch.ops.mkldnn._linear_pointwise(a, b, bias, "none", [], "")


def _grad_input(grad: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``grad @ weight`` (M, K) for grad (M, N), weight (N, K)."""
    return _matmul_nt(grad, weight.t())


def _grad_weight_bias(grad: torch.Tensor, x: torch.Tensor, bias: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(grad.T @ x, grad.sum(0) if bias)`` for grad (M, N), x (M, K), by oneDNN's inner-product
    backward-weights primitive, which reads both in their row-major layout (no transposed copies) and sums
    the bias gradient in the same pass."""
    shape = torch.empty(grad.shape[1], x.shape[1], layout=torch._mkldnn)  # only its shape is read
    grad_w, grad_b = torch.ops.aten.mkldnn_linear_backward_weights(grad.to_mkldnn(), x.to_mkldnn(), shape, bias)
    return grad_w.to_dense(), grad_b.to_dense() if bias else None


@functools.cache
def onednn_available() -> bool:
    """True when this PyTorch build has oneDNN with the two operators used here and they compute, on a small
    probe, what ``torch.mm`` computes (a build whose kernels fail or disagree falls back to PyTorch's)."""
    if not _kernels_present():
        return False
    gen = torch.Generator().manual_seed(0)
    x, w, grad = (torch.randn(*shape, generator=gen, dtype=torch.float64) for shape in ((37, 19), (11, 19), (37, 11)))

    def results():
        grad_w, grad_b = _grad_weight_bias(grad.float(), x.float(), True)
        return [(_matmul_nt(x.float(), w.float()), x @ w.T), (grad_w, grad.T @ x), (grad_b, grad.sum(0))]

    return kernels_agree("oneDNN kernels", "torch.mm", results)


class _LinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _matmul_nt(x, weight, bias)                                   # (M, N)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()                                             # (M, N)
        need_x, need_w, need_b = ctx.needs_input_grad
        grad_x = _grad_input(grad, weight) if need_x else None               # (M, K)
        grad_w = grad_b = None
        if need_w or (ctx.has_bias and need_b):
            grad_w, grad_b = _grad_weight_bias(grad, x, ctx.has_bias and need_b)  # (N, K), (N,)
        return grad_x, grad_w if need_w else None, grad_b


class _QuickGELUMlpFn(torch.autograd.Function):
    """``fc2(quick_gelu(fc1(x)))`` as ``(silu(x (s W1)^T + s b1) W2^T) / s + b2`` with s = 1.702.

    Backward needs no scaled copy of a weight: with ``u = grad W2`` and ``v = silu'(pre) * u``, the gradients
    are ``dx = v W1``, ``dW1 = v^T x``, ``db1 = sum(v)``, ``dW2 = grad^T hidden / s``, ``db2 = sum(grad)``
    (the two factors s cancel)."""

    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2):
        s = QUICK_GELU_SLOPE
        pre = _matmul_nt(x, w1 * s, b1 * s)                                  # (M, H) = s * fc1(x)
        hidden = F.silu(pre)                                                 # (M, H) = s * quick_gelu(fc1(x))
        ctx.save_for_backward(x, w1, pre, hidden, w2)
        out = _matmul_nt(hidden, w2)                                         # (M, D) = s * (fc2(.) - b2)
        return torch.add(b2, out, alpha=1 / s, out=out)                      # (M, D)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, w1, pre, hidden, w2 = ctx.saved_tensors
        need_x, need_w1, need_b1, need_w2, need_b2 = ctx.needs_input_grad
        grad = grad.contiguous()                                             # (M, D)
        grad_w2, grad_b2 = _grad_weight_bias(grad, hidden, need_b2)          # (D, H) = s * dW2, (D,)
        grad_pre = torch.ops.aten.silu_backward(_grad_input(grad, w2), pre)  # (M, H) = v = s * dL/dpre
        grad_x = _grad_input(grad_pre, w1) if need_x else None               # (M, D)
        grad_w1, grad_b1 = _grad_weight_bias(grad_pre, x, need_b1)           # (H, D), (H,)
        return (grad_x, grad_w1 if need_w1 else None, grad_b1,
                grad_w2.div_(QUICK_GELU_SLOPE) if need_w2 else None, grad_b2)


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1]).contiguous()


class OneDNNLinear(nn.Linear):
    """``nn.Linear`` whose float32 CPU forward and backward run in oneDNN."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not fast_path(x):
            return super().forward(x)
        out = _LinearFn.apply(_flat(x), self.weight, self.bias)              # (M, out)
        return out.reshape(*x.shape[:-1], self.out_features)

    @staticmethod
    def fits(module: nn.Module) -> bool:
        """True for a plain ``nn.Linear`` (not a subclass, which may compute something else)."""
        return type(module) is nn.Linear

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "OneDNNLinear":
        """The same layer (the very same parameter tensors) as a :class:`OneDNNLinear`."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_features, new.out_features = linear.in_features, linear.out_features
        new.weight, new.bias = linear.weight, linear.bias
        new.train(linear.training)
        return new


class QuickGELUMlp(nn.Module):
    """timm's ``Mlp`` with QuickGELU and no dropout or inner norm, fused on the float32 CPU path."""

    def __init__(self, mlp: Mlp):
        super().__init__()
        self.fc1, self.act, self.fc2 = mlp.fc1, mlp.act, mlp.fc2
        self.train(mlp.training)

    @staticmethod
    def fits(module: nn.Module) -> bool:
        """True for an ``Mlp`` computing exactly ``fc2(quick_gelu(fc1(x)))`` with biases."""
        return (type(module) is Mlp and isinstance(module.act, QuickGELU) and isinstance(module.norm, nn.Identity)
                and module.drop1.p == 0 and module.drop2.p == 0 and type(module.fc1) in (nn.Linear, OneDNNLinear)
                and module.fc1.bias is not None and module.fc2.bias is not None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not fast_path(x):
            return self.fc2(self.act(self.fc1(x)))
        out = _QuickGELUMlpFn.apply(_flat(x), self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias)
        return out.reshape(*x.shape[:-1], self.fc2.out_features)
