"""oneDNN kernels for the fp32 linear layers and the CLIP MLP on CPU (``MODEL.ONEDNN``).

PyTorch runs fp32 ``nn.Linear`` on CPU through its BLAS (MKL), which on some CPUs (AMD's with AVX-512, for
one) takes an AVX2 code path at half the machine's matmul rate. The oneDNN library shipped inside PyTorch
reaches the full rate. :func:`use_onednn` swaps the model's linear layers and QuickGELU MLPs for drop-in
modules (same parameters, same state-dict names) whose forward and backward call oneDNN's matmul:

- :class:`OneDNNLinear`: ``y = x W^T + b`` with the three GEMMs of its forward and backward in oneDNN;
- :class:`QuickGELUMlp`: ``fc2(quick_gelu(fc1(x)))`` with ``quick_gelu(y) = y sigmoid(1.702 y)`` computed as
  ``silu(1.702 y) / 1.702``, the two scales folded into the weights, so the activation costs one fused pass
  forward and one backward instead of timm's three and five, and keeps two activations for backward
  instead of three.

Same numbers as PyTorch's kernels up to float rounding (fp32 throughout, no reduced precision). The fast
path runs only for float32 CPU tensors outside autocast and ``torch.compile``; anything else takes the
stock PyTorch path of the same module.
"""

import math

import torch
import torch.nn.functional as F
from timm.layers import Mlp, QuickGELU
from torch import nn
from torch.autograd.function import once_differentiable
from torch.utils.flop_counter import flop_registry, register_flop_formula

__all__ = ["OneDNNLinear", "QuickGELUMlp", "onednn_available", "use_onednn"]

#: QuickGELU's slope: ``quick_gelu(y) = y * sigmoid(QUICK_GELU_SLOPE * y)``.
QUICK_GELU_SLOPE = 1.702


def onednn_available() -> bool:
    """True when this PyTorch build has oneDNN and its linear operator."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _linear_pointwise_flop(x_shape, w_shape, *args, **kwargs) -> int:
    """FLOPs of oneDNN's ``x @ w.T`` for ``torch.utils.flop_counter`` (as ``aten.mm``: 2 per multiply-add)."""
    return 2 * math.prod(x_shape[:-1]) * w_shape[0] * w_shape[1]


def _linear_backward_weights_flop(grad_shape, x_shape, *args, **kwargs) -> int:
    """FLOPs of oneDNN's ``grad.T @ x`` (the bias sum is not counted, as for ``aten.addmm``)."""
    return 2 * math.prod(x_shape[:-1]) * grad_shape[-1] * x_shape[-1]


if onednn_available():
    for _op, _formula in ((torch.ops.mkldnn._linear_pointwise, _linear_pointwise_flop),
                          (torch.ops.aten.mkldnn_linear_backward_weights, _linear_backward_weights_flop)):
        if _op not in flop_registry:
            register_flop_formula(_op)(_formula)


def _fast_path(x: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
            and not torch.compiler.is_compiling())


def _matmul_nt(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``a @ b.T (+ bias)`` by oneDNN's inner product; ``a`` (M, K), ``b`` (N, K), which may be a transposed
    view (oneDNN lays it out itself)."""
    return torch.ops.mkldnn._linear_pointwise(a, b, bias, "none", [], "")


def _grad_input(grad: torch.Tensor, weight: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """``grad @ (scale * weight)`` (M, K) for grad (M, N), weight (N, K)."""
    return _matmul_nt(grad, (weight if scale == 1.0 else weight * scale).t())


def _grad_weight_bias(grad: torch.Tensor, x: torch.Tensor, bias: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(grad.T @ x, grad.sum(0) if bias)`` for grad (M, N), x (M, K), by oneDNN's inner-product
    backward-weights primitive, which reads both in their row-major layout (no transposed copies) and sums
    the bias gradient in the same pass."""
    shape = torch.empty(grad.shape[1], x.shape[1], layout=torch._mkldnn)  # only its shape is read
    grad_w, grad_b = torch.ops.aten.mkldnn_linear_backward_weights(grad.to_mkldnn(), x.to_mkldnn(), shape, bias)
    return grad_w.to_dense(), grad_b.to_dense() if bias else None


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
    """``fc2(quick_gelu(fc1(x)))`` as ``(W2 / s) silu(x (s W1)^T + s b1) + b2`` with s = 1.702."""

    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2):
        s = QUICK_GELU_SLOPE
        pre = _matmul_nt(x, w1 * s, b1 * s)                                  # (M, H) = s * fc1(x)
        hidden = F.silu(pre)                                                 # (M, H) = s * quick_gelu(fc1(x))
        ctx.save_for_backward(x, w1, pre, hidden, w2)
        return _matmul_nt(hidden, w2 / s, b2)                                # (M, D)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        s = QUICK_GELU_SLOPE
        x, w1, pre, hidden, w2 = ctx.saved_tensors
        need_x, need_w1, need_b1, need_w2, need_b2 = ctx.needs_input_grad
        grad = grad.contiguous()                                             # (M, D)
        grad_w2, grad_b2 = _grad_weight_bias(grad, hidden, need_b2)          # (D, H), (D,)
        grad_hidden = _grad_input(grad, w2, 1 / s)                           # (M, H)
        grad_pre = torch.ops.aten.silu_backward(grad_hidden, pre)            # (M, H)
        del grad_hidden
        grad_x = _grad_input(grad_pre, w1, s) if need_x else None            # (M, D)
        grad_w1, grad_b1 = _grad_weight_bias(grad_pre, x, need_b1)           # (H, D), (H,)
        return (grad_x, grad_w1.mul_(s) if need_w1 else None, grad_b1.mul_(s) if need_b1 else None,
                grad_w2.div_(s) if need_w2 else None, grad_b2)


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1]).contiguous()


class OneDNNLinear(nn.Linear):
    """``nn.Linear`` whose float32 CPU forward and backward run in oneDNN."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _fast_path(x):
            return super().forward(x)
        out = _LinearFn.apply(_flat(x), self.weight, self.bias)              # (M, out)
        return out.reshape(*x.shape[:-1], self.out_features)

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
        if not _fast_path(x):
            return self.fc2(self.act(self.fc1(x)))
        out = _QuickGELUMlpFn.apply(_flat(x), self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias)
        return out.reshape(*x.shape[:-1], self.fc2.out_features)


def use_onednn(model: nn.Module) -> nn.Module:
    """Swap, in place, every QuickGELU ``Mlp`` for a :class:`QuickGELUMlp` and every other ``nn.Linear``
    for a :class:`OneDNNLinear` (parameters shared, state-dict names unchanged); returns ``model``.
    A no-op when oneDNN is unavailable."""
    if not onednn_available():
        return model
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if QuickGELUMlp.fits(child):
                setattr(parent, name, QuickGELUMlp(child))
            elif type(child) is nn.Linear:
                setattr(parent, name, OneDNNLinear.from_linear(child))
    return model
